"""The pipeline with every participant on its own TLS broker, linked by shovels, with
signed and sealed partner messages, against the single shared development broker, in
the same run, the two taking turns round by round (docs/performance.md, "Three sovereign
brokers").

    python -m bench.sovereign                 # 10 000 identities, 2 000 queries each way
    python -m bench.sovereign --replicas      # and again with two intakes and two matchers
    python -m bench.sovereign --cluster       # and again with us on a three-node cluster
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import hops
from bench import run as bench_run
from bench.links import LinkWatch
from bench.run import (
    REGISTRY,
    RESULTS,
    SEED,
    AuditQueues,
    Run,
    Saturated,
    console,
    pipeline_run,
    provider_gallery,
    saturated_round,
)
from biox.broker.definitions import SHOVEL_PREFETCH
from biox.broker.topology import declare
from biox.dev.broker import LocalBroker
from biox.dev.cluster import LocalCluster
from biox.dev.sovereign import SovereignBrokers
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import plans
from biox.sim.processes import (
    dev_env,
    start_sovereign_workers,
    start_workers,
    unwind_on_sigterm,
    wait_for_consumers,
    worker_env,
)
from biox.trust.identity import Role
from biox.wire import addresses

KINDS = {"us": ("intake", "response", "audit"), "mx": ("query", "audit")}
#: ``--replicas``: two intake and two matcher processes, competing consumers of their queues
REPLICATED = {"us": ("intake", "intake", "response", "audit"), "mx": ("query", "query", "audit")}


@dataclass
class Layout:
    """One layout up and warmed: what its rounds need, and what they said."""

    name: str
    url: str
    settings: Settings  # its own data directory (the hops read its databases)
    pids: dict[str, int]  # its workers, its brokers and the bench: whose CPU a query counts
    audits: list[AuditQueues]
    connect: dict[str, Any] = field(default_factory=dict)  # how the encounter system logs in
    watch: LinkWatch | None = None
    rounds: list[Saturated] = field(default_factory=list)
    halves: list[Run] = field(default_factory=list)


@functools.cache
def workload(size: int) -> tuple[dict[str, int], list[plans.Planned]]:
    """The planned encounters every layout of a run replays (``plans.repeat`` copies them):
    planned once, for the warm-ups and the rounds alike."""
    registry = Registry.load(REGISTRY)
    sizes = {"mx": size, "us": 1}
    base = plans.plan(registry, sizes, 400, SEED, requesters=["us"])
    return sizes, [p for p in base if p.expected_partners]


def layout_settings(settings: Settings, size: int, name: str) -> Settings:
    """A directory of its own per layout: this process keeps an engine per database path,
    and one still open on a database deleted under it would write where no worker reads."""
    data = RESULTS / f"sovereign-{size}" / name
    shutil.rmtree(data, ignore_errors=True)
    return settings.model_copy(update={"data_dir": data, "registry": REGISTRY, "amqp_url": None})


@contextlib.contextmanager
def shared(size: int, settings: Settings) -> Iterator[Layout]:
    """The one shared development broker, plain AMQP, with the same workers."""
    s = layout_settings(settings, size, "shared")
    registry = Registry.load(REGISTRY)
    broker = LocalBroker().start()
    workers = None
    try:
        declare(broker.url, registry.codes, s)
        provider_gallery(size, s)
        env = dev_env(broker.url, s, registry.codes, BIOX_LOG_LEVEL="WARNING")
        workers = start_workers(["us"], env, s.data_dir / "logs", KINDS["us"])
        workers.processes += start_workers(["mx"], env, s.data_dir / "logs", KINDS["mx"]).processes
        audit = [addresses.queue(c, "audit") for c in KINDS]
        queues = ["us.intake", "us.response", "mx.query", *audit]
        wait_for_consumers(broker.url, queues, workers, timeout=600)
        sizes, base = workload(size)
        pipeline_run(broker.url, sizes, base, 300, 0)  # warm-up
        pids = {name: p.pid for name, p in workers.processes}
        pids["encounter system (bench)"] = os.getpid()
        pids["broker (beam.smp)"] = beam_of(broker)
        yield Layout("single", broker.url, s, pids, [(broker.url, None, audit)])
    finally:
        if workers is not None:
            workers.stop()
        broker.stop()


@contextlib.contextmanager
def sovereign(
    size: int,
    settings: Settings,
    name: str = "sovereign",
    kinds: dict[str, tuple[str, ...]] = KINDS,
    nodes: dict[str, int] | None = None,
) -> Iterator[Layout]:
    """Each participant on its own TLS broker, linked by shovels. ``nodes``: a participant's
    broker as a cluster of that many nodes (default one)."""
    layout = "-".join(f"{c}{len(k)}" for c, k in kinds.items())
    layout += "".join(f"-{c}x{k}" for c, k in sorted((nodes or {}).items()))
    s = layout_settings(settings, size, layout)
    registry = Registry.load(REGISTRY)
    brokers = SovereignBrokers(registry.codes, s, s.data_dir / "brokers", nodes=nodes or {})
    brokers.start()
    workers = None
    try:
        provider_gallery(size, s)
        env = worker_env(s, registry.codes, BIOX_LOG_LEVEL="WARNING")
        workers = start_sovereign_workers(brokers, kinds, env, s.data_dir / "logs", timeout=600)
        connect = {
            "tls": brokers.credentials("us", Role.encounters),
            "reply_prefix": "us.replies.sim.",
            "results_of": ["us"],
        }
        url = brokers.url("us")
        sizes, base = workload(size)
        pipeline_run(url, sizes, base, 300, 0, **connect)  # warm-up
        pids = {name: p.pid for name, p in workers.processes}
        pids["encounter system (bench)"] = os.getpid()
        running = nodes_of(brokers)
        for broker, node in running.items():
            pids[f"{broker} broker (beam.smp)"] = beam_of(node)
        audits = [
            (brokers.url(c), brokers.credentials(c, Role.workers), [addresses.queue(c, "audit")])
            for c in kinds
        ]
        watch = LinkWatch(
            {b: node.state.metrics_url for b, node in running.items() if node.state},
            link_queues(registry, kinds),
        )
        yield Layout(name, url, s, pids, audits, connect, watch)
    finally:
        if workers is not None:
            workers.stop()
        brokers.stop()


def in_turn(layouts: list[Layout], size: int, n: int) -> dict[str, dict]:
    """Each layout's saturated rounds and half-load run, the layouts taking turns.

    On this machine slow spells come and go and slow every process alike (docs/
    performance.md, "The layout's levers"). Measured one after the other, a minute apart,
    the shared broker and the layout met different spells. Taking turns round by round
    (A B, B A, A B, then the half-load run in two halves, B A, A B) gives both the same
    minutes and neither always the first turn. The other layout's processes sit idle
    meanwhile and are not counted."""
    sizes, base = workload(size)
    for lay in layouts:
        if lay.watch is not None:
            lay.watch.start()
    for i in range(bench_run.ROUNDS):
        for lay in layouts if i % 2 == 0 else layouts[::-1]:
            lay.rounds.append(
                saturated_round(lay.url, sizes, base, n, lay.pids, lay.audits, **lay.connect)
            )
    half = max(n // 2, 500)
    for i, part in enumerate((half // 2, half - half // 2)):
        for lay in layouts[::-1] if i % 2 == 0 else layouts:
            rate = Saturated.median_of(lay.rounds).throughput / 2
            lay.halves.append(pipeline_run(lay.url, sizes, base, part, rate, **lay.connect))
    return {lay.name: report(lay, size, n) for lay in layouts}


def report(lay: Layout, size: int, n: int) -> dict:
    saturated = Saturated.median_of(lay.rounds)
    latencies = [x for h in lay.halves for x in h.latencies]
    timed = {k: v for h in lay.halves for k, v in h.timed.items()}
    pct = lambda q: round(float(np.percentile(latencies, q)) * 1000, 1) if latencies else None  # noqa: E731
    return {
        "size": size,
        "queries": n,
        "throughput_qps": round(saturated.throughput, 1),
        "half_load_qps": round(saturated.throughput / 2, 1),
        "half_load_p50_ms": pct(50),
        "half_load_p95_ms": pct(95),
        "half_load_p99_ms": pct(99),
        "half_load_hops": hops.of_run(lay.settings.database_for("us"), timed),
        "rounds_throughput_qps": saturated.rounds,
        "missing": saturated.missing + sum(h.missing for h in lay.halves),
        "wrong": saturated.wrong + sum(h.wrong for h in lay.halves),
        "cpu_ms_per_query": saturated.cpu_ms,
        "audit_drain_s": saturated.audit_drain_s,
        **({"links": lay.watch.stop()} if lay.watch is not None else {}),
    }


def nodes_of(brokers: SovereignBrokers) -> dict[str, LocalBroker]:
    """Each participant's broker, every node of a cluster by its own name (us, us.n1...)."""
    found = {}
    for code, broker in brokers.brokers.items():
        nodes = broker.nodes if isinstance(broker, LocalCluster) else [broker]
        for i, node in enumerate(nodes):
            found[code if len(nodes) == 1 else f"{code}.n{i}"] = node
    return found


