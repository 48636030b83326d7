"""The definitions each participant's own broker boots with: what they let each user do.

The brokers' enforcement of these is shown in tests/integration/test_sovereign.py; here,
that the generated rules say what docs/security.md says they say."""

from __future__ import annotations

import json
import re

from biox.broker.definitions import SHOVEL_PREFETCH, definitions, shovel_uri, split_shovels
from biox.broker.topology import (
    PARKED_ARGUMENTS,
    bindings,
    retry_queue_arguments,
    work_queue_arguments,
)
from biox.routes import ROUTES
from biox.trust.staff import Duty
from biox.wire import addresses

CODES = ["mx", "sv", "us"]
URIS = {"mx": "amqps://mx:5671/%2F", "sv": "amqps://sv:5671/%2F"}
STAFF = {
    "ana": frozenset({Duty.examiner}),
    "pat": frozenset({Duty.privacy_officer}),
    "oscar": frozenset({Duty.on_call}),
    "ada": frozenset({Duty.administrator}),
}
US = definitions("us", CODES, [1, 5], 20, URIS, encounter_systems=["poe", "gate-7"], staff=STAFF)


def permission(user: str) -> dict[str, str]:
    return next(p for p in US["permissions"] if p["user"] == user)


def topic_write(user: str, exchange: str, which: str = "write") -> str | None:
    return next(
        (
            p[which]
            for p in US["topic_permissions"]
            if p["user"] == user and p["exchange"] == exchange
        ),
        None,
    )


def allows(pattern: str | None, value: str) -> bool:
    return pattern is not None and re.search(pattern, value) is not None


def test_users_are_one_per_own_role_and_one_link_per_partner_with_no_password():
    assert sorted(u["name"] for u in US["users"]) == [
        "mx.link",
        "sv.link",
        "us.encounters.gate-7",  # one per encounter system of the registry
        "us.encounters.poe",
        "us.operators.ada",  # one per person of the staff file, none shared
        "us.operators.ana",
        "us.operators.oscar",
        "us.operators.pat",
        "us.workers",
    ]
    assert {u["password_hash"] for u in US["users"]} == {""}
    assert {tuple(sorted(u["limits"].items())) for u in US["users"]} == {
        (("max-channels", 64), ("max-connections", 16))
    }
    assert "administrator" not in {u["tags"] for u in US["users"]}


def test_a_partner_link_may_publish_only_partner_kinds_addressed_to_us_on_our_ingress():
    p = permission("mx.link")
    assert allows(p["write"], "biox.us.partners.mx")
    for other in (
        "amq.default",
        "biox.us",
        "biox.us.out",
        "biox.us.submit",
        "biox.mx",
        "biox.us.partners.sv",  # sv's way in: not mx's
    ):
        assert not allows(p["write"], other), other
    assert p["read"] == p["configure"] == "^$"
    keys = topic_write("mx.link", "biox.us.partners.mx")
    for kind in ROUTES.partner_kinds():
        assert allows(keys, f"us.{kind}"), kind
    for key in (
        "us.encounter.submit",
        "us.review.decision",
        "us.retrieval.ask",
        "us.retry.query.1",
        "us.dead-letter.query",
        "mx.query",
        "us.queryx",
        "us.query.x",
    ):
        assert not allows(keys, key), key


def test_our_workers_send_partner_kinds_to_partners_only_and_own_kinds_to_ourselves():
    p = permission("us.workers")
    for exchange in ("biox.us", "biox.us.out", "biox.us.results"):
        assert allows(p["write"], exchange)
    assert not allows(p["write"], "biox.mx") and not allows(p["write"], "amq.default")
    assert p["configure"] == "^$"  # the topology is the definitions', not the workers'
    assert allows(p["read"], "us.query") and not allows(p["read"], "mx.query")
    out = topic_write("us.workers", "biox.us.out")
    assert allows(out, "mx.query") and allows(out, "sv.response")
    assert not allows(out, "us.query") and not allows(out, "mx.review.decision")
    inbox = topic_write("us.workers", "biox.us")
    for key in (
        "us.review.case",
        "us.retry.query.5",
        "us.dead-letter.intake",
        "us.unrecorded.retry.audit.5",
    ):
        assert allows(inbox, key), key
    assert not allows(inbox, "us.query")  # never a partner kind in its own name
    assert not allows(inbox, "us.replay.query")  # replays are the operators'


def test_nobody_may_publish_to_the_default_exchange():
    for p in US["permissions"]:
        assert not allows(p["write"], "amq.default"), p["user"]


