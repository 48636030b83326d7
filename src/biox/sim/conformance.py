"""``biox conformance``: the encounter-system contract (docs/integration.md), case by case,
against a running participant, as its encounter system sees it.

Each case submits what a client might send, a good or a broken submission, with plain
AMQP properties (what docs/integration.md asks, nothing biox-internal), and checks the
results that come back on its own reply queue: refused with the documented reason,
answered by every partner the registry says is asked, every other partner shown as
skipped, a mated capture matched to its identity. What the registry (``BIOX_REGISTRY``)
says is the expectation: a participant, or a partner, that disagrees fails the case
that shows it, naming what it got.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from biox.policy.eligibility import refusal
from biox.registry import Purpose, Registry
from biox.sim import synth
from biox.wire import addresses
from biox.wire.errors import Reason
from biox.wire.messages import Biometrics, Encounter, SubjectStatus

Result = dict[str, Any]


@dataclass
class Submission:
    encounter_id: str
    body: bytes
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    reply_to: str | None = "own"  # "own": the kit's reply queue
    correlation_id: str | None = "same"  # "same": the encounter id


@dataclass
class Case:
    name: str
    expect: str
    submissions: list[Submission]
    check: Callable[[list[list[Result]]], str | None]  # None: passed; else what was wrong
    needs_operator_view: bool = False


@dataclass
class Outcome:
    case: Case
    passed: bool
    got: str
    #: False where the kit's logins could not look (the held results without an
    #: operator's): said, and not counted as a failure of the participant
    checked: bool = True


class Kit:
    """The cases for one participant, built from the registry and the synthetic
    population (``seed``, ``gallery_size``: those the partners' galleries were built with,
    one size for all or one per partner)."""

    def __init__(
        self,
        registry: Registry,
        me: str,
        seed: int = 2026,
        gallery_size: int | dict[str, int] = 20_000,
    ) -> None:
        self.registry, self.me, self.seed = registry, me, seed
        sizes = gallery_size if isinstance(gallery_size, dict) else {}
        default = gallery_size if isinstance(gallery_size, int) else max(sizes.values(), default=0)
        self.sizes = {c: sizes.get(c, default) for c in registry.codes}
        self.rng = np.random.default_rng()
        self.subject = SubjectStatus(citizenships=["gt"])

    def _expected(self, subject: SubjectStatus, encounter: Encounter) -> dict[str, Reason | None]:
        """Each other participant: asked (None) or skipped with its reason."""
        return {
            p: refusal(self.registry, self.me, p, Purpose.enforce, subject, encounter)
            for p in self.registry.codes
            if p != self.me
        }

    def no_partner_asked(self) -> dict[str, Reason]:
        """Why each partner would be skipped for an ordinary query (a third-country national
        encountered here), when none would be asked; empty when one would. Most cases need
        an answer from somewhere: before the readiness exchange (§34) every one of them is
        refused ``inactive_requester``, which says nothing about the encounter system."""
        reasons = self._expected(self.subject, synth.encounter_here(self.me, self.rng))
        if any(why is None for why in reasons.values()):
            return {}
        return {p: why for p, why in reasons.items() if why is not None}

    def body(
        self, biometrics: Any, subject: SubjectStatus | None = None, country: str | None = None
    ) -> tuple[str, bytes, Encounter]:
        eid = f"CONF-{uuid.uuid4().hex[:12]}"
        encounter = synth.encounter_here(self.me, self.rng)
        if country:
            encounter = encounter.model_copy(update={"country": country})
        data = {
            "encounter_id": eid,
            "purpose": Purpose.enforce.value,
            "subject_status": (subject or self.subject).model_dump(),
            "biometrics": biometrics.model_dump(exclude_none=True)
            if isinstance(biometrics, Biometrics)
            else biometrics,
            "biographic": {"family_name": "CONFORMANCE", "given_names": "TEST"},
            "encounter": encounter.model_dump(exclude_none=True),
        }
        return eid, msgpack.packb(data, use_bin_type=True, datetime=True), encounter

    # --- the cases -------------------------------------------------------------------------

    def cases(self) -> list[Case]:
        out = [self.mated(), self.stranger()]
        for what, subject, country, reason in (
            (
                "a citizen of the requester",
                SubjectStatus(citizenships=[self.me]),
                None,
                Reason.excluded_citizen,
            ),
            (
                "a permanent resident of the requester",
                SubjectStatus(citizenships=["gt"], permanent_residences=[self.me]),
                None,
                Reason.excluded_resident,
            ),
            (
                "encountered in another country",
                self.subject,
                next(c for c in self.registry.codes if c != self.me),
                Reason.not_encountered_here,
            ),
        ):
            out.append(self.refused(f"refused: {what}", subject, country, reason))
        out += [self.partner_citizen()]
        face = synth.capture(self.seed, 7, context=1).face
        assert face is not None
        bad = {
            "template_size": {"face": {"algorithm": face.algorithm, "template": b"\1" * 2047}},
            "unknown_algorithm": {"face": {"algorithm": "vendor-x/9", "template": face.template}},
            "template_invalid": {"face": {"algorithm": face.algorithm, "template": bytes(2048)}},
            "template_invalid (iris mask)": {
                "irises": [
                    {
                        "eye": "left",
                        "algorithm": "biox-iris-2048/1",
                        "code": b"\1" * 256,
                        "mask": bytes(256),
                    }
                ]
            },
            "invalid_message (template as text)": {
                "face": {"algorithm": face.algorithm, "template": "AAAA"}
            },
        }
        for label, biometrics in bad.items():
            reason = Reason(label.split(" ")[0])
            out.append(
                self.refused(f"bad template: {label}", self.subject, None, reason, biometrics)
            )
        out += [self.duplicate(), self.same_message_twice(), self.no_reply_queue()]
        return out

    def _answered(self, results: list[Result], expected: dict[str, Reason | None]) -> str | None:
        if not results:
            return "no result"
        last = max(results, key=lambda r: r.get("revision", 0))
        if last["status"] != "complete":
            return f"status {last['status']} {last.get('reason_code', '')}".strip()
        got = {o["partner"]: o for o in last.get("outcomes", [])}
        if set(got) != set(expected):
            return f"outcomes for {sorted(got)}, expected {sorted(expected)}"
        for p, why in expected.items():
            o = got[p]
            if why is not None and (o["status"], o.get("reason_code")) != ("skipped", why.value):
                return f"{p} {o['status']} {o.get('reason_code', '')}, expected skipped {why.value}"
            if why is None and o["status"] in ("skipped", "timed_out", "rejected"):
                return f"{p} {o['status']} ({o.get('reason_code', '')})"
        return None

    def mated(self) -> Case:
        asked = [
            p
            for p, why in self._expected(
                self.subject, synth.encounter_here(self.me, self.rng)
            ).items()
            if why is None
        ]
        partner = asked[0] if asked else self.me
        size = self.sizes[partner]
        person = synth.known_to(partner, size, self.rng)
        while synth.sealed(person):
            person = synth.known_to(partner, size, self.rng)
        eid, body, encounter = self.body(synth.capture(self.seed, person, context=9))
        expected = self._expected(self.subject, encounter)
        ref = synth.identity_ref(partner, person)

        def check(res: list[list[Result]]) -> str | None:
            wrong = self._answered(res[0], expected)
            if wrong:
                return wrong
            last = max(res[0], key=lambda r: r.get("revision", 0))
            o = next(o for o in last["outcomes"] if o["partner"] == partner)
            top = (o.get("candidates") or [{}])[0].get("identity_ref")
            if o["status"] == "match" and top == ref:
                return None
            return (
                f"{partner} {o['status']} {top or ''}, expected match {ref}: the kit drew "
                f"person {person} of a {size}-identity gallery (seed {self.seed}); if "
                f"{partner}'s was built otherwise, give --gallery-size and --seed"
            )

        return Case(
            f"mated: a capture of {ref}",
            f"{partner} match {ref}; complete",
            [Submission(eid, body)],
            check,
        )

    def stranger(self) -> Case:
        n = synth.stranger(self.seed, self.sizes, self.rng)
        eid, body, encounter = self.body(synth.capture(self.seed, n, context=3))
        expected = self._expected(self.subject, encounter)

        def check(res: list[list[Result]]) -> str | None:
            wrong = self._answered(res[0], expected)
            if wrong:
                return wrong
            last = max(res[0], key=lambda r: r.get("revision", 0))
            hits = [o["partner"] for o in last["outcomes"] if o["status"] == "match"]
            return f"matched by {hits}" if hits else None

        asked = sorted(p for p, why in expected.items() if why is None)
        return Case(
            "stranger",
            f"no_match from {', '.join(asked)}; complete",
            [Submission(eid, body)],
            check,
        )

    def partner_citizen(self) -> Case:
        partner = next(p for p in self.registry.codes if p != self.me)
        subject = SubjectStatus(citizenships=[partner])
        n = synth.stranger(self.seed, self.sizes, self.rng)
        eid, body, encounter = self.body(synth.capture(self.seed, n, context=4), subject)
        expected = self._expected(subject, encounter)
        if all(why is not None for why in expected.values()):
            first = next(why for why in expected.values() if why is not None)
            return self.refused(f"a citizen of {partner}", subject, None, first)
        why = expected[partner]
        return Case(
            f"skipped: a citizen of {partner}",
            f"{partner} skipped {why.value if why else '?'}",
            [Submission(eid, body)],
            lambda res: self._answered(res[0], expected),
        )

    def refused(
        self,
        name: str,
        subject: SubjectStatus,
        country: str | None,
        reason: Reason,
        biometrics: Any = None,
    ) -> Case:
        n = synth.stranger(self.seed, self.sizes, self.rng)
        bio = biometrics if biometrics is not None else synth.capture(self.seed, n, context=5)
        eid, body, _ = self.body(bio, subject, country)

        def check(res: list[list[Result]]) -> str | None:
            if not res[0]:
                return "no result"
            r = res[0][-1]
            got = (r["status"], r.get("reason_code"))
            return None if got == ("refused", reason.value) else f"{got[0]} {got[1] or ''}"

        return Case(name, f"refused {reason.value}", [Submission(eid, body)], check)

    def duplicate(self) -> Case:
        n = synth.stranger(self.seed, self.sizes, self.rng)
        eid, body, _ = self.body(synth.capture(self.seed, n, context=6))
        first, again = Submission(eid, body), Submission(eid, body)

        def check(res: list[list[Result]]) -> str | None:
            refusals = [r for r in res[0] if r["status"] == "refused"]
            answers = [r for r in res[0] if r["status"] != "refused"]
            if len(refusals) != 1 or not answers:
                return f"{len(answers)} answer(s), {len(refusals)} refusal(s)"
            r = refusals[0]
            if (r.get("reason_code"), r.get("submission_id")) != (
                "duplicate_encounter",
                again.message_id,
            ):
                return f"refused {r.get('reason_code')} naming {r.get('submission_id')}"
            return None

        return Case(
            "duplicate encounter id, new message id",
            "the first answered; the second refused duplicate_encounter naming it",
            [first, again],
            check,
        )

    def same_message_twice(self) -> Case:
        n = synth.stranger(self.seed, self.sizes, self.rng)
        eid, body, _ = self.body(synth.capture(self.seed, n, context=8))
        one = Submission(eid, body)
        twin = Submission(eid, body, message_id=one.message_id)

        def check(res: list[list[Result]]) -> str | None:
            refused = [r for r in res[0] if r["status"] == "refused"]
            return (
                f"refused {refused[0].get('reason_code')}"
                if refused
                else (None if res[0] else "no result")
            )

        return Case(
            "the same message twice (a publish retried)",
            "absorbed: answered once, nothing refused",
            [one, twin],
            check,
        )

    def no_reply_queue(self) -> Case:
        n = synth.stranger(self.seed, self.sizes, self.rng)
        eid, body, _ = self.body(synth.capture(self.seed, n, context=10))
        missing = f"{self.me}.replies.conformance.missing-{uuid.uuid4().hex[:8]}"
        return Case(
            "reply queue missing",
            f"the result held in {addresses.held_results_queue(self.me)}",
            [Submission(eid, body, reply_to=missing)],
            lambda res: None,
            needs_operator_view=True,
        )
