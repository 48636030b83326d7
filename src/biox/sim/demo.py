"""``biox demo``: the whole exchange on one machine, from an empty directory to a report.

Broker (local unless BIOX_AMQP_URL), topology, a synthetic gallery per participant,
workers as separate processes, a simulated encounter system per participant, and a
table of what came back. Everything it starts, it stops.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from functools import partial

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlmodel import select

from biox.agreement.provenance import holdings
from biox.broker.publisher import publish_once
from biox.broker.topology import declare
from biox.database import every_participant, session_for
from biox.gallery.gallery import Gallery
from biox.registry import Purpose, Registry
from biox.render import section_table, trail_table
from biox.routes import ROUTES
from biox.settings import Settings
from biox.sim import encounters, galleries, lifecycle_demo, plans, synth
from biox.sim.examiners import ScriptedExaminers
from biox.sim.processes import (
    broker_url,
    commence,
    dev_env,
    free_port_runs,
    serve,
    unwind_on_sigterm,
    wait_for_consumers,
)
from biox.store import RetrievalRow
from biox.trust.audit import trail_across
from biox.wire import addresses, codec
from biox.wire.messages import Element, RetrievalAsk


def showcase(
    registry: Registry, built: dict[str, Gallery], size: int, seed: int, settings: Settings
) -> list[plans.Planned]:
    """Encounters that make sure every workflow appears once, whatever the random mix:
    a gray-zone capture for each provider's examiners (the one at us, of a person with
    derogatory data, also sets off us's automatic retrieval), and a sealed record."""
    low, high = settings.threshold_low, settings.threshold_high
    rng = np.random.default_rng([seed, 404])
    out = []
    # (requester, provider, purpose): the purpose picks a pair where only that provider is asked
    for requester, provider, purpose in (
        ("mx", "us", Purpose.adjudicate),
        ("us", "mx", Purpose.adjudicate),
        ("us", "sv", Purpose.investigate),
    ):
        accept = (lambda n: bool(synth.person(seed, n).derogatory)) if provider == "us" else None
        n, bio = galleries.gray_zone_subject(
            built[provider], provider, size, seed, low, high, rng, accept=accept
        )
        out.append(plans.single(registry, requester, n, seed, purpose, bio, "poor"))
    while True:
        n = synth.known_to("mx", size, rng)
        if synth.sealed(n):
            out.append(plans.single(registry, "us", n, seed, Purpose.adjudicate))
            return out


def run(
    settings: Settings,
    *,
    gallery_size: int = 20_000,
    per_participant: int = 100,
    seed: int = 2026,
    console: Console | None = None,
) -> int:
    console = console or Console()
    unwind_on_sigterm()
    registry = Registry.load(settings.registry)
    codes = registry.codes
    data_dir = settings.data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = settings.model_copy(update={"data_dir": data_dir})
    sizes = dict.fromkeys(codes, gallery_size)

    with broker_url(settings, console) as url:
        queues = declare(url, codes, settings)
        console.print(
            f"Topology: {len(codes) * 4} exchanges (inbox, outbox, results, held results per "
            f"participant), {len(queues)} work queues declared"
        )
        built: dict[str, Gallery] = {}
        with _progress(console) as progress:
            for code in codes:
                task = progress.add_task(f"Gallery {code}", total=gallery_size)
                built[code] = galleries.build_gallery(
                    settings, code, gallery_size, seed, partial(progress.advance, task)
                )
        env = dev_env(url, settings, codes)
        kinds = len(ROUTES.queues)
        ports = dict(zip(codes, free_port_runs(len(codes), kinds + 1), strict=True))
        workers = serve(codes, env, data_dir / "logs", metrics=ports)
        desk = ScriptedExaminers(url, settings, codes)
        try:
            with console.status(f"Starting `biox serve` for {', '.join(codes)}..."):
                wait_for_consumers(
                    url,
                    [addresses.queue(c, role) for c in codes for role in ROUTES.queues],
                    workers,
                )
            console.print(
                f"Workers: `biox serve -p P` for {', '.join(codes)}, each supervising {kinds} "
                f"worker processes ({', '.join(ROUTES.queues)}); `biox health -p P` shows them"
            )
            for code, port in ports.items():
                console.print(
                    f"  Prometheus: {code} http://127.0.0.1:{port}/metrics (its workers' "
                    f"health), workers on ports {port + 1}-{port + kinds}"
                )
            with console.status("§34: each participant tells its partners it is ready..."):
                registry = commence(
                    settings, codes, lambda code: (url, None), actor="privacy-officer"
                )
            console.print(
                f"§34: {', '.join(codes)} started pending (deploy/participants.toml) and "
                "notified each partner they are ready (`biox participants ready -p P`); "
                "participation commenced for every pair with an agreement"
            )
            planned = plans.plan(registry, sizes, per_participant, seed, poor=0.05)
            planned += showcase(registry, built, gallery_size, seed, settings)
            desk.start()
            with (
                encounters.EncounterSystem(url, sizes) as system,
                _progress(console) as progress,
            ):
                task = progress.add_task("Encounters answered", total=len(planned))
                system.submit(planned)
                system.collect(
                    timeout=600,
                    on_progress=lambda done, total: progress.update(task, completed=done),
                )
                asked = _ask_for_more(url, settings, system.outcomes.values())
                retrievals = _wait_for_retrievals(settings, codes, console, asked)
                system.collect(timeout=5, idle_timeout=2, until=lambda: False)  # late updates
                outcomes = list(system.outcomes.values())
                duplicates = system.duplicates
            desk.stop.set()
            desk.join(10)
            _show_a_trail(console, settings, outcomes, desk)
            _show_provenance(console, settings, retrievals, asked)
            lifecycle_ok = lifecycle_demo.run(console, settings, url, codes)
        finally:
            desk.stop.set()
            workers.stop()
        exit_code = report(console, outcomes, duplicates, desk, retrievals, asked)
        if not lifecycle_ok:
            console.print("[red]the lifecycle steps (notice, search, qa) did not all hold[/]")
        return exit_code if lifecycle_ok else 1


