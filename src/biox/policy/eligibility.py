"""Who may be queried about, and to whom (§2-4, §34-36).

Applied per partner: the statement excludes citizens, nationals and permanent residents of
*both* parties to the pair (§1(ii)), so a Salvadoran citizen may be the subject of a US
query to Mexico but not of one to El Salvador. Both sides check: the requester before it
sends, the provider again on what it receives.
"""

from __future__ import annotations

from biox.registry import Purpose, Registry, Status
from biox.wire.errors import Reason
from biox.wire.messages import Biometrics, Encounter, SubjectStatus

#: ISO 3166-1 alpha-3 codes of the participants and their region, to their alpha-2 codes
#: (the participants' codes): a record may carry either, in any case
ALPHA3 = {
    "usa": "us",
    "mex": "mx",
    "slv": "sv",
    "gtm": "gt",
    "hnd": "hn",
    "nic": "ni",
    "cri": "cr",
    "pan": "pa",
    "blz": "bz",
    "can": "ca",
}


def country_code(value: object) -> str:
    """A nationality as the participants' codes spell it: ``"MX"``, ``" mex "`` and
    ``"mx"`` are one country (§6a compares them so)."""
    text = str(value or "").strip().lower()
    return ALPHA3.get(text, text)


def national_of(nationality: object, *codes: str) -> str | None:
    """Which of ``codes`` a record's nationality names, if any (§1(ii), §6a)."""
    code = country_code(nationality)
    return code if code and code in codes else None


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
    if partner.status is not Status.active:
        return Reason.inactive_provider  # §34: not yet ready; §36: discontinued
    if provider not in registry.partners_for(requester, purpose):
        return Reason.purpose_not_agreed  # §2
    return not_third_country_national(requester, provider, subject, encounter)


def not_third_country_national(
    requester: str, provider: str, subject: SubjectStatus, encounter: Encounter
) -> Reason | None:
    """§1(ii), §3-4: only a third country national encountered in the requester's country.

    A citizen, national or permanent resident of either participant of the pair is not a
    third country national, whichever of the two asks (§1(ii)); §4b-c name the requester's
    own residents, and §1(ii) adds the other's.
    """
    if encounter.country != requester:
        return Reason.not_encountered_here  # §3
    pair = {requester, provider}
    if pair & set(subject.citizenships):
        return Reason.excluded_citizen  # §4a
    if pair & set(subject.permanent_residences):
        return Reason.excluded_resident  # §1(ii), §4b-c
    return None


def provider_refusal(
    registry: Registry,
    provider: str,
    requester: str,
    purpose: Purpose,
    subject: SubjectStatus | None = None,
    encounter: Encounter | None = None,
) -> Reason | None:
    """The providing side's own check before it searches (§2-4, §34-36): it trusts
    neither the requester's status nor its reading of the subject's."""
    who = registry.get(requester)
    if who is None:
        return Reason.unknown_participant
    if who.status is not Status.active:
        return Reason.inactive_requester
    me = registry.get(provider)
    if me is None or me.status is not Status.active:
        return Reason.inactive_provider
    if not registry.answers(provider, requester, purpose):
        return Reason.purpose_not_agreed
    if subject is not None and encounter is not None:
        return not_third_country_national(requester, provider, subject, encounter)
    return None


def lacking(registry: Registry, provider: str, requester: str, biometrics: Biometrics) -> str:
    """The modalities the provider requires of the requester's queries (§5a) that
    ``biometrics`` lacks, named, or "" when none is missing."""
    present = {
        "fingerprints": bool(biometrics.fingerprints),
        "face": biometrics.face is not None,
        "iris": bool(biometrics.irises),
    }
    return ", ".join(m for m in registry.required(provider, requester) if not present[m])
