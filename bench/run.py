"""`make bench`: the matcher alone, the raw broker round trip, and the whole pipeline.

Writes bench/results/<profile>.json and the tables in docs/performance.md between the
bench markers. `--full` adds the 1 M-identity profile (several minutes, ~10 GB RAM).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
from rich.console import Console
from rich.progress import Progress

from bench import hops, relay
from biox.broker.connection import parameters
from biox.broker.link import Link
from biox.broker.publisher import Publisher
from biox.broker.topology import declare
from biox.gallery.gallery import Gallery, Probe
from biox.gallery.index import VectorIndex
from biox.registry import Registry
from biox.runtime import freeze_start_up
from biox.settings import Settings
from biox.sim import encounters, galleries, plans, synth
from biox.sim.processes import (
    broker_url,
    dev_env,
    start_workers,
    unwind_on_sigterm,
    wait_for_consumers,
)
from biox.trust.tls import ClientTLS
from biox.wire import addresses

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REGISTRY = ROOT / "bench" / "participants.toml"
DOC = ROOT / "docs" / "performance.md"
SEED = 77
console = Console()


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now, in MB (``RssAnon``: its own, without the
    pages of memory-mapped files, which are the page cache's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the matcher alone ----------------------------------------------------------------------


def build_gallery(
    size: int, kind: str, nprobe: int, spill: Path | None = None, per_list: int = 60
) -> tuple[Gallery, float, float]:
    """Face 512-d + two fingers 192-d per identity (the issue's profile), no iris.
    ``spill``: the full templates to disk as they come (``make bench-huge``);
    ``per_list``: identities per IVF list in the training sample."""
    with all_threads():
        return _build_gallery(size, kind, nprobe, spill, per_list)


@contextlib.contextmanager
def all_threads() -> Iterator[None]:
    """Building (k-means, assignment) uses every core; searching uses what workers use."""
    searching = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(searching)


def _build_gallery(
    size: int, kind: str, nprobe: int, spill: Path | None, per_list: int
) -> tuple[Gallery, float, float]:
    before = rss_mb()
    started = time.perf_counter()
    gallery = Gallery(kind, VectorIndex.nlist_for(size), nprobe, spill)  # type: ignore[arg-type]
    batches = galleries.enrolments(SEED, "mx", size, tenprint=False, iris=False)
    pending = []
    if kind == "ivf":
        for b in batches:
            pending.append(b)
            if sum(len(x.persons) for x in pending) >= per_list * VectorIndex.nlist_for(size):
                break
        gallery.train(
            np.concatenate([b.face for b in pending]),
            np.concatenate([b.fingers[2][1] for b in pending]),
        )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"gallery {size:,} ({kind})", total=size)
        for b in itertools.chain(pending, batches):  # never all enrolments in memory at once
            galleries.add_to(gallery, b)
            progress.advance(task, len(b.persons))
    gc.collect()
    return gallery, time.perf_counter() - started, rss_mb() - before


def probes(size: int, n: int) -> tuple[list[int], list[Probe]]:
    rng = np.random.default_rng([SEED, size])
    people = [synth.known_to("mx", size, rng) for _ in range(n)]
    quality = rng.integers(45, 96, n)
    out = []
    for p, q in zip(people, quality, strict=True):
        bio = synth.capture(SEED, p, context=9, quality=int(q))
        bio = bio.model_copy(
            update={
                "irises": [],
                "fingerprints": [f for f in bio.fingerprints if f.position in synth.TWO_FINGERS],
            }
        )
        out.append(Probe.from_biometrics(bio))
    return people, out


def matcher(size: int, n_probes: int, settings: Settings) -> dict:
    kind = "flat" if size <= settings.exact_max else "ivf"
    gallery, build_s, mem_mb = build_gallery(size, kind, settings.ivf_nprobe)
    people, batch = probes(size, n_probes)
    gallery.search(batch[:64])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    hits = []
    for i in range(0, len(batch), 64):
        hits.extend(gallery.search(batch[i : i + 64], k=settings.candidates, top=1))
    batched_s = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu) * 1000 / len(batch)
    started = time.perf_counter()
    for p in batch[:200]:
        gallery.search([p], k=settings.candidates, top=1)
    single_s = (time.perf_counter() - started) / min(200, len(batch))
    top1 = [h[0].record_id if h else -1 for h in hits]
    snap = ROOT / "var" / "bench-snapshot"
    shutil.rmtree(snap, ignore_errors=True)
    gallery.save(snap)
    start_s, snapshot_mb = fresh_start(snap, batch[0], settings)
    refresh_s, refresh_mb = refresh_cost(snap, batch, settings)
    shutil.rmtree(snap, ignore_errors=True)
    result = {
        "size": size,
        "index": kind,
        "nprobe": gallery.face.nprobe if kind == "ivf" else None,
        "build_s": round(build_s, 1),
        "memory_mb": round(mem_mb),
        "qps_batched": round(len(batch) / batched_s, 1),
        "cpu_ms_per_query": round(cpu_ms, 2),
        "qps_single": round(1 / single_s, 1),
        "snapshot_mb": snapshot_mb,
        "start_s": start_s,
        "refresh_s": refresh_s,
        "refresh_mb": refresh_mb,
        "genuine_top1": round(
            float(np.mean([a == b for a, b in zip(top1, people, strict=True)])), 4
        ),
        "recall_at_1": 1.0,
    }
    if kind == "ivf":  # recall@1 of the approximate search against exact search of the same data
        del gallery
        gc.collect()
        exact, _, _ = build_gallery(size, "flat", 0)
        ref = []
        for i in range(0, len(batch), 64):
            ref.extend(
                h[0].record_id
                for h in exact.search(batch[i : i + 64], k=settings.candidates, top=1)
            )
        result["recall_at_1"] = round(
            float(np.mean([a == b for a, b in zip(top1, ref, strict=True)])), 4
        )
        del exact
    gc.collect()
    return result


def drop_page_cache() -> bool:
    """The page cache's clean pages dropped, so that what follows reads them from disk;
    False where the OS does not let us (not root). Pages written and not yet on disk stay:
    a caller that wants them gone syncs first."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def fresh_start(directory: Path, probe: Probe, settings: Settings) -> tuple[float, int]:
    """Seconds from nothing to a fresh matcher's first answer from the snapshot in
    ``directory`` (the page cache dropped where the OS lets us, so the templates come from
    disk), and the snapshot's size."""
    files = [f for f in directory.iterdir() if f.is_file()]
    size_mb = round(sum(f.stat().st_size for f in files) / 2**20)
    os.sync()  # a snapshot just written leaves the page cache only once it is on disk
    drop_page_cache()  # root only: otherwise the cache stays warm
    started = time.perf_counter()
    loaded = Gallery.load(directory, settings.ivf_nprobe)
    loaded.search([probe], k=settings.candidates, top=1)
    took = time.perf_counter() - started
    del loaded
    return round(took, 2), size_mb


def refreshed(m: dict) -> str:
    """The refresh column: seconds, and MB written where the OS counts them."""
    if "refresh_s" not in m:
        return "-"
    return f"{m['refresh_s']} ({m['refresh_mb'] if m['refresh_mb'] is not None else '?'})"


REFRESH_CHANGES = 200  # identities a measured refresh enrols, and as many it removes


def written_bytes() -> int | None:
    """Bytes this process has sent to storage so far (Linux's ``/proc/self/io``)."""
    try:
        io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    except OSError:
        return None
    return int(io["write_bytes"])


def refresh_cost(
    directory: Path, batch: list[Probe], settings: Settings
) -> tuple[float, int | None]:
    """Seconds and MB written to bring the snapshot in ``directory`` up to date after
    ``REFRESH_CHANGES`` identities were enrolled (as query data is: hashed ids) and as many
    deleted, as the purge schedule's refresh does (``gallery.snapshot.refresh``): loaded,
    changed, saved where it was loaded, synced. The load is not counted; the save is."""
    gallery = Gallery.load(directory, settings.ivf_nprobe)
    new = batch[:REFRESH_CHANGES]
    gallery.enroll([(1 << 40) + i for i in range(len(new))], new)
    gone = gallery.face.present.held()[:REFRESH_CHANGES]
    gallery.remove(gone.tolist())
    before, started = written_bytes(), time.perf_counter()
    gallery.save(directory)
    took, after = time.perf_counter() - started, written_bytes()
    del gallery
    mb = None if before is None or after is None else round((after - before) / 2**20)
    return round(took, 2), mb


# --- the raw round trip ------------------------------------------------------------------------


def raw_round_trip(url: str, body_size: int, n: int) -> dict:
    """Publish → consume → reply over the same exchanges and quorum queues, with no work."""
    stop = threading.Event()

    def echo() -> None:
        # a partner's messages wait in its own arrival queue (docs/architecture.md, "Topology")
        queries = addresses.arrival_queue("mx", "query", "us")
        with Link(url, name="bench-echo", consume=queries, prefetch=256) as link:
            pub = Publisher(link)
            while not stop.is_set():
                batch = []
                try:
                    batch.append(link.deliveries.get(timeout=0.2))
                    while len(batch) < 64:
                        batch.append(link.deliveries.get_nowait())
                except Exception:
                    pass
                if not batch:
                    continue
                pub.send_raw([("biox.mx.out", "us.response", d.body, d.properties) for d in batch])
                for d in batch:
                    link.ack(d)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    body = os.urandom(body_size)
    import pika

    responses = addresses.arrival_queue("us", "response", "mx")
    with Link(url, name="bench-client", consume=responses, prefetch=1000) as link:
        time.sleep(1.0)
        pub = Publisher(link)
        started = time.perf_counter()
        sent = 0

        def sender() -> None:
            nonlocal sent
            for _ in range(0, n, 100):
                props = [
                    pika.BasicProperties(
                        message_id=str(uuid.uuid4()), delivery_mode=2, user_id=link.user
                    )
                    for _ in range(100)
                ]
                pub.send_raw([("biox.us.out", "mx.query", body, p) for p in props])
                sent += 100

        t = threading.Thread(target=sender)
        t.start()
        got = 0
        while got < n:
            d = link.deliveries.get(timeout=60)
            link.ack(d)
            got += 1
        elapsed = time.perf_counter() - started
        t.join()
    stop.set()
    thread.join()
    # its copies went to the audit queues bound to both exchanges: no one's queries, not
    # for the audit trails, and no work for the runs measured after it
    purge(url, [addresses.queue(code, "audit") for code in ("us", "mx")])
    return {"messages": n, "body_bytes": body_size, "round_trips_per_s": round(n / elapsed, 1)}


# --- the pipeline ------------------------------------------------------------------------------


@dataclass
class Run:
    sent: int
    seconds: float
    latencies: list[float]
    missing: int
    wrong: int
    timed: dict[str, hops.Timed]  # each encounter answered: its arrival and latency


def pipeline_run(
    url: str,
    sizes: dict[str, int],
    base: list[plans.Planned],
    n: int,
    rate: float,
    **connect: Any,
) -> Run:
    """``connect``: how the encounter system connects (``tls``, ``reply_prefix``).

    This process is the encounter system that times every answer, and its heap (the
    plans, the encoded messages, the outcomes, rich) made full collections of up to
    290-440 ms on the thread that receives them, counted as the exchange's latency. It is
    frozen while the run is timed, as a worker freezes its start-up
    (docs/performance.md, "The collector's pauses")."""
    planned = plans.repeat(base, n, uuid.uuid4().hex[:6])
    with (
        encounters.EncounterSystem(url, sizes, **connect) as system,
        Progress(console=console, transient=True) as progress,
    ):
        task = progress.add_task(f"pipeline {n} @ {rate or 'max'}/s", total=n)
        encoded = system.encode(planned)
        freeze_start_up()  # what this run was set up with, as a worker's start-up
        started = time.perf_counter()
        # an offered load arrives as people do, one at a time (docs/performance.md, "What
        # is measured"); ``--arrivals bursts``: twenty at once, as this bench did before
        arrivals = (
            encounters.poisson_arrivals(n, rate, SEED) if rate and ARRIVALS == "poisson" else None
        )
        submitter = threading.Thread(
            target=system.submit,
            args=(planned,),
            kwargs={
                "batch": 20,
                "rate": rate,
                "encoded": encoded,
                "arrivals": arrivals,
                "window": 0 if rate else WINDOW,
            },
        )
        submitter.start()
        system.collect(
            timeout=900,
            idle_timeout=60,
            expect=n,
            on_progress=lambda d, t: progress.update(task, completed=d),
        )
        elapsed = time.perf_counter() - started
        submitter.join()
        gc.unfreeze()
        outcomes = list(system.outcomes.values())
    pairs, _, missing = encounters.summarise(outcomes)
    lat = [x for s in pairs.values() for x in s.latencies]
    wrong = sum(s.wrong for s in pairs.values())
    return Run(n, elapsed, lat, missing, wrong, timed(outcomes))


def timed(outcomes: list[encounters.Outcome]) -> dict[str, hops.Timed]:
    """Each encounter completed by the exchange alone (no person reviewed an answer): its
    arrival on the wall clock, which the workers' own records use, and its latency."""
    to_wall = time.time() - time.monotonic()  # ``submitted_at`` is on the monotonic clock
    return {
        o.planned.encounter_id: hops.Timed(
            o.planned.submitted_at + to_wall, max(a.latency_s for a in o.answers.values())
        )
        for o in outcomes
        if o.complete and o.answers and not any(a.reviewed for a in o.answers.values())
    }


def provider_gallery(size: int, s: Settings) -> None:
    """mx's gallery and records for a pipeline run (face and two fingers per identity).

    On disk before anything is timed: at 1 M the snapshot is 3.6 GB, and before it was
    synced as it was saved (``Gallery.save``) the kernel wrote its pages back 30-36 s
    later, in the middle of a latency run, where the broker's and the databases' syncs
    wait behind them (docs/performance.md, "Where the latency goes"). The records'
    database is synced here too. A country's gallery is written long before its
    traffic."""
    with Progress(console=console, transient=True) as progress, all_threads():
        task = progress.add_task(f"mx gallery + records {size:,}", total=size)
        galleries.populate(
            "mx",
            size,
            SEED,
            s.database_for("mx"),
            s.gallery_dir("mx"),
            index=s.index,
            exact_max=s.exact_max,
            nprobe=s.ivf_nprobe,
            tenprint=False,
            iris=False,
            progress=lambda k: progress.advance(task, k),
        )
    os.sync()


def pipeline(size: int, n: int, settings: Settings, url: str) -> dict:
    data = RESULTS / f"pipeline-{size}"
    shutil.rmtree(data, ignore_errors=True)
    s = settings.model_copy(update={"data_dir": data, "registry": REGISTRY})
    registry = Registry.load(REGISTRY)
    declare(url, registry.codes, s)
    provider_gallery(size, s)
    sizes = {"mx": size, "us": 1}
    base = plans.plan(registry, sizes, 400, SEED, requesters=["us"])
    base = [p for p in base if p.expected_partners]
    from biox.wire import codec as codec_mod

    body_size = int(np.mean([len(codec_mod.encode_body(p.submit)) for p in base[:50]]))
    raw = raw_round_trip(url, body_size, 5000)
    console.print(f"  raw round trip: {raw['round_trips_per_s']}/s with {body_size} B bodies")
    audit_queues = ["us.audit", "mx.audit"]
    env = dev_env(
        url,
        Settings(data_dir=data, registry=REGISTRY),
        ["us", "mx", "sv"],
        BIOX_LOG_LEVEL="WARNING",
    )
    us_kinds = ("intake", "response", "audit")
    workers = start_workers(["us"], env, data / "logs", us_kinds)
    mx_kinds = ("query",) * MATCHERS + ("audit",)  # --matchers: as `biox serve query=N`
    workers.processes += start_workers(["mx"], env, data / "logs", mx_kinds).processes
    try:
        wait_for_consumers(
            url, ["us.intake", "us.response", "mx.query", *audit_queues], workers, timeout=600
        )
        with relay.tap(url, "us", "mx") as samples:  # the messages the relay sends
            pipeline_run(url, sizes, base, 300, 0)  # warm-up
        pids = {name: p.pid for name, p in workers.processes}
        pids["encounter system (bench)"] = os.getpid()
        pids.update(broker_pids())
        sampled_pids = {k: v for k, v in pids.items() if "beam" not in k}
        profile = sampled(PROFILE, sampled_pids, f"{size}")
        saturated = saturate(url, sizes, base, n, pids, [(url, None, audit_queues)], profile)
        sat, throughput, cpu_ms = saturated.run, saturated.throughput, saturated.cpu_ms
        half = pipeline_run(url, sizes, base, max(n // 2, 500), throughput / 2)
        by_rate = {}
        for rate in RATES:  # profiled too: below saturation a batch's fixed cost shows
            with sampled(PROFILE, sampled_pids, f"{size}-at-{rate:g}"):
                by_rate[rate] = pipeline_run(url, sizes, base, max(n // 3, 300), rate)
    finally:
        workers.stop()
    relayed = relay.relay(url, samples, n, settings)
    console.print(f"  relay: {relayed['queries_per_s']}/s, bodies {relayed['body_bytes']}")
    pct = lambda xs, q: round(float(np.percentile(xs, q)) * 1000, 1) if xs else None  # noqa: E731
    return {
        "size": size,
        "queries": n,
        "matchers": MATCHERS,
        "throughput_qps": round(throughput, 1),
        "saturated_p50_ms": pct(sat.latencies, 50),
        "saturated_p99_ms": pct(sat.latencies, 99),
        "half_load_qps": round(throughput / 2, 1),
        "half_load_p50_ms": pct(half.latencies, 50),
        "half_load_p95_ms": pct(half.latencies, 95),
        "half_load_p99_ms": pct(half.latencies, 99),
        "half_load_hops": hops.of_run(s.database_for("us"), half.timed),
        "rounds_throughput_qps": saturated.rounds,
        "missing": saturated.missing + half.missing,
        "wrong": saturated.wrong + half.wrong,
        "raw": raw,
        "relay": relayed,
        "cpu_ms_per_query": cpu_ms,
        "audit_backlog_at_end": saturated.audit_backlog,
        "audit_drain_s": saturated.audit_drain_s,
        "latency_by_rate": [
            {
                "rate": rate,
                "p50_ms": pct(r.latencies, 50),
                "p95_ms": pct(r.latencies, 95),
                "p99_ms": pct(r.latencies, 99),
                "missing": r.missing,
                "wrong": r.wrong,
            }
            for rate, r in by_rate.items()
        ],
    }


PROFILE: Path | None = None  # --profile: where py-spy's samples of the saturated run go
ARRIVALS = "poisson"  # --arrivals: how a latency run's load is offered
WINDOW = 0  # --window: at most this many encounters unanswered in a saturated run
RATES: list[float] = []  # --rates: latency runs at these offered rates too
ROUNDS = 3  # --rounds: saturated rounds a run takes the median of
MATCHERS = 1  # --matchers: the provider's matcher processes, competing consumers of its queries


@contextlib.contextmanager
def sampled(into: Path | None, pids: dict[str, int], label: str) -> Iterator[None]:
    """py-spy samples each process while the block runs (``--profile``): one collapsed
    stack file per process (``<label>-<process>.txt``), for flame graphs and for the top
    functions by own time."""
    if into is None:
        yield
        return
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    into.mkdir(parents=True, exist_ok=True)
    running = [
        subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-r",
                "200",
                "-f",
                "raw",
                "--nonblocking",
                "-o",
                str(into / f"{label}-{name.split()[0]}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
        if name != "encounter system (bench)"
    ]
    try:
        yield
    finally:
        for p in running:
            p.send_signal(2)  # py-spy writes its file on SIGINT
        for p in running:
            p.wait(timeout=60)


#: where audit queues are: a broker's URL, the credentials to read it with, its audit queues
AuditQueues = tuple[str, ClientTLS | None, list[str]]


def purge(url: str, queues: list[str]) -> None:
    """Empties ``queues`` (the audit queues of the raw round trip's copies, before any
    worker reads them)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_purge(q)
    finally:
        conn.close()


def drain(places: list[AuditQueues], timeout: float = 300) -> tuple[int, float]:
    """Messages left in the audit queues when the answers were all in, and how long they
    took to go (on every broker: one, or one per participant)."""
    import pika

    conns = [pika.BlockingConnection(parameters(url, tls)) for url, tls, _ in places]
    try:
        looks = [(c.channel(), queues) for c, (_, _, queues) in zip(conns, places, strict=True)]

        def depth() -> int:
            return sum(
                ch.queue_declare(q, passive=True).method.message_count
                for ch, queues in looks
                for q in queues
            )

        backlog, started = depth(), time.monotonic()
        while depth() and time.monotonic() - started < timeout:
            time.sleep(0.2)
        return backlog, round(time.monotonic() - started, 1)
    finally:
        for c in conns:
            c.close()


T = TypeVar("T")


def median_round(rounds: list[T], throughput: Callable[[T], float]) -> T:
    """The round of median throughput, the upper of the two middle ones when even: the
    figure a run of rounds reports (``saturate``, and the relay's ``bench.relay.relay``)."""
    return sorted(rounds, key=throughput)[len(rounds) // 2]


@dataclass
class Saturated:
    """The median of a saturated run's rounds (``saturate``), with what every round said."""

    run: Run
    throughput: float  # every answer in and the audit trails caught up, per second
    cpu_ms: dict[str, float]
    audit_backlog: int
    audit_drain_s: float
    rounds: list[float] = field(default_factory=list)  # each round's throughput, in order
    missing: int = 0  # over every round: a round left out of the median still counts here
    wrong: int = 0

    @classmethod
    def median_of(cls, rounds: list[Saturated]) -> Saturated:
        """``median_round``'s, with every round's throughput and errors."""
        middle = median_round(rounds, lambda r: r.throughput)
        return replace(
            middle,
            rounds=[round(r.throughput, 1) for r in rounds],
            missing=sum(r.run.missing for r in rounds),
            wrong=sum(r.run.wrong for r in rounds),
        )


def saturate(
    url: str,
    sizes: dict[str, int],
    base: list[plans.Planned],
    n: int,
    pids: dict[str, int],
    audits: list[AuditQueues],
    profile: contextlib.AbstractContextManager[Any] | None = None,
    **connect: Any,
) -> Saturated:
    """``n`` encounters offered at once, ``ROUNDS`` times; the round of median throughput is
    the figure, each round's is kept beside it. On this machine one round of a few seconds
    differs from the next by up to a quarter, as the relay's rounds do (docs/performance.md,
    "What is measured"). The throughput counts until the audit trails have caught up as well,
    and the CPU per query includes their catching up: an audit worker that lags under
    saturation would otherwise have the figure count work it only postponed. Each round
    starts once they have caught up with what came before (the warm-up's copies, the
    round before), so that it counts no work of earlier runs either."""
    with profile or contextlib.nullcontext():
        rounds = [
            saturated_round(url, sizes, base, n, pids, audits, **connect) for _ in range(ROUNDS)
        ]
    return Saturated.median_of(rounds)


def saturated_round(
    url: str,
    sizes: dict[str, int],
    base: list[plans.Planned],
    n: int,
    pids: dict[str, int],
    audits: list[AuditQueues],
    **connect: Any,
) -> Saturated:
    """One of ``saturate``'s rounds; `bench.sovereign` takes two layouts' rounds in turn."""
    drain(audits)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    sat = pipeline_run(url, sizes, base, n, 0, **connect)
    backlog, drain_s = drain(audits)
    cpu_ms = cpu_ms_per_query(pids, before, n)
    throughput = sat.sent / (sat.seconds + drain_s)
    return Saturated(sat, throughput, cpu_ms, backlog, drain_s)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ms_per_query(pids: dict[str, int], before: dict[str, float], n: int) -> dict[str, float]:
    """CPU ms per query of each process since ``before``; one gone by now is left out (a
    ``rabbitmqctl`` VM that ``broker_pids`` caught while it ran is not a broker)."""
    return {
        name: round((cpu_seconds(pid) - before[name]) * 1000 / n, 2)
        for name, pid in pids.items()
        if Path(f"/proc/{pid}").exists()
    }


def broker_pids() -> dict[str, int]:
    """The local brokers' Erlang VMs on this machine (one, or one per participant)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "beam.smp":
                    found.append(int(proc.name))
            except OSError:
                continue
    if len(found) == 1:
        return {"broker (beam.smp)": found[0]}
    return {f"broker {i + 1} (beam.smp)": pid for i, pid in enumerate(sorted(found))}


# --- report ---------------------------------------------------------------------------------


def merged_results() -> dict:
    """All runs under bench/results, newest last, so each size shows its latest figures."""
    runs = sorted(RESULTS.glob("bench-*.json"), key=lambda p: p.stat().st_mtime)
    merged: dict = {"matcher": {}, "pipeline": {}, "commands": {}}
    for path in runs:
        run = json.loads(path.read_text())
        merged["machine"], merged["date"] = run["machine"], run["date"]
        for part in ("matcher", "pipeline"):
            for row in run[part]:
                merged[part][row["size"]] = row
                merged["commands"][(part, row["size"])] = run.get("command", "make bench")
    return {
        "machine": merged["machine"],
        "date": merged["date"],
        "matcher": [merged["matcher"][k] for k in sorted(merged["matcher"])],
        "pipeline": [merged["pipeline"][k] for k in sorted(merged["pipeline"])],
        "commands": sorted(set(merged["commands"].values())),
    }


def identities(p: dict) -> str:
    """A pipeline row's size, and its matcher processes where there were several."""
    n = p.get("matchers", 1)
    return f"{p['size']:,}" + (f" ({n} matchers)" if n > 1 else "")


def write_doc(results: dict) -> None:
    lines = [
        "<!-- bench:start (generated by bench/run.py; edit outside the markers) -->",
        f"Commands: {', '.join(f'`{c}`' for c in results['commands'])} on {results['machine']}, {results['date']}.",
        "",
        "### Matcher alone (face 512-d + two fingers 192-d per identity, batches of 64)",
        "",
        "| identities | index | build s | memory MB | queries/s batched | CPU ms/query | queries/s single | recall@1 vs exact | genuine top-1 | snapshot MB | fresh start s | refresh s (MB written) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results["matcher"]:
        idx = m["index"] + (f" (nprobe {m['nprobe']})" if m["nprobe"] else "")
        lines.append(
            f"| {m['size']:,} | {idx} | {m['build_s']} | {m['memory_mb']} | {m['qps_batched']} | {m.get('cpu_ms_per_query', '-')} | {m['qps_single']} | {m['recall_at_1']} | {m['genuine_top1']} | {m.get('snapshot_mb', '-')} | {m.get('start_s', '-')} | {refreshed(m)} |"
        )
    lines += [
        "",
        "### Whole pipeline (encounter.submit → intake → query → matcher → response → result)",
        "",
        "| identities | raw round trip /s | relay /s | matcher alone /s | pipeline queries/s (rounds) | of the relay | fraction of lower limit | p50 / p95 / p99 ms at half load | missing | wrong |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for p in results["pipeline"]:
        m = next((m for m in results["matcher"] if m["size"] == p["size"]), None)
        limit = min(p["raw"]["round_trips_per_s"], m["qps_batched"] if m else float("inf"))
        relayed = p.get("relay", {}).get("queries_per_s")
        of_relay = f"{p['throughput_qps'] / relayed:.0%}" if relayed else "-"
        lines.append(
            f"| {identities(p)} | {p['raw']['round_trips_per_s']} | {relayed or '-'} | {m['qps_batched'] if m else '-'} | {p['throughput_qps']}{spread(p)} | "
            f"{of_relay} | {p['throughput_qps'] / limit:.0%} | {p['half_load_p50_ms']} / {p['half_load_p95_ms']} / {p['half_load_p99_ms']} at {p['half_load_qps']}/s | {p['missing']} | {p['wrong']} |"
        )
    lines += [
        "",
        "### Where the CPU goes (ms of CPU per query during the saturated run)",
        "",
    ]
    for p in results["pipeline"]:
        if p.get("cpu_ms_per_query"):
            parts = ", ".join(f"{k} {v}" for k, v in p["cpu_ms_per_query"].items())
            total = sum(p["cpu_ms_per_query"].values())
            lines.append(f"- {identities(p)} identities: {parts}; total {total:.2f} ms")
        if p.get("relay"):
            parts = ", ".join(f"{k} {v}" for k, v in p["relay"]["cpu_ms_per_query"].items())
            total = sum(p["relay"]["cpu_ms_per_query"].values())
            lines.append(f"  - the relay, same run: {parts}; total {total:.2f} ms")
    lines += ["", "### Audit consumers beside the pipeline (saturated run)", ""]
    for p in results["pipeline"]:
        if "audit_backlog_at_end" in p:
            lines.append(
                f"- {p['size']:,} identities: {p['audit_backlog_at_end']} audit messages waiting "
                f"when the last answer arrived, drained {p['audit_drain_s']} s later"
            )
    timed = [p for p in results["pipeline"] if p.get("half_load_hops")]
    if timed:
        lines += [
            "",
            "### Where the latency goes at half load (ms: the median encounter's / the mean of the slowest 1 %)",
            "",
        ]
        lines += [
            f"- {identities(p)} identities: "
            + ", ".join(
                f"{h} {p['half_load_hops']['p50_ms'][h]} / {p['half_load_hops']['slowest_mean_ms'][h]}"
                for h in hops.HOPS
            )
            for p in timed
        ]
    sweeps = [p for p in results["pipeline"] if p.get("latency_by_rate")]
    if sweeps:
        lines += ["", "### Latency by offered rate (`--rates`, independent arrivals)", ""]
        lines += [
            f"- {p['size']:,} identities: "
            + "; ".join(
                f"{r['rate']:g}/s p50 {r['p50_ms']} / p95 {r['p95_ms']} / p99 {r['p99_ms']} ms"
                for r in p["latency_by_rate"]
            )
            for p in sweeps
        ]
    lines.append("<!-- bench:end -->")
    block = "\n".join(lines)
    text = (
        DOC.read_text()
        if DOC.exists()
        else "# Performance\n\n<!-- bench:start -->\n<!-- bench:end -->\n"
    )
    start, end = (
        text.index("<!-- bench:start"),
        text.index("<!-- bench:end -->") + len("<!-- bench:end -->"),
    )
    DOC.write_text(text[:start] + block + text[end:])


def spread(p: dict) -> str:
    """A pipeline row's saturated rounds, lowest to highest (runs before 2026-12-06 had one)."""
    rounds = p.get("rounds_throughput_qps") or []
    return f" ({min(rounds)}-{max(rounds)})" if len(rounds) > 1 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="add the 1 M-identity profile")
    parser.add_argument("--sizes", default=None, help="comma-separated matcher sizes; none: skip")
    parser.add_argument("--pipeline-size", type=int, default=None)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--no-pipeline", action="store_true", help="the matcher alone only")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy samples of each worker (saturated run and each --rates run), into DIR",
    )
    parser.add_argument(
        "--arrivals",
        choices=["poisson", "bursts"],
        default="poisson",
        help="the latency run's load: one at a time at random (default), or twenty at once",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        help="a saturated run's encounters unanswered at most (default: all offered at once)",
    )
    parser.add_argument(
        "--matchers",
        type=int,
        default=1,
        help="the provider's matcher processes in the pipeline (as `biox serve query=N`)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="saturated rounds per pipeline run; the median is the figure (default 3)",
    )
    parser.add_argument(
        "--rates",
        default="",
        help="comma-separated offered rates (queries/s): a latency run at each, after half load",
    )
    args = parser.parse_args()
    global PROFILE, ARRIVALS, WINDOW, RATES, MATCHERS, ROUNDS
    PROFILE, ARRIVALS, WINDOW = args.profile, args.arrivals, args.window
    ROUNDS = max(1, args.rounds)
    MATCHERS = max(1, args.matchers)
    RATES = [float(r) for r in args.rates.split(",") if r.strip()]
    unwind_on_sigterm()
    settings = Settings()
    faiss.omp_set_num_threads(settings.search_threads or os.cpu_count() or 1)  # as the workers
    sizes = (
        [int(s) for s in args.sizes.split(",") if s.strip().isdigit()]
        if args.sizes
        else ([10_000, 100_000, 1_000_000] if args.full else [10_000, 100_000])
    )
    pipe_sizes = (
        []
        if args.no_pipeline
        else (
            [args.pipeline_size]
            if args.pipeline_size
            else ([10_000, 100_000, 1_000_000] if args.full else [10_000, 100_000])
        )
    )
    results = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} search thread(s) as in the workers",
        "date": time.strftime("%Y-%m-%d"),
        "matcher": [],
        "pipeline": [],
    }
    for size in sizes:
        console.print(f"[bold]matcher[/] {size:,} identities")
        results["matcher"].append(matcher(size, 2000, settings))
        console.print(results["matcher"][-1])
    with broker_url(settings, console) if pipe_sizes else contextlib.nullcontext("") as url:
        for size in pipe_sizes:
            console.print(f"[bold]pipeline[/] {size:,} identities")
            results["pipeline"].append(pipeline(size, args.queries, settings, url))
            console.print(results["pipeline"][-1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    results["command"] = " ".join(["python -m bench.run", *sys.argv[1:]])
    if not sys.argv[1:] or sys.argv[1:] == ["--full"]:
        results["command"] = "make bench-full" if args.full else "make bench"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2))
    write_doc(merged_results())
    console.print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
