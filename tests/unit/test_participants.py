"""Participants' live state (§12, §34, §36): seeded from the file once, changed by notices
and operators with history, read by the handlers at every batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from biox.agreement import participants
from biox.database import session_for
from biox.handlers.base import Effects
from biox.handlers.intake import IntakeHandler
from biox.policy.release import Policies
from biox.registry import Status
from biox.store import ParticipantRow
from biox.wire.errors import PermanentError, Reason
from biox.wire.inbound import Inbound
from tests.registry import operating
from tests.unit.test_outputs import a_submission, env

REGISTRY = operating()
POLICIES = Policies.load(Path("deploy/policy.toml"))


def test_the_file_seeds_the_table_once_and_never_overwrites_a_live_status(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        assert participants.set_status(s, "mx", Status.discontinued, "notice:n-1", "§36")
        assert not participants.set_status(s, "mx", Status.discontinued, "notice:n-2")
        s.commit()
        participants.sync(s, REGISTRY)  # a worker restarts: the file still says active
        assert s.get(ParticipantRow, "mx").status == "discontinued"
        events = participants.history(s, "mx")
        assert [(e.status, e.cause) for e in events] == [
            ("active", "registry"),
            ("discontinued", "notice:n-1"),
        ]
        assert events[-1].note == "§36"
        assert participants.since(s, "mx", Status.discontinued) == events[-1].at
        assert participants.since(s, "mx", Status.suspended) is None


def test_contacts_change_with_history(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        participants.set_contacts(s, "mx", {"implementation": "INM DGTIC"}, "notice:n-3")
        s.commit()
        live = participants.Live().now(REGISTRY, s)
    assert live.participants["mx"].contacts["implementation"] == "INM DGTIC"
    assert live.participants["mx"].contacts["administration"] == "INM"  # kept
    assert REGISTRY.participants["mx"].contacts["implementation"] == "INM"  # the file untouched


def test_a_running_intake_stops_querying_a_partner_the_moment_it_discontinues(tmp_path):
    """No restart: the handler built before the change reads the table at its next batch."""
    url = f"sqlite:///{tmp_path / 'us.db'}"
    handler = IntakeHandler("us", REGISTRY, POLICIES.of("us"))
    e1 = env("encounter.submit", "us", "us", "s-1", correlation_id="E-1", reply_to="rq")
    e2 = env("encounter.submit", "us", "us", "s-2", correlation_id="E-2", reply_to="rq")
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        s.commit()
        [before] = handler.submit([Inbound(e1, a_submission(encounter_id="E-1"))], s)
        assert isinstance(before, Effects) and before.outcome == "queried:2"
        participants.set_status(s, "mx", Status.discontinued, "notice:n-1")
        s.commit()
        [after] = handler.submit([Inbound(e2, a_submission(encounter_id="E-2"))], s)
        assert isinstance(after, Effects) and after.outcome == "queried:1"
        assert [o.envelope.recipient for o in after.outgoing if o.envelope.kind == "query"] == [
            "sv"
        ]
        participants.set_status(s, "sv", Status.suspended, "operator:ana")
        s.commit()
        e3 = env("encounter.submit", "us", "us", "s-3", correlation_id="E-3", reply_to="rq")
        [none] = handler.submit([Inbound(e3, a_submission(encounter_id="E-3"))], s)
    assert isinstance(none, PermanentError) and none.reason is Reason.inactive_provider


def test_each_change_is_kept_with_what_it_changed_to_and_why(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        participants.set_contacts(s, "sv", {"implementation": "DGME"}, "notice:n-1", "new desk")
        participants.set_status(s, "mx", Status.suspended, "operator:ana")
        participants.set_status(s, "sv", Status.suspended, "operator:ana")
        s.commit()
        contact = participants.history(s, "sv")[-2]
        assert (contact.cause, contact.note) == ("notice:n-1", "new desk")
        assert contact.contacts["implementation"] == "DGME"
        everything = participants.history(s)
        assert [e.id for e in everything] == sorted(e.id for e in everything)  # in order
        assert len(everything) == 3 + 3  # three seeded, three changes
        # mx's suspension, not sv's, which came a moment later
        assert participants.since(s, "mx", Status.suspended) == participants.history(s, "mx")[-1].at
        assert participants.since(s, "us", Status.suspended) is None
        for change in (
            lambda: participants.set_status(s, "zz", Status.active, "x"),
            lambda: participants.set_contacts(s, "zz", {}, "x"),
        ):
            with pytest.raises(KeyError, match="zz"):
                change()


def test_a_worker_rereads_the_statuses_at_most_once_per_refresh_interval(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    live = participants.Live(refresh_s=60)
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        s.commit()
        assert live.now(REGISTRY, s).participants["mx"].status is Status.active
        participants.set_status(s, "mx", Status.discontinued, "notice:n")
        s.commit()
        assert live.now(REGISTRY, s).participants["mx"].status is Status.active  # not yet
        live._read_at -= 61  # a minute later
        assert live.now(REGISTRY, s).participants["mx"].status is Status.discontinued
        other = REGISTRY.model_copy(deep=True)  # another registry object: read at once
        assert live.now(other, s).participants["mx"].status is Status.discontinued


def test_sync_adds_every_participant_missing_after_one_already_known(tmp_path):
    """A worker that finds some participants already seeded adds the others all the same,
    each with the event saying what the file gave it."""
    from sqlmodel import delete

    from biox.agreement.ledgers import ParticipantEvent

    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        participants.sync(s, REGISTRY)
        first, *rest = sorted(REGISTRY.participants)
        s.exec(delete(ParticipantRow).where(ParticipantRow.code != first))
        s.exec(delete(ParticipantEvent).where(ParticipantEvent.code != first))
        s.commit()
        participants.sync(s, REGISTRY)
        assert sorted(r.code for r in s.exec(select(ParticipantRow))) == sorted(
            REGISTRY.participants
        )
        for code in rest:
            [seeded] = participants.history(s, code)
            assert seeded.contacts == dict(REGISTRY.participants[code].contacts)
            assert (seeded.status, seeded.cause) == ("active", "registry")


class FlakyCommits:
    """A session whose first ``failures`` commits lose a race to another worker."""

    def __init__(self, session, failures: int) -> None:
        self.session, self.failures, self.commits = session, failures, 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def commit(self) -> None:
        self.commits += 1
        if self.commits <= self.failures:
            from sqlalchemy.exc import IntegrityError

            raise IntegrityError("INSERT", {}, Exception("another worker seeded it first"))
        self.session.commit()


def test_sync_retries_a_lost_race_four_times_waiting_longer_each_time(tmp_path, monkeypatch):
    waited: list[float] = []
    monkeypatch.setattr(participants.time, "sleep", waited.append)
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        flaky = FlakyCommits(s, failures=4)
        participants.sync(flaky, REGISTRY)  # type: ignore[arg-type]
        assert flaky.commits == 5
        assert waited == pytest.approx([0.1, 0.2, 0.3, 0.4])
        assert len(s.exec(select(ParticipantRow)).all()) == len(REGISTRY.participants)
    with session_for(f"sqlite:///{tmp_path / 'sv.db'}") as s:
        always = FlakyCommits(s, failures=5)
        with pytest.raises(IntegrityError):
            participants.sync(always, REGISTRY)  # type: ignore[arg-type]
        assert always.commits == 5


def test_live_rebuilds_only_on_a_change_and_sees_contacts_and_other_registries(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    live = participants.Live()  # the default: the table read at every batch
    with session_for(url) as s:
        assert live.now(REGISTRY, s) is REGISTRY  # no rows yet: the file as it is
        participants.sync(s, REGISTRY)
        s.commit()
        first = live.now(REGISTRY, s)
        assert first is not REGISTRY and live.now(REGISTRY, s) is first  # unchanged: kept
        participants.set_status(s, "sv", Status.suspended, "operator:ana")
        s.commit()
        assert live.now(REGISTRY, s).participants["sv"].status is Status.suspended  # at once
        participants.set_contacts(s, "mx", {"implementation": "INM DGTIC"}, "notice:n-4")
        s.commit()  # a change of contacts alone is a change
        assert live.now(REGISTRY, s).participants["mx"].contacts["implementation"] == "INM DGTIC"
        other = REGISTRY.model_copy(deep=True)
        other.participants["mx"].agency = "another file"
        rebuilt = live.now(other, s)  # same table, another registry: built from that one
        assert rebuilt.participants["mx"].agency == "another file"
        assert rebuilt.participants["sv"].status is Status.suspended


def test_a_row_for_a_participant_not_in_the_file_does_not_hide_the_others(tmp_path):
    url = f"sqlite:///{tmp_path / 'us.db'}"
    with session_for(url) as s:
        s.add(ParticipantRow(code="aa", agency="not in the file", status="active"))
        s.commit()  # read first
        participants.sync(s, REGISTRY)
        participants.set_status(s, "mx", Status.discontinued, "notice:n-5")
        s.commit()
        live = participants.Live().now(REGISTRY, s)
    assert "aa" not in live.participants
    assert live.participants["mx"].status is Status.discontinued


def test_the_workers_read_the_refresh_interval_from_their_settings(tmp_path):
    """Each handler that reads the live status is built with BIOX_REGISTRY_REFRESH_S;
    built by hand, it reads the table at every batch."""
    from biox.handlers.base import Context
    from biox.handlers.retrieval import RetrievalHandler
    from biox.settings import Settings

    ctx = Context("us", REGISTRY, POLICIES.of("us"), Settings(registry_refresh_s=60))
    for cls in (RetrievalHandler, IntakeHandler):
        assert cls.build(ctx)._live.refresh_s == 60, cls
        assert cls("us", REGISTRY, POLICIES.of("us"))._live.refresh_s == 0, cls
