"""``biox demo`` and ``biox synth``: the simulators (``biox.sim``), behind the CLI."""

from __future__ import annotations

import time

import typer
from rich.progress import Progress

from biox import logs
from biox.cli.common import Participant, code, console, settings


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

    logs.configure("WARNING", json=False)
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


def synth(
    participant: Participant = typer.Option(..., "--participant", "-p"),
    size: int = typer.Option(20_000),
    seed: int = typer.Option(2026),
) -> None:
    """Build a participant's synthetic gallery (database records and FAISS indexes)."""
    from biox.sim import galleries

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
