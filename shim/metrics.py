"""Prometheus metrics of the shim (``/_shim/metrics``).

Under gunicorn the workers of one server share their values through
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by
:mod:`shim.gunicorn_conf`): whichever worker answers a scrape reports the sums
over all of them, so a counter never jumps back when the next scrape reaches
the other worker.  Without that variable (tests, other servers) each process
reports its own.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.wrappers import Response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The shim's counters and histograms, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, str], object] = {}
        counter, histogram = self._counter, self._histogram
        self.feed_requests = counter(
            "shim_feed_requests_total", "Feed requests answered by the shim, by status", "status"
        )
        self.feed_latency = histogram("shim_feed_duration_seconds", "Time to send a whole feed answer")
        self.feed_rows = counter("shim_feed_rows_total", "Change rows sent by the shim")
        self.feed_rows_skipped = counter(
            "shim_feed_rows_skipped_total", "Change rows left out of a feed because their text is not valid UTF-8"
        )
        self.feed_degraded = counter(
            "shim_feed_degraded_total", "Feed requests forwarded because the database was out of reach"
        )
        self.feed_from_memory = counter(
            "shim_feed_from_memory_total", "Feed polls with nothing new, answered from memory"
        )
        self.watermark_refreshes = counter(
            "shim_feed_watermark_refreshes_total", "Reads of the change table's newest rows (per process)"
        )
        self.proxy_requests = counter(
            "shim_proxy_requests_total", "Requests forwarded to the legacy server, by status", "status"
        )
        self.proxy_latency = histogram("shim_proxy_duration_seconds", "Time to forward a whole request")
        self.proxy_bytes = counter("shim_proxy_response_bytes_total", "Response body bytes relayed from upstream")
        self.upstream_errors = counter("shim_upstream_errors_total", "Upstream failures, by kind", "kind")
        self.auth_cache = counter(
            "shim_auth_cache_total",
            "Authorization decisions: hit, revalidated (rows checked, unchanged), miss (asked), shared, busy",
            "result",
        )
        self.auth_probes = counter(
            "shim_auth_probes_total", "Authorization requests to the legacy server, by answer", "answer"
        )
        self.auth_dropped = counter(
            "shim_auth_dropped_total",
            "Decisions dropped, by reason: the part of their rows that changed, or their age",
            "reason",
        )
        self.auth_table_checks = counter(
            "shim_auth_table_checks_total", "Checks whether an authorization table changed"
        )
        self.auth_tables_changed = counter(
            "shim_auth_tables_changed_total", "Authorization tables found changed, by table", "table"
        )
        self.storage_observations = counter(
            "shim_storage_observations_total",
            "changes calls sent on behalf of clients so the legacy server rescans observed storage, by answer",
            "answer",
        )

    def _counter(self, name: str, documentation: str, label: str | None = None) -> Counter:
        return Counter(name, documentation, [label] if label else [], registry=self.registry)

    def _histogram(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, buckets=LATENCY_BUCKETS, registry=self.registry)

    def child(self, metric, value: str):
        """``metric.labels(value)``, remembered.

        ``labels()`` validates, takes a lock and builds a tuple on every call:
        microseconds that count on a feed poll answered from memory.  The values
        used on that path are few (statuses, cache results).
        """
        key = (id(metric), value)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(value)
        return found

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def response(self) -> Response:
        """The metrics as a Werkzeug response (``/_shim/metrics``)."""
        return Response(self.render(), status=200, content_type=self.content_type)
