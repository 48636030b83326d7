"""What the sovereign layout's links do under load, read from each broker's own Prometheus
endpoint while `bench.sovereign` measures (docs/performance.md, "The layout's levers").

Issue 23 asks for the shovels' prefetch and the brokers' TLS session reuse to be tuned.
Each only matters if the run reaches it: a prefetch if a shovel ever holds that many
messages unacknowledged, session reuse if connections are opened while queries flow (a
resumed session saves a handshake, and a connection that stays open makes none). So the
bench records both, from counters RabbitMQ keeps anyway, instead of asserting either.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from dataclasses import dataclass, field

_QUEUE = re.compile(r'^rabbitmq_queue_messages_(ready|unacked)\{[^}]*queue="([^"]+)"[^}]*\} (\S+)$')
_OPENED = "rabbitmq_connections_opened_total"


def read(text: str, links: tuple[str, ...]) -> dict[str, float]:
    """One scrape: connections opened so far, and each link queue's ready and unacked.

    ``links``: the queue names the shovels consume (``us.link.mx``...); other queues'
    lines are skipped, and a counter RabbitMQ splits by label is summed."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(_OPENED):
            out[_OPENED] = out.get(_OPENED, 0.0) + float(line.rsplit(" ", 1)[1])
            continue
        m = _QUEUE.match(line)
        if m and m.group(2) in links:
            out[f"{m.group(1)}:{m.group(2)}"] = float(m.group(3))
    return out


@dataclass
class LinkWatch:
    """Scrapes each broker every ``every_s`` between ``start`` and ``stop``.

    Every two seconds by default: a scrape with per-queue metrics costs the broker a few
    milliseconds, a fraction of a percent of a core at that rate."""

    urls: dict[str, str]  # a broker's name (us, us.n1...) → its metrics URL
    links: tuple[str, ...]
    every_s: float = 2.0
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # scrapes a broker did not answer
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LinkWatch:
        self._sample()  # the counters before the first query
        self._thread = threading.Thread(target=self._loop, name="link-watch", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        for name, url in self.urls.items():
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    text = reply.read().decode()
            except OSError:
                # a node down in a fault run: its gap is reported, not hidden
                self.failed[name] = self.failed.get(name, 0) + 1
                continue
            self.samples.setdefault(name, []).append(read(text, self.links))

    def stop(self) -> dict[str, dict[str, float | int]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()  # and after the last answer
        return summary(self.samples, self.failed)


def summary(
    samples: dict[str, list[dict[str, float]]], failed: dict[str, int] | None = None
) -> dict[str, dict[str, float | int]]:
    """Per broker: connections opened over the watch (so TLS handshakes made while
    queries flowed), and the most any link queue held unacknowledged (in a shovel's hands)
    and ready (waiting for it), over every scrape; and the scrapes it did not answer."""
    failed = failed or {}
    out: dict[str, dict[str, float | int]] = {}
    for name in [*samples, *(b for b in failed if b not in samples)]:
        rows = samples.get(name, [])
        opened = [r[_OPENED] for r in rows if _OPENED in r]
        out[name] = {
            "scrapes": len(rows),
            "unanswered": failed.get(name, 0),
            "connections_opened": int(opened[-1] - opened[0]) if opened else 0,
            "link_unacked_max": max(
                (v for r in rows for k, v in r.items() if k.startswith("unacked:")), default=0
            ),
            "link_ready_max": max(
                (v for r in rows for k, v in r.items() if k.startswith("ready:")), default=0
            ),
        }
    return out
