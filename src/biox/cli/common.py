"""What every command group shares: the one settings object of an invocation, the
console, option types with their choices, and small helpers."""

from __future__ import annotations

import sys
from contextvars import ContextVar
from enum import StrEnum
from typing import Any, NoReturn

import typer
from rich.console import Console
from sqlmodel import Session

from biox.agreement import subjects
from biox.broker.connection import nodes
from biox.broker.deadletters import operator as default_operator
from biox.broker.publisher import publish_once
from biox.database import session_for
from biox.registry import Registry
from biox.render import text
from biox.routes import ROUTES
from biox.settings import Settings
from biox.trust.staff import Staff, StaffError, person_of

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
    try:
        nodes(url)
    except ValueError as exc:  # a list of nodes that mix schemes or users
        console.print(f"[red]BIOX_AMQP_URL: {exc}[/]")
        raise typer.Exit(2) from exc
    return url


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def acting(participant: Any, command: str, given: str | None = None) -> str:
    """The person running ``command`` for ``participant``, refused unless one of their
    duties covers it (``trust.staff``; docs/security.md, "People and roles").

    On a TLS broker the person is the certificate's (``<code>.operators.<person>``), the
    same identity the broker validates on everything the command publishes; a name given
    on the command line must agree with it. On the shared development broker, where
    everyone is ``guest``, the name given (``--operator``, ``BIOX_OPERATOR``, else
    ``user@host``) is taken as it is and duties are not enforced."""
    s = settings()
    tls = s.client_tls()
    if tls is None and s.dev_shared_broker:
        return given or s.operator or default_operator()
    me = code(participant) if participant is not None else None
    if tls is None:
        person, owner = given or s.operator, me
        if not person:
            _refuse(f"{command}: who are you? Give --operator or BIOX_OPERATOR (BIOX_STAFF)")
    else:
        found = person_of(tls.user)
        if found is None:
            _refuse(f"{command}: the certificate BIOX_TLS_CERT is {tls.user!r}, not a person's")
        owner, person = found
        if me is not None and owner != me:
            _refuse(f"{command}: the certificate is {tls.user}'s, not one of {me}'s staff")
        if given and given != person:
            _refuse(f"{command}: you are {person} by your certificate, not {given}")
    assert person and owner
    try:
        staff = Staff.load(s.staff)
    except StaffError as e:
        _refuse(f"{command}: {e}")
    why = staff.refusal(owner, person, command)
    if why:
        _refuse(f"{command} refused: {why}")
    return person


def _refuse(why: str) -> NoReturn:
    console.print(f"[red]{text(why)}[/]")
    raise typer.Exit(3)


def audited_read(me: str, command: str, terms: dict[str, object], shown: int, who: str) -> None:
    """Records the read in the audit trail before anything is shown; a read that cannot be
    recorded is not shown (docs/operations.md, "Reading personal data")."""
    url = settings().amqp_url
    if not url:
        console.print("[red]BIOX_AMQP_URL is not set: a read of personal data must be audited[/]")
        raise typer.Exit(2)
    event = subjects.read_event(me, command, terms, shown, who)
    publish_once(url, [event], name="biox-read", tls=settings().client_tls())
