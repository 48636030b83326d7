"""What a simulated encounter system submits: a deterministic mix of mated, unknown and
§4-excluded subjects per requester, each with the answers biox should give."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from biox.policy.eligibility import refusal
from biox.registry import Purpose, Registry
from biox.sim import synth
from biox.wire.messages import Biometrics, EncounterSubmit

SCENARIOS = ("mated", "stranger", "citizen", "resident", "partner_citizen", "poor")
WEIGHTS = (0.55, 0.30, 0.06, 0.05, 0.04, 0.0)
# "poor": a mated subject captured badly (one smudged finger): an automatic match, a
# review case for an examiner, or a miss; never a wrong identity.


@dataclass
class Planned:
    encounter_id: str
    requester: str
    person: int
    scenario: str
    submit: EncounterSubmit
    expected_partners: list[str]
    submitted_at: float = 0.0


def plan(
    registry: Registry,
    gallery_sizes: dict[str, int],
    per_participant: int,
    seed: int,
    requesters: Iterable[str] | None = None,
    draw: int = 0,
    poor: float = 0.0,
) -> list[Planned]:
    """A deterministic mix of mated, unknown and §4-excluded subjects per requester.

    ``seed`` is the population's (the galleries were built from it); ``draw`` picks
    another set of encounters from the same population; ``poor`` is the share of badly
    captured mated subjects (review cases), taken from the mated share.
    """
    rng = np.random.default_rng([seed, 99, draw])
    weights = np.array(WEIGHTS)
    weights[SCENARIOS.index("poor")] = poor
    weights[SCENARIOS.index("mated")] -= poor
    out: list[Planned] = []
    for requester in requesters or registry.codes:
        me = registry.participants[requester]
        purposes = sorted({p for a in me.agreements.values() for p in a.send})
        for i in range(per_participant):
            purpose = Purpose(purposes[int(rng.integers(0, len(purposes)))])
            partners = registry.partners_for(requester, purpose)
            scenario = SCENARIOS[int(rng.choice(len(SCENARIOS), p=weights))]
            if scenario in ("mated", "poor") and partners:
                target = partners[int(rng.integers(0, len(partners)))]
                number = synth.known_to(target, gallery_sizes[target], rng)
            else:
                number = synth.stranger(seed, gallery_sizes, rng)
            excluded = scenario if scenario in ("citizen", "resident", "partner_citizen") else None
            status = synth.status_for(requester, partners, excluded)
            encounter = synth.encounter_here(requester, rng)
            quality = int(rng.integers(45, 96))
            p = synth.person(seed, number)
            encounter_id = f"{requester.upper()}-ENC-{seed}-{draw}-{i:06d}"
            submit = EncounterSubmit(
                encounter_id=encounter_id,
                purpose=purpose,
                subject_status=status,
                biometrics=(
                    synth.poor_capture(seed, number, context=zlib.crc32(encounter_id.encode()))
                    if scenario == "poor"
                    else synth.capture(
                        seed, number, context=zlib.crc32(encounter_id.encode()), quality=quality
                    )
                ),
                biographic=p.biographic,
                encounter=encounter,
            )
            expected = [
                partner
                for partner in partners
                if refusal(registry, requester, partner, purpose, status, encounter) is None
            ]
            out.append(Planned(encounter_id, requester, number, scenario, submit, expected))
    return out


def single(
    registry: Registry,
    requester: str,
    person: int,
    seed: int,
    purpose: Purpose = Purpose.enforce,
    biometrics: Biometrics | None = None,
    scenario: str = "mated",
) -> Planned:
    """One encounter of a chosen person (a third-country national) under a fresh id."""
    eid = f"{requester.upper()}-ONE-{uuid.uuid4().hex[:10]}"
    submit = EncounterSubmit(
        encounter_id=eid,
        purpose=purpose,
        subject_status=synth.status_for(requester, [], None),
        biometrics=biometrics or synth.capture(seed, person, context=zlib.crc32(eid.encode())),
        biographic=synth.person(seed, person).biographic,
        encounter=synth.encounter_here(requester, np.random.default_rng(person)),
    )
    partners = registry.partners_for(requester, purpose)
    return Planned(eid, requester, person, scenario, submit, partners)


def repeat(base: list[Planned], n: int, tag: str) -> list[Planned]:
    """``n`` encounters cycling through ``base`` under fresh encounter ids (load tests)."""
    out = []
    for i in range(n):
        p = base[i % len(base)]
        eid = f"{p.encounter_id}-{tag}-{i}"
        submit = p.submit.model_copy(update={"encounter_id": eid})
        out.append(
            Planned(eid, p.requester, p.person, p.scenario, submit, list(p.expected_partners))
        )
    return out
