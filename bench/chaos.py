"""`make chaos`: queries while workers are killed, brokers crash and a partner link is cut.

Three layouts, one after the other (``--layout`` picks one):

- **shared**: every participant on the development broker; a random worker SIGKILLed
  every few seconds and the broker restarted every ~20 s.
- **sovereign**: each participant on its own TLS broker, linked by shovels that dial their
  partner through a relay that can be cut (``biox.dev.partition``). A random worker
  (audit and notice workers too) SIGKILLed every few seconds; every ~20 s the next
  participant's broker SIGKILLed and started again on its data; and the us-mx link cut,
  both ways, for ``--cut-for`` seconds (150: longer than every client timeout: heartbeats
  15 and 30 s, publish confirms 60 s, and the answer deadline, 90 s in this run), with
  workers and brokers killed meanwhile.
- **cluster**: the sovereign layout with us's broker a three-node cluster
  (``biox.dev.cluster``; issue 23, item 8): each us turn SIGKILLs the next of its nodes,
  and the partners' shovels reach us through a relay before each node, all cut at once.

N encounters (default 5 000) from us to mx and sv (20 000-identity galleries), then a
drain. Each layout ends by counting at the encounter system: queries expected, answers
received, duplicated, lost, wrong. The sovereign layout also counts by message id at
both ends, from the participants' audit trails: each query us sent reached its partner
exactly once and was answered by exactly one response, which reached us; and it runs
``biox audit verify`` on every chain against the signed checkpoints its partners received
during the run. Target: nothing lost, nothing twice, every chain intact. Needs the local
launcher (it kills the brokers itself).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.ledger import audit_ledger, checkpoints_held, settled
from biox.dev.broker import LocalBroker
from biox.dev.sovereign import SovereignBrokers
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import encounters, galleries, plans
from biox.sim.processes import (
    Workers,
    commence,
    dev_env,
    start_requester_with_providers,
    start_sovereign_workers,
    start_workers,
    unwind_on_sigterm,
    worker_env,
)
from biox.trust.identity import Role
from biox.wire.messages import OutcomeStatus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SEED = 91
SIZES = {"us": 10, "mx": 20_000, "sv": 20_000}
SOVEREIGN_ROLES = {
    "us": ("intake", "response", "audit", "notice"),
    "mx": ("query", "audit", "notice"),
    "sv": ("query", "audit", "notice"),
}
console = Console()


class Monkey:
    """Kills on a schedule from its own thread, logging each event with its time."""

    def __init__(self, rng: random.Random, kill_every: float) -> None:
        self.rng = rng
        self.kill_every = kill_every
        self.events: list[str] = []
        self.stop = threading.Event()

    def note(self, event: str) -> None:
        self.events.append(f"{time.strftime('%X')} {event}")
        console.print(f"[dim]{self.events[-1]}[/]")

    def kill_worker(self, workers: Workers, respawn: Callable[[str], Workers]) -> None:
        name, proc = self.rng.choice(workers.processes)
        proc.kill()
        proc.wait()
        self.note(f"SIGKILL {name}")
        workers.processes = [(n, p) for n, p in workers.processes if n != name]
        workers.processes += respawn(name).processes

    def count(self, word: str) -> int:
        return sum(word in e for e in self.events)


def role_of(name: str) -> tuple[str, str]:
    code, kind, *_ = name.split("-")
    return code, kind


def shared(args: argparse.Namespace) -> dict:
    data = RESULTS / "chaos"
    shutil.rmtree(data, ignore_errors=True)
    broker = LocalBroker().start()
    workers = notices = None
    monkey = Monkey(random.Random(SEED), args.kill_every)
    try:
        settings = Settings(amqp_url=broker.url, data_dir=data, retry_delays="1,5,30")
        registry = Registry.load(settings.registry)
        env_extra = {"BIOX_LOG_LEVEL": "WARNING"}
        workers = start_requester_with_providers(broker.url, settings, SIZES, SEED, "us", env_extra)
        env = dev_env(broker.url, settings, registry.codes, **env_extra)
        # §34: the shipped registry starts everyone pending; the readiness exchange first
        notices = start_workers(registry.codes, env, data / "logs", ("notice",))
        registry = commence(settings, registry.codes, lambda code: (broker.url, None))
        planned = plans.repeat(
            plans.plan(registry, SIZES, 500, SEED, requesters=["us"]), args.encounters, "chaos"
        )
        running = workers

        def respawn(name: str) -> Workers:
            code, kind = role_of(name)
            return start_workers([code], env, data / "logs", (kind,))

        def chaos() -> None:
            next_restart = time.monotonic() + args.restart_every
            while not monkey.stop.wait(args.kill_every * monkey.rng.uniform(0.5, 1.5)):
                if time.monotonic() >= next_restart:
                    monkey.note("broker restart")
                    broker.restart(down_for=monkey.rng.uniform(0.5, 3.0))
                    next_restart = time.monotonic() + args.restart_every
                    continue
                monkey.kill_worker(running, respawn)

        with encounters.EncounterSystem(broker.url, SIZES) as system:
            result = run_load(system, planned, args.rate, chaos, monkey)
    finally:
        for each in (workers, notices):
            if each is not None:
                each.stop()
        broker.stop()
    result.update(kills=monkey.count("SIGKILL"), broker_restarts=monkey.count("restart"))
    return {"result": result, "events": monkey.events}


def sovereign(args: argparse.Namespace, nodes: dict[str, int] | None = None) -> dict:
    data = RESULTS / ("chaos-cluster" if nodes else "chaos-sovereign")
    shutil.rmtree(data, ignore_errors=True)
    settings = Settings(
        data_dir=data, retry_delays="1,5,30", answer_deadline_s=args.answer_deadline, amqp_url=None
    )
    registry = Registry.load(settings.registry)
    codes = registry.codes
    monkey = Monkey(random.Random(SEED), args.kill_every)
    cut_lasted: list[float] = []
    brokers = SovereignBrokers(
        codes, settings, data / "brokers", relays=True, nodes=nodes or {}
    ).start()
    workers = Workers([])
    try:
        for code in ("mx", "sv"):
            galleries.build_gallery(settings, code, SIZES[code], SEED)
        env = worker_env(
            settings,
            codes,
            BIOX_LOG_LEVEL="WARNING",
            BIOX_ANSWER_DEADLINE_S=str(args.answer_deadline),
            BIOX_AUDIT_CHECKPOINT_S="10",
        )
        workers = start_sovereign_workers(brokers, SOVEREIGN_ROLES, env, data / "logs")
        registry = commence(settings, codes, lambda c: (brokers.url(c), brokers.officer(c)), "pat")
        planned = plans.repeat(
            plans.plan(registry, SIZES, 500, SEED, requesters=["us"]), args.encounters, "chaos"
        )

        def respawn(name: str) -> Workers:
            code, kind = role_of(name)
            own = {**env, **brokers.env(code, Role.workers)}
            return start_workers([code], own, data / "logs", (kind,))

        def chaos() -> None:
            started = time.monotonic()
            cut_at, mended = started + args.cut_after, False
            next_crash = started + args.restart_every
            victims = itertools.cycle(sorted(codes, key=lambda c: c != "us"))  # us, mx, sv...
            crashed_since_mend = False
            # until everything is submitted, the link mended, and one more crash after that
            while not (monkey.stop.is_set() and crashed_since_mend):
                time.sleep(args.kill_every * monkey.rng.uniform(0.5, 1.5))
                now = time.monotonic()
                if now >= cut_at and not brokers.is_cut("us", "mx") and not mended:
                    brokers.cut("us", "mx")
                    monkey.note(f"us-mx link cut for {args.cut_for:.0f} s")
                    cut_at = now
                elif brokers.is_cut("us", "mx") and now >= cut_at + args.cut_for:
                    brokers.mend("us", "mx")
                    monkey.note("us-mx link mended")
                    mended = True
                    cut_lasted.append(round(now - cut_at, 1))  # a crash may have held it longer
                elif now >= next_crash:
                    code = next(victims)
                    monkey.note(f"SIGKILL broker {code}")
                    down = monkey.rng.uniform(0.5, 3.0)
                    node = brokers.brokers[code].restart(down_for=down, hard=True)
                    monkey.note(
                        f"broker {code} back" + (f" (node {node})" if node is not None else "")
                    )
                    crashed_since_mend = mended
                    next_crash = time.monotonic() + args.restart_every
                else:
                    monkey.kill_worker(workers, respawn)

        with encounters.EncounterSystem(
            brokers.url("us"),
            SIZES,
            tls=brokers.credentials("us", Role.encounters),
            reply_prefix="us.replies.sim.",
            results_of=["us"],
        ) as system:
            result = run_load(system, planned, args.rate, chaos, monkey)
            # queries whose answer came after their deadline: shown timed_out, then answered
            late = {
                (r.encounter_id, o.partner)
                for r in system.results.values()
                for o in r.outcomes
                if o.status is OutcomeStatus.timed_out
            }
            result["timed_out_then_answered"] = sum(
                p in system.outcomes[e].answers for e, p in late if e in system.outcomes
            )
        settled(brokers, codes)
        workers.stop()  # every worker idle and stopped before the trails are read
        result["by_message_id"] = audit_ledger(settings, "us", ["mx", "sv"])
        result["checkpoints_held"] = checkpoints_held(settings, codes)
        verified = subprocess.run(
            [sys.executable, "-m", "biox", "audit", "verify"],
            env=env,
            capture_output=True,
            text=True,
        )
        result["audit_verify"] = verified.stdout.strip().splitlines()
        result["audit_verify_exit"] = verified.returncode
    finally:
        workers.stop()
        brokers.stop()
    result.update(
        kills=monkey.count("SIGKILL ") - monkey.count("SIGKILL broker"),
        broker_crashes=monkey.count("SIGKILL broker"),
        link_cut_s=cut_lasted[0] if cut_lasted else None,
    )
    return {"result": result, "events": monkey.events}


def run_load(
    system: encounters.EncounterSystem,
    planned: list[plans.Planned],
    rate: float,
    chaos: Callable[[], None],
    monkey: Monkey,
) -> dict:
    """Submit at ``rate`` while ``chaos`` runs in its own thread; stop it once everything is
    submitted (it may finish what it started: a cut ends when mended), then drain."""
    encoded = system.encode(planned)
    failed: list[BaseException] = []

    def guarded() -> None:
        try:
            chaos()
        except BaseException as exc:  # a run whose chaos stopped early proves nothing
            failed.append(exc)

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    started = time.monotonic()
    system.submit(planned, batch=20, rate=rate, encoded=encoded)
    monkey.stop.set()
    thread.join()
    if failed:
        raise RuntimeError(f"the chaos thread failed: {failed[0]!r}") from failed[0]
    with console.status("draining: every answer in...") as status:
        system.collect(
            timeout=1800,
            idle_timeout=300,
            expect=len(planned),
            on_progress=lambda d, t: status.update(f"draining: {d}/{t} encounters complete"),
        )
    outcomes = list(system.outcomes.values())
    expected = sum(len(o.planned.expected_partners) for o in outcomes if o.refused is None)
    answered = sum(len(o.answers) for o in outcomes)
    return {
        "encounters_sent": len(planned),
        "queries_expected": expected,
        "answers_received": answered,
        "duplicated_answers": system.duplicates,
        "redelivered_results_absorbed": system.redeliveries,
        "lost": expected - answered,
        "wrong": sum(1 for o in outcomes for a in o.answers.values() if not a.correct),
        "seconds": round(time.monotonic() - started, 1),
    }


def passed(run: dict) -> bool:
    r = run["result"]
    ok = r["lost"] == 0 and r["duplicated_answers"] == 0 and r["wrong"] == 0
    if "by_message_id" in r:
        ok = ok and all(not p["problems"] for p in r["by_message_id"].values())
        ok = ok and r["audit_verify_exit"] == 0
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--layout", choices=("shared", "sovereign", "cluster", "all"), default="all"
    )
    parser.add_argument("--encounters", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=80.0, help="encounters submitted per second")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between kills")
    parser.add_argument(
        "--restart-every", type=float, default=20.0, help="seconds between broker restarts"
    )
    parser.add_argument("--cut-after", type=float, default=10.0, help="sovereign: link cut at")
    parser.add_argument("--cut-for", type=float, default=150.0, help="sovereign: cut this long")
    parser.add_argument(
        "--answer-deadline", type=float, default=90.0, help="sovereign: BIOX_ANSWER_DEADLINE_S"
    )
    args = parser.parse_args()
    unwind_on_sigterm()
    runs = {}
    layouts: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "shared": shared,
        "sovereign": sovereign,
        "cluster": lambda a: sovereign(a, nodes={"us": 3}),
    }
    for layout, run in layouts.items():
        if args.layout in (layout, "all"):
            console.rule(f"chaos: {layout} layout")
            runs[layout] = run(args)
            console.print(runs[layout]["result"])
            RESULTS.mkdir(parents=True, exist_ok=True)
            name = "chaos.json" if layout == "shared" else f"chaos-{layout}.json"
            (RESULTS / name).write_text(json.dumps(runs[layout], indent=2))
    raise SystemExit(0 if all(passed(r) for r in runs.values()) else 1)


if __name__ == "__main__":
    main()
