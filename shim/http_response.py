"""Reading the legacy server's HTTP/1.1 answers strictly: status, header block and framing.

http.client hands a header block to the email parser, which costs about a
third of a small forwarded request and splits lines on a bare CR too, so an
answer could be relayed as something other than what the server sent.  This
module reads the block itself (:func:`parse_header_block`) and gives
http.client a response class (:class:`StrictResponse`) whose framing is read
from the very fields the shim relays.
"""

from __future__ import annotations

import http.client
import re

from .upstream import TOKEN, transfer_codings

#: http.client's own limits on a header block: bytes per line, lines; and on the
#: interim (1xx) answers before the final one.
_MAX_LINE = 65536
_MAX_FIELDS = 100
_MAX_INTERIM = 10


_FIELD_NAME = re.compile(TOKEN.encode())


class _Fields:
    """The header fields of an answer, in order, with the lookups http.client makes of them."""

    def __init__(self, fields: list[tuple[str, str]]):
        self.fields = fields
        self._by_name: dict[str, list[str]] = {}
        for name, value in fields:
            self._by_name.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default=None):
        """The first field called *name* (any case), as the email parser's message answers."""
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default=None):
        return list(self._by_name.get(name.lower(), ())) or default

    def items(self):
        return list(self.fields)


def parse_header_block(lines: list[bytes]) -> tuple[list[tuple[str, str]], str | None]:
    """``(fields, problem)`` of the raw header lines of an answer (status line excluded).

    Written here because http.client hands the block to the email parser,
    which costs about a third of a small forwarded request and splits lines
    on a bare CR too (``X: a\\rSet-Cookie: b`` would come back as two clean
    fields).  Values are read as that parser reads them (leading blanks
    dropped, trailing ones kept), with obsolete line folding undone into one
    space.  *problem* says why the block must not be relayed: a bare CR, a line
    that is no field, folding before the first field, no blank line at the end.
    """
    fields: list[tuple[str, str]] = []
    for line in lines:
        content = line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n")
        if not content:
            if line:  # the blank line that ends the block
                return fields, None
            break  # b"": the connection closed first, a field may have been cut short
        if b"\r" in content:
            return fields, "a bare CR in a header line"
        if content[:1] in (b" ", b"\t"):  # obsolete line folding: the previous value goes on
            if not fields:
                return fields, "line folding before the first header"
            folded_name, folded_value = fields[-1]
            fields[-1] = (folded_name, folded_value + " " + content.lstrip(b" \t").decode("latin-1"))
            continue
        name, colon, value = content.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            return fields, f"an invalid header name {name[:40]!r}"
        fields.append((name.decode("latin-1"), value.lstrip(b" \t").decode("latin-1")))
    return fields, "the header block broke off before its end"


class StrictResponse(http.client.HTTPResponse):
    """http.client's response, with the header block read by :func:`parse_header_block`.

    :meth:`begin` sets what http.client's own does (status, reason, version,
    ``chunked``, ``length``, ``will_close``), from the same fields the shim
    relays, so that the framing checked is the framing read.
    """

    fields: list[tuple[str, str]]
    problem: str | None

    def begin(self):
        if self.headers is not None:
            return
        version, status, reason = self._final_status()
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.fields, self.problem = parse_header_block(self._read_block())
        self.headers = self.msg = _Fields(self.fields)
        self._set_framing(status)

    def _final_status(self) -> tuple[str, int, str]:
        """The status line of the final answer: interim 1xx answers (but 101) are read and dropped.

        Taking a 102 or 103 for the answer would leave the real one on the
        connection, for the next request to receive.  An interim answer that
        frames a body is none (a 1xx status a script set, relayed as final by
        its web server): what follows is the script's output, never parsed as
        an answer.  After an interim answer nothing is sent again: whatever
        breaks raises a plain :class:`http.client.HTTPException`.
        """
        for interim in range(_MAX_INTERIM + 1):
            try:
                version, status, reason = self._read_status()  # type: ignore[attr-defined]
            except TimeoutError:
                raise
            except (http.client.HTTPException, OSError) as exc:
                if interim:
                    raise http.client.HTTPException(f"the answer broke off after an interim one ({exc!r})") from None
                raise
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            fields, problem = parse_header_block(self._read_block())
            framing = [n for n, v in fields if n.lower() in ("content-length", "transfer-encoding")]
            if problem or framing or any("close" in v.lower() for n, v in fields if n.lower() == "connection"):
                raise http.client.HTTPException(f"an interim {status} answer framed like a final one")
        raise http.client.HTTPException(f"more than {_MAX_INTERIM} interim answers")

    def _set_framing(self, status: int) -> None:
        """``chunked``, ``length`` and ``will_close``, as http.client reads the body by them.

        Every Transfer-Encoding and Connection field counts, not only the first
        (:func:`shim.upstream.check_framing` refuses any coding but ``chunked``).
        """
        self.chunked = transfer_codings(self.headers.get_all("transfer-encoding", [])) == ["chunked"]
        self.chunk_left = None
        # Any "close" in any Connection field closes (as http.client reads the first one):
        # closing a connection that could have stayed open costs a new one, nothing more.
        connection = " ".join(self.headers.get_all("connection", [])).lower()
        if self.version == 11:
            self.will_close = "close" in connection
        else:  # HTTP/1.0 closes unless it says otherwise
            self.will_close = "close" in connection or not (
                "keep-alive" in connection or self.headers.get("keep-alive")
            )
        self.length = None
        length = (self.headers.get("content-length") or "").strip(" \t")
        if length.isascii() and length.isdigit() and not self.chunked:
            self.length = int(length)
        if status == 204 and (self.chunked or self.length):
            self.will_close = True  # a 204 announcing a body: whatever follows must not reach the next request
        if status in (204, 304) or status < 200 or self._method == "HEAD":  # type: ignore[attr-defined]
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # the body ends when the connection does

    def _read_block(self) -> list[bytes]:
        lines = []
        while True:
            line = self.fp.readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                raise http.client.LineTooLong("header line")
            lines.append(line)
            if len(lines) > _MAX_FIELDS:
                raise http.client.HTTPException(f"got more than {_MAX_FIELDS} headers")
            if line in (b"\r\n", b"\n", b""):
                return lines