def _ask_for_more(
    url: str, settings: Settings, outcomes: Iterable[encounters.Outcome]
) -> str | None:
    """An operator at a provider without an automatic rule asks for more data (§10), the
    way `biox retrieval request` does."""
    for o in outcomes:
        for a in o.answers.values():
            if a.status == "match" and a.partner != "us" and a.decided_by == "automatic":
                ask = RetrievalAsk(
                    query_id=a.query_id,
                    elements=[Element.biographic, Element.encounters],
                    asked_by="demo-operator",
                    justification="identity check before removal proceedings",
                )
                out = codec.to_own_inbox(
                    ask,
                    participant=a.partner,
                    message_id=str(uuid.uuid4()),
                    correlation_id=a.query_id,
                )
                publish_once(url, [codec.with_actor(out, "demo-operator")], "demo-operator")
                return a.query_id
    return None


def _wait_for_retrievals(
    settings: Settings,
    codes: list[str],
    console: Console,
    asked: str | None,
    timeout: float = 60,
) -> list[RetrievalRow]:
    """Every retrieval asked so far answered, the operator's included."""
    deadline = time.monotonic() + timeout
    with console.status("Waiting for retrieval answers..."):
        while True:
            rows: list[RetrievalRow] = []
            for code in codes:
                with session_for(settings.database_for(code)) as session:
                    rows += session.exec(
                        select(RetrievalRow).where(RetrievalRow.role == "asker")
                    ).all()
            settled = all(r.status != "pending" for r in rows)
            if asked is not None:
                settled = settled and any(r.query_id == asked for r in rows)
            if settled or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)


def _show_a_trail(
    console: Console,
    settings: Settings,
    outcomes: list[encounters.Outcome],
    desk: ScriptedExaminers,
) -> None:
    """One query's path through every participant's audit trail: preferably one that an
    examiner decided and that led to a retrieval, else any reviewed one, else a match."""
    reviewed = [case.query_id for _, case, verdict, _ in desk.decided if verdict == "match"]
    with_retrieval = {
        a.query_id
        for o in outcomes
        for p, notes in o.retrievals.items()
        if notes
        for a in o.answers.values()
        if a.partner == p
    }
    matched = [a.query_id for o in outcomes for a in o.answers.values() if a.status == "match"]
    choice = next(
        (q for q in reviewed if q in with_retrieval), next(iter(reviewed or matched), None)
    )
    if choice is None:
        return
    time.sleep(1.0)  # the audit consumers run beside the pipeline: let them catch up
    with every_participant(settings) as sessions:
        rows = trail_across(sessions, choice)
    if rows:
        console.print(trail_table(choice, rows))


