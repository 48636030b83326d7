"""Every participant on its own RabbitMQ over TLS, with the generated definitions: what the
brokers refuse by themselves, what the workers refuse, and the links surviving a
partner's outage (docs/security.md). us's broker is a cluster of three nodes, TLS between
them, as a government would run it (docs/operations.md): every claim below holds on it,
and it loses a node, then another, without losing or repeating an answer."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest
from bench.ledger import audit_ledger, settled
from pika.exceptions import ChannelClosedByBroker
from sqlmodel import col, select
from typer.testing import CliRunner

from biox.agreement.subjects import read_event
from biox.broker.connection import parameters
from biox.broker.publisher import properties_for
from biox.cli import app
from biox.database import session_for
from biox.dev.cluster import LocalCluster
from biox.dev.sovereign import SovereignBrokers
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import encounters, galleries
from biox.sim.plans import plan
from biox.sim.processes import Workers, start_sovereign_workers, worker_env
from biox.store import AuditEntry, ProcessedMessage
from biox.trust import checkpoints
from biox.trust.identity import Role
from biox.trust.sealing import Trust, load_ring, trust_path
from biox.trust.tls import ClientTLS
from biox.wire.codec import Envelope, Outgoing
from tests.integration.ledger import check_results_once

pytestmark = [pytest.mark.integration, pytest.mark.sovereign]

CODES = ["mx", "sv", "us"]
runner = CliRunner()
SIZES = {"us": 10, "mx": 400, "sv": 400}
SEED = 11
ROLES = {
    "us": ("intake", "response", "audit", "notice"),
    "mx": ("query", "review", "audit", "notice"),
    "sv": ("query", "audit", "notice"),
}


@dataclass
class Sovereign:
    brokers: SovereignBrokers
    settings: Settings
    registry: Registry
    workers: Workers

    def connect(self, broker: str, user: str) -> pika.BlockingConnection:
        return pika.BlockingConnection(
            parameters(self.brokers.url(broker), self.tls_of(broker, user))
        )

    def tls_of(self, broker: str, user: str) -> ClientTLS:
        """``user``'s certificate for ``broker``: a link user's is the one ``broker``'s CA
        issued it; anyone else's is its own CA's (refused by another's broker)."""
        code, _, role = user.partition(".")
        if role == "link":
            return self.brokers.pki.link(code, broker)
        role, _, named = role.partition(".")  # an encounter system's, or a person's
        if role == Role.operators:
            own = self.brokers.credentials(code, Role.operators, person=named)
        else:
            own = self.brokers.credentials(code, Role(role), named or "sim")
        return ClientTLS(self.brokers.pki.ca(broker), own.cert, own.key)

    def tls(self, code: str, role: Role) -> ClientTLS:
        return self.brokers.credentials(code, role)


@pytest.fixture(scope="module")
def sovereign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sovereign]:
    data = tmp_path_factory.mktemp("sovereign")
    settings = Settings(data_dir=data, retry_delays="1,2")
    registry = Registry.load(settings.registry)
    brokers = SovereignBrokers(CODES, settings, data / "brokers", nodes={"us": 3}).start()
    workers = Workers([])
    try:
        for code in ("mx", "sv"):
            galleries.build_gallery(settings, code, SIZES[code], SEED)
        env = worker_env(settings, CODES, BIOX_LOG_LEVEL="INFO", BIOX_AUDIT_CHECKPOINT_S="2")
        workers = start_sovereign_workers(brokers, ROLES, env, data / "logs")
        yield Sovereign(brokers, settings, registry, workers)
    finally:
        workers.stop()
        brokers.stop()


