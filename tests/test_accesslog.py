"""The access line: written without a log record, it is the line logging would have written; secrets masked."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim import accesslog


@pytest.fixture
def access_stream():
    """The shipped access handler and formatter on a string stream, in place of the logger's own."""
    stream = io.StringIO()
    handler = accesslog.AccessHandler(stream)
    handler.setFormatter(accesslog.TimestampFormatter(accesslog.LOG_FORMAT, accesslog.LOG_DATE_FORMAT))
    logger = accesslog.access_log
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    direct = []
    write_message = handler.write_message

    def noted(message):
        written = write_message(message)
        direct.append(written)
        return written

    handler.write_message = noted

    def install():
        # Here, not at set-up: pytest adds its capturing handlers for the test's call.
        logger.handlers[:] = [handler]
        return direct

    yield stream, handler, install
    logger.handlers[:], level, logger.propagate = saved
    logger.setLevel(level)


def test_the_direct_line_is_the_formatted_record(access_stream):
    stream, handler, install = access_stream
    direct_writes = install()
    fields = accesslog.LogFields(status=200, bytes=10, kind="feed", rows=0, cache="hit")
    accesslog.write_line("127.0.0.1", "GET", "/api/0/changes/5?auth_hash=***", fields, 0.00042)
    direct = stream.getvalue()
    # The same message through the logging machinery, with the same formatter.
    record = logging.LogRecord("shim.access", logging.INFO, __file__, 1, direct.split(": ", 1)[1][:-1], None, None)
    record.created = float(int(record.created))  # the second the direct line was written in, or the next
    expected = handler.formatter.format(record) + "\n"
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} "
    assert re.match(pattern, direct) and re.sub(pattern, "", direct) == re.sub(pattern, "", expected)
    assert f"[{os.getpid()}] INFO shim.access: 127.0.0.1 GET /api/0/changes/5?auth_hash=*** status=200 " in direct
    assert direct.endswith(" kind=feed rows=0 cache=hit\n")
    assert direct_writes == [True]  # written without a record


def test_a_format_asking_for_more_goes_through_logging(access_stream):
    stream, handler, install = access_stream
    direct_writes = install()
    handler.setFormatter(accesslog.TimestampFormatter("%(levelname)s %(module)s %(message)s"))
    accesslog.write_line("127.0.0.1", "GET", "/x", accesslog.LogFields(status=404), 0.001)
    assert stream.getvalue() == "INFO accesslog GET /x status=404 bytes=0 ms=1.0 kind=proxy rows=- cache=-\n".replace(
        "GET", "127.0.0.1 GET", 1
    )
    assert direct_writes == [False]


def test_the_handler_s_level_and_the_logger_s_filters_still_apply(access_stream):
    stream, handler, install = access_stream
    install()
    handler.setLevel(logging.WARNING)
    accesslog.write_line("127.0.0.1", "GET", "/x", accesslog.LogFields(status=200), 0.001)
    assert stream.getvalue() == ""
    handler.setLevel(logging.NOTSET)
    dropping = logging.Filter("no-such-logger")
    accesslog.access_log.addFilter(dropping)
    try:
        accesslog.write_line("127.0.0.1", "GET", "/x", accesslog.LogFields(status=200), 0.001)
    finally:
        accesslog.access_log.removeFilter(dropping)
    assert stream.getvalue() == ""


# --- masking secret values ------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, masked",
    [
        ("auth_token=T&auth_hash=1:H&stream=true", "auth_token=***&auth_hash=***&stream=true"),
        ("AUTH_TOKEN=T", "AUTH_TOKEN=***"),
        ("auth.token=T", "auth.token=***"),
        ("auth+hash=H", "auth+hash=***"),
        ("auth%5Ftoken=T", "auth%5Ftoken=***"),
        ("%61uth_hash=H", "%61uth_hash=***"),
        ("auth_token[x]=T", "auth_token[x]=***"),
        (
            "a=1&password=P&pass=Q&token=R&userid=U&secure_token=S",
            "a=1&password=***&pass=***&token=***&userid=***&secure_token=***",
        ),
        ("stream=true&flatten=true&filter=/a/b", "stream=true&flatten=true&filter=/a/b"),
        ("authority=1&passage", "authority=1&passage"),
        # names PHP may file as a secret one: an unclosed "[", leading spaces, a NUL
        ("auth[token=S", "auth[token=***"),
        ("+auth_token=S&%20token=R", "+auth_token=***&%20token=***"),
        ("auth_token%00x=S", "auth_token%00x=***"),
    ],
)
def test_secret_values_are_masked_in_every_spelling(query, masked):
    assert accesslog.mask_query(query) == masked


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="autohspwrdikenAUTHOK_.+[]%5F46=&x", max_size=40))
def test_the_quick_answer_for_queries_without_secrets_is_the_full_one(query):
    # A query with no secret name is returned without splitting: that must never skip one.
    assert accesslog.mask_query(query) == accesslog._mask_each(query)