def test_on_call_replays_and_imports_through_the_inbox_on_their_own_keys():
    p = permission("us.operators.oscar")
    assert allows(p["write"], "biox.us") and not allows(p["write"], "biox.us.out")
    assert allows(p["read"], "us.intake.dlq")
    keys = topic_write("us.operators.oscar", "biox.us")
    for key in (
        "us.ops.dlq.replay",
        "us.ops.read",
        "us.replay.query",
        "us.dead-letter.response",
        "us.unrecorded.dead-letter.audit",
    ):
        assert allows(keys, key), key
    for never in ("us.query", "us.encounter.submit", "us.review.decision", "us.notice.send"):
        assert not allows(keys, never), never


def test_each_duty_publishes_its_own_kinds_and_reads_no_queue_it_does_not_need():
    """§16: an examiner decides cases and asks for retrievals; a privacy officer sends
    notices; neither replays a dead letter, sends a held result on, or reads a queue."""
    expected = {
        "us.operators.ana": {"us.review.decision", "us.retrieval.ask", "us.ops.read"},
        "us.operators.pat": {"us.notice.send", "us.ops.read"},
        "us.operators.ada": {"us.ops.retention.purge", "us.ops.dlq.replay", "us.ops.read"},
    }
    every = {addresses.routing_key("us", k) for k in ROUTES.kinds} | {"us.replay.query"}
    for user, keys in expected.items():
        pattern = topic_write(user, "biox.us")
        assert {k for k in every if allows(pattern, k)} >= keys, user
    for user in ("us.operators.ana", "us.operators.pat"):
        pattern = topic_write(user, "biox.us")
        allowed = {k for k in every if allows(pattern, k)}
        assert allowed == expected[user], user
        p = permission(user)
        assert p["read"] == "^$" and not allows(p["write"], "biox.us.results"), user
        assert topic_write(user, "biox.us.results") is None


def test_encounter_systems_submit_and_read_their_own_reply_queues_only():
    p = permission("us.encounters.gate-7")
    assert allows(p["write"], "biox.us.submit")
    for other in ("amq.default", "biox.us", "biox.us.partners.mx", "biox.us.results"):
        # nothing but the submissions exchange, so no dead-letter target elsewhere either
        assert not allows(p["write"], other), other
    for name in ("us.replies.gate-7", "us.replies.gate-7.desk-2"):
        assert allows(p["configure"], name) and allows(p["read"], name), name
        assert allows(p["write"], name), name  # binding its queue takes write on it
    for theirs in ("us.replies.poe", "us.replies.gate-70", "us.replies.poe.x", "us.response"):
        assert not allows(p["configure"], theirs) and not allows(p["read"], theirs), theirs
    assert allows(p["read"], "biox.us.results")  # and read on the exchange, by key:
    binds = topic_write("us.encounters.gate-7", "biox.us.results", "read")
    assert allows(binds, "us.replies.gate-7") and allows(binds, "us.replies.gate-7.desk-2")
    for key in ("us.replies.poe", "#", "us.replies.#", "us.replies.gate-7.*", "us.response"):
        assert not allows(binds, key), key  # no tap on another system's results
    keys = topic_write("us.encounters.gate-7", "biox.us.submit")
    assert allows(keys, "us.encounter.submit")
    assert not allows(keys, "us.query") and not allows(keys, "us.review.decision")


def test_each_way_in_is_bound_only_to_the_queues_its_senders_may_reach():
    """A CC or BCC header routes a copy by the same exchange's bindings: on the partner
    ingress and the submissions exchange, there is none to an own-only queue."""
    got = {(b["destination"], b["source"], b["routing_key"]) for b in US["bindings"]}
    by_source: dict[str, set[str]] = {}
    for dest, source, _key in got:
        by_source.setdefault(source, set()).add(dest)
    roles = {ROUTES.routes[k].queue for k in ROUTES.partner_kinds()}
    for partner in ("mx", "sv"):  # each partner's way in leads to its own arrival queues
        arrivals = {addresses.arrival_queue("us", r, partner) for r in roles if r}
        assert by_source[f"biox.us.partners.{partner}"] == arrivals | {"us.audit"}
    assert by_source["biox.us.submit"] == {"us.intake", "us.audit"}
    # no partner's kinds on the inbox, whoever could write there
    partner_keys = {f"us.{k}" for k in ROUTES.partner_kinds()}
    assert not {key for _, source, key in got if source == "biox.us"} & partner_keys


