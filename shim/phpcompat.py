"""The few PHP behaviours the shim must reproduce exactly.

Each function mirrors one PHP built-in as Pydio 8 uses it (PHP 7 semantics), so
that the shim decides and prints what the legacy server would.  They are written
here because no Python library reproduces these PHP details.
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


def intval(value: str) -> int:
    """PHP ``intval()`` of a string: the leading integer, 0 when there is none.

    Values beyond the 64-bit range saturate, as PHP 7 does for numeric strings.
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


def json_encode(value) -> str:
    """PHP ``json_encode()`` with default flags.

    Differences from :func:`json.dumps` that matter to clients: ``/`` is written
    ``\\/`` and every non-ASCII character as ``\\uXXXX`` (surrogate pairs above
    U+FFFF).  ``/`` only ever occurs inside strings in JSON text, so escaping it
    after encoding is exact.
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/")
    # PHP writes DEL (U+007F) as is; Python escapes it.  Only an escape that is
    # not itself preceded by an escaped backslash is one.
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


def urldecode_bytes(text: str) -> bytes:
    """PHP ``urldecode()``: ``+`` is a space, ``%XX`` a byte; result as raw bytes."""
    return unquote_to_bytes(text.replace("+", " "))


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



def equals_null(value: str | None) -> bool:
    """PHP's ``$value == null`` for a request string: true only for ``""``.

    (PHP compares null with a string as ``""``, so ``"0" == null`` is false.)
    """
    return value is None or value == ""