@pytest.mark.parametrize(
    "text, masked",
    [
        ("GET /a?auth_token=T&x=1 failed", "GET /a?auth_token=***&x=1 failed"),
        (
            "Invalid HTTP request line: 'GET x?token=T HTTP/1.1'",
            "Invalid HTTP request line: 'GET x?token=*** HTTP/1.1'",
        ),
        ("'http://h/p?auth_hash=1:H'", "'http://h/p?auth_hash=***"),
        ("Invalid HTTP Header: 'Authorization Basic dXNlcjpwdw=='", "Invalid HTTP Header: '***'"),
        ("quoted: 'Authorization Basic dXNlcjpwdw=='", "quoted: 'Authorization ***"),
        ("Invalid HTTP Header: 'dXNlcjpodW50ZXIy'", "Invalid HTTP Header: '***'"),
        ("Invalid HTTP Header: 'secure_token%3DS'", "Invalid HTTP Header: '***'"),
        ('quoted: "cookie AjaXplorer=abc"', 'quoted: "cookie ***'),
        ("Invalid HTTP Header: 'X-Forwarded-For'", "Invalid HTTP Header: '***'"),
        ("quoted: 'X-Forwarded-For'", "quoted: 'X-Forwarded-For'"),
        ("the cookie path was rewritten", "the cookie path was rewritten"),
        ("authorization tables changed (ajxp_roles)", "authorization tables changed (ajxp_roles)"),
        # a quote inside the target does not end it; nor does one inside a header value
        ('line: "GET x?a=\'&auth_token=S HTTP/1.1"', 'line: "GET x?a=\'&auth_token=*** HTTP/1.1"'),
        ("quoted: \"Cookie a='b'; sess=S\"", 'quoted: "Cookie ***'),
        ("' Authorization Basic S'", "' Authorization ***"),
        ("'\\tCookie sess=S'", "'\\tCookie ***"),
        # raw request bytes as repr() shows them
        ("b'GET / HTTP/1.1\\r\\nCookie: s=S2\\r\\nHost: x'", "b'GET / HTTP/1.1\\r\\nCookie ***\\r\\nHost: x'"),
        ("what? nothing", "what? nothing"),
        # gunicorn's messages quoting raw request parts (a broken client's blanks, tabs, "?"s)
        (
            "Invalid HTTP request line: 'GET x?token=T1 T2 HTTP/1.1'",
            "Invalid HTTP request line: 'GET x?*** HTTP/1.1'",
        ),
        ("Invalid HTTP request line: 'GET x?token=A S\\tHTTP/1.1'", "Invalid HTTP request line: 'GET x?***'"),
        ("Invalid HTTP request line: 'GET x?token=A S http/1.1'", "Invalid HTTP request line: 'GET x?***'"),
        (
            "Invalid HTTP request line: 'GET x?a=1 /y?token=S HTTP/1.1'",
            "Invalid HTTP request line: 'GET x?*** HTTP/1.1'",
        ),
        ("Invalid HTTP request line: 'GET x?a=1?token=S HTTP/1.1'", "Invalid HTTP request line: 'GET x?*** HTTP/1.1'"),
        ("Invalid HTTP request line: 'GET x/y HTTP/1.1'", "Invalid HTTP request line: 'GET x/y HTTP/1.1'"),
        (
            "Invalid request from ip=1.2.3.4: Invalid HTTP Version: 'S'",
            "Invalid request from ip=1.2.3.4: Invalid HTTP Version: '***'",
        ),
        ("Invalid HTTP Version: 'T2 HTTP/1.1'", "Invalid HTTP Version: '***'"),
        ("Invalid HTTP Version: 'S\\tHTTP/1.1'", "Invalid HTTP Version: '***'"),
        ("Invalid HTTP Version: 'token=S'", "Invalid HTTP Version: '***'"),
        ("Invalid HTTP Version: 'HTTP/1.1 junk'", "Invalid HTTP Version: '***'"),
        ('Invalid HTTP Version: "T\'2 T3 HTTP/1.0"', 'Invalid HTTP Version: "***"'),
        ("Invalid HTTP Version: 'it\\'s S' and 'x'", "Invalid HTTP Version: '***' and 'x'"),
        ("Invalid HTTP Version: 'S", "Invalid HTTP Version: '***"),
        ("Invalid HTTP Version: 'HTTP/2.0'", "Invalid HTTP Version: 'HTTP/2.0'"),
        ("Invalid HTTP Version: (3, 0)", "Invalid HTTP Version: (3, 0)"),
        ("Invalid HTTP Header: ':Authorization: Basic S'", "Invalid HTTP Header: '***'"),
        ("Invalid HTTP Header: 'X-Note S'", "Invalid HTTP Header: '***'"),
        ("Invalid HTTP Header: 'CONTENT-LENGTH'", "Invalid HTTP Header: 'CONTENT-LENGTH'"),
        ("Invalid HTTP header name: 'X Authorization Basic S'", "Invalid HTTP header name: '***'"),
        ("Obsolete line folding is unacceptable: 'X-NOTE'", "Obsolete line folding is unacceptable: 'X-NOTE'"),
        # a body left on the connection, read as the next request line
        ("Invalid HTTP request line: 'd=admin&password=S'", "Invalid HTTP request line: '***'"),
        ("Invalid HTTP request line: 'get_action=login&userid=a&password=S&x=?'", "Invalid HTTP request line: '***'"),
        (
            "Invalid HTTP request line: 'POST userid=a&password=S HTTP/1.1'",
            "Invalid HTTP request line: 'POST *** HTTP/1.1'",
        ),
        ("Invalid HTTP request line: 'GET /x y z'", "Invalid HTTP request line: 'GET ***'"),
        ("Invalid HTTP method: 'userid=admin&password=S'", "Invalid HTTP method: '***'"),
        ("Invalid HTTP method: 'get'", "Invalid HTTP method: 'get'"),
        ("Invalid HTTP method: 'GET\\t/x?token=S\\tHTTP/1.1'", "Invalid HTTP method: '***'"),
        ("Invalid HTTP request line: 'CORRECT HORSE'", "Invalid HTTP request line: '***'"),
        (
            "Invalid HTTP request line: 'GET http://u:S@h/x\\x01 HTTP/1.1'",
            "Invalid HTTP request line: 'GET *** HTTP/1.1'",
        ),
        ("Invalid HTTP method: '1a2b:9f8e7d6cGET'", "Invalid HTTP method: '***'"),
        ("Invalid HTTP method: 'HUNTER2'", "Invalid HTTP method: '***'"),
        # body bytes where a chunk size or terminator belongs; other quoted header values
        ("Invalid chunk size: b'userid=admin&password=S'", "Invalid chunk size: b'***'"),
        (
            "Invalid chunk size: b'line over 1024 bytes with no terminator'",
            "Invalid chunk size: b'line over 1024 bytes with no terminator'",
        ),
        ("Invalid chunk terminator is not '\\r\\n': b'2\\r'", "Invalid chunk terminator is not '\\r\\n': b'***'"),
        ("Unable to comply with expectation: 'userid=a&password=S'", "Unable to comply with expectation: '***'"),
        ("Unable to comply with expectation: 'x; Cookie: S'", "Unable to comply with expectation: '***'"),
        ("Unable to comply with expectation: '200-ok'", "Unable to comply with expectation: '200-ok'"),
        ("Unsupported transfer coding: 'a=1&password=S'", "Unsupported transfer coding: '***'"),
        ("Unsupported transfer coding: 'gzip'", "Unsupported transfer coding: 'gzip'"),
        ("Expected HTTP/2 connection preface, got b'S'", "Expected HTTP/2 connection preface, got b'***'"),
        ("Invalid PROXY line: 'PROXY S'", "Invalid PROXY line: '***'"),
        # gunicorn's own words stay
        (
            "Invalid HTTP request line: 'bare LF as line terminator'",
            "Invalid HTTP request line: 'bare LF as line terminator'",
        ),
        ("Invalid HTTP Header: 'bare LF as line terminator'", "Invalid HTTP Header: 'bare LF as line terminator'"),
        ("Invalid HTTP Header: 'COOKIE'", "Invalid HTTP Header: '***'"),
        ("Obsolete line folding is unacceptable: 'COOKIE'", "Obsolete line folding is unacceptable: 'COOKIE'"),
        # the raw bytes of a request cut short: nothing of them
        ("No more data after: b'GET /x?auth token=S'", "No more data after: b'***'"),
        (
            "Ignored premature client disconnection. No more data after: b'Cookie: s=a\\\\rS'",
            "Ignored premature client disconnection. No more data after: b'***'",
        ),
        # an escaped backslash ends no line; an escaped CR does
        ("b'x\\r\\nCookie: s=a\\\\rS\\r\\nHost: h'", "b'x\\r\\nCookie ***\\r\\nHost: h'"),
        # the shim's own messages keep their words around a masked target
        (
            "upstream unreachable for GET /p?a=1&token=S: the legacy server broke the connection",
            "upstream unreachable for GET /p?a=1&token=***: the legacy server broke the connection",
        ),
        # a later "?" on the line is a query of its own
        ("why? GET /x?token=S HTTP/1.1", "why? GET /x?token=*** HTTP/1.1"),
        (
            "b'Referer: https://h/p?lang=en\\r\\nX-Original-URI: /q?token=S\\r\\n'",
            "b'Referer: https://h/p?lang=en\\r\\nX-Original-URI: /q?token=***",
        ),
        ("b'\\r\\n:Authorization: Basic S\\r\\n'", "b'\\r\\n:Authorization ***\\r\\n'"),
    ],
)
def test_secrets_in_free_text_are_masked(text, masked):
    assert accesslog.mask_text(text) == masked


