"""Who sent a message, as the broker established it (docs/architecture.md, "Identities").

The broker stamps every message with the ``user_id`` its connection authenticated as (it
refuses any other), so that, not the ``biox-from`` header a sender writes itself, says
who is speaking. Broker users are named ``<participant>.<role>``:

* ``<code>.workers``: the participant's workers (and, on one shared development broker,
  the partner traffic they publish);
* ``<code>.link``: the participant's shovels, on each partner's broker;
* ``<code>.operators.<person>``: each of its staff (examiners, privacy officers, on-call,
  administrators), allowed what their duties send (``trust.staff``);
* ``<code>.encounters.<system>``: each of its encounter systems (submissions only, and
  its own reply queues).

Which roles may send a kind follows from the route table's senders: a partner kind only
from a partner's workers or link, an own kind only from one's own workers or operators,
a submission only from one's own encounter systems.
"""

from __future__ import annotations

from enum import StrEnum

from biox.wire.codec import Envelope
from biox.wire.errors import PermanentError, Reason


class Role(StrEnum):
    workers = "workers"
    link = "link"
    operators = "operators"
    encounters = "encounters"


def broker_user(code: str, role: Role) -> str:
    return f"{code}.{role.value}"


def encounter_user(code: str, system: str) -> str:
    """An encounter system's own broker user: one per system (docs/integration.md)."""
    return f"{code}.{Role.encounters.value}.{system}"


def parse_user(user_id: str | None) -> tuple[str, Role] | None:
    """``us.workers`` -> (``us``, workers), ``us.encounters.poe`` -> (``us``, encounters),
    ``us.operators.ana`` -> (``us``, operators); None for a user outside the convention."""
    if not user_id or "." not in user_id:
        return None
    code, _, role = user_id.partition(".")
    role, _, system = role.partition(".")
    named = {Role.encounters.value, Role.operators.value}  # a system's, a person's
    if not code or role not in Role.__members__ or (system and role not in named):
        return None
    return code, Role(role)


def encounter_system(user_id: str | None) -> str | None:
    """The system an encounter system's broker user names (``us.encounters.poe``: poe)."""
    parts = (user_id or "").split(".", 2)
    if len(parts) == 3 and parts[1] == Role.encounters.value and parts[2]:
        return parts[2]
    return None


PARTNER_ROLES = frozenset({Role.workers, Role.link})
OWN_ROLES = frozenset({Role.workers, Role.operators})
ENCOUNTER_ROLES = frozenset({Role.encounters})


def check_identity(env: Envelope, me: str, roles_by_side: dict[str, frozenset[Role]]) -> None:
    """Refuses a message whose broker identity does not speak for its ``biox-from``.

    ``roles_by_side``: for ``"partner"`` and ``"own"``, the roles that may send this kind
    from that side (empty: that side may not send it at all).
    """
    who = parse_user(env.user_id)
    if who is None:
        raise PermanentError(Reason.unauthenticated, f"broker user {env.user_id!r}")
    code, role = who
    if code != env.sender:
        raise PermanentError(
            Reason.forged_sender, f"biox-from {env.sender!r} sent by broker user {env.user_id!r}"
        )
    side = "own" if code == me else "partner"
    if role not in roles_by_side[side]:
        raise PermanentError(Reason.forged_sender, f"{env.kind} may not come from {env.user_id!r}")
