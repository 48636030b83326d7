"""The pipeline with every participant on its own TLS broker, linked by shovels, with
signed and sealed partner messages, against the single shared development broker, in
the same run (docs/performance.md, "Three sovereign brokers").

    python -m bench.sovereign                 # 10 000 identities, 2 000 queries each way
    python -m bench.sovereign --replicas      # and again with two intakes and two matchers
    python -m bench.sovereign --cluster       # and again with us on a three-node cluster
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

from bench import hops
from bench.links import LinkWatch
from bench.run import (
    REGISTRY,
    RESULTS,
    SEED,
    broker_pids,
    console,
    pipeline,
    pipeline_run,
    provider_gallery,
    saturate,
)
from biox.broker.definitions import SHOVEL_PREFETCH
from biox.dev.broker import LocalBroker
from biox.dev.cluster import LocalCluster
from biox.dev.sovereign import SovereignBrokers
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import plans
from biox.sim.processes import start_sovereign_workers, unwind_on_sigterm, worker_env
from biox.trust.identity import Role
from biox.wire import addresses

KINDS = {"us": ("intake", "response", "audit"), "mx": ("query", "audit")}
#: ``--replicas``: two intake and two matcher processes, competing consumers of their queues
REPLICATED = {"us": ("intake", "intake", "response", "audit"), "mx": ("query", "query", "audit")}


def sovereign(
    size: int,
    n: int,
    settings: Settings,
    kinds: dict[str, tuple[str, ...]] = KINDS,
    nodes: dict[str, int] | None = None,
) -> dict:
    """``nodes``: a participant's broker as a cluster of that many nodes (default one)."""
    # a directory of its own per layout: this process keeps an engine per database path, and
    # one still open on a database deleted under it would write where no worker reads
    layout = "-".join(f"{c}{len(k)}" for c, k in kinds.items())
    layout += "".join(f"-{c}x{k}" for c, k in sorted((nodes or {}).items()))
    data = RESULTS / f"sovereign-{size}" / layout
    shutil.rmtree(data, ignore_errors=True)
    s = settings.model_copy(update={"data_dir": data, "registry": REGISTRY, "amqp_url": None})
    registry = Registry.load(REGISTRY)
    brokers = SovereignBrokers(registry.codes, s, data / "brokers", nodes=nodes or {}).start()
    workers = None
    try:
        provider_gallery(size, s)
        sizes = {"mx": size, "us": 1}
        base = plans.plan(registry, sizes, 400, SEED, requesters=["us"])
        base = [p for p in base if p.expected_partners]
        env = worker_env(s, registry.codes, BIOX_LOG_LEVEL="WARNING")
        workers = start_sovereign_workers(brokers, kinds, env, data / "logs", timeout=600)
        connect = {
            "tls": brokers.credentials("us", Role.encounters),
            "reply_prefix": "us.replies.sim.",
            "results_of": ["us"],
        }
        url = brokers.url("us")
        pipeline_run(url, sizes, base, 300, 0, **connect)  # warm-up
        pids = {name: p.pid for name, p in workers.processes}
        pids["encounter system (bench)"] = os.getpid()
        pids.update(broker_pids())
        audits = [
            (brokers.url(c), brokers.credentials(c, Role.workers), [addresses.queue(c, "audit")])
            for c in kinds
        ]
        watch = LinkWatch(metrics_urls(brokers), link_queues(registry, kinds)).start()
        saturated = saturate(url, sizes, base, n, pids, audits, **connect)
        throughput, cpu_ms = saturated.throughput, saturated.cpu_ms
        half = pipeline_run(url, sizes, base, max(n // 2, 500), throughput / 2, **connect)
        links = watch.stop()
    finally:
        if workers is not None:
            workers.stop()
        brokers.stop()
    pct = lambda xs, q: round(float(np.percentile(xs, q)) * 1000, 1) if xs else None  # noqa: E731
    return {
        "size": size,
        "queries": n,
        "throughput_qps": round(throughput, 1),
        "half_load_qps": round(throughput / 2, 1),
        "half_load_p50_ms": pct(half.latencies, 50),
        "half_load_p95_ms": pct(half.latencies, 95),
        "half_load_p99_ms": pct(half.latencies, 99),
        "half_load_hops": hops.of_run(s.database_for("us"), half.timed),
        "rounds_throughput_qps": saturated.rounds,
        "missing": saturated.missing + half.missing,
        "wrong": saturated.wrong + half.wrong,
        "cpu_ms_per_query": cpu_ms,
        "audit_drain_s": saturated.audit_drain_s,
        "links": links,
    }


def metrics_urls(brokers: SovereignBrokers) -> dict[str, str]:
    """Each broker's Prometheus endpoint, every node of a cluster by its own name."""
    urls = {}
    for code, broker in brokers.brokers.items():
        nodes = broker.nodes if isinstance(broker, LocalCluster) else [broker]
        for i, node in enumerate(nodes):
            assert node.state is not None
            urls[code if len(nodes) == 1 else f"{code}.n{i}"] = node.state.metrics_url
    return urls


def link_queues(registry: Registry, kinds: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The queues the shovels consume between the participants this run starts."""
    codes = [c for c in registry.codes if c in kinds]
    return tuple(
        addresses.link_queue(c, p) for c in codes for p in registry.linked(c) if p in codes
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument(
        "--replicas",
        action="store_true",
        help="then the sovereign layout again with two intake and two matcher processes",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="then the sovereign layout again with us's broker a three-node cluster",
    )
    args = parser.parse_args()
    unwind_on_sigterm()
    settings = Settings()
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M")}
    console.print(f"[bold]single shared broker[/] {args.size:,} identities")
    broker = LocalBroker().start()
    try:
        results["single"] = pipeline(args.size, args.queries, settings, broker.url)
    finally:
        broker.stop()
    console.print(results["single"])
    console.print(f"[bold]three sovereign brokers[/] {args.size:,} identities")
    results["sovereign"] = sovereign(args.size, args.queries, settings)
    console.print(results["sovereign"])
    if args.replicas:
        console.print("[bold]three sovereign brokers, two intakes and two matchers[/]")
        results["replicated"] = sovereign(args.size, args.queries, settings, REPLICATED)
        console.print(results["replicated"])
    if args.cluster:
        console.print("[bold]three sovereign brokers, us on a three-node cluster[/]")
        results["cluster"] = sovereign(args.size, args.queries, settings, nodes={"us": 3})
        console.print(results["cluster"])
    for layout in ("sovereign", "replicated", "cluster"):  # the levers issue 23 names
        for name, seen in (results.get(layout) or {}).get("links", {}).items():
            console.print(
                f"{layout}, {name}'s broker while measured: {seen['connections_opened']} "
                f"connections opened (TLS handshakes), its shovels held at most "
                f"{seen['link_unacked_max']:g} unacknowledged of a prefetch of "
                f"{SHOVEL_PREFETCH}, "
                f"{seen['link_ready_max']:g} waiting ({seen['scrapes']} scrapes)"
            )
    for layout in ("single", "sovereign"):  # where the layout's extra latency is spent
        spent = results[layout].get("half_load_hops") or {}
        console.print(
            f"{layout}, half load, ms (median encounter / mean of the slowest 1 %): "
            + ", ".join(
                f"{h} {spent['p50_ms'][h]} / {spent['slowest_mean_ms'][h]}"
                for h in spent.get("p50_ms", {})
            )
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sovereign-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
