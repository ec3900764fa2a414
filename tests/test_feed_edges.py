"""Edge cases of the feed rules, as units: what PHP does with odd rows and parameters."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.feed import FeedParams, parse_feed_params
from shim.feedrows import encode_row, feed_rows, make_row
from shim.phpcompat import json_encode


def row(seq, node_id, type_, source, target, node_path="/x"):
    # Result tuple in feed_query() column order.
    return (seq, node_id, type_, source, target, 1, "m", 2, node_path, "0")


def flattened(rows, recycle_bin=""):
    box = [None]
    out = list(feed_rows(rows, FeedParams(0, True, True, None), recycle_bin, box))
    return [(r["seq"], r["type"], r["source"], r["target"]) for r in out], box[0]


def test_unknown_type_ranks_as_php_null():
    # MySQL in non-strict mode stores an invalid enum value as ''.  PHP reads
    # $order[''] as null; null compares with a rank as a boolean.
    assert flattened([row(1, 7, "", "NULL", "/a"), row(2, 7, "create", "NULL", "/a")])[0] == [
        (2, "create", "NULL", "/a")
    ]
    assert flattened([row(1, 7, "content", "/a", "/a"), row(2, 7, "", "/a", "/a")])[0] == [(2, "content", "/a", "/a")]
    # path (rank 0) after an unknown type: false > false, the type stays unknown.
    assert flattened([row(1, 7, "", "/a", "/a"), row(2, 7, "path", "/a", "/b")])[0] == [(2, "", "/a", "/b")]


def test_null_source_and_target_read_as_empty_strings():
    rows, last_seq = flattened([row(1, 3, "create", None, "/a"), row(2, 4, "content", None, None)], "recycle_bin")
    assert rows == [(1, "create", None, "/a"), (2, "content", None, None)]
    assert last_seq == 2
    # NULL equals "" for PHP's !=: a row whose source and target are both empty-ish is not sent.
    assert flattened([row(1, 5, "path", None, "")])[0] == []


def test_del_is_written_raw_like_php():
    assert json_encode({"a": "x\x7fy"}) == '{"a":"x\x7fy"}'
    assert json_encode({"a": "\\u007f"}) == '{"a":"\\\\u007f"}'  # a literal backslash-u stays escaped
    assert json.loads(json_encode({"a": "\\\x7f"})) == {"a": "\\\x7f"}


@pytest.mark.parametrize(
    "seq,expected",
    [
        ("12", 12),
        ("12abc", 12),
        ("abc", 0),
        ("-5", -5),
        ("0", 0),
        ("1%32", 12),
        ("1e3", None),
        ("1.5", None),
        (".5", None),
        ("1E2", None),  # PHP 7.1+ numeric forms: forwarded
        ("%2F5", None),
        ("1%252F", None),  # a "/" or a "%" after decoding: forwarded
        ("1%3F9", None),  # PHP cuts its REST path at the "?": seq 1 there, forwarded here
        ("%3F5", None),
    ],
)
def test_seq_forms(seq, expected):
    params = parse_feed_params(seq, {})
    assert (params.seq if params else None) == expected


@pytest.mark.parametrize(
    "value,answered",
    [
        ("/docs", True),
        ("/50%_off", True),
        ("/d\u00e9j\u00e0", True),
        ("/a&amp;b", False),
        ("/javascript:x", False),
        ("/a<b>", False),
        ("/docs/", False),
        ("docs", False),
        ("/a/../b", False),
        ("/a//b", False),
        ('/a"b', False),
        ("/a|b", False),
        ("/a?b", False),
        ("/a\\b", False),
    ],
)
def test_filters_the_shim_answers_and_those_it_forwards(value, answered):
    assert (parse_feed_params("0", {"filter": value}) is not None) == answered


_TEXTS = st.one_of(
    st.none(),
    st.text(alphabet=st.sampled_from(list('/\\"\x7f\x00\n\t aé€😀\u2028\ufeffz0')), max_size=12),
    st.text(max_size=8),
)


@settings(max_examples=400, deadline=None)
@given(
    seq=st.integers(0, 2**63 - 1),
    node_id=st.integers(-(2**63), 2**63 - 1),
    strings=st.lists(_TEXTS, min_size=5, max_size=5),
    numbers=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=2, max_size=2),
    node_path=st.one_of(_TEXTS, st.just(False)),
)
def test_a_row_encoded_in_one_pass_is_json_encode_of_the_row(seq, node_id, strings, numbers, node_path):
    type_, source, target, md5, identifier = strings
    row = make_row((seq, node_id, type_, source, target, numbers[0], md5, numbers[1], node_path, identifier))
    row["node"]["node_path"] = node_path  # filter_out may leave False there (PHP 7 substr)
    assert encode_row(row) == json_encode(row)