@pytest.mark.timeout(900)
def test_us_on_three_nodes_answers_every_query_once_through_two_node_kills(sovereign):
    """Under load, one of us's three nodes SIGKILLed and started again, then another: every
    query answered once, counted by message id from both sides' audit trails, no result
    lost or repeated at the encounter system, and every audit chain verified. First in the
    module, so the trails it counts hold its own traffic alone."""
    s = sovereign
    cluster = s.brokers.brokers["us"]
    assert isinstance(cluster, LocalCluster) and len(cluster.running()) == 3
    # every queue on every node, the link queues too: a shovel started before its queue
    # was imported would have declared a classic one (``definitions.split_shovels``)
    listed = cluster.ctl("list_queues", "name", "type", "members")
    single = [line for line in listed.splitlines() if line.count("@") not in (0, 3)]
    assert single == [] and "us.link.mx\tquorum" in listed and "us.link.sv\tquorum" in listed
    planned = plan(s.registry, SIZES, 150, SEED, requesters=["us"], draw=7)
    planned = [p for p in planned if p.expected_partners]
    tls = s.tls("us", Role.encounters)
    killed = []
    with encounters.EncounterSystem(
        s.brokers.url("us"), SIZES, tls=tls, reply_prefix="us.replies.sim.", results_of=["us"]
    ) as system:
        submitter = threading.Thread(
            target=system.submit, args=(planned,), kwargs={"batch": 4, "rate": 4}
        )
        submitter.start()
        for victim in (0, 1):  # the node the definitions came from, then a joiner
            time.sleep(3)
            cluster.kill(victim)
            killed.append((victim, sum(o.final for o in system.outcomes.values())))
            time.sleep(2)
            cluster.revive(victim)
            cluster.wait_formed()
        submitter.join(timeout=180)
        still_sending = submitter.is_alive()
        system.collect(timeout=300, idle_timeout=90, expect=len(planned))
    assert not still_sending
    assert [v for v, _ in killed] == [0, 1] and killed[-1][1] < len(planned)  # under load
    incomplete = [o.planned.encounter_id for o in system.outcomes.values() if not o.complete]
    assert incomplete == [], waiting_anywhere(s)
    assert system.duplicates == 0
    assert all(a.correct for o in system.outcomes.values() for a in o.answers.values())
    check_results_once(system)
    settled(s.brokers, CODES)
    ledger = audit_ledger(s.settings, "us", ["mx", "sv"])
    asked = sum(len(p.expected_partners) for p in planned)
    assert sum(link["queries_sent"] for link in ledger.values()) == asked
    for link in ledger.values():
        assert link["problems"] == {}, ledger
        assert link["queries_sent"] == link["queries_received"] == link["responses_received"]
    env = {
        "BIOX_DATA_DIR": str(s.settings.data_dir),
        "BIOX_KEYS_DIR": str(s.settings.keys()),
        "BIOX_REGISTRY": str(s.settings.registry),
    }
    verified = runner.invoke(app, ["audit", "verify"], env=env)
    assert verified.exit_code == 0, verified.output


def test_the_cookie_alone_or_another_certificate_does_not_reach_the_clusters_nodes(sovereign):
    """The Erlang cookie leaked: a host holding it still cannot speak to us's nodes (the
    cluster's own traffic: queue contents, users, ``rabbitmqctl``) without a certificate
    from us's nodes CA: not over the plain distribution, not with a client certificate
    us's own CA issued, not with mx's node certificate, and not with a node certificate
    of us's own once its CA revoked it (a host's stolen key, or a node taken out)."""
    s = sovereign
    cluster = s.brokers.brokers["us"]
    assert isinstance(cluster, LocalCluster)
    pki = s.brokers.pki
    own, spare = pki.node("us"), pki.nodes("us", 4)[3]  # a fourth host's, no node of the three
    for tls in (own, spare):
        control = cluster.ctl_from_outside(tls, "list_queues", "name")
        assert control.returncode == 0 and "us.intake" in control.stdout, control.stderr
    s.brokers.revoke("us", spare.cert)
    workers, mx = pki.client("us.workers"), pki.nodes("mx", 1)[0]
    outsiders = {
        "the plain distribution": None,
        "us's workers certificate": ClientTLS(own.ca, workers.cert, workers.key),
        "mx's node certificate": ClientTLS(own.ca, mx.cert, mx.key),
        "us's node certificate, revoked": spare,
    }
    for who, tls in outsiders.items():
        done = cluster.ctl_from_outside(tls, "list_queues", "name")
        assert done.returncode != 0 and "us.intake" not in done.stdout, who
    # the nodes themselves, each with a certificate of its own, still reach each other
    control = cluster.ctl_from_outside(pki.node("us", 2), "list_queues", "name")
    assert control.returncode == 0 and "us.intake" in control.stdout, control.stderr
    assert cluster.running() == sorted(cluster.names)


def waiting_anywhere(s: Sovereign) -> dict[str, list[tuple[str, int, int]]]:
    """Each broker's queues holding messages (ready, unacked), and its shovels: where an
    answer that never came is stuck."""
    out = {}
    for code, broker in s.brokers.brokers.items():
        listed = broker.ctl("list_queues", "name", "messages_ready", "messages_unacknowledged")
        rows = [line.split("\t") for line in listed.splitlines() if line.count("\t") == 2]
        out[code] = [(n, int(r), int(u)) for n, r, u in rows if r.isdigit() and int(r) + int(u)]
        out[f"{code} shovels"] = broker.ctl("shovel_status").splitlines()
    return out


