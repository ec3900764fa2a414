"""Storage observation (``OBSERVE_STORAGE_CHANGES``) kept going while polls no longer reach PHP.

A workspace with that option has its storage rescanned by the legacy server
during a ``changes`` call, when its last rescan is older than
``OBSERVE_STORAGE_EVERY`` minutes; files put straight into the storage reach
the feed that way.  The shim answers the polls itself, so it makes that call
for them: once per interval and per key (the workspace, or the user for a
scoped one, as Pydio keeps its timestamp), in the background, with the
credentials of a client it has just served.  Those live in this process's
memory only.  An answer other than "yes" drops the client's decision: the
next poll asks the legacy server again.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from .authz import is_allowed
from .upstream import UpstreamError

log = logging.getLogger(__name__)

#: PHP compares whole seconds (``time() - last > minutes * 60``): one more second so the call is never early.
PHP_CLOCK_MARGIN = 1.0


class StorageObserver:
    """Sends the rescanning ``changes`` calls; thread-safe, one worker thread per process."""

    def __init__(self, send_probe, clock, metrics=None, max_keys: int = 10000):
        self.send_probe = send_probe
        self.clock = clock
        self.metrics = metrics
        self.max_keys = max_keys
        self._last: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shim-observe")

    @staticmethod
    def key(workspace, login: str) -> str:
        return workspace.id if not workspace.scope else "user:" + login

    def called(self, key: str) -> None:
        """The legacy server just ran a ``changes`` call for *key* (an authorization probe)."""
        with self._lock:
            self._remember(key, self.clock())

    def served(self, key: str, every: float, ws_id: str, principal, client_headers, on_refused) -> bool:
        """A poll for *key* was answered by the shim: call the legacy server if the interval has passed.

        *client_headers()* gives the headers saying who the client is (read
        now, in the request's thread); *on_refused()* runs when the legacy
        server does not answer "yes".  Returns whether a call was started.
        """
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if key in self._pending or (last is not None and now - last <= every + PHP_CLOCK_MARGIN):
                return False
            self._pending.add(key)
            self._remember(key, now)
        self._executor.submit(self._call, key, ws_id, principal, client_headers(), on_refused)
        return True

    def _call(self, key, ws_id, principal, headers, on_refused) -> None:
        answer = "failed"
        try:
            status, _headers, body = self.send_probe(ws_id, principal, lambda: list(headers))
            answer = "allowed" if is_allowed(status, body) else "other"
            if answer != "allowed":
                log.info("storage observation of workspace %r answered %s: the decision is asked again", ws_id, status)
                on_refused()
        except UpstreamError as exc:
            log.warning("storage observation of workspace %r failed: %s", ws_id, exc)
        except Exception:  # a worker thread must not die silently
            log.exception("storage observation of workspace %r failed", ws_id)
        finally:
            with self._lock:
                self._pending.discard(key)
                # The legacy server writes its timestamp when it answers: count from there.
                self._remember(key, self.clock())
            if self.metrics is not None:
                self.metrics.storage_observations.labels(answer=answer).inc()

    def _remember(self, key: str, when: float) -> None:
        self._last[key] = when
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