def test_each_partner_waits_in_queues_of_its_own():
    """A flood from sv fills sv's arrival queues, bounded, and leaves mx's alone."""
    queues = {q["name"]: q["arguments"] for q in US["queues"]}
    for partner in ("mx", "sv"):
        name = f"us.query.from.{partner}"
        assert queues[name]["x-queue-type"] == "quorum"
        assert queues[name]["x-overflow"] == "reject-publish"
        assert queues[name]["x-dead-letter-routing-key"] == "us.query.dlq"
    assert "us.review.from.mx" not in queues  # review takes no partner kind


def test_every_queue_is_bounded_and_full_queues_refuse_rather_than_drop():
    [bounded] = [p for p in US["parameters"] if p["component"] == "operator_policy"]
    policy = bounded["value"]
    assert policy["definition"] == {"max-length": 200_000, "max-length-bytes": 2 * 1024**3}
    pattern = re.compile(policy["pattern"])
    assert all(pattern.match(q["name"]) for q in US["queues"])
    assert pattern.match("us.replies.poe")  # reply queues an encounter system declares too
    queues = {q["name"]: q["arguments"] for q in US["queues"]}
    for name in ("us.link.mx", "us.query", "us.query.retry.5"):
        assert queues[name]["x-overflow"] == "reject-publish", name
    overflow = {p["name"]: p["definition"].get("overflow") for p in US["policies"]}
    assert overflow == {
        "us-dead-letter-retention": "reject-publish",
        "us-held-results": "reject-publish",
    }


def test_every_queue_is_replicated_and_what_waits_for_an_operator_outlasts_any_look():
    """On a cluster a classic queue lives on one node: what is routed to it while that
    node is down is lost. Dead letters and held results are read by get-then-requeue, each
    a delivery: RabbitMQ 4 drops a message past a quorum queue's limit (20 unless named)."""
    queues = {q["name"]: q["arguments"] for q in US["queues"]}
    assert {name for name, args in queues.items() if args["x-queue-type"] != "quorum"} == set()
    parked = [n for n in queues if n.endswith(".dlq")] + [addresses.held_results_queue("us")]
    assert len(parked) == len(ROUTES.queues) + 1
    for name in parked:
        assert queues[name] == PARKED_ARGUMENTS, name
    assert isinstance(PARKED_ARGUMENTS["x-delivery-limit"], int)
    assert PARKED_ARGUMENTS["x-delivery-limit"] >= 1_000_000  # not -1: RabbitMQ 3 drops at once


def test_the_topology_is_the_one_the_shared_broker_declares_plus_a_link_queue_per_partner():
    queues = {q["name"]: q["arguments"] for q in US["queues"]}
    for q in ROUTES.queues.values():
        name = addresses.queue("us", q.role)
        assert queues[name] == work_queue_arguments(name, 20)
        assert queues[addresses.retry_queue(name, 5)] == retry_queue_arguments(name, 5)
        assert addresses.dead_letter_queue(name) in queues
    assert {"us.link.mx", "us.link.sv"} <= set(queues)
    got = {(b["destination"], b["source"], b["routing_key"]) for b in US["bindings"]}
    assert got == set(bindings("us", CODES, ROUTES, [1, 5], sovereign=True))
    for kind in ROUTES.partner_kinds():
        assert ("us.link.mx", "biox.us.out", f"mx.{kind}") in got
    # no exchange-to-exchange link to a partner's exchange: that is the shovel's job
    assert not any(b["source"].startswith(("biox.mx", "biox.sv")) for b in US["bindings"])


def test_one_shovel_per_partner_acks_only_what_the_partner_confirmed_and_names_its_user():
    shovels = {p["name"]: p["value"] for p in US["parameters"] if p["component"] == "shovel"}
    assert set(shovels) == {"us-to-mx", "us-to-sv"}
    mx = shovels["us-to-mx"]
    assert mx["src-queue"] == "us.link.mx"
    assert mx["dest-uri"] == URIS["mx"] and mx["dest-exchange"] == "biox.mx.partners.us"
    assert mx["ack-mode"] == "on-confirm"
    assert mx["src-prefetch-count"] == SHOVEL_PREFETCH == 1000  # bounded, and reviewed
    assert mx["dest-publish-properties"] == {"user_id": "us.link"}


def test_a_shovel_logs_in_by_certificate_and_checks_the_partner_broker():
    uri = shovel_uri("mx.example.org", 5671, "/t/ca.pem", "/t/link.pem", "/t/link.key")
    assert uri.startswith("amqps://mx.example.org:5671/%2F?")
    for part in (
        "auth_mechanism=external",
        "verify=verify_peer",
        "server_name_indication=mx.example.org",
        "certfile=%2Ft%2Flink.pem",
    ):
        assert part in uri, part
    assert "server_name_indication=localhost" in shovel_uri("127.0.0.1", 1, "a", "b", "c")


