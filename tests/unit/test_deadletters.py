"""Where on-call tools may send a dead letter: decided by biox, never by the message."""

from __future__ import annotations

import msgpack
import pika
import pytest

from biox.agreement.ledgers import ErasureRow
from biox.broker.deadletters import DeadLetter, replay_target
from biox.broker.sweeps import erased_letters
from biox.database import session_for
from biox.store import EncounterRow


def test_a_dead_letter_goes_back_to_the_queue_its_dead_letter_queue_belongs_to():
    assert replay_target("us.response.dlq", "response") == "us.response"
    assert replay_target("mx.query.dlq", "query") == "mx.query"
    assert replay_target("us.audit.dlq", "anything") == "us.audit"  # the audit takes all
    crafted = DeadLetter(
        "us.response.dlq",
        1,
        pika.BasicProperties(
            type="review.decision",
            headers={
                "biox-original-exchange": "biox.us",
                "biox-original-routing-key": "us.review.decision",
            },
        ),
        b"",
    )
    assert crafted.work_queue == "us.response"  # the headers do not move it


@pytest.mark.parametrize(
    ("dlq", "kind", "to", "why"),
    [
        ("us.response.dlq", "review.decision", None, "does not take 'review.decision'"),
        ("us.response.dlq", "response", "us.review", "does not take 'response'"),
        ("us.response.dlq", "response", "mx.response", "not a work queue of 'us'"),
        ("us.response.dlq", "response", "us.nothing", "not a work queue of 'us'"),
        ("us.response.dlq", "response", "us.response.dlq", "not a work queue of 'us'"),
    ],
)
def test_a_kind_is_replayed_only_into_a_queue_of_the_same_participant_that_takes_it(
    dlq, kind, to, why
):
    with pytest.raises(ValueError, match=why):
        replay_target(dlq, kind, to)


def test_another_queue_of_the_same_participant_that_takes_the_kind_is_allowed():
    assert replay_target("us.retrieval.dlq", "review.decision", "us.review") == "us.review"


def _letter(queue: str, mid: str, body: bytes = b"\x80", **props: object) -> DeadLetter:
    return DeadLetter(queue, 1, pika.BasicProperties(message_id=mid, **props), body)


def _held(encounter_id: str, *outcomes: tuple[str, str, str]) -> DeadLetter:
    body = msgpack.packb(
        {
            "encounter_id": encounter_id,
            "outcomes": [{"partner": p, "query_id": q, "status": s} for p, q, s in outcomes],
        }
    )
    return _letter("us.results.held", f"held-{encounter_id}-{len(outcomes)}", body)


def test_a_sweep_dooms_exactly_the_copies_of_erased_data_and_results_no_longer_kept(tmp_path):
    """Issue 20 (1): what a deletion reaches in the broker. A partner's dead letter goes
    when its query or itself was erased under that partner (never under another); a held
    result goes when it still shows an erased answer, or its encounter is no longer kept,
    or it cannot be read; a held result that shows the withdrawal stays."""
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(ErasureRow(source="mx", kind="query", key="q-1", cause="notice:n"))
        s.add(ErasureRow(source="mx", kind="message", key="m-9", cause="notice:n"))
        for eid in ("E-1", "E-2"):
            s.add(EncounterRow(encounter_id=eid, purpose="enforce"))
        s.commit()
        mx = {"headers": {"biox-from": b"mx"}}
        letters = {
            "by query": _letter("us.response.dlq", "m-1", correlation_id="q-1", **mx),
            "by message": _letter("us.response.dlq", "m-9", correlation_id="q-7", **mx),
            "another query": _letter("us.response.dlq", "m-2", correlation_id="q-2", **mx),
            "another sender": _letter(
                "us.response.dlq", "m-3", correlation_id="q-1", headers={"biox-from": "sv"}
            ),
            "held, erased answer": _held("E-1", ("mx", "q-1", "match"), ("sv", "q-5", "no_match")),
            "held, withdrawn": _held("E-1", ("mx", "q-1", "withdrawn")),
            "held, other answers": _held("E-2", ("mx", "q-2", "match")),
            "held, encounter gone": _held("E-3", ("mx", "q-3", "match")),
            "held, unreadable": _letter("us.results.held", "junk", b"\xc1"),
        }
        doomed = erased_letters(s, list(letters.values()))
    gone = {name for name, d in letters.items() if (d.queue, d.id) in doomed}
    assert gone == {
        "by query",
        "by message",
        "held, erased answer",
        "held, encounter gone",
        "held, unreadable",
    }
