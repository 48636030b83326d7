"""People and roles (§16 need-to-know; issue 20 (6); docs/security.md, "People and
roles"): each person is their own identity, the CLI refuses a command their duties do not
cover, the audit trail records what each read under the broker-validated user, and `qa`
names reads by someone without the duty. The broker's own refusals are shown on real TLS
brokers in tests/integration/test_sovereign.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from biox.agreement import quality
from biox.agreement.subjects import read_event
from biox.cli import app
from biox.database import session_for
from biox.dev.pki import DevPKI
from biox.handlers.audit import AuditHandler
from biox.handlers.base import Effects
from biox.handlers.review import ReviewHandler
from biox.policy.release import Policies
from biox.store import AuditEntry
from biox.trust.identity import Role, parse_user
from biox.trust.staff import NEEDS, Duty, Staff, StaffError, person_of
from biox.wire import codec
from biox.wire.errors import PermanentError, Reason, TransientError
from biox.wire.inbound import Inbound
from biox.wire.messages import ReviewDecision, ReviewVerdict

NOW = datetime(2026, 11, 20, tzinfo=UTC)
STAFF = Staff.load(Path("deploy/staff.toml"))
runner = CliRunner()


def test_a_person_is_a_broker_user_of_their_own():
    assert person_of("us.operators.ana") == ("us", "ana")
    assert parse_user("us.operators.ana") == ("us", Role.operators)
    for other in ("us.operators", "us.workers", "us.encounters.poe", "us.operators.Ana", None):
        assert person_of(other) is None, other


def test_the_shipped_staff_gives_each_participant_one_person_per_duty():
    for code in ("us", "mx", "sv"):
        held = sorted(d for duties in STAFF.of(code).values() for d in duties)
        assert held == sorted(Duty), code


@pytest.mark.parametrize(
    ("person", "command", "refused"),
    [
        ("ana", "review next", None),
        ("ana", "subject search", "subject search needs privacy_officer; ana holds examiner"),
        ("pat", "subject search", None),
        ("pat", "review next", "review next needs examiner; pat holds privacy_officer"),
        ("oscar", "dlq replay", None),
        ("oscar", "gallery export", "gallery export needs administrator; oscar holds on_call"),
        ("ada", "gallery export", None),
        ("ada", "records show", "records show needs examiner or privacy_officer; ada holds"),
        ("eve", "records show", "eve is not on us's staff"),
        ("eve", "review list", None),  # not personal data: no duty asked
    ],
)
def test_a_command_needs_one_of_its_duties(person, command, refused):
    why = STAFF.refusal("us", person, command)
    assert (why is None) == (refused is None), why
    if refused:
        assert why.startswith(refused)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[us]\nana = ['judge']\n", "duties are among"),
        ("[us]\n'Ana Maria' = ['examiner']\n", "a name is"),
        ("us = 1\n", "must list people"),
        ("[us\n", "BIOX_STAFF"),
    ],
)
def test_a_staff_file_that_does_not_add_up_is_refused_in_one_line(tmp_path, text, error):
    path = tmp_path / "staff.toml"
    path.write_text(text)
    with pytest.raises(StaffError, match=error):
        Staff.load(path)
    with pytest.raises(StaffError, match=r"no file at .* \(BIOX_STAFF\)"):
        Staff.load(tmp_path / "missing.toml")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> DevPKI:
    people = {"us": ["ana", "pat"], "mx": ["pat"]}
    return DevPKI(tmp_path_factory.mktemp("pki")).ensure(["mx", "us"], {}, people)


@pytest.fixture
def published(tmp_path, monkeypatch) -> list:
    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOX_AMQP_URL", "amqps://127.0.0.1:1/")
    sent: list = []
    monkeypatch.setattr(
        "biox.cli.common.publish_once", lambda url, messages, **kw: sent.extend(messages)
    )
    return sent


def as_user(monkeypatch, pki: DevPKI, user: str) -> None:
    """The CLI run with ``user``'s certificate, as on the sovereign layout."""
    tls = pki.client(user)
    for name, path in (("CA", tls.ca), ("CERT", tls.cert), ("KEY", tls.key)):
        monkeypatch.setenv(f"BIOX_TLS_{name}", str(path))


SEARCH = ["subject", "search", "-p", "us", "--name", "cruz"]


def test_on_a_tls_broker_the_person_is_the_certificate_and_their_duty_is_enforced(
    published, pki, monkeypatch
):
    as_user(monkeypatch, pki, "us.operators.pat")
    out = runner.invoke(app, SEARCH)
    assert out.exit_code in (0, 1), out.output
    [event] = published
    assert event.envelope.headers["biox-actor"] == "pat"
    assert msgpack.unpackb(event.body)["command"] == "subject search"

    published.clear()
    as_user(monkeypatch, pki, "us.operators.ana")  # an examiner
    out = runner.invoke(app, SEARCH)
    assert out.exit_code == 3 and "needs privacy_officer; ana holds examiner" in out.output
    assert published == []  # refused before anything is read or recorded