def attempt(s: Sovereign, broker: str, user: str, action) -> str | None:
    """Run ``action`` on a confirmed channel of ``user`` on ``broker``; the broker's refusal
    (its reply text), or None when it let it through."""
    try:
        conn = s.connect(broker, user)
    except pika.exceptions.AMQPConnectionError as exc:
        return f"login refused: {exc!r}"
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        action(ch)
        return None
    except ChannelClosedByBroker as exc:
        return f"{exc.reply_code} {exc.reply_text}"
    except pika.exceptions.UnroutableError:
        return "unroutable"
    finally:
        if conn.is_open:
            conn.close()


def publish(exchange: str, key: str, user_id: str | None, kind: str = "query"):
    def act(ch) -> None:
        ch.basic_publish(
            exchange,
            key,
            b"\x80",
            pika.BasicProperties(message_id=str(uuid.uuid4()), type=kind, user_id=user_id),
            mandatory=True,
        )

    return act


def test_the_brokers_themselves_refuse_what_a_hostile_partner_tries(sovereign):
    s = sovereign
    # sv's link user on us's broker: only partner kinds addressed to us, on us's ingress
    assert attempt(s, "us", "sv.link", publish("", "us.intake", "sv.link")).startswith("403")
    assert attempt(s, "us", "sv.link", publish("biox.us.out", "mx.query", "sv.link")).startswith(
        "403"
    )
    # the inbox, submissions and mx's way in: not at all
    for exchange in ("biox.us", "biox.us.submit", "biox.us.partners.mx"):
        assert attempt(s, "us", "sv.link", publish(exchange, "us.query", "sv.link")).startswith(
            "403"
        ), exchange
    assert attempt(
        s,
        "us",
        "sv.link",
        publish("biox.us.partners.sv", "us.encounter.submit", "sv.link", "encounter.submit"),
    ).startswith("403")
    assert attempt(
        s,
        "us",
        "sv.link",
        publish("biox.us.partners.sv", "us.review.decision", "sv.link", "review.decision"),
    ).startswith("403")
    # a user_id other than its own: the broker refuses it (406 PRECONDITION_FAILED)
    assert attempt(
        s, "us", "sv.link", publish("biox.us.partners.sv", "us.query", "mx.link")
    ).startswith("406")
    # reading any of us's queues (a passive declare still tells their depth: RabbitMQ 3.10
    # checks no permission on it, docs/security.md "What remains")
    assert attempt(s, "us", "sv.link", lambda ch: ch.basic_get("us.response")).startswith("403")
    assert attempt(s, "us", "sv.link", lambda ch: ch.basic_get("us.link.mx")).startswith("403")
    # sv cannot log in to us's broker as anything but the link user us's CA issued it
    assert attempt(s, "us", "sv.workers", lambda ch: None).startswith("login refused")
    # us's encounter systems submit; they cannot send partner kinds or results
    enc = "us.encounters.sim"
    assert attempt(s, "us", enc, publish("biox.us.partners.sv", "us.query", enc))
    assert attempt(s, "us", enc, publish("biox.us", "us.encounter.submit", enc))
    assert attempt(s, "us", enc, publish("biox.us.out", "mx.query", enc))
    assert attempt(s, "us", enc, publish("", "us.response", enc))
    # every user is limited in connections and channels, every queue bounded
    us = s.brokers.brokers["us"]
    deadline, shown = time.monotonic() + 20, ""
    while time.monotonic() < deadline:  # set once the node runs (RabbitMQ 3.10 does not
        shown = "".join(us.ctl("list_user_limits", "--user", "sv.link").split())  # import them)
        if "max-connections" in shown:
            break
        time.sleep(0.5)
    for name, value in (("max-connections", 16), ("max-channels", 64)):
        assert re.search(rf"{name}\W+{value}\b", shown), shown  # JSON or Erlang terms
    assert "us-bounded" in us.ctl("list_operator_policies")
    # what is allowed does get through
    assert (
        attempt(s, "us", "sv.link", publish("biox.us.partners.sv", "us.query", "sv.link")) is None
    )
    assert (
        attempt(
            s,
            "us",
            enc,
            publish("biox.us.submit", "us.encounter.submit", enc, "encounter.submit"),
        )
        is None
    )


