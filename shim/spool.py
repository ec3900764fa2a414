"""Chunked request bodies, spooled before they are forwarded, within limits.

PHP-FPM drops a chunked request body, so the shim reads it whole and sends it
with its length.  Reading it whole must not let anyone fill the disk: a body
larger than ``proxy.max_spooled_body`` is refused with 413, the bodies
spooled at once by one process may not exceed ``proxy.spool_space`` (503
beyond), and nothing is written that would leave less than
``proxy.spool_min_free`` free on the spool's file system (503).  A refused
body's spool is removed at once.  Sync clients send their uploads with a
``Content-Length``: those stream through and never touch the spool.
"""

from __future__ import annotations

import os
import tempfile
import threading

from .upstream import CHUNK, ClientBodyError, RequestRefused, SizedBody

#: Bodies up to this size stay in memory, larger ones go to a temporary file.
SPOOL_MEMORY = 1024 * 1024


class SpoolRefused(RequestRefused):
    """A chunked body the spool may not take (413, or 503 when space is short)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class SpooledBody(SizedBody):
    """A spooled body; ``close()`` gives its space back."""

    def __init__(self, spool, size: int, release):
        super().__init__(size)
        self.spool = spool
        self._release = release

    def read(self, size: int = CHUNK) -> bytes:
        return self.spool.read(size)

    def close(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            self.spool.close()
            release(self.length)


class Spool:
    """The spool of one process, with its limits (0 means none)."""

    def __init__(self, max_body: int = 0, space: int = 0, min_free: int = 0, directory: str | None = None):
        self.max_body = max_body
        self.space = space
        self.min_free = min_free
        self.directory = directory or None
        self.in_use = 0
        self._lock = threading.Lock()

    def _free_bytes(self) -> int:
        stats = os.statvfs(self.directory or tempfile.gettempdir())
        return stats.f_bavail * stats.f_frsize

    def _reserve(self, amount: int) -> None:
        with self._lock:
            if self.space and self.in_use + amount > self.space:
                raise SpoolRefused("pydio-shim: too many chunked uploads at once; retry later", 503)
            self.in_use += amount

    def _release(self, amount: int) -> None:
        with self._lock:
            self.in_use -= amount

    def take(self, stream) -> SpooledBody | bytes:
        """Read the chunked body *stream* into the spool; ``b""`` when it is empty."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, dir=self.directory)
        size = 0  # bytes taken so far, all of them reserved
        try:
            while chunk := _read(stream):
                if self.max_body and size + len(chunk) > self.max_body:
                    raise SpoolRefused(
                        f"pydio-shim: a chunked body may not exceed {self.max_body} bytes "
                        "(send a Content-Length to stream it)",
                        413,
                    )
                if (
                    self.min_free
                    and size + len(chunk) > SPOOL_MEMORY
                    and self._free_bytes() - len(chunk) < self.min_free
                ):
                    raise SpoolRefused("pydio-shim: not enough free disk space to take this upload; retry later", 503)
                self._reserve(len(chunk))
                size += len(chunk)
                spool.write(chunk)
        except BaseException:
            spool.close()
            self._release(size)
            raise
        if not size:
            spool.close()
            return b""
        spool.seek(0)
        return SpooledBody(spool, size, self._release)


def _read(stream) -> bytes:
    try:
        return stream.read(CHUNK)
    except Exception as exc:  # a malformed or interrupted chunked body
        raise ClientBodyError(f"the chunked request body broke off ({exc.__class__.__name__})") from exc
