"""A query id met twice at the provider under two message ids (queries/repeats.py): the
second copy is neither searched nor answered, and never fails the batch it came in.

Before, the second copy's provider row collided with the first's at commit: the whole
batch was retried, then dead-lettered as ``handler_error``, and the queries beside it
went unanswered with it.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from sqlmodel import select

from biox.database import session_for
from biox.gallery import gather
from biox.handlers.base import Effects
from biox.handlers.matcher import MatcherHandler
from biox.policy.release import ParticipantPolicy, ReleaseRule
from biox.registry import Purpose
from biox.settings import Settings
from biox.store import ScatterRow, Transaction
from biox.wire.codec import decode_body
from biox.wire.errors import REASON_USE, PermanentError, Reason
from biox.wire.inbound import Inbound
from biox.wire.shards import ShardSearch
from tests.unit.test_handlers import query_from, submit
from tests.unit.test_matcher import hit, matcher, record
from tests.unit.test_shards import RECEIVED, hits_from


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'mx.db'}"
    with session_for(url) as s:
        s.add_all([record(1), record(2)])
        s.commit()
    return url


def copy_of(inb: Inbound) -> Inbound:
    """The same query under a new message id: a partner's resend, or a replay."""
    return Inbound(replace(inb.envelope, message_id=str(uuid.uuid4())), inb.message)


def commit(url: str, results: list) -> None:
    with session_for(url) as s:
        for r in results:
            if isinstance(r, Effects):
                s.add_all(r.rows)
        s.commit()


def duplicate(result: object, first: Inbound) -> PermanentError:
    assert isinstance(result, PermanentError), result
    assert result.reason is Reason.duplicate_query
    assert f"came first as message {first.envelope.message_id}" in str(result)
    return result


def test_a_copy_of_an_answered_query_is_dead_lettered_naming_the_first_never_searched(db):
    handler = matcher([hit(1, 0.99)])
    first = Inbound(*query_from(submit(7)))
    with session_for(db) as s:
        answered = handler.search([first], s)
    commit(db, answered)
    other = Inbound(*query_from(submit(8)))
    with session_for(db) as s:
        again, fresh = handler.search([copy_of(first), other], s)
    error = duplicate(again, first)
    assert isinstance(fresh, Effects) and fresh.outcome.startswith("match")
    assert handler.gallery.searched == [1, 1]  # type: ignore[attr-defined]
    # no answer to the requester: a second answer could overturn the first one there
    assert handler.reject(copy_of(first).envelope, error) is None
    assert REASON_USE[Reason.duplicate_query] == ("dead-letter",)
    commit(db, [fresh])  # the batch beside it commits: its row does not collide
    with session_for(db) as s:
        rows = s.exec(select(Transaction).where(Transaction.role == "provider")).all()
    assert sorted(r.query_id for r in rows) == sorted(
        [first.message.query_id, other.message.query_id]
    )


def test_two_copies_in_one_batch_are_answered_once(db):
    handler = matcher([hit(1, 0.99)])
    first = Inbound(*query_from(submit(7)))
    with session_for(db) as s:
        results = handler.search([first, copy_of(first)], s)
    answer, again = results
    assert isinstance(answer, Effects)
    duplicate(again, first)
    assert handler.gallery.searched == [1]  # type: ignore[attr-defined]
    commit(db, results)


def test_a_copy_of_a_declined_query_is_a_duplicate_too(db):
    policy = ParticipantPolicy(release=[ReleaseRule(to=["us"], purposes=["adjudicate"])])
    handler = matcher([hit(1, 0.99)], policy)
    first = Inbound(*query_from(submit(7), purpose=Purpose.enforce))
    with session_for(db) as s:
        [declined] = handler.search([first], s)
    assert isinstance(declined, Effects) and declined.outcome.startswith("declined")
    commit(db, [declined])
    with session_for(db) as s:
        [again] = handler.search([copy_of(first)], s)
    duplicate(again, first)


def test_a_copy_of_a_rejected_query_is_rejected_again_not_called_a_duplicate(db):
    """A rejected query leaves no row: a corrected copy may follow under a new id."""
    handler = matcher([hit(1, 0.99)])
    first = Inbound(*query_from(submit(7)))
    wrong = Inbound(first.envelope, first.message.model_copy(update={"providing": "sv"}))
    with session_for(db) as s:
        rejected, answered = handler.search([wrong, copy_of(first)], s)
    assert isinstance(rejected, PermanentError) and rejected.reason is Reason.misaddressed
    assert isinstance(answered, Effects)


