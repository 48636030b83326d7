"""``biox demo`` and ``biox synth``: the simulators (``biox.sim``), behind the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.progress import Progress

from biox.cli.common import Participant, code, console, session, settings
from biox.registry import Registry
from biox.trust.tls import ClientTLS
from biox.wire.errors import REASON_TEXT, Reason


def demo(
    gallery_size: int = typer.Option(20_000, help="identities per participant gallery"),
    encounters: int = typer.Option(100, help="encounters submitted per participant"),
    seed: int = typer.Option(2026),
    sovereign: bool = typer.Option(
        True, help="then run every participant on its own TLS broker, linked by shovels"
    ),
) -> None:
    """Run the exchange end to end on this machine and print what came back."""
    from biox.sim import sovereign_demo
    from biox.sim.demo import run

    code = run(
        settings(),
        gallery_size=gallery_size,
        per_participant=encounters,
        seed=seed,
        console=console,
    )
    if code == 0 and sovereign:
        code = sovereign_demo.run(settings(), console, min(gallery_size, 5000), 30, seed)
    raise typer.Exit(code)


synth_app = typer.Typer(
    help="The synthetic population: a participant's gallery (`biox synth -p P`), or a "
    "capture of one of its identities (`biox synth probe REF`).",
    invoke_without_command=True,
)


@synth_app.callback()
def synth(
    ctx: typer.Context,
    participant: Participant = typer.Option(None, "--participant", "-p"),
    size: int = typer.Option(20_000),
    seed: int = typer.Option(2026),
) -> None:
    """Build a participant's synthetic gallery (database records and FAISS indexes)."""
    from biox.sim import galleries

    if ctx.invoked_subcommand is not None:
        return
    if participant is None:
        console.print("[red]--participant is required[/] (or: biox synth probe REF)")
        raise typer.Exit(2)
    me = code(participant)
    started = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task(f"gallery {me}", total=size)
        gallery = galleries.build_gallery(
            settings(), me, size, seed, lambda n: progress.advance(task, n)
        )
    console.print(
        f"{me}: {gallery.size} identities, {gallery.kind} index, "
        f"{time.perf_counter() - started:.1f}s"
    )


