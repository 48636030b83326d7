"""Who may be queried about, and to whom (§2-4, §34-36).

Applied per partner: the statement excludes citizens and nationals of *both* parties to
the pair and the requester's own permanent residents, so a Salvadoran citizen may be the
subject of a US query to Mexico but not of one to El Salvador.
"""

from __future__ import annotations

from biox.errors import Reason
from biox.messages import Encounter, SubjectStatus
from biox.registry import Purpose, Registry, Status


def refusal(
    registry: Registry,
    requester: str,
    provider: str,
    purpose: Purpose,
    subject: SubjectStatus,
    encounter: Encounter,
) -> Reason | None:
    """Why a query from ``requester`` to ``provider`` must not be sent, or None if it may."""
    me = registry.get(requester)
    partner = registry.get(provider)
    if me is None or partner is None:
        return Reason.unknown_participant
    if me.status is not Status.active:
        return Reason.inactive_requester
    if encounter.country != requester:
        return Reason.not_encountered_here  # §3
    if provider not in registry.partners_for(requester, purpose):
        return Reason.purpose_not_agreed  # §2
    if {requester, provider} & set(subject.citizenships):
        return Reason.excluded_citizen  # §4a
    if requester in subject.permanent_residences:
        return Reason.excluded_resident  # §4b-c
    return None


def provider_refusal(
    registry: Registry, provider: str, requester: str, purpose: Purpose
) -> Reason | None:
    """The providing side's own check before it searches (§2, §34-36)."""
    who = registry.get(requester)
    if who is None:
        return Reason.unknown_participant
    if who.status is not Status.active:
        return Reason.inactive_requester
    if not registry.answers(provider, requester, purpose):
        return Reason.purpose_not_agreed
    return None