def test_a_certificate_a_partner_ca_mints_or_ours_revoked_does_not_log_in(sovereign):
    """Whoever runs mx's CA issues itself us.operators.ada and us.workers: us's broker trusts
    us's CA alone, so the TLS handshake fails. A certificate us's CA revoked stops
    working at the next connection, long before it expires."""
    s = sovereign
    pki = s.brokers.pki
    for user in ("us.operators.ada", "us.workers", "us.encounters.sim", "sv.link"):
        minted = pki.mint("mx", user, trusting="us")
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(parameters(s.brokers.url("us"), minted)).close()
    # the genuine ones work, and the link certificate mx's CA issued us is for mx's broker
    s.connect("us", "us.operators.ada").close()
    with pytest.raises(pika.exceptions.AMQPConnectionError):  # no shared login any more
        minted = pki.mint("us", "us.operators", trusting="us")
        pika.BlockingConnection(parameters(s.brokers.url("us"), minted)).close()
    s.connect("mx", "us.link").close()
    at_mx = s.brokers.pki.link("us", "mx")
    with pytest.raises(pika.exceptions.AMQPConnectionError):  # not sv's CA's: refused there
        tls = ClientTLS(s.brokers.pki.ca("sv"), at_mx.cert, at_mx.key)
        pika.BlockingConnection(parameters(s.brokers.url("sv"), tls)).close()
    # us revokes its encounter system "example": refused from the next connection on
    s.connect("us", "us.encounters.example").close()
    s.brokers.revoke("us", s.tls_of("us", "us.encounters.example").cert)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        s.connect("us", "us.encounters.example").close()
    s.connect("us", "us.encounters.sim").close()  # the others are untouched
    # mx and sv agreed nothing: sv's link identity does not exist on mx's broker
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        s.connect("mx", "sv.link").close()


def test_each_person_is_held_to_their_duties_by_the_broker_the_cli_and_qa(sovereign):
    """§16 need-to-know (issue 20 (6); docs/security.md, "People and roles"): on us's real
    TLS broker, with the definitions generated from deploy/staff.toml, an examiner may not
    send a notice, replay or read a dead letter, nor speak as the privacy officer; the
    CLI refuses her a subject search; a read she makes around the CLI is recorded under
    the identity the broker validated, and `biox qa` names it."""
    s = sovereign
    ana, pat = "us.operators.ana", "us.operators.pat"  # us's examiner, privacy officer

    def send(key: str, user_id: str):
        def act(ch) -> None:
            props = pika.BasicProperties(
                message_id=f"duty-{uuid.uuid4().hex[:8]}",
                type=key.split(".", 1)[1],
                user_id=user_id,
                delivery_mode=2,
            )
            ch.basic_publish("biox.us", key, b"\x80", props, mandatory=True)

        return act

    refused = {
        "notice.send by the examiner": attempt(s, "us", ana, send("us.notice.send", ana)),
        "a replay by the examiner": attempt(s, "us", ana, send("us.replay.query", ana)),
        "a decision by the privacy officer": attempt(s, "us", pat, send("us.review.decision", pat)),
        "the examiner as the privacy officer": attempt(s, "us", ana, send("us.ops.read", pat)),
        "the examiner reading dead letters": attempt(
            s, "us", ana, lambda ch: ch.basic_get("us.intake.dlq")
        ),
    }
    for what, refusal in refused.items():
        assert refusal is not None and refusal.split()[0] in ("403", "406"), (what, refusal)

    # around the CLI: a read event she publishes herself goes through, under her identity
    event = read_event("us", "subject search", {"name": "cruz"}, 4, "someone else")

    def with_schema(ch) -> None:
        props = properties_for(event.envelope, ana)
        ch.basic_publish("biox.us", "us.ops.read", event.body, props, mandatory=True)

    assert attempt(s, "us", ana, with_schema) is None
    env = {
        **s.brokers.env("us", Role.operators, person="ana"),
        "BIOX_DATA_DIR": str(s.settings.data_dir),
        "BIOX_KEYS_DIR": str(s.settings.keys()),
    }
    search = runner.invoke(app, ["subject", "search", "-p", "us", "--name", "cruz"], env=env)
    assert search.exit_code == 3 and "needs privacy_officer; ana holds examiner" in search.output
    shown = runner.invoke(app, ["records", "show", "US-000000001", "-p", "us"], env=env)
    assert shown.exit_code in (0, 1), shown.output

    deadline, reads = time.monotonic() + 30, []
    while time.monotonic() < deadline and len(reads) < 2:
        with session_for(s.settings.database_for("us")) as db:
            reads = db.exec(
                select(AuditEntry).where(
                    AuditEntry.kind == "ops.read", AuditEntry.sender_user == ana
                )
            ).all()
        time.sleep(0.3)
    assert sorted(r.command for r in reads) == ["records show", "subject search"]
    qa = runner.invoke(app, ["qa", "-p", "us"], env=env)
    flagged = [line for line in qa.output.splitlines() if line.startswith("[need_to_know]")]
    assert qa.exit_code == 1 and len(flagged) == 1, qa.output
    assert "subject search needs privacy_officer; ana holds examiner" in flagged[0]