@synth_app.command("probe")
def synth_probe(
    ref: str = typer.Argument(..., help="a synthetic identity, e.g. MX-000000123"),
    seed: int = typer.Option(2026, help="the seed the gallery was built with"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the capture"),
    quality: int = typer.Option(75, min=1, max=100),
    context: int = typer.Option(0, help="another number: another capture of the same person"),
) -> None:
    """A fresh, mated capture of a synthetic identity: the `biometrics` map of an
    encounter.submit, msgpack-encoded, to test a client or a partner against a gallery
    built by `biox synth` (docs/integration.md, "Conformance")."""
    import msgpack

    from biox.sim import synth as population

    code_ = ref.split("-", 1)[0].lower()
    number = population.number_of(code_, ref)
    if number is None:
        console.print(f"[red]{ref!r} is not a synthetic identity (<CODE>-<number>)[/]")
        raise typer.Exit(2)
    bio = population.capture(seed, number, context=context, quality=quality)
    out.write_bytes(msgpack.packb(bio.model_dump(exclude_none=True), use_bin_type=True))
    parts = ["face"] if bio.face else []
    parts += [f"{len(bio.fingerprints)} fingers"] + (
        [f"{len(bio.irises)} irises"] if bio.irises else []
    )
    console.print(f"{ref}: {', '.join(parts)} -> {out}")
    held = _gallery_sizes([code_], "")
    if not population.member_of(code_, np.array([number]))[0]:
        console.print(
            f"[yellow]{ref} is in no gallery {code_} builds: a query with it is non-mated[/]"
        )
    elif held and number > population.last_member(code_, held[code_]):
        console.print(
            f"[yellow]{ref} is not in {code_}'s gallery of {held[code_]} under BIOX_DATA_DIR: "
            "a query with it is non-mated there[/]"
        )


def conformance(
    participant: Participant = typer.Option(..., "--participant", "-p"),
    amqp_url: str = typer.Option(None, "--amqp-url", help="default: BIOX_AMQP_URL"),
    user: str = typer.Option(
        None,
        help="the user_id to stamp: <code>.encounters.<system> on a TLS "
        "broker (its certificate: BIOX_TLS_*)",
    ),
    seed: int = typer.Option(2026, help="the seed the partners' synthetic galleries used"),
    gallery_size: int = typer.Option(
        None,
        help="the partners' gallery size, for the mated case (default: read from each "
        "partner's database under BIOX_DATA_DIR, as `biox synth` built it)",
    ),
    timeout: float = typer.Option(120.0, help="how long to wait for every result"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per case, for CI"),
    operator_cert: Path = typer.Option(
        None,
        help="an on-call operator's certificate (<code>.operators.<person> with the on_call "
        "duty, under BIOX_TLS_CA) to look into the held results with: an encounter system's "
        "login may not, and the missing-reply-queue case is then not checked",
    ),
    operator_key: Path = typer.Option(None, help="that certificate's key"),
) -> None:
    """Run the encounter-system contract's cases against a running participant, as its
    encounter system: mated, stranger, each refusal, each bad template, a duplicate, a
    retried publish, a missing reply queue. Prints a pass/fail table; exits 1 on a fail.
    Expectations come from this side's registry (BIOX_REGISTRY) with the statuses its
    database holds (§34: readiness changes the database, not the file)."""
    from rich.progress import Progress
    from rich.table import Table

    from biox.sim.conformance import Kit
    from biox.sim.conformance_run import Runner

    s = settings()
    url = amqp_url or s.amqp_url
    if not url:
        console.print("[red]give --amqp-url or set BIOX_AMQP_URL[/]")
        raise typer.Exit(2)
    me = code(participant)
    registry = _as_held(Registry.load(s.registry), me)
    sizes: int | dict[str, int] = gallery_size or _gallery_sizes(registry.codes, me)
    if not sizes:
        console.print(
            "[red]no partner gallery under BIOX_DATA_DIR to draw the mated case from: give "
            "--gallery-size (and --seed) as the partners built theirs[/]"
        )
        raise typer.Exit(2)
    if isinstance(sizes, dict) and not as_json:
        read = ", ".join(f"{c} {n}" for c, n in sorted(sizes.items()))
        console.print(f"partners' galleries (from BIOX_DATA_DIR): {read}; seed {seed}")
    kit = Kit(registry, me, seed, sizes)
    skipped = kit.no_partner_asked()
    if skipped:
        why = "; ".join(f"{p}: {r.value} ({REASON_TEXT[r]})" for p, r in sorted(skipped.items()))
        console.print(
            f"[red]{me} would ask no partner, so the cases cannot show the contract: {why}[/]"
        )
        if {Reason.inactive_requester, Reason.inactive_provider} & set(skipped.values()):
            console.print(
                f"Readiness (§34): `biox participants ready -p {me}` here and each partner's "
                f"own on its side; `biox participants list -p {me}` shows where each stands."
            )
        raise typer.Exit(2)
    cases = kit.cases()
    operator = None
    if operator_cert or operator_key:
        if not (operator_cert and operator_key and s.tls_ca):
            console.print(
                "[red]--operator-cert and --operator-key go together, with BIOX_TLS_CA[/]"
            )
            raise typer.Exit(2)
        operator = ClientTLS(s.tls_ca, operator_cert, operator_key)
    runner = Runner(url, me, s.client_tls(), user, operator)
    with Progress(console=console, disable=as_json) as progress:
        task = progress.add_task(f"{len(cases)} cases against {me}", total=len(cases))
        outcomes = runner.run(cases, timeout, lambda n: progress.update(task, completed=n))
    failed = [o.case.name for o in outcomes if o.checked and not o.passed]
    unchecked = [o.case.name for o in outcomes if not o.checked]
    if as_json:
        import json

        for o in outcomes:
            print(
                json.dumps(
                    {
                        "case": o.case.name,
                        "expected": o.case.expect,
                        "got": o.got,
                        "passed": o.passed,
                        "checked": o.checked,
                    }
                )
            )
        raise typer.Exit(1 if failed else 0)
    table = Table(title=f"conformance of {me}")
    for col in ("case", "expected", "got", ""):
        table.add_column(col)
    for o in outcomes:
        mark = "[green]pass[/]" if o.passed else "[red]FAIL[/]" if o.checked else "[yellow]—[/]"
        table.add_row(o.case.name, o.case.expect, o.got, mark)
    console.print(table)
    console.print(
        f"{len(outcomes) - len(failed) - len(unchecked)} passed, {len(failed)} failed"
        + (f": {'; '.join(failed)}" if failed else "")
        + (f"; not checked: {'; '.join(unchecked)}" if unchecked else "")
    )
    raise typer.Exit(1 if failed else 0)


def _gallery_sizes(codes: list[str], me: str) -> dict[str, int]:
    """How many of its own identities each partner's database holds (0: none here)."""
    from sqlalchemy import func
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import select

    from biox.store import Record

    found = {}
    for other in codes:
        if other == me:
            continue
        try:
            with session(other) as s:
                count = select(func.count()).select_from(Record).where(Record.source == other)
                n = int(s.exec(count).one())
        except SQLAlchemyError:
            continue
        if n:
            found[other] = n
    return found


def _as_held(registry: Registry, me: str) -> Registry:
    """The registry with the statuses ``me``'s database holds (§34: the file starts
    everyone pending; readiness notices change the database, not the file), so the kit
    expects what intake will do."""
    from sqlmodel import select

    from biox.agreement import participants
    from biox.store import ParticipantRow

    with session(me) as s:
        rows = s.exec(select(ParticipantRow)).all()
    return participants.overlay(registry, rows) if rows else registry