def test_a_copy_of_an_answered_query_gets_no_rejection_either_whatever_it_carries(db):
    """Checked before anything that could answer: a ``rejected`` would overturn a pending
    answer at the requester as a second answer would."""
    handler = matcher([hit(1, 0.99)])
    first = Inbound(*query_from(submit(7)))
    with session_for(db) as s:
        commit(db, handler.search([first], s))
    copy = copy_of(first)
    wrong = Inbound(copy.envelope, first.message.model_copy(update={"providing": "sv"}))
    with session_for(db) as s:
        [again] = handler.search([wrong], s)
    assert handler.reject(wrong.envelope, duplicate(again, first)) is None


def test_a_query_declined_before_any_search_is_declined_whatever_its_templates(db):
    """Its templates are not read: a broken one does not turn the decline into a
    rejection, and the copy that follows is a duplicate of the declined query."""
    policy = ParticipantPolicy(release=[ReleaseRule(to=["us"], purposes=["adjudicate"])])
    handler = matcher([hit(1, 0.99)], policy)
    envelope, query = query_from(submit(7))
    face = query.biometrics.face
    assert face is not None
    broken = query.biometrics.model_copy(
        update={"face": face.model_copy(update={"template": bytes(40)})}
    )
    first = Inbound(envelope, query.model_copy(update={"biometrics": broken}))
    with session_for(db) as s:
        declined, again = handler.search([first, copy_of(first)], s)
    assert isinstance(declined, Effects) and declined.outcome == "declined:release_not_agreed"
    duplicate(again, first)


def test_a_first_copy_whose_message_id_was_not_recorded_is_named_as_such(db):
    first = Inbound(*query_from(submit(7)))
    handler = matcher([hit(1, 0.99)])
    with session_for(db) as s:
        [answered] = handler.search([first], s)
        assert isinstance(answered, Effects)
        answered.rows[0].source_message_id = None  # a row older than its provenance
        s.add_all(answered.rows)
        s.commit()
    with session_for(db) as s:
        [again] = handler.search([copy_of(first)], s)
    assert str(again).endswith(
        f"query {first.message.query_id} came first as message (not recorded)"
    )


def sharded() -> MatcherHandler:
    settings = Settings(shards=2, threshold_high=0.55, threshold_low=0.3, gallery_sync_s=3600)
    handler = matcher([hit(1, 0.99)])
    handler.settings = settings
    return handler


def scatter(url: str, inb: Inbound) -> ShardSearch:
    """What a sharded matcher's search of ``inb`` leaves: its row, and the search sent."""
    row, out = gather.scatter(inb, RECEIVED, 2, "mx")
    with session_for(url) as s:
        s.add(row)
        s.commit()
    return decode_body(ShardSearch, out.envelope.schema, out.body)


def test_a_copy_of_a_query_waiting_for_its_shards_is_not_scattered_again(db):
    first = Inbound(*query_from(submit(9)))
    first = Inbound(replace(first.envelope, message_id="us/2026/m-1"), first.message)
    scatter(db, first)
    with session_for(db) as s:
        [again] = sharded().search([copy_of(first)], s)
    duplicate(again, first)


def test_a_gather_for_a_query_another_matcher_answered_meanwhile_is_dead_lettered(db):
    """Two matchers scattered two copies at once: the first gathered answers, the second
    finds its row and stops there, its scatter row gone with it."""
    first = Inbound(*query_from(submit(9)))
    searches = [scatter(db, first), scatter(db, copy_of(first))]
    handler = sharded()
    other = scatter(db, Inbound(*query_from(submit(10))))
    results = []
    for search in searches:
        batch = [hits_from(search, 0, [(1, 0.9)]), hits_from(search, 1, [])]
        if search is searches[1]:  # and another query's last shards after it
            batch += [hits_from(other, 0, [(2, 0.95)]), hits_from(other, 1, [])]
        with session_for(db) as s:  # as the consume loop: the batch's rows, one commit
            results.append(handler.gather(batch, s))
            s.add_all(row for r in results[-1] if isinstance(r, Effects) for row in r.rows)
            s.commit()
    assert [r.outcome for r in results[0]] == ["gathered:waiting", "match"]
    waiting, error, *rest = results[1]
    assert isinstance(waiting, Effects) and waiting.outcome == "gathered:waiting"
    duplicate(error, first)
    assert [r.outcome for r in rest] == ["gathered:waiting", "match"]  # answered all the same
    with session_for(db) as s:
        assert s.exec(select(ScatterRow)).all() == []
