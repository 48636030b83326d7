"""Signed audit checkpoints: truncation and a re-hashed rewrite are named; forgeries are not
evidence; the audit worker sends them on schedule and partners keep them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import select

from biox.database import session_for
from biox.handlers.audit import AuditHandler
from biox.handlers.notice import NoticeHandler
from biox.store import AuditEntry, CheckpointRow
from biox.trust import audit, checkpoints
from biox.trust.checkpoints import Held
from biox.trust.sealing import memory_rings
from biox.wire import codec
from biox.wire.errors import Reason
from biox.wire.inbound import Inbound
from biox.wire.messages import AuditCheckpoint
from tests.registry import operating

RINGS = memory_rings(["us", "mx", "sv"])
AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def chain(n: int) -> list[AuditEntry]:
    rows = [
        AuditEntry(
            seq=0,
            received_at=AT + timedelta(seconds=i),
            direction="in",
            kind="query",
            message_id=f"m{i}",
            body_sha256="0" * 64,
            prev_hash="",
            entry_hash="",
        ).model_dump()
        for i in range(n)
    ]
    return [AuditEntry(**r) for r in audit.chain(rows, 0, audit.GENESIS)]


def held(entries: list[AuditEntry], seq: int, holder: str = "mx") -> Held:
    return Held(holder, checkpoints.sign(RINGS["us"], seq, entries[seq - 1].entry_hash, AT))


def test_checkpoints_that_agree_with_the_chain_say_nothing():
    entries = chain(10)
    assert checkpoints.against(entries, [held(entries, 4), held(entries, 10, "sv")]) == []
    assert checkpoints.against([], []) == []


def test_a_truncated_tail_is_named_though_the_shorter_chain_verifies():
    entries = chain(10)
    proof = [held(entries, 8)]
    cut = entries[:6]
    assert audit.first_break(cut) is None  # the chain alone cannot tell
    [problem] = checkpoints.against(cut, proof)
    assert problem.startswith("truncated:") and "names entry 8" in problem
    assert "ends at 6" in problem and "held by mx" in problem


def test_a_chain_emptied_is_truncated_at_its_first_checkpoint():
    entries = chain(3)
    [problem] = checkpoints.against([], [held(entries, 1)])
    assert problem.startswith("truncated:") and "names entry 1; the chain ends at 0" in problem


def test_a_chain_rewritten_and_rehashed_from_an_entry_on_is_named():
    entries = chain(10)
    proof = [held(entries, 5), held(entries, 9, "sv")]
    rows = [{**e.model_dump(), "kind": "response" if e.seq == 3 else e.kind} for e in entries]
    rewritten = [AuditEntry(**r) for r in audit.chain(rows, 0, audit.GENESIS)]  # rehashed
    assert audit.first_break(rewritten) is None
    problems = checkpoints.against(rewritten, proof)
    assert problems == [
        "rewritten: entry 5 is not the one the checkpoint of 2026-11-22 12:00:00 held by mx names",
        "rewritten: entry 9 is not the one the checkpoint of 2026-11-22 12:00:00 held by sv names",
    ]
    missing = [e for e in entries if e.seq != 5]
    assert checkpoints.against(missing, proof)[0].startswith("removed: entry 5")


def test_only_checkpoints_signed_by_the_participant_they_name_are_evidence():
    entries = chain(3)
    good = checkpoints.sign(RINGS["us"], 3, entries[2].entry_hash, AT)
    trust = RINGS["us"].trust
    assert checkpoints.genuine(trust, good)
    by_mx = checkpoints.sign(RINGS["mx"], 3, entries[2].entry_hash, AT)
    assert not checkpoints.genuine(trust, by_mx.model_copy(update={"participant": "us"}))
    assert not checkpoints.genuine(trust, good.model_copy(update={"seq": 2}))
    assert not checkpoints.genuine(trust, good.model_copy(update={"entry_hash": "f" * 64}))
    assert not checkpoints.genuine(trust, good.model_copy(update={"at": AT + timedelta(1)}))
    assert not checkpoints.genuine(trust, good.model_copy(update={"key_id": "us-old"}))
    assert not checkpoints.genuine(trust, good.model_copy(update={"signature": "!!"}))


def inbound(i: int) -> Inbound[None]:
    env = codec.Envelope(f"m{i}", "query", "query/1", "mx", "us", f"q{i}", user_id="mx.link")
    return Inbound(env, None, b"body", "biox.us", "us.query")


def test_the_audit_worker_sends_its_signed_head_to_every_partner_on_its_schedule(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    h = AuditHandler("us", ["mx", "sv"], 60, lambda: RINGS["us"])
    assert h.maintain_every_s == 60  # the consume loop's interval
    with session_for(url) as s:
        assert h.maintain(s, AT) == []  # an empty chain: no head to vouch for
        for batch in ([inbound(1), inbound(2)], [inbound(3), inbound(4), inbound(5)]):
            results = h.chain(batch, s)
            assert all(e.outgoing == [] for e in results)  # traffic sends no checkpoint
            s.commit()  # the entries are in the session's transaction (``audit.append``)
        last = s.exec(select(AuditEntry).where(AuditEntry.seq == 5)).one()
        sent = h.maintain(s, AT)
    assert [(o.envelope.recipient, o.routing_key) for o in sent] == [
        ("mx", "mx.audit.checkpoint"),
        ("sv", "sv.audit.checkpoint"),
    ]
    cp = codec.decode_body(AuditCheckpoint, sent[0].envelope.schema, sent[0].body)
    assert (cp.participant, cp.seq, cp.entry_hash, cp.at) == ("us", 5, last.entry_hash, AT)
    assert checkpoints.genuine(RINGS["mx"].trust, cp)
    assert len({o.envelope.message_id for o in sent}) == len(sent)  # random, one each
    assert {(o.envelope.sender, o.envelope.correlation_id) for o in sent} == {
        ("us", "checkpoint:us:5")
    }
    with session_for(url) as s:  # the same head again (a partner keeps it once, by position)
        assert [o.envelope.correlation_id for o in h.maintain(s, AT)] == [
            o.envelope.correlation_id for o in sent
        ]
        h.chain([inbound(6)], s)
        s.commit()
        again = h.maintain(s, AT)
    assert [o.envelope.correlation_id for o in again] == ["checkpoint:us:6"] * 2


def test_an_audit_worker_without_partners_or_keys_has_no_schedule():
    assert AuditHandler("us", [], 60, lambda: RINGS["us"]).maintain_every_s == 0
    assert AuditHandler("us", ["mx"], 60, None).maintain_every_s == 0


def test_the_audit_worker_checkpoints_for_the_registrys_partners_with_its_own_keys(tmp_path):
    from pathlib import Path

    from biox.handlers.base import Context
    from biox.policy.release import Policies
    from biox.settings import Settings
    from biox.trust.sealing import ensure_keys, load_ring

    settings = Settings(data_dir=tmp_path, keys_dir=tmp_path / "keys", audit_checkpoint_s=42)
    ensure_keys(settings.keys(), ["us", "mx", "sv"])
    registry = operating()
    policy = Policies.load(Path("deploy/policy.toml")).of("us")
    h = AuditHandler.build(Context("us", registry, policy, settings))
    assert (h.me, h.partners, h.maintain_every_s) == ("us", ["mx", "sv"], 42)
    assert h._ring is not None
    ring = h._ring()
    assert (ring.me, ring.kid) == ("us", load_ring(settings.keys(), "us").kid)


def test_a_partner_keeps_genuine_checkpoints_once_and_refuses_others(tmp_path):
    url = f"sqlite:///{tmp_path / 'mx.db'}"
    entries = chain(4)
    good = checkpoints.sign(RINGS["us"], 4, entries[3].entry_hash, AT)
    notice = NoticeHandler("mx", RINGS["mx"].trust)

    def inb(cp: AuditCheckpoint, sender: str = "us") -> Inbound[AuditCheckpoint]:
        env = codec.Envelope("c", "audit.checkpoint", "audit.checkpoint/1", sender, "mx")
        return Inbound(env, cp)

    with session_for(url) as s:
        results = notice.checkpoint(
            [
                inb(good),
                inb(good),  # the same again in the batch
                inb(good, sender="sv"),  # sv passing on us's checkpoint as its own
                inb(good.model_copy(update={"entry_hash": "f" * 64})),
            ],
            s,
        )
        assert [getattr(r, "outcome", None) for r in results[:2]] == [
            "kept:checkpoint",
            "kept:checkpoint-again",
        ]
        assert [(r.reason.value, r.detail) for r in results[2:]] == [
            ("forged_sender", "checkpoint of 'us' sent by 'sv'"),
            ("bad_signature", "checkpoint us:4"),
        ]
        s.add_all(results[0].rows)
        s.commit()
        [row] = s.exec(select(CheckpointRow)).all()
        assert (row.participant, row.seq, row.entry_hash) == ("us", 4, entries[3].entry_hash)
        [back] = checkpoints.held_in(s, "mx", "us")
        assert back.checkpoint == good and back.holder == "mx"
        assert checkpoints.held_in(s, "mx", "sv") == []


def test_a_second_signed_head_for_a_held_position_is_refused_as_a_rewrite(tmp_path):
    """us signs entry 4's hash, then (after rewriting its chain) another hash for entry 4:
    mx keeps the first and refuses the second by reason, so both stay as evidence."""
    url = f"sqlite:///{tmp_path / 'mx.db'}"
    entries, other = chain(4), chain(5)
    first = checkpoints.sign(RINGS["us"], 4, entries[3].entry_hash, AT)
    second = checkpoints.sign(RINGS["us"], 4, other[4].entry_hash, AT)
    notice = NoticeHandler("mx", RINGS["mx"].trust)
    env = codec.Envelope("c", "audit.checkpoint", "audit.checkpoint/1", "us", "mx")
    with session_for(url) as s:
        [kept] = notice.checkpoint([Inbound(env, first)], s)
        s.add_all(kept.rows)
        s.commit()
        [again, refused] = notice.checkpoint([Inbound(env, first), Inbound(env, second)], s)
    assert again.outcome == "kept:checkpoint-again"
    assert refused.reason is Reason.invalid_message and "another entry" in refused.detail


def test_checkpoint_message_ids_cannot_be_guessed_from_the_sequence(tmp_path):
    from biox.settings import Settings

    with session_for(f"sqlite:///{tmp_path / 'us.db'}") as s:
        for e in chain(3):
            s.add(e)
        s.commit()
        h = AuditHandler("us", ["mx"], Settings().audit_checkpoint_s, lambda: RINGS["us"])
        ids = {h.maintain(s, AT)[0].envelope.message_id for _ in range(2)}
    assert len(ids) == 2  # sv, who sees mx's sequence numbers, cannot squat the next id
