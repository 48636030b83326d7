"""Failure classes and the closed list of reason codes sent to partners.

The consume loop routes on the class: a ``PermanentError`` is never retried (the same
input fails the same way), a ``TransientError`` climbs the retry tiers. The reason code
travels to the sender in a ``rejected`` response, so it is part of the contract and
listed in ``schemas/reason-codes.json``.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # the envelope or body cannot be read
    undecodable = "undecodable"
    too_large = "too_large"
    unknown_kind = "unknown_kind"
    unknown_schema = "unknown_schema"
    invalid_message = "invalid_message"
    misaddressed = "misaddressed"
    # who sent it, as the broker and the signature prove (docs/architecture.md, "Identities")
    unauthenticated = "unauthenticated"
    forged_sender = "forged_sender"
    unsigned = "unsigned"
    unknown_key = "unknown_key"
    bad_signature = "bad_signature"
    undecryptable = "undecryptable"
    stale = "stale"
    # who may ask what (§1-4, §34-36)
    unknown_participant = "unknown_participant"
    inactive_requester = "inactive_requester"
    inactive_provider = "inactive_provider"
    inactive_partner = "inactive_partner"
    purpose_not_agreed = "purpose_not_agreed"
    excluded_citizen = "excluded_citizen"
    excluded_resident = "excluded_resident"
    not_encountered_here = "not_encountered_here"
    no_partner = "no_partner"
    # biometric content
    no_biometrics = "no_biometrics"
    biometrics_required = "biometrics_required"
    unknown_algorithm = "unknown_algorithm"
    template_size = "template_size"
    template_invalid = "template_invalid"
    # anything about one query that the receiver cannot relate to what it sent
    unknown_query = "unknown_query"
    duplicate_encounter = "duplicate_encounter"
    duplicate_query = "duplicate_query"
    # the encounter-system contract (docs/integration.md)
    no_reply_to = "no_reply_to"
    no_answer = "no_answer"
    # release decisions of the providing participant (§7, §9)
    record_not_releasable = "record_not_releasable"
    release_not_agreed = "release_not_agreed"
    # retrieval queries (§10)
    not_matched = "not_matched"
    unknown_retrieval = "unknown_retrieval"
    # human review (§8)
    unknown_case = "unknown_case"
    not_a_candidate = "not_a_candidate"
    # notices between participants
    unknown_notice = "unknown_notice"


REASON_TEXT: dict[Reason, str] = {
    Reason.undecodable: "body is not a msgpack map",
    Reason.too_large: "body, or a string, binary, list or map in it, exceeds the limits",
    Reason.unknown_kind: "message type is not in the biox catalogue",
    Reason.unknown_schema: "schema version is not supported by this participant",
    Reason.invalid_message: "body does not match the schema (missing or malformed fields)",
    Reason.misaddressed: "message is addressed to another participant",
    Reason.unauthenticated: "the broker user is not a biox identity (<code>.<role>)",
    Reason.forged_sender: "biox-from names another participant, or a role that may not send this",
    Reason.unsigned: "a partner message without its signature headers",
    Reason.unknown_key: "the signing key is not in the trust file, or is revoked",
    Reason.bad_signature: "the signature does not verify over this message",
    Reason.undecryptable: "the body is not sealed to a key this participant holds",
    Reason.stale: "signed outside the freshness window (too old, or ahead of the clock)",
    Reason.unknown_participant: "participant is not in the registry",
    Reason.inactive_requester: "requesting participant is not active (§34, §36)",
    Reason.inactive_provider: "providing participant is not active (§34, §36)",
    Reason.inactive_partner: "a participant of this retrieval is not active (§34, §36)",
    Reason.purpose_not_agreed: "purpose is not one the participants agreed (§2)",
    Reason.excluded_citizen: "subject is a citizen or national of a participant (§4a)",
    Reason.excluded_resident: "subject is a permanent resident of a participant (§1(ii), §4b-c)",
    Reason.not_encountered_here: "subject was not encountered in the requester's country (§3)",
    Reason.no_partner: "no partner agreed to answer queries for this purpose",
    Reason.no_biometrics: "query carries no biometric template",
    Reason.biometrics_required: "the agreement requires a modality the query lacks (§5a)",
    Reason.unknown_algorithm: "template algorithm is not supported by the provider",
    Reason.template_size: "template length does not match its algorithm",
    Reason.template_invalid: "template has NaN, infinite or all-zero values",
    Reason.unknown_query: "no query with this id was sent to this participant",
    Reason.duplicate_encounter: "an encounter with this id was already submitted",
    Reason.duplicate_query: (
        "a query with this id came before under another message id: its answer stands"
    ),
    Reason.no_reply_to: (
        "an encounter.submit needs reply_to (the queue its results go to) and correlation_id "
        "(= its encounter_id)"
    ),
    Reason.no_answer: "the partner did not answer by the deadline; a later answer revises this",
    Reason.record_not_releasable: "the matched record is not releasable (§9)",
    Reason.release_not_agreed: (
        "the release policy releases nothing to this participant for this purpose (§9)"
    ),
    Reason.not_matched: "the asker did not answer that query with a match (§10)",
    Reason.unknown_retrieval: "no retrieval request with this id was sent",
    Reason.unknown_case: "no review case with this id",
    Reason.not_a_candidate: "the chosen identity is not a candidate of the case",
    Reason.unknown_notice: "no notice with this id was sent or received",
}

#: refusals of a message whose sender is not proven: nobody is answered (the one named in
#: biox-from may not be the one speaking), nothing is kept; the dead-letter queue and the
#: audit trail record it with its reason
UNPROVEN = frozenset(
    {
        Reason.unauthenticated,
        Reason.forged_sender,
        Reason.unsigned,
        Reason.unknown_key,
        Reason.bad_signature,
        Reason.undecryptable,
        Reason.stale,
    }
)

# Where each code can appear, so an integrator knows what to expect on which message:
# ``rejected`` / ``declined`` responses and retrieval responses, ``refused`` encounter
# results, or only in a dead letter's headers (the sender could not be identified).
REASON_USE: dict[Reason, tuple[str, ...]] = {
    **{
        r: ("rejected", "refused", "dead-letter")
        for r in (
            Reason.undecodable,
            Reason.too_large,
            Reason.unknown_kind,
            Reason.unknown_schema,
            Reason.invalid_message,
            Reason.misaddressed,
            Reason.no_biometrics,
            Reason.unknown_algorithm,
            Reason.template_size,
            Reason.template_invalid,
        )
    },
    Reason.unknown_participant: ("refused", "skipped", "dead-letter"),
    Reason.biometrics_required: ("rejected", "refused", "skipped"),
    **{r: ("dead-letter",) for r in UNPROVEN},
    Reason.inactive_requester: ("declined", "refused", "skipped"),
    Reason.inactive_provider: ("declined", "refused", "skipped"),
    Reason.inactive_partner: ("declined", "dead-letter"),
    Reason.purpose_not_agreed: ("declined", "refused", "skipped"),
    Reason.excluded_citizen: ("declined", "refused", "skipped"),
    Reason.excluded_resident: ("declined", "refused", "skipped"),
    Reason.not_encountered_here: ("declined", "refused", "skipped"),
    Reason.no_partner: ("refused",),
    Reason.unknown_query: ("dead-letter",),
    Reason.duplicate_encounter: ("refused",),
    Reason.duplicate_query: ("dead-letter",),
    Reason.no_reply_to: ("dead-letter",),
    Reason.no_answer: ("timed_out",),
    Reason.record_not_releasable: ("declined",),
    Reason.release_not_agreed: ("declined",),
    Reason.not_matched: ("declined", "dead-letter"),
    Reason.unknown_retrieval: ("dead-letter",),
    Reason.unknown_case: ("dead-letter",),
    Reason.not_a_candidate: ("dead-letter",),
    Reason.unknown_notice: ("dead-letter",),
}


class BioxError(Exception):
    """Base of errors the consume loop knows how to route."""

    permanent = True
    #: whether the sender was proven (broker identity, route, signature) before this was
    #: found: only then may a refusal be answered (the consume loop sets it)
    answerable = True

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail or REASON_TEXT[reason]}")


class PermanentError(BioxError):
    """The same input will fail the same way: reject it or dead-letter it, never retry."""


class NoPartner(PermanentError):
    """A submission no partner may be asked about; ``skipped``: each other participant with
    why, which its refused result lists as skipped outcomes (docs/integration.md)."""

    def __init__(self, reason: Reason, detail: str, skipped: dict[str, Reason]) -> None:
        super().__init__(reason, detail)
        self.skipped = skipped


class TransientError(BioxError):
    """Worth another try later: climbs the retry tiers, then the DLQ with its reason."""

    permanent = False