def test_cc_and_bcc_headers_deliver_nothing_past_the_partner_ingress(sovereign):
    """RabbitMQ 3.10 checks only the routing key against topic permissions, not the CC
    and BCC headers. sv, allowed ``us.query``, adds every own-only key it can think of:
    on us's ingress no binding leads to an own-only queue, so the copies go nowhere."""
    s = sovereign
    tricks = [
        "us.review.decision",
        "us.notice.send",
        "us.encounter.submit",
        "us.dead-letter.intake",
        "us.replay.notice",
        "us.retry.query.1",
        "us.retrieval.ask",
        "us.replies.sim.x",
        "#",
    ]
    watched = ["us.review", "us.retrieval", "us.intake.dlq", "us.notice.dlq", "us.review.dlq"]
    before = {q: depth(s, "us", q) for q in watched}
    mid = f"cc-{uuid.uuid4().hex[:8]}"

    def act(ch) -> None:
        props = pika.BasicProperties(
            message_id=mid,
            type="query",
            user_id="sv.link",
            headers={"CC": tricks, "BCC": tricks, "biox-from": "sv", "biox-to": "us"},
        )
        ch.basic_publish("biox.us.partners.sv", "us.query", b"\x80", props, mandatory=True)

    assert attempt(s, "us", "sv.link", act) is None
    time.sleep(2)  # were a copy routed to a worker's queue, it would be refused by now
    assert {q: depth(s, "us", q) for q in watched} == before
    with session_for(s.settings.database_for("us")) as db:
        seen = db.exec(select(AuditEntry).where(AuditEntry.message_id == mid)).all()
    assert {(e.direction, e.kind) for e in seen} <= {("in", "query")}  # the one it may send


def test_an_encounter_system_can_neither_tap_nor_redirect_another_systems_results(sovereign):
    """us.encounters.sim tries what one shared login allowed: read, purge or delete
    another system's reply queue, bind its own queue to example's results, and declare a reply
    queue that dead-letters into us's own queues."""
    s = sovereign
    theirs = "us.replies.conformance.desk"  # (example's certificate: revoked above)
    assert (
        attempt(s, "us", "us.encounters.conformance", lambda ch: ch.queue_declare(theirs)) is None
    )
    sim = "us.encounters.sim"
    mine = f"us.replies.sim.{uuid.uuid4().hex[:6]}"
    assert attempt(s, "us", sim, lambda ch: ch.queue_declare(mine)) is None
    for name, action in {
        "read theirs": lambda ch: ch.basic_get(theirs),
        "purge theirs": lambda ch: ch.queue_purge(theirs),
        "delete theirs": lambda ch: ch.queue_delete(theirs),
        "bind theirs": lambda ch: ch.queue_bind(theirs, "biox.us.results", theirs),
        "tap their key": lambda ch: ch.queue_bind(mine, "biox.us.results", theirs),
        "tap everything": lambda ch: ch.queue_bind(mine, "biox.us.results", "#"),
        "dead-letter into the inbox": lambda ch: ch.queue_declare(
            f"{mine}.dlx",
            arguments={
                "x-dead-letter-exchange": "biox.us",
                "x-dead-letter-routing-key": "us.review.decision",
            },
        ),
        "dead-letter into the ingress": lambda ch: ch.queue_declare(
            f"{mine}.dlx2", arguments={"x-dead-letter-exchange": "biox.us.partners.sv"}
        ),
    }.items():
        refused = attempt(s, "us", sim, action)
        assert refused and refused.startswith("403"), (name, refused)
    assert attempt(s, "us", sim, lambda ch: ch.queue_bind(mine, "biox.us.results", mine)) is None