def beam_of(broker: LocalBroker) -> int:
    """The Erlang VM running ``broker``'s node: the beam.smp descended from the process the
    launcher started. Both layouts are up together, so ``broker_pids`` (every beam.smp on
    the machine) cannot tell whose CPU is whose."""
    assert broker.state is not None
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "beam.smp":
                pid = int(proc.name)
                while pid > 1:
                    if pid == broker.state.pid:
                        return int(proc.name)
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    pid = int(stat.rsplit(")", 1)[1].split()[1])  # its parent
        except OSError:
            continue
    raise LookupError(f"no Erlang VM runs {broker.state.node}")


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
    console.print(
        f"[bold]the shared broker and three sovereign brokers, in turn[/] {args.size:,} identities"
    )
    with shared(args.size, settings) as single, sovereign(args.size, settings) as sov:
        results.update(in_turn([single, sov], args.size, args.queries))
    console.print(results["single"])
    console.print(results["sovereign"])
    if args.replicas:
        console.print("[bold]three sovereign brokers, two intakes and two matchers[/]")
        with sovereign(args.size, settings, "replicated", REPLICATED) as replicated:
            results.update(in_turn([replicated], args.size, args.queries))
        console.print(results["replicated"])
    if args.cluster:
        console.print("[bold]three sovereign brokers, us on a three-node cluster[/]")
        with sovereign(args.size, settings, "cluster", nodes={"us": 3}) as cluster:
            results.update(in_turn([cluster], args.size, args.queries))
        console.print(results["cluster"])
    for layout in ("sovereign", "replicated", "cluster"):  # the levers issue 23 names
        for name, seen in (results.get(layout) or {}).get("links", {}).items():
            console.print(
                f"{layout}, {name}'s broker while measured: {seen['connections_opened']} "
                f"connections opened (TLS handshakes), its shovels held at most "
                f"{seen['link_unacked_max']:g} unacknowledged of a prefetch of "
                f"{SHOVEL_PREFETCH}, "
                f"{seen['link_ready_max']:g} waiting ({seen['scrapes']} scrapes"
                + (f", {seen['unanswered']} unanswered)" if seen["unanswered"] else ")")
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
