"""The PHP behaviours the shim must reproduce exactly, each in one place.

Each function mirrors one PHP built-in as Pydio 8 uses it (PHP 7 semantics), so
that the shim decides and prints what the legacy server would.  They are
written by hand because no Python library reproduces these PHP details:
Werkzeug and :mod:`urllib.parse` decode queries as UTF-8 text with replacement
characters where PHP keeps raw bytes, and :mod:`json` escapes differently from
``json_encode``.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, unquote_to_bytes

_ESCAPED_DEL = re.compile(r"(?<!\\)((?:\\\\)*)\\u007f")
_LEADING_INT = re.compile(r"\s*([+-]?\d+)")
_ALNUM = re.compile(r"[^A-Za-z0-9_.\-]")

PHP_INT_MAX = 2**63 - 1
PHP_INT_MIN = -(2**63)
#: PHP ``trim()``'s default character set.
TRIM_CHARS = " \t\n\r\0\x0b"


def intval(value: str) -> int:
    """PHP ``intval()`` of a string: the leading integer, 0 when there is none.

    Values beyond the 64-bit range saturate, as PHP 7 does for numeric strings.
    (PHP 7.1+ also reads ``"1e3"`` as 1000; callers that may meet such forms
    forward them instead, see :func:`shim.feed.parse_feed_params`.)
    """
    match = _LEADING_INT.match(value)
    if not match:
        return 0
    number = int(match.group(1))
    return max(PHP_INT_MIN, min(PHP_INT_MAX, number))


def sanitize_alphanum(value: str) -> str:
    """Pydio's ``InputFilter::sanitize(..., SANITIZE_ALPHANUM)``: keep ``[A-Za-z0-9_.-]``."""
    return _ALNUM.sub("", value)


def parse_seq(value: str) -> int:
    """The ``seq_id`` of a changes request, parsed as the legacy server does."""
    return intval(sanitize_alphanum(value))


def urldecode_bytes(text: str | bytes) -> bytes:
    """PHP ``urldecode()``: ``+`` is a space, ``%XX`` a byte; the result as raw bytes.

    *text* may be a WSGI string (raw bytes held as latin-1 characters) or bytes.
    """
    raw = text.encode("latin-1", "replace") if isinstance(text, str) else text
    return unquote_to_bytes(raw.replace(b"+", b" "))


def urldecode(text: str | bytes) -> str:
    """PHP ``urldecode()`` read as UTF-8; bytes that are not UTF-8 kept as surrogate escapes."""
    return urldecode_bytes(text).decode("utf-8", "surrogateescape")


def parse_query(query: str | bytes) -> list[tuple[str, str]]:
    """Query or form pairs decoded as PHP fills ``$_GET`` / ``$_POST`` (``+`` is a space, UTF-8).

    Names are kept as sent after decoding: a name PHP would rewrite (``a.b``
    becomes ``a_b``, ``a[]`` an array) is not a parameter the shim knows, so
    the request is forwarded rather than read here.
    """
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    pairs = []
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((urldecode(name), urldecode(value)))
    return pairs


def php_param_name(name: str) -> str:
    """The key PHP 7 files a decoded parameter name under.

    The name ends at a NUL byte and loses its leading spaces; ``.`` and spaces
    before the first ``[`` become ``_``; ``[...]`` is an array index, dropped;
    an unclosed ``[`` becomes ``_``, the rest kept as sent (``auth[token`` is
    ``auth_token``).
    """
    name = name.split("\0", 1)[0].lstrip(" ")
    head, bracket, rest = name.partition("[")
    head = head.replace(".", "_").replace(" ", "_")
    return head + "_" + rest if bracket and "]" not in rest else head


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def strtolower(text: str) -> str:
    """PHP 7's ``strtolower()`` in the C locale: ASCII letters only (``É`` stays ``É``)."""
    return text.translate(_ASCII_LOWER)


def user_id(login: str) -> str:
    """The user id Pydio's auth.sql driver makes of a login: trimmed, then ASCII lower case.

    auth.sql always runs with ``CASE_SENSITIVE`` off, so ``DEV1`` is user ``dev1``
    before any query: the id in every identifier, role and cache key.
    """
    return strtolower(trim(login))


def trim(text: str) -> str:
    """PHP ``trim()`` with its default characters."""
    return text.strip(TRIM_CHARS)


def json_encode(value) -> str:
    """PHP ``json_encode()`` with default flags.

    Differences from :func:`json.dumps` that matter to clients: ``/`` is written
    ``\\/`` and every non-ASCII character as ``\\uXXXX`` (surrogate pairs above
    U+FFFF).  ``/`` only ever occurs inside strings in JSON text, so escaping it
    after encoding is exact.
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/")
    return fix_escaped_del(text)


def json_string(text: str) -> str:
    """One string as PHP's ``json_encode`` writes it, quotes included."""
    return json_scalar(text)


# json's own C string escaper (what json.dumps(ensure_ascii=True) runs for each string).
_ascii_string = json.encoder.encode_basestring_ascii


def json_scalar(value) -> str:
    """One scalar (``None``, a bool, an int or a string) as PHP's ``json_encode`` writes it.

    The same text :func:`json_encode` gives for it, without building a whole
    document: the feed writes each row of a snapshot from its scalars.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    text = _ascii_string(value)
    if "/" in text:
        text = text.replace("/", "\\/")
    return fix_escaped_del(text)


def fix_escaped_del(text: str) -> str:
    """PHP writes DEL (U+007F) as is, Python escapes it: undo the escape (not an escaped backslash's)."""
    return _ESCAPED_DEL.sub(lambda m: m.group(1) + "\x7f", text) if "\\u007f" in text else text


def is_valid_utf8_text(value) -> bool:
    """False for strings carrying undecodable bytes (``surrogateescape``) or lone surrogates.

    PHP's ``json_encode`` fails on a string that is not valid UTF-8.
    """
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def signed_uri(path: str) -> str:
    """The string a key-store token signature covers, from a request path.

    The legacy server takes the request path without query, strips trailing
    ``/``, ``urldecode``s then ``rawurlencode``s each ``/``-separated segment,
    joins them with ``/`` and writes ``~`` as ``%7E``.  The result is the same
    for every spelling of the same path, so a client's own encoding choices do
    not matter.
    """
    segments = path.rstrip("/").split("/")
    encoded = [quote(urldecode_bytes(s), safe="-_.~") for s in segments]
    return "/".join(encoded).replace("~", "%7E")


def signed_path_is_utf8(path: str) -> bool:
    """True when every ``urldecode``d segment of *path* is valid UTF-8.

    The legacy server converts a segment that is not UTF-8 before re-encoding
    it; that guess is not reproduced, so such a signature is left to it.
    """
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:
        return False
    for segment in raw.split(b"/"):
        try:
            urldecode_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def equals_null(value: str | None) -> bool:
    """PHP's ``$value == null`` for a request string: true only for ``""``.

    (PHP compares null with a string as ``""``, so ``"0" == null`` is false.)
    """
    return value is None or value == ""