def test_the_conformance_kit_runs_on_a_participants_own_broker_as_an_encounter_system(
    sovereign,
):
    """On us's own broker (three nodes, TLS, certificate logins) the kit runs as the
    conformance encounter system would. Its login may not read the held results, so that
    case is said not checked, not failed; an on-call operator's certificate lets the kit
    look, and then every case passes."""
    s = sovereign
    env = {
        **s.brokers.env("us", Role.encounters, system="conformance"),
        "BIOX_DATA_DIR": str(s.settings.data_dir),
        "BIOX_KEYS_DIR": str(s.settings.keys()),
    }
    args = ["conformance", "-p", "us", "--user", "us.encounters.conformance", "--json"]
    args += ["--seed", str(SEED), "--gallery-size", str(SIZES["mx"]), "--timeout", "90"]

    def run(*more: str) -> tuple[int, dict[str, dict]]:
        out = runner.invoke(app, [*args, *more], env=env)
        lines = [json.loads(x) for x in out.output.splitlines() if x.startswith("{")]
        return out.exit_code, {c["case"]: c for c in lines}

    code, cases = run()
    held = cases.pop("reply queue missing")
    assert (held["passed"], held["checked"]) == (False, False), held
    assert held["got"].startswith("not checked: us.results.held is for on-call operators")
    assert code == 0 and len(cases) == 13, cases
    assert all(c["passed"] and c["checked"] for c in cases.values()), cases
    oscar = s.brokers.credentials("us", Role.operators, person="oscar")  # on_call
    code, cases = run("--operator-cert", str(oscar.cert), "--operator-key", str(oscar.key))
    assert code == 0 and len(cases) == 14, cases
    assert all(c["passed"] and c["checked"] for c in cases.values()), cases
    assert cases["reply queue missing"]["got"] == "held in us.results.held"


def test_a_forged_identity_is_never_replayed_from_the_dead_letter_queue(sovereign, tmp_path):
    """sv sends a notice claiming to be us (biox-from: us) with a forged first sender.
    us's notice worker refuses it (forged_sender); the dead letter carries sv's own
    broker user, not the forged one; `biox dlq replay --all`, the routine an on-call
    engineer runs, leaves it where it is."""
    s = sovereign
    mid = f"forged-{uuid.uuid4().hex[:8]}"

    def act(ch) -> None:
        props = pika.BasicProperties(
            message_id=mid,
            type="notice",
            user_id="sv.link",
            headers={
                "biox-from": "us",
                "biox-to": "us",
                "biox-schema": "notice/1",
                "biox-original-user-id": "us.operators",
                "biox-actor": "chief",
            },
        )
        ch.basic_publish("biox.us.partners.sv", "us.notice", b"\x80", props, mandatory=True)

    assert attempt(s, "us", "sv.link", act) is None
    assert dead_letter_reasons(s, "us", "us.notice.dlq", {mid}) == {mid: "forged_sender"}
    headers = dead_letter_headers(s, "us", "us.notice.dlq", mid)
    assert headers["biox-original-user-id"] == "sv.link" and "biox-actor" not in headers
    env = {
        **s.brokers.env("us", Role.operators, person="oscar"),  # us's on-call
        "BIOX_DATA_DIR": str(s.settings.data_dir),
        "BIOX_KEYS_DIR": str(s.settings.keys()),
    }
    replayed = runner.invoke(
        app, ["dlq", "replay", "--all", "--queue", "us.notice", "-p", "us"], env=env
    )
    assert "never replayed" in replayed.output, replayed.output
    assert dead_letter_reasons(s, "us", "us.notice.dlq", {mid}) == {mid: "forged_sender"}


