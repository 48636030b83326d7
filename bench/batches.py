"""What a batch costs beyond its messages: the pipeline's encounters one batch at a time,
then all at once, in the in-memory exchange (docs/performance.md, "The loop's bookkeeping
in plain statements").

``python -m bench.batches``: the bench's registry (us asks mx), mx's gallery of
``--size`` identities as `bench.run` builds it, and ``--queries`` of its encounters
submitted one at a time, each run through every queue before the next (a batch of one
at every hop, as at low load), then as many others submitted together (batches up to
``BIOX_BATCH_MAX``). Every handler runs under the real consume loop on SQLite, with no
broker, so the difference between the two is the fixed cost of a batch in the workers'
own code. Prints CPU ms a query for each, the median of ``--rounds``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.run import REGISTRY, SEED, provider_gallery
from biox import logs
from biox.broker.memory import InMemoryExchange
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import plans
from biox.wire import codec
from biox.wire.codec import Outgoing
from biox.wire.messages import EncounterResultStatus

REPLIES = "bench-encounter-system"


def encounters(planned: list[plans.Planned], tag: str) -> list[Outgoing]:
    """The planned submissions under fresh encounter ids (each round its own)."""
    out = []
    for p in planned:
        eid = f"{p.encounter_id}-{tag}"
        out.append(
            codec.to_submissions(
                p.submit.model_copy(update={"encounter_id": eid}),
                participant=p.requester,
                message_id=str(uuid.uuid4()),
                correlation_id=eid,
                reply_to=REPLIES,
            )
        )
    return out


def cpu_ms(exchange: InMemoryExchange, messages: list[Outgoing], one_at_a_time: bool) -> float:
    started = time.process_time()
    if one_at_a_time:
        for m in messages:
            exchange.publish(m)
            exchange.run()
    else:
        exchange.publish(messages)
        exchange.run()
    spent = time.process_time() - started
    complete = {
        r.encounter_id
        for r in exchange.results(REPLIES)
        if r.status is EncounterResultStatus.complete
    }
    unfinished = len({m.envelope.correlation_id for m in messages} - complete)
    if unfinished:
        raise SystemExit(
            f"{unfinished} of {len(messages)} encounters got no complete result: "
            "the figures would not compare"
        )
    return spent * 1000 / len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=10_000, help="mx's gallery")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logs.configure("WARNING")  # as the bench's workers (BIOX_LOG_LEVEL=WARNING)
    data = Path(tempfile.mkdtemp(prefix="biox-batches-"))
    try:
        settings = Settings(data_dir=data, registry=REGISTRY)
        provider_gallery(args.size, settings)
        registry = Registry.load(REGISTRY)
        planned = [
            p
            for p in plans.plan(registry, {"mx": args.size, "us": 1}, 400, SEED, ["us"])
            if p.expected_partners
        ][: args.queries]
        exchange = InMemoryExchange(settings)
        exchange.declare_queue(REPLIES)
        cpu_ms(exchange, encounters(planned[:20], "warm"), one_at_a_time=True)
        one, together = [], []
        for r in range(args.rounds):
            one.append(cpu_ms(exchange, encounters(planned, f"one-{r}"), one_at_a_time=True))
            together.append(cpu_ms(exchange, encounters(planned, f"all-{r}"), False))
        print(
            f"{len(planned)} encounters, gallery {args.size:,}: CPU ms a query, "
            f"one at a time {statistics.median(one):.2f} ({', '.join(f'{x:.2f}' for x in one)}), "
            f"together {statistics.median(together):.2f} "
            f"({', '.join(f'{x:.2f}' for x in together)})"
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
