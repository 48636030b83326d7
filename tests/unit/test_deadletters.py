"""Where on-call tools may send a dead letter: decided by biox, never by the message."""

from __future__ import annotations

import pika
import pytest

from biox.broker.deadletters import DeadLetter, replay_target


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