def test_a_valid_broker_identity_with_a_forged_sender_or_signature_is_refused_by_reason(sovereign):
    """sv holds a real login on us's broker (its link user). Answers it forges in mx's name,
    tampers with, or sends without a user id are refused by us's response worker for what
    they are, audited, and leave nothing behind."""
    s = sovereign
    ring = load_ring(s.settings.keys(), "sv")
    mid = {name: f"forged-{name}-{uuid.uuid4().hex[:6]}" for name in ("as-mx", "tampered", "bare")}

    def sealed(name: str, claims: str) -> Outgoing:
        env = Envelope(mid[name], "response", "response/1", claims, "us", f"q-{name}")
        out = ring.seal(
            Outgoing("biox.us.partners.sv", "us.response", b"\x80", replace_sender(env, "sv"))
        )
        return Outgoing(
            out.exchange, out.routing_key, out.body, replace_sender(out.envelope, claims)
        )

    as_mx = sealed("as-mx", "mx")  # signed by sv, says it is mx
    tampered = sealed("tampered", "sv")
    tampered = Outgoing(
        tampered.exchange, tampered.routing_key, tampered.body + b"!", tampered.envelope
    )

    def send(out: Outgoing, user_id: str | None):
        def act(ch) -> None:
            props = properties_for(out.envelope, None)
            props.user_id = user_id
            ch.basic_publish(out.exchange, out.routing_key, out.body, props, mandatory=True)

        return act

    assert attempt(s, "us", "sv.link", send(as_mx, "sv.link")) is None
    assert attempt(s, "us", "sv.link", send(tampered, "sv.link")) is None
    bare = sealed("bare", "sv")
    assert attempt(s, "us", "sv.link", send(bare, None)) is None  # no user_id at all
    expected = {
        mid["as-mx"]: "forged_sender",
        mid["tampered"]: "bad_signature",
        mid["bare"]: "unauthenticated",
    }
    reasons = dead_letter_reasons(s, "us", "us.response.dlq", set(expected))
    assert reasons == expected
    db = s.settings.database_for("us")
    deadline = time.monotonic() + 30
    trail: dict[str, str | None] = {}
    while time.monotonic() < deadline and len(trail) < len(expected):
        with session_for(db) as session:
            trail = {
                e.message_id: e.reason
                for e in session.exec(
                    select(AuditEntry).where(AuditEntry.direction == "dead-letter")
                )
                if e.message_id in expected
            }
        time.sleep(0.3)
    assert trail == expected
    with session_for(db) as session:  # nothing processed, so nothing kept or answered
        kept = session.exec(
            select(ProcessedMessage).where(col(ProcessedMessage.message_id).in_(list(expected)))
        ).all()
    assert kept == []


def test_a_query_crosses_three_brokers_and_survives_the_partner_broker_stopping(sovereign):
    """us asks mx and sv; mx's broker stops for 30 s with queries in flight. What us sends
    meanwhile waits in us's link queue to mx (shown), and every encounter is answered once
    by each partner after mx returns."""
    s = sovereign
    planned = plan(s.registry, SIZES, 40, SEED, requesters=["us"], draw=1)
    planned = [p for p in planned if p.expected_partners]
    first, rest = planned[:10], planned[10:]
    tls = s.tls("us", Role.encounters)
    with encounters.EncounterSystem(
        s.brokers.url("us"), SIZES, tls=tls, reply_prefix="us.replies.sim.", results_of=["us"]
    ) as system:
        system.submit(first)
        system.collect(timeout=90, idle_timeout=60)
        assert all(o.complete for o in system.outcomes.values())
        mx = s.brokers.brokers["mx"]
        mx.stop(remove=False)
        stopped = time.monotonic()
        try:
            system.submit(rest)
            to_mx = sum("mx" in p.expected_partners for p in rest)
            waiting = wait_for_depth(s, "us", "us.link.mx", to_mx)
        finally:
            time.sleep(max(0.0, stopped + 30 - time.monotonic()))
            mx.start()
        system.collect(timeout=240, idle_timeout=120)
        outcomes = list(system.outcomes.values())
    incomplete = [o.planned.encounter_id for o in outcomes if not o.complete]
    assert incomplete == []
    # every query to mx waited for it (with whatever else us sent mx: audit checkpoints)
    assert waiting >= to_mx > 0
    assert system.duplicates == 0
    wrong = [
        (o.planned.encounter_id, a) for o in outcomes for a in o.answers.values() if not a.correct
    ]
    assert wrong == []
    check_results_once(system)


def depth(s: Sovereign, broker: str, queue: str) -> int:
    conn = s.connect(broker, f"{broker}.operators.oscar")
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def dead_letter_headers(s: Sovereign, broker: str, queue: str, mid: str) -> dict:
    conn = s.connect(broker, f"{broker}.operators.oscar")
    try:
        ch = conn.channel()
        while True:
            method, props, _ = ch.basic_get(queue)
            if method is None:
                return {}
            if props.message_id == mid:
                return {
                    k: v.decode() if isinstance(v, bytes) else v
                    for k, v in (props.headers or {}).items()
                }
    finally:
        conn.close()