def test_the_example_broker_config_is_tls_only_with_certificate_logins():
    from pathlib import Path

    conf = (Path(__file__).parents[2] / "deploy" / "rabbitmq" / "rabbitmq.conf.example").read_text()
    advanced = Path(__file__).parents[2] / "deploy" / "rabbitmq" / "advanced.config.example"
    for term in ("{fail_if_no_peer_cert, true}", "{crl_check, peer}", "ssl_crl_hash_dir"):
        assert term in advanced.read_text(), term
    for line in (
        "listeners.tcp = none",
        "auth_mechanisms.1 = EXTERNAL",
        "ssl_cert_login_from = common_name",
        "load_definitions = ",
        "max_message_size = ",
    ):
        assert line in conf, line
    assert not list((Path(__file__).parents[2] / "deploy").rglob("definitions*.json"))


def test_dead_letters_expire_after_the_retention_policy_on_every_dead_letter_queue():
    policy = US["policies"][0]
    assert policy["apply-to"] == "queues" and policy["vhost"] == "/"
    assert policy["definition"]["message-ttl"] == 30 * 86_400_000
    pattern = re.compile(policy["pattern"])
    dlqs = [q["name"] for q in US["queues"] if q["name"].endswith(".dlq")]
    assert dlqs and all(pattern.match(q) for q in dlqs)
    assert not any(pattern.match(q["name"]) for q in US["queues"] if not q["name"].endswith(".dlq"))
    assert definitions("us", CODES, [1, 5], 20, URIS, dead_letter_days=2)["policies"][0][
        "definition"
    ]["message-ttl"] == (2 * 86_400_000)


def test_two_participants_without_an_agreement_have_no_link():
    """mx and sv agreed nothing (deploy/participants.toml): mx's broker has no sv.link
    user, no link queue and no shovel to sv."""
    from pathlib import Path

    from biox.registry import Registry

    registry = Registry.load(Path(__file__).parents[2] / "deploy" / "participants.toml")
    assert registry.linked("mx") == ["us"] and registry.linked("us") == ["mx", "sv"]
    mx = definitions("mx", CODES, [1, 5], 20, {"us": "amqps://us:5671/%2F"}, linked=["us"])
    assert "sv.link" not in {u["name"] for u in mx["users"]}
    assert "mx.link.sv" not in {q["name"] for q in mx["queues"]}
    assert [p["name"] for p in mx["parameters"] if p["component"] == "shovel"] == ["mx-to-us"]


def test_the_shovels_come_apart_from_what_a_first_boot_loads():
    """RabbitMQ imports parameters before queues: a shovel in the boot file could declare
    its link queue first, as a classic queue (``split_shovels``)."""
    boot, shovels = split_shovels(US)
    assert not any(p["component"] == "shovel" for p in boot["parameters"])
    assert any(p["component"] == "operator_policy" for p in boot["parameters"])
    assert {q["name"] for q in boot["queues"]} >= {"us.link.mx", "us.link.sv"}
    assert list(shovels) == ["parameters"]
    assert {p["name"] for p in shovels["parameters"]} == {"us-to-mx", "us-to-sv"}
    assert len(boot["parameters"]) + len(shovels["parameters"]) == len(US["parameters"])


def test_a_partner_on_a_cluster_gets_a_shovel_that_names_every_node():
    from typer.testing import CliRunner

    from biox.cli import app

    nodes = "mx=rmq1.mx:5671,rmq2.mx:5671,rmq3.mx:5671"
    done = CliRunner().invoke(
        app,
        [
            "broker",
            "definitions",
            "-p",
            "us",
            "--partner",
            nodes,
            "--partner",
            "sv=sv:1",
            "--part",
            "shovels",
        ],
    )
    assert done.exit_code == 0, done.output
    shovels = {p["name"]: p["value"] for p in json.loads(done.output)["parameters"]}
    uris = shovels["us-to-mx"]["dest-uri"]
    assert [u.split("/%2F")[0] for u in uris] == [
        "amqps://rmq1.mx:5671",
        "amqps://rmq2.mx:5671",
        "amqps://rmq3.mx:5671",
    ]
    assert all("server_name_indication=rmq" in u for u in uris)  # each checked by its name
    assert isinstance(shovels["us-to-sv"]["dest-uri"], str)
    args = ["broker", "definitions", "-p", "us", "--partner", "mx=rmq1.mx", "--partner", "sv=s:1"]
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "HOST:PORT, not 'rmq1.mx'" in bad.output
