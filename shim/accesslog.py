"""The access log, and keeping secrets out of every log line.

Request URLs carry credentials: a key-store ``auth_token`` with a valid
``auth_hash`` replays (the legacy server keeps no nonce list).  Every URL that
reaches a log goes through :func:`mask_target` first, and the log records of
gunicorn itself, which names request lines when something fails, go through
:class:`MaskSecrets`.

One access line is written per request when its response is closed (so a long
download is logged at its end, with its real size and duration), with the
status the client really got.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

from .phpcompat import php_param_name, urldecode

access_log = logging.getLogger("shim.access")
#: The shipped format of every log line (shim.gunicorn_conf).
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

#: Query parameters whose values never reach a log line (matched on the name as PHP decodes it).
SECRET_PARAMS = frozenset({"auth_hash", "auth_token", "password", "pass", "token", "userid", "secure_token"})
MASK = "***"
#: A part every secret name keeps whatever its spelling, short of percent-encoding
#: ("auth.hash", "auth+token" and "auth[token" are read "auth_..." by PHP).
_SECRET_CORES = ("auth", "pass", "token", "userid")
# A query inside a log message: whatever follows a "?" up to a space (or a
# colon that ends the phrase, as in "... for GET /p?a=1: reason").  Not only
# after "/path": gunicorn quotes the raw request line of a target it refuses,
# and that target ("x?auth_token=...", "*?...") need not start with "/"; quotes
# do not end it either (repr() keeps a quote inside the target as it is).
_QUERY_IN_TEXT = re.compile(r"\?(\S*?)(?=:?(?:\s|$))")
_VERSION = re.compile(r"HTTP/\d+\.\d+")
_TRAILING_VERSION = re.compile(r" HTTP/\d+\.\d+$")
_HEADER_NAME = re.compile(r"[!#$%&*+.^_`|~0-9A-Za-z-]*")
# The start of a request line that is one: a method, a blank, a path with no
# "?", "=" or "&" (a body left on the connection is none), nor "@" (an absolute
# target's user and password).
_REQUEST_LINE_HEAD = re.compile(r"([!#$%'*+.^_`|~0-9A-Za-z-]{1,20}) [^\s?=&@]*")
# A credential header named in a message, e.g. a header line gunicorn quotes
# whole ("Invalid HTTP Header: 'Authorization Basic ...'") or the raw bytes of
# a request it gave up on ("...\\r\\nCookie: s=..."): masked to the end of its
# line (an escaped CR or LF), closing quotes included (a value may hold quotes
# of its own; an escaped backslash is no line end).
_CREDENTIAL_HEADER_IN_TEXT = re.compile(
    r"""((?:(?<=['"])|(?<=\\n))(?:\s|\\t|:)*(?:proxy-authorization|authorization|cookie)(?=[\s:\\]))"""
    r"""(?:\\\\|\\[^rn]|[^\\\r\n])*""",
    re.I,
)
#: Texts gunicorn quotes that are its own, not the client's.
_GUNICORN_OWN_TEXT = re.compile(r"bare LF as line terminator|line over \d+ bytes with no terminator")
#: A header value that is one plain word ("100-continue", "gzip"): shown as it is.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9.-]{1,32}")
#: The request methods a log line names as sent (RFC 9110, PATCH, WebDAV as
#: Pydio serves it).  Any other method is a client's bytes, possibly the tail of
#: a body left on the connection glued to the next request line
#: ("HUNTER2GET /x"), and shows as ``***``.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
    | {"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH"}
)


def loggable_method(method: str) -> str:
    """*method* if it is a known one, else ``***`` (see :data:`KNOWN_METHODS`)."""
    return method if method in KNOWN_METHODS else MASK


def mask_query(query: str) -> str:
    """*query* with the values of secret parameters replaced by ``***``.

    Names are decoded as PHP decodes them (``auth_%74oken`` is ``auth_token``,
    ``auth.token`` files under ``auth_token``), so no spelling slips through.
    """
    lowered = query.lower()
    if "%" not in query and not any(core in lowered for core in _SECRET_CORES):
        return query  # no name in it can be a secret one (the usual query: nothing to split)
    return _mask_each(query)


def _mask_each(query: str) -> str:
    parts = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        secret = eq and php_param_name(urldecode(name)).lower() in SECRET_PARAMS
        parts.append(f"{name}={MASK}" if secret else part)
    return "&".join(parts)


def mask_target(path: str, query: str | None) -> str:
    """A request target fit for a log: ``path?query`` with secret values masked."""
    return path if not query else path + "?" + mask_query(query)


def mask_text(text: str) -> str:
    """Every query, quoted credential header and raw request part inside a free text (a log message) masked."""
    if any(word in text for word in _QUOTING_WORDS):
        text = _mask_quoted_request_parts(text)
    if "?" in text:
        text = _QUERY_IN_TEXT.sub(lambda m: "?" + mask_query(m.group(1)), text)
    return _CREDENTIAL_HEADER_IN_TEXT.sub(lambda m: m.group(1) + " " + MASK, text)


def _mask_request_line(line: str) -> str:
    # Kept: the known method and the path of what reads as a request line.  A
    # query that could be read several ways (a blank, an escape or a second
    # "?": a broken client's raw bytes) goes whole, and so does anything else
    # after the path but a version, or a line that is no request line (a body
    # left unread).
    head = _REQUEST_LINE_HEAD.match(line)
    if head is None or head.group(1).upper() not in KNOWN_METHODS:
        return MASK
    rest = line[head.end() :]
    version = _TRAILING_VERSION.search(rest)
    middle, tail = (rest[: version.start()], version.group()) if version else (rest, "")
    if not middle:
        return line
    if middle[0] == "?":
        query = middle[1:]
        plain = not any(c in query for c in " \\?")
        return head.group() + "?" + (mask_query(query) if plain else MASK) + tail
    return head.group(1) + " " + MASK + tail


def _mask_method(method: str) -> str:
    # Shown in any case ("get" is refused for its case), if it is a known method.
    return method if method.upper() in KNOWN_METHODS else MASK


def _mask_unless_plain_word(value: str) -> str:
    return value if _PLAIN_WORD.fullmatch(value) else MASK


def _mask_all(value: str) -> str:
    return MASK


def _mask_version(version: str) -> str:
    # Everything after the request line's second blank: a target holding a
    # blank leaves its tail here, so only a value that is a version stays.
    return version if _VERSION.fullmatch(version) else MASK


#: The header names gunicorn itself puts in its messages (upper-cased, as it
#: names a singleton or framing field it refuses).  Any other quoted "header" may
#: be a raw line without a colon: a credential's value wrapped onto a line of
#: its own by a broken client ("Authorization: Basic" then "dXNlcjpwdw==").
_GUNICORN_NAMED_HEADERS = frozenset({"CONTENT-LENGTH", "TRANSFER-ENCODING", "HOST", "CONTENT-TYPE"})


def _mask_header(header: str) -> str:
    return header if header in _GUNICORN_NAMED_HEADERS else MASK


def _mask_unless_token(name: str) -> str:
    # A folded header's name: it came before a colon and passed as a token.
    return name if _HEADER_NAME.fullmatch(name) and name else MASK


#: gunicorn's messages that quote raw request bytes (every ``%r`` of
#: gunicorn.http.errors a client controls), and what of the quoted value is
#: kept: a request line without its query's secrets, a known method, a version
#: only if it is one, a header name gunicorn itself names, a plain word.
_QUOTED_REQUEST_PARTS = {
    "Invalid HTTP request line: ": _mask_request_line,
    "Invalid HTTP method: ": _mask_method,
    "Invalid HTTP Version: ": _mask_version,
    "Invalid HTTP Header: ": _mask_header,
    "Invalid HTTP header name: ": _mask_header,
    "Obsolete line folding is unacceptable: ": _mask_unless_token,
    "Unable to comply with expectation: ": _mask_unless_plain_word,
    "Unsupported transfer coding: ": _mask_unless_plain_word,
    # bytes of a body (a chunk size line that is none, a chunk's last bytes) and
    # raw bytes of a request cut short (DEBUG), of HTTP/2 and PROXY preambles:
    # nothing of them is needed
    "Invalid chunk size: ": _mask_all,
    "Invalid chunk terminator is not '\\r\\n': ": _mask_all,
    "No more data after: ": _mask_all,
    "Expected HTTP/2 connection preface, got ": _mask_all,
    "Invalid PROXY line: ": _mask_all,
}


#: The first words of those messages, to pass over a text that has none of them at once.
_QUOTING_WORDS = tuple({prefix.split(" ", 1)[0] + " " for prefix in _QUOTED_REQUEST_PARTS})

#: The inside of a repr() string opened by either quote: up to its closing quote
#: or the end of the line.
_REPR_BODY = {q: re.compile(rf"(?:[^\\{q}\n]|\\.)*") for q in "'\""}


def _mask_quoted_request_parts(text: str) -> str:
    """The values of gunicorn's quoting messages masked (in one pass each: linear in *text*)."""
    for prefix, mask in _QUOTED_REQUEST_PARTS.items():
        at = text.find(prefix)
        if at < 0:
            continue
        parts, done = [], 0
        while at >= 0:
            start = at + len(prefix)
            if text[start : start + 1] == "b":  # repr() of bytes
                start += 1
            body = _REPR_BODY.get(text[start : start + 1])
            if body is None:  # not a repr() after all: left to the other rules
                at = text.find(prefix, start)
                continue
            start += 1
            end = body.match(text, start).end()  # type: ignore[union-attr]  # matches "" at least
            value = text[start:end]
            parts += [text[done:start], value if _GUNICORN_OWN_TEXT.fullmatch(value) else mask(value)]
            done = end
            at = text.find(prefix, end)
        text = "".join(parts) + text[done:]
    return text


class MaskSecrets(logging.Filter):
    """A logging filter masking secret query values in a record's message and arguments.

    Installed on gunicorn's error log, which names the raw request line of a
    request that failed or that it could not parse, and passes exceptions as
    arguments (one holds the raw bytes of a request): the whole message is
    formatted, then masked; so are a traceback and a stack.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # The message as it will be printed (arguments of any type formatted: an
        # exception holding raw request bytes too), then masked as one text.
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging would print its arguments raw in its error report
            message = f"{record.msg} (arguments that do not fit the message left out)"
        record.msg, record.args = mask_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:  # what formatters print instead of formatting exc_info again
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


_TRACEBACKS = logging.Formatter()


@dataclass
class LogFields:
    """What one access line says of a request, filled in while it is served."""

    status: int = 0
    bytes: int = 0
    kind: str = "proxy"  # proxy, feed, admin, refused
    rows: int | None = None
    cache: str | None = None  # hit, miss, revalidated... (the feed's authorization decision)


def write_line(remote: str, method: str, target: str, fields: LogFields, seconds: float) -> None:
    """The access line of one finished request (built only when it will be written).

    *target* is already masked (:func:`mask_target`): the line is built once,
    as the record's whole message, and the access handler does not mask it again.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    rows = "-" if fields.rows is None else fields.rows
    message = (
        f"{remote} {method} {target} status={fields.status} bytes={fields.bytes} ms={seconds * 1000:.1f} "
        f"kind={fields.kind} rows={rows} cache={fields.cache or '-'}"
    )
    handlers = access_log.handlers
    if (
        len(handlers) == 1
        and type(handlers[0]) is AccessHandler
        and not access_log.filters  # the logger's own filters need a record
        and handlers[0].write_message(message)
    ):
        return
    access_log.info(message)


class AccessHandler(logging.StreamHandler):
    """The access log's stream handler; :func:`write_line` hands it the message directly.

    A log record (made, filtered, formatted through the logging machinery) costs
    a tenth of a feed poll answered from memory.  The line written is the one
    ``format(record)`` would give: the formatter's own format string, filled with
    the fields an access line has; a format asking for others goes the usual way.
    """

    def write_message(self, message: str) -> bool:
        """Write *message* as an INFO line of ``shim.access``; False when the format needs a real record."""
        formatter = self.formatter
        if not isinstance(formatter, TimestampFormatter) or self.filters or self.level > logging.INFO:
            return False  # the usual way, which applies the filters and the handler's level
        line = formatter.access_text(message)
        if line is None:
            return False
        self.acquire()
        try:
            self.stream.write(line + self.terminator)
            self.flush()
        except Exception:  # as logging.StreamHandler.emit: a failing log never fails the request
            self.handleError(logging.makeLogRecord({"msg": message, "name": access_log.name}))
        finally:
            self.release()
        return True


class TimestampFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that formats each second's timestamp once.

    The stock ``formatTime`` runs ``strftime`` for every record: on a feed poll
    answered from memory that was a tenth of the request's cost.  Records of
    the same second share the string (``datefmt`` has no sub-second fields).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._second = -1
        self._text = ""

    def formatTime(self, record, datefmt=None):  # noqa: N802 - logging's name
        second = int(record.created)
        if second != self._second:  # two threads may both compute it: harmless, same string
            self._text = super().formatTime(record, datefmt)
            self._second = second
        return self._text

    def access_text(self, message: str) -> str | None:
        """``format()`` of an INFO record of ``shim.access`` made now, or None if the format needs more fields."""
        if not isinstance(self._style, logging.PercentStyle):
            return None
        now = time.time()
        fields = {
            "asctime": self.formatTime(_Now(now), self.datefmt),
            "process": os.getpid(),
            "levelname": "INFO",
            "name": access_log.name,
            "message": message,
        }
        try:
            return self._style._fmt % fields
        except (KeyError, TypeError, ValueError):
            return None


class _Now:
    """What :meth:`logging.Formatter.formatTime` reads of a record: its ``created`` time."""

    __slots__ = ("created", "msecs")

    def __init__(self, created: float):
        self.created = created
        self.msecs = (created - int(created)) * 1000
