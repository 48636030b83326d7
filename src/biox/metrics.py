"""Prometheus metrics of one worker process (docs/operations.md, "Metrics").

Every worker counts what the consume loop sees (messages in by kind and outcome, out by
kind, retries and dead letters by reason, batch sizes, handler and end-to-end latency);
the matcher adds its search time and gallery size, the review worker its backlog. Each
worker serves them on its own port (``BIOX_METRICS_PORT`` + its place under ``biox
serve``); nothing here ever carries a template, a name or an id, only kinds, outcomes and
reasons, so a scrape reveals no personal data. Queue depths come from the broker's own
Prometheus plugin.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
END_TO_END = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """One worker's metrics, in a registry of its own (a test can make several)."""

    def __init__(self, participant: str, queue: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"participant": participant, "queue": queue}
        r = self.registry

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(name, doc, [*labels, *extra], registry=r)

        self._in = counter(
            "biox_messages_in", "Messages handled, by kind and outcome", "kind", "outcome"
        )
        self._out = counter("biox_messages_out", "Messages published by handlers", "kind")
        self._failed = counter(
            "biox_failures", "Retries and dead letters, by reason", "route", "reason"
        )
        self._dup = counter("biox_duplicates", "Deliveries absorbed by idempotency")
        self._handler = Histogram(
            "biox_handler_seconds",
            "Handler time per sub-batch of one kind",
            [*labels, "kind"],
            buckets=LATENCY,
            registry=r,
        )
        self._e2e = Histogram(
            "biox_end_to_end_seconds",
            "From the sender's timestamp to handled",
            [*labels, "kind"],
            buckets=END_TO_END,
            registry=r,
        )
        self._batch = Histogram(
            "biox_batch_size", "Deliveries per batch", list(labels), buckets=BATCH, registry=r
        )
        self._search = Histogram(
            "biox_matcher_search_seconds",
            "Gallery search time per batch of probes",
            list(labels),
            buckets=LATENCY,
            registry=r,
        )
        self._gallery = Gauge(
            "biox_gallery_identities",
            "Identities in the gallery the matcher searches",
            list(labels),
            registry=r,
        )
        self.labels = labels
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _at(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """The child of ``metric`` for this worker and these values, made once: ``labels()``
        checks and builds its key on every call (4-5 us), which made counting a message
        cost 11 us, 4 % of an audit worker's CPU (docs/performance.md). The values are the
        ones the registry keeps a child for anyway, so this holds nothing more."""
        child = self._children.get((metric, values))
        if child is None:
            child = metric.labels(*self.labels.values(), *values)
            self._children[(metric, values)] = child
        return child

    # --- what the consume loop reports ---------------------------------------------------

    def handled(self, kind: str, outcome: str, sent_at: datetime | None, out: list[str]) -> None:
        self._at(self._in, kind, outcome.split(":")[0]).inc()
        for k in out:
            self._at(self._out, k).inc()
        if sent_at is not None:
            age = time.time() - sent_at.timestamp()
            self._at(self._e2e, kind).observe(max(0.0, age))

    def failed(self, route: str, reason: str) -> None:
        self._at(self._failed, route, reason).inc()

    def duplicate(self) -> None:
        self._at(self._dup).inc()

    def batch(self, size: int) -> None:
        self._at(self._batch).observe(size)

    def handler(self, kind: str, seconds: float) -> None:
        self._at(self._handler, kind).observe(seconds)

    # --- what the matcher reports ----------------------------------------------------------

    def searched(self, seconds: float, gallery_size: int) -> None:
        self._at(self._search).observe(seconds)
        self._at(self._gallery).set(gallery_size)

    def collect_with(self, name: str, doc: str, read: Callable[[], dict[str, float]]) -> None:
        """A gauge family read when scraped (the review backlog: a query at scrape time,
        not a number that goes stale between batches)."""
        self.registry.register(_OnScrape(name, doc, read, self.labels))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)


class _OnScrape(Collector):
    def __init__(
        self, name: str, doc: str, read: Callable[[], dict[str, float]], labels: dict[str, str]
    ) -> None:
        self.name, self.doc, self.read, self.labels = name, doc, read, labels

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            values = self.read()
        except Exception:  # a scrape never takes a worker down; the gap shows on the chart
            return
        for suffix, value in values.items():
            family = GaugeMetricFamily(f"{self.name}_{suffix}", self.doc, labels=list(self.labels))
            family.add_metric(list(self.labels.values()), value)
            yield family