@pytest.mark.parametrize(
    ("user", "extra", "said"),
    [
        ("us.operators.ana", ["--operator", "pat"], "you are ana by your certificate, not pat"),
        ("us.workers", [], "'us.workers', not a person's"),
        ("mx.operators.pat", [], "the certificate is mx.operators.pat's, not one of us's staff"),
    ],
)
def test_a_name_on_the_command_line_or_another_identity_does_not_make_a_person(
    published, pki, monkeypatch, user, extra, said
):
    if user.startswith("mx."):
        tls = pki.client(user)
        monkeypatch.setenv("BIOX_TLS_CA", str(pki.ca("us")))
        monkeypatch.setenv("BIOX_TLS_CERT", str(tls.cert))
        monkeypatch.setenv("BIOX_TLS_KEY", str(tls.key))
    else:
        as_user(monkeypatch, pki, user)
    out = runner.invoke(app, [*SEARCH, *extra])
    assert out.exit_code == 3 and said in out.output, out.output
    assert published == []


def test_on_a_plain_broker_a_name_is_needed_and_held_to_the_staff(published, monkeypatch):
    monkeypatch.setenv("BIOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    monkeypatch.delenv("BIOX_OPERATOR", raising=False)
    out = runner.invoke(app, SEARCH)
    assert out.exit_code == 3 and "who are you?" in out.output
    out = runner.invoke(app, [*SEARCH, "--operator", "ana"])
    assert out.exit_code == 3 and "needs privacy_officer" in out.output
    monkeypatch.setenv("BIOX_STAFF", "/nonexistent/staff.toml")
    out = runner.invoke(app, [*SEARCH, "--operator", "pat"])
    assert out.exit_code == 3 and "no file at /nonexistent/staff.toml (BIOX_STAFF)" in (out.output)
    assert published == []


def test_on_the_shared_development_broker_the_name_given_is_taken_unchecked(published, monkeypatch):
    """Everyone is guest there: no identity to hold a duty to (docs/security.md, "The
    development flag"); the read is still recorded under the name given."""
    monkeypatch.setenv("BIOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    monkeypatch.setenv("BIOX_DEV_SHARED_BROKER", "1")
    out = runner.invoke(app, [*SEARCH, "--operator", "someone"])
    assert out.exit_code in (0, 1), out.output
    assert published[0].envelope.headers["biox-actor"] == "someone"


def test_every_command_that_reads_personal_data_needs_a_duty():
    """Each audited read in the CLI is in the table of duties, so none goes unchecked."""
    import re

    cli = Path("src/biox/cli")
    audited = {
        m
        for path in cli.glob("*.py")
        for m in re.findall(r'audited_read\(\s*[^,]+,\s*"([^"]+)"', path.read_text())
    }
    acted = {
        m
        for path in cli.glob("*.py")
        for m in re.findall(r'(?:acting\(\s*[^,]+,\s*|_scope\(\s*)"([^"]+)"', path.read_text())
    }
    assert audited and audited <= set(NEEDS)
    assert acted <= set(NEEDS) and audited <= acted


def read_by(user: str | None, command: str, seq_mid: str) -> Inbound[None]:
    out = read_event("us", command, {"q": 1}, 3, "whoever")
    env = replace(out.envelope, user_id=user, message_id=seq_mid)
    return Inbound(env, None, out.body, out.exchange, out.routing_key)


def audit_reads(db: str, *reads: Inbound[None]) -> None:
    with session_for(db) as s:
        results = AuditHandler("us").chain(list(reads), s)
        s.add_all(r for e in results if isinstance(e, Effects) for r in e.rows)
        s.commit()


def test_the_audit_trail_keeps_the_command_of_each_read_in_its_chain(tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    audit_reads(db, read_by("us.operators.pat", "subject search", "r-1"))
    with session_for(db) as s:
        [entry] = s.exec(select(AuditEntry)).all()
        assert (entry.sender_user, entry.command) == ("us.operators.pat", "subject search")
        entry.command = "records show"  # rewriting what was read breaks the chain
        s.add(entry)
        s.commit()
        found = quality.run(s, "us", NOW, 3600, ["audit_chain"])
    assert [f.check for f in found] == ["audit_chain"]


def test_qa_names_each_read_by_someone_whose_duties_do_not_cover_it(tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    audit_reads(
        db,
        read_by("us.operators.pat", "subject search", "r-1"),  # a privacy officer's: fine
        read_by("us.operators.ana", "review next", "r-2"),  # an examiner's: fine
        read_by("us.operators.ana", "subject search", "r-3"),  # an examiner searching people
        read_by("us.operators.eve", "records show", "r-4"),  # not on the staff
        read_by("us.workers", "gallery export", "r-5"),  # no person at all
        read_by("us.operators.ada", "something else", "r-6"),  # not a command of the table
    )
    with session_for(db) as s:
        found = quality.run(s, "us", NOW, 3600, ["need_to_know"], STAFF)
        unchecked = quality.run(s, "us", NOW, 3600, ["need_to_know"], None)
    details = [f.detail for f in found]
    assert {f.check for f in found} == {"need_to_know"} and len(details) == 4, details
    assert "subject search needs privacy_officer; ana holds examiner" in details[0]
    assert "eve is not on us's staff" in details[1]
    assert "read as 'us.workers', not a person of us's" in details[2]
    assert "'something else', not a command of the staff table" in details[3]
    assert all(d.startswith("audit #") for d in details)
    assert unchecked == []  # the shared development broker: nobody to hold to a duty


def test_an_examiners_decision_is_theirs_by_the_broker_not_by_the_name_it_carries(tmp_path):
    decision = ReviewDecision(
        case_id="c-1",
        verdict=ReviewVerdict.no_match,
        examiner="ana",
        decided_at=NOW,
    )
    out = codec.to_own_inbox(decision, participant="mx", message_id="d-1", correlation_id="c-1")
    handler = ReviewHandler("mx", Policies.load(Path("deploy/policy.toml")).of("mx"))
    with session_for(f"sqlite:///{tmp_path / 'r.db'}") as s:
        as_ben = replace(out.envelope, user_id="mx.operators.ben")
        [forged] = handler.decide([Inbound(as_ben, decision)], s)
        as_ana = replace(out.envelope, user_id="mx.operators.ana")
        [own] = handler.decide([Inbound(as_ana, decision)], s)
    assert isinstance(forged, PermanentError) and forged.reason is Reason.forged_sender
    assert "'ana' sent as mx.operators.ben" in str(forged)
    assert isinstance(own, TransientError) and own.reason is Reason.unknown_case


def test_duties_are_read_exactly_and_a_refusal_names_what_each_holds(tmp_path):
    path = tmp_path / "staff.toml"
    path.write_text("[us]\nbob = []\nkim = ['examiner', 'privacy_officer']\n")
    staff = Staff.load(path)
    assert staff.duties("us", "eve") == frozenset() and staff.of("zz") == {}
    assert staff.refusal("us", "bob", "dlq show") == "dlq show needs on_call; bob holds none"
    assert staff.refusal("us", "kim", "dlq show") == (
        "dlq show needs on_call; kim holds examiner, privacy_officer"
    )
    path.write_text("[us]\nbob = ['judge']\n")
    with pytest.raises(StaffError) as bad:
        Staff.load(path)
    assert str(bad.value).endswith(
        "us.bob: duties are among examiner, privacy_officer, on_call, administrator"
    )


def test_the_read_record_goes_to_the_configured_broker_before_anything_is_shown(
    tmp_path, monkeypatch
):
    """The audit event is published to BIOX_AMQP_URL as this participant's, and on the
    shared development broker a person who names nobody is recorded as user@host."""
    from biox.broker.deadletters import operator

    monkeypatch.setenv("BIOX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    monkeypatch.setenv("BIOX_DEV_SHARED_BROKER", "1")
    monkeypatch.delenv("BIOX_OPERATOR", raising=False)
    calls: list = []
    monkeypatch.setattr(
        "biox.cli.common.publish_once",
        lambda url, messages, **kw: calls.append((url, messages, kw)),
    )
    shown = runner.invoke(app, SEARCH)
    assert shown.exit_code in (0, 1), shown.output
    [(url, [event], kw)] = calls
    assert url == "amqp://guest:guest@127.0.0.1:1/" and kw["name"] == "biox-read"
    assert event.envelope.headers["biox-actor"] == operator()
    assert (event.envelope.sender, event.envelope.recipient) == ("us", "us")


def test_without_a_broker_url_the_cli_says_so():
    import typer

    from biox.cli import common

    token = common._current.set(common.Settings(amqp_url=None))
    try:
        with pytest.raises(typer.Exit) as stopped:
            common.amqp_url()
        assert stopped.value.exit_code == 2
    finally:
        common._current.reset(token)


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0, "0s"), (119, "119s"), (120, "2m"), (7199, "120m"), (7200, "2.0h"), (9000, "2.5h")],
)
def test_ages_are_said_in_the_unit_a_person_reads(seconds, said):
    from biox.cli.common import age

    assert age(seconds) == said