def _show_provenance(
    console: Console, settings: Settings, rows: list[RetrievalRow], asked: str | None
) -> None:
    """What the operator's retrieval left at the asker, as `biox records show` prints it."""
    row = next((r for r in rows if r.query_id == asked and r.role == "asker"), None)
    if row is None:
        return
    console.print(f"[bold]$ biox records show {row.query_id} -p {row.asker}[/]")
    with session_for(settings.database_for(row.asker)) as session:
        for section in holdings(session, row.asker, row.query_id):
            console.print(section_table(section))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def report(
    console: Console,
    outcomes: list[encounters.Outcome],
    duplicates: int,
    desk: ScriptedExaminers | None = None,
    retrievals: list[RetrievalRow] | None = None,
    asked: str | None = None,
) -> int:
    pairs, refused, missing = encounters.summarise(outcomes)
    table = Table(
        title="Queries per pair (all encounters submitted at once; latency from submission "
        "to the answer on reply_to, answers decided by an examiner left out)"
    )
    columns = ("pair", "sent", "match", "no_match", "declined", "rejected", "reviewed", "wrong")
    for col in (*columns, "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "pair" else "right", no_wrap=True)
    for (req, prov), s in sorted(pairs.items()):
        table.add_row(
            f"{req} → {prov}",
            str(s.queries),
            str(s.match),
            str(s.no_match),
            str(s.declined),
            str(s.rejected),
            str(s.reviewed),
            str(s.wrong),
            *(
                f"{v:.0f}" if v is not None else "-"
                for v in (s.percentile(50), s.percentile(95), s.percentile(99))
            ),
        )
    console.print(table)
    ref = Table(title="Encounters refused at intake (§2-4), per requester")
    ref.add_column("requester")
    ref.add_column("reasons")
    for req, reasons in sorted(refused.items()):
        ref.add_row(req, ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())))
    console.print(ref)
    declines = Counter(
        a.reason_code for o in outcomes for a in o.answers.values() if a.status == "declined"
    )
    if declines:
        console.print(
            "Declined by the provider's release policy (§9): "
            + ", ".join(f"{k}: {v}" for k, v in sorted(declines.items()))
        )
    if desk is not None:
        console.print(_review_table(desk))
    if retrievals is not None:
        console.print(_retrieval_table(retrievals, asked))
    total = sum(s.queries for s in pairs.values())
    wrong = sum(s.wrong for s in pairs.values())
    console.print(
        f"{len(outcomes)} encounters, {total} queries, {missing} unanswered, "
        f"{duplicates} duplicate results, {wrong} wrong answers."
    )
    healthy = missing == 0 and duplicates == 0 and wrong == 0
    if desk is None:  # a load or fault run: only the answers matter
        return 0 if healthy else 1
    shown = _flows_shown(outcomes, desk, retrievals)
    absent = [flow for flow, seen in shown.items() if not seen]
    console.print(
        "Workflows shown: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in shown.items())
    )
    if desk.failure is not None:
        console.print(f"[red]the scripted examiners failed: {desk.failure!r}[/]")
    return 0 if healthy and not absent and desk.failure is None else 1


def _flows_shown(
    outcomes: list[encounters.Outcome],
    desk: ScriptedExaminers,
    retrievals: list[RetrievalRow] | None,
) -> dict[str, bool]:
    answers = [a for o in outcomes for a in o.answers.values()]
    return {
        "automatic match": any(
            a.status == "match" and a.decided_by == "automatic" for a in answers
        ),
        "no match": any(a.status == "no_match" for a in answers),
        "decline": any(a.status == "declined" for a in answers),
        "review decided": bool(desk.decided)
        and any(a.reviewed and a.status in ("match", "no_match") for a in answers),
        "retrieval answered": any(r.status == "released" for r in retrievals or []),
    }


def _review_table(desk: ScriptedExaminers) -> Table:
    table = Table(title="Review cases decided by the scripted examiners (§8)")
    for col in ("provider", "query", "from", "best score", "verdict", "identity", "examiner"):
        table.add_column(col, no_wrap=True)
    for code, case, verdict, ref in desk.decided:
        best = case.candidates[0]["fused_score"] if case.candidates else 0.0
        table.add_row(
            code,
            case.query_id[:8],
            case.requesting,
            f"{best:.3f}",
            verdict.value,
            ref or "-",
            case.examiner or "",
        )
    return table


def _retrieval_table(rows: list[RetrievalRow], asked: str | None) -> Table:
    table = Table(title="Retrieval queries after a match (§10)")
    for col in ("asker → holder", "query", "asked by", "asked", "status", "released", "withheld"):
        table.add_column(col, no_wrap=True)
    for r in sorted(rows, key=lambda r: r.asked_at):
        table.add_row(
            f"{r.asker} → {r.holder}",
            r.query_id[:8] + (" (operator)" if r.query_id == asked else ""),
            r.asked_by or "",
            ",".join(r.elements),
            r.status + (f" ({r.reason_code})" if r.reason_code else ""),
            ",".join(r.released) or "-",
            ",".join(r.withheld) or "-",
        )
    return table
