"""What every command group shares: the one settings object of an invocation, the
console, option types with their choices, and small helpers."""

from __future__ import annotations

import sys
from contextvars import ContextVar
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from sqlmodel import Session

from biox.agreement import subjects
from biox.broker.publisher import publish_once
from biox.database import session_for
from biox.registry import Registry
from biox.routes import ROUTES
from biox.settings import Settings

# piped output (CI logs, `| tee`) gets room for the tables instead of 80 columns
console = Console() if sys.stdout.isatty() else Console(width=140)


_current: ContextVar[Settings | None] = ContextVar("biox_settings", default=None)


def begin() -> None:
    """Called once per invocation (the root callback): read the environment."""
    _current.set(Settings())


def settings() -> Settings:
    """The settings of this invocation, read from the environment once."""
    current = _current.get()
    if current is None:
        current = Settings()
        _current.set(current)
    return current


def _participants() -> list[str]:
    try:
        return Registry.load(Settings().registry).codes
    except (OSError, ValueError):
        return []  # no registry here: any code is accepted, and refused later if unknown


_CODES = _participants()
#: participants of the registry (BIOX_REGISTRY), offered as choices; any text without one
Participant: Any = StrEnum("Participant", {c: c for c in _CODES}) if _CODES else str
#: message kinds of the route table
Kind = StrEnum("Kind", {k: k for k in ROUTES.kinds})  # type: ignore[misc]  # computed members

PARTICIPANT = typer.Option(..., "--participant", "-p", help="whose database")


def code(participant: Any) -> str:
    return participant.value if isinstance(participant, StrEnum) else str(participant)


def session(participant: Any) -> Session:
    return session_for(settings().database_for(code(participant)))


def amqp_url() -> str:
    url = settings().amqp_url
    if not url:
        console.print("BIOX_AMQP_URL is not set")
        raise typer.Exit(2)
    return url


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def audited_read(me: str, command: str, terms: dict[str, object], shown: int, who: str) -> None:
    """Records the read in the audit trail before anything is shown; a read that cannot be
    recorded is not shown (docs/operations.md, "Reading personal data")."""
    url = settings().amqp_url
    if not url:
        console.print("[red]BIOX_AMQP_URL is not set: a read of personal data must be audited[/]")
        raise typer.Exit(2)
    event = subjects.read_event(me, command, terms, shown, who)
    publish_once(url, [event], name="biox-read", tls=settings().client_tls())