def test_the_filter_masks_arguments_of_any_type_and_tracebacks():
    """gunicorn logs exceptions as arguments (NoMoreData holds the raw request) and with tracebacks."""
    import logging

    class RawBytesError(Exception):
        def __str__(self):
            return repr(b"GET /?auth_token=SECRET1 HTTP/1.1\r\nCookie: s=SECRET2")

    try:
        raise RuntimeError("GET http://up/x?auth_hash=1:SECRET3")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "gunicorn.error", logging.DEBUG, __file__, 1, "Ignored: %s", (RawBytesError(),), exc_info
    )
    assert accesslog.MaskSecrets().filter(record)
    printed = logging.Formatter().format(record)
    assert "SECRET" not in printed, printed
    assert "auth_token=***" in printed and "Cookie ***" in printed and "auth_hash=***" in printed


@pytest.mark.parametrize(
    "name, filed_as",
    [
        ("auth.token", "auth_token"),
        ("auth token", "auth_token"),
        ("auth_token[x]", "auth_token"),
        ("a[]", "a"),
        ("auth[token", "auth_token"),  # an unclosed "[" becomes "_"
        ("auth[tok.en", "auth_tok.en"),  # after it, nothing more is rewritten
        ("  auth_token", "auth_token"),  # leading spaces dropped
        ("auth_token\0x", "auth_token"),  # the name ends at a NUL byte
    ],
)
def test_parameter_names_are_filed_as_php_7_files_them(name, filed_as):
    from shim.phpcompat import php_param_name

    assert php_param_name(name) == filed_as


@pytest.mark.parametrize(
    "method, logged",
    [("GET", "GET"), ("PROPFIND", "PROPFIND"), ("HUNTER2GET", "***"), ("2GET", "***"), ("get", "***"), ("", "***")],
)
def test_a_method_is_logged_only_when_it_is_a_known_one(method, logged):
    """An unknown method may be the tail of a body glued to the next request line."""
    assert accesslog.loggable_method(method) == logged