def wait_for_depth(
    s: Sovereign, broker: str, queue: str, at_least: int, timeout: float = 30
) -> int:
    """How many messages wait in ``queue`` once at least ``at_least`` do (or the timeout)."""
    conn = s.connect(broker, f"{broker}.operators.oscar")
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        depth = 0
        while time.monotonic() < deadline:
            depth = ch.queue_declare(queue, passive=True).method.message_count
            if depth >= at_least:
                break
            conn.sleep(0.2)
        return depth
    finally:
        conn.close()


def dead_letter_reasons(
    s: Sovereign, broker: str, queue: str, ids: set[str], timeout: float = 30
) -> dict[str, str]:
    """The reason of each dead letter in ``queue`` among ``ids`` (browsed, not taken)."""
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while time.monotonic() < deadline and set(found) != ids:
        conn = s.connect(broker, f"{broker}.operators.oscar")
        try:
            ch = conn.channel()
            while True:
                method, props, _ = ch.basic_get(queue)
                if method is None:
                    break
                reason = (props.headers or {}).get("biox-reason")
                if props.message_id in ids:
                    found[props.message_id] = (
                        reason.decode() if isinstance(reason, bytes) else reason
                    )
        finally:
            conn.close()  # unacked: back to the queue
        time.sleep(0.3)
    return found


def replace_sender(env: Envelope, sender: str) -> Envelope:
    from dataclasses import replace

    return replace(env, sender=sender)


def test_partners_hold_signed_checkpoints_that_name_a_truncated_or_rewritten_chain(
    sovereign, tmp_path
):
    """us's audit worker sends its signed chain head to mx and sv every 2 s, on its
    schedule, once its chain holds an entry (over the links, sealed); they keep it. Cut
    us's chain short, or rewrite and re-hash it, on a copy: `biox audit verify` names what
    happened, from the checkpoints alone."""
    s = sovereign
    # something in us's trail whatever ran before: a submission its intake refuses
    enc = "us.encounters.sim"
    entered = publish("biox.us.submit", "us.encounter.submit", enc, "encounter.submit")
    assert attempt(s, "us", enc, entered) is None
    deadline = time.monotonic() + 60
    held: dict[str, list] = {}
    while time.monotonic() < deadline and not all(held.get(p) for p in ("mx", "sv")):
        for holder in ("mx", "sv"):
            with session_for(s.settings.database_for(holder)) as db:
                held[holder] = checkpoints.held_in(db, holder, "us")
        time.sleep(0.5)
    assert held["mx"] and held["sv"], held
    trust = Trust.load(trust_path(s.settings.keys()))
    assert all(checkpoints.genuine(trust, h.checkpoint) for h in held["mx"] + held["sv"])

    copy = tmp_path / "data"
    # the holders first: us's chain grows meanwhile (and is checkpointed), so copied last
    # it holds every entry a copied checkpoint names, as a live chain does
    for code in ("mx", "sv", "us"):
        (copy / code).mkdir(parents=True)
        with (
            sqlite3.connect(s.settings.data_dir / code / "biox.db") as live,
            sqlite3.connect(copy / code / "biox.db") as snapshot,
        ):
            live.backup(snapshot)
    env = {
        "BIOX_DATA_DIR": str(copy),
        "BIOX_KEYS_DIR": str(s.settings.keys()),
        "BIOX_REGISTRY": str(s.settings.registry),
    }
    intact = runner.invoke(app, ["audit", "verify", "-p", "us"], env=env)
    assert intact.exit_code == 0, intact.output
    assert "chain intact" in intact.output and "checkpoints, newest at entry" in intact.output

    newest = max(h.checkpoint.seq for h in held["mx"])
    with sqlite3.connect(copy / "us" / "biox.db") as db:  # cut the tail off
        db.execute("DELETE FROM audit_entries WHERE seq > ?", (newest - 3,))
    cut = runner.invoke(app, ["audit", "verify", "-p", "us"], env=env)
    assert cut.exit_code == 1 and "truncated:" in cut.output, cut.output
    assert "held by mx" in cut.output

    # the partner's export, read by us's auditor where mx's database is out of reach
    exported = runner.invoke(app, ["audit", "checkpoints", "-p", "mx", "--of", "us"], env=env)
    file = tmp_path / "mx-checkpoints.jsonl"
    file.write_text(exported.output)
    (copy / "mx" / "biox.db").unlink()
    (copy / "sv" / "biox.db").unlink()
    from_file = runner.invoke(
        app, ["audit", "verify", "-p", "us", "--checkpoints", str(file)], env=env
    )
    assert from_file.exit_code == 1 and "truncated:" in from_file.output, from_file.output
