"""`make chaos`: queries while workers are killed and the broker restarts at random.

Bounded: N encounters (default 5 000; `--encounters 20000` for the long run), a kill every
few seconds, a broker restart every ~20 s, then a drain. Ends by counting: encounters
sent, queries expected, answers received, duplicated answers, lost answers. Target: 0 and
0. Needs the local launcher (it restarts the broker itself).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import threading
import time
from pathlib import Path

from rich.console import Console

from biox.dev.broker import LocalBroker
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import encounters, plans
from biox.sim.processes import (
    commence,
    dev_env,
    start_requester_with_providers,
    start_workers,
    unwind_on_sigterm,
)

ROOT = Path(__file__).resolve().parents[1]
SEED = 91
console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--encounters", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=80.0, help="encounters submitted per second")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between kills")
    parser.add_argument(
        "--restart-every", type=float, default=20.0, help="seconds between broker restarts"
    )
    args = parser.parse_args()
    unwind_on_sigterm()

    data = ROOT / "bench" / "results" / "chaos"
    shutil.rmtree(data, ignore_errors=True)
    broker = LocalBroker().start()
    workers = notices = None
    rng = random.Random(SEED)
    events: list[str] = []
    try:
        settings = Settings(amqp_url=broker.url, data_dir=data, retry_delays="1,5,30")
        registry = Registry.load(settings.registry)
        sizes = {"us": 10, "mx": 20_000, "sv": 20_000}
        env_extra = {"BIOX_LOG_LEVEL": "WARNING"}
        workers = start_requester_with_providers(broker.url, settings, sizes, SEED, "us", env_extra)
        env = dev_env(broker.url, settings, registry.codes, **env_extra)
        # §34: the shipped registry starts everyone pending; the readiness exchange first
        notices = start_workers(registry.codes, env, data / "logs", ("notice",))
        registry = commence(settings, registry.codes, lambda code: (broker.url, None))
        base = plans.plan(registry, sizes, 500, SEED, requesters=["us"])
        planned = plans.repeat(base, args.encounters, "chaos")
        stop = threading.Event()

        def chaos() -> None:
            next_restart = time.monotonic() + args.restart_every
            while not stop.wait(args.kill_every * rng.uniform(0.5, 1.5)):
                if time.monotonic() >= next_restart:
                    events.append(f"{time.strftime('%X')} broker restart")
                    broker.restart(down_for=rng.uniform(0.5, 3.0))
                    next_restart = time.monotonic() + args.restart_every
                    continue
                name, proc = rng.choice(workers.processes)
                proc.kill()
                proc.wait()
                events.append(f"{time.strftime('%X')} SIGKILL {name}")
                code, kind = name.split("-")
                fresh = start_workers([code], env, data / "logs", (kind,))
                workers.processes = [
                    (n, p) for n, p in workers.processes if n != name
                ] + fresh.processes

        with encounters.EncounterSystem(broker.url, sizes) as system:
            encoded = system.encode(planned)
            monkey = threading.Thread(target=chaos, daemon=True)
            monkey.start()
            started = time.monotonic()
            submitter = threading.Thread(
                target=system.submit,
                args=(planned,),
                kwargs={"batch": 20, "rate": args.rate, "encoded": encoded},
            )
            submitter.start()
            submitter.join()
            stop.set()
            monkey.join()
            system.collect(
                timeout=900, idle_timeout=120, expect=len(planned), on_progress=lambda d, t: None
            )
            elapsed = time.monotonic() - started
            outcomes = list(system.outcomes.values())
            expected = sum(len(o.planned.expected_partners) for o in outcomes if o.refused is None)
            answered = sum(len(o.answers) for o in outcomes)
            lost = expected - answered
            result = {
                "encounters_sent": len(planned),
                "queries_expected": expected,
                "answers_received": answered,
                "duplicated_answers": system.duplicates,
                "redelivered_results_absorbed": system.redeliveries,
                "lost": lost,
                "wrong": sum(1 for o in outcomes for a in o.answers.values() if not a.correct),
                "seconds": round(elapsed, 1),
                "kills": sum("SIGKILL" in e for e in events),
                "broker_restarts": sum("restart" in e for e in events),
            }
    finally:
        for running in (workers, notices):
            if running is not None:
                running.stop()
        broker.stop()
    console.print(result)
    out = ROOT / "bench" / "results" / "chaos.json"
    out.write_text(json.dumps({"result": result, "events": events}, indent=2))
    raise SystemExit(0 if result["lost"] == 0 and result["duplicated_answers"] == 0 else 1)


if __name__ == "__main__":
    main()
