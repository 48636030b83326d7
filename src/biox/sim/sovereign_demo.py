"""The demo's second part: every participant on its own TLS broker, linked by shovels
(docs/security.md). Shows the links, who each broker authenticated, encounters answered
across them, and forgeries refused by the brokers and by the workers."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import replace

import pika
from rich.console import Console
from rich.table import Table

from biox.broker.connection import parameters
from biox.broker.publisher import properties_for
from biox.dev.broker import SERVER
from biox.dev.sovereign import SovereignBrokers
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import encounters, galleries, plans
from biox.sim.processes import Workers, commence, start_sovereign_workers, worker_env
from biox.trust.identity import Role
from biox.trust.sealing import load_ring
from biox.wire.codec import Envelope, Outgoing

ROLES = {
    "us": ("intake", "response", "audit", "notice"),
    "mx": ("query", "audit", "notice"),
    "sv": ("query", "audit", "notice"),
}


def run(settings: Settings, console: Console, gallery_size: int, count: int, seed: int) -> int:
    if not SERVER.exists():
        console.print("[yellow]Sovereign layout skipped: rabbitmq-server is not installed.[/]")
        return 0
    console.rule("Sovereign layout: one TLS broker per participant, linked by shovels")
    data = settings.data_dir / "demo-sovereign"
    shutil.rmtree(data, ignore_errors=True)
    settings = settings.model_copy(update={"data_dir": data, "amqp_url": None})
    registry = Registry.load(settings.registry)
    codes = registry.codes
    sizes = {c: (gallery_size if c != "us" else 10) for c in codes}
    with console.status("Starting three brokers (TLS only, certificate logins, shovels)..."):
        brokers = SovereignBrokers(codes, settings, data / "brokers").start()
    workers = Workers([])
    try:
        with console.status("Galleries and workers, each participant on its own broker..."):
            for code in ("mx", "sv"):
                galleries.build_gallery(settings, code, sizes[code], seed)
            env = worker_env(settings, codes, BIOX_LOG_LEVEL="WARNING")
            workers = start_sovereign_workers(brokers, ROLES, env, data / "logs")
            # §34 between the sovereign brokers: each privacy officer's readiness notices
            registry = commence(
                settings, codes, lambda c: (brokers.url(c), brokers.officer(c)), "pat"
            )
        planned = plans.plan(registry, sizes, count, seed, requesters=["us"])
        planned = [p for p in planned if p.expected_partners]
        started = time.monotonic()
        with (
            console.status(f"{len(planned)} encounters at us, asked of mx and sv..."),
            encounters.EncounterSystem(
                brokers.url("us"),
                sizes,
                tls=brokers.credentials("us", Role.encounters),
                reply_prefix="us.replies.sim.",
                results_of=["us"],
            ) as system,
        ):
            system.submit(planned)
            system.collect(timeout=120, idle_timeout=60)
        outcomes = list(system.outcomes.values())
        complete = sum(o.complete for o in outcomes)
        console.print(
            f"{complete}/{len(outcomes)} encounters answered by every partner asked, across "
            f"three brokers, in {time.monotonic() - started:.1f} s; "
            f"{system.duplicates} duplicate answers"
        )
        _links(console, brokers)
        _identities(console, brokers)
        refused = _forgeries(console, brokers, settings)
        return 0 if complete == len(outcomes) and refused else 1
    finally:
        with console.status("Stopping workers and brokers..."):
            workers.stop()
            brokers.stop()


def _links(console: Console, brokers: SovereignBrokers) -> None:
    table = Table("broker", "shovel", "from queue", "to", "state", title="Links (shovels)")
    for code, broker in brokers.brokers.items():
        said = broker.ctl("shovel_status", "--formatter", "json") or "[]"
        try:
            shovels = json.loads(said)
        except ValueError:  # rabbitmqctl answers an Erlang term while a shovel starts
            table.add_row(code, "?", "", f"status not ready: {said.strip()[:60]}", "")
            continue
        for s in shovels:
            table.add_row(
                code,
                s["name"],
                s.get("source_queue", ""),
                f"{s.get('destination_exchange', '')} at {s.get('destination', '')}",
                s["state"],
            )
    console.print(table)


def _identities(console: Console, brokers: SovereignBrokers) -> None:
    table = Table(
        "broker",
        "user",
        "certificate subject",
        "mechanism",
        title="Who each broker authenticated (connections now open)",
    )
    for code, broker in brokers.brokers.items():
        listed = broker.ctl(
            "list_connections", "user", "peer_cert_subject", "auth_mechanism", "--formatter", "json"
        )
        for c in sorted(json.loads(listed or "[]"), key=lambda c: c["user"]):
            table.add_row(code, c["user"], c["peer_cert_subject"], c["auth_mechanism"])
    console.print(table)


def _forgeries(console: Console, brokers: SovereignBrokers, settings: Settings) -> bool:
    """sv, with its real login on us's broker, tries to pass for mx or to reach us's own
    queues; mx's CA tries to mint us's users."""
    table = Table("what is tried on us's broker", "refused by", "answer", title="Forgeries")
    held = [_minted(brokers, table), _cc_trick(brokers, table)]
    link = pika.BlockingConnection(parameters(brokers.url("us"), brokers.pki.link("sv", "us")))
    try:
        ch = link.channel()
        ch.confirm_delivery()
        try:
            ch.basic_publish("", "us.intake", b"x", pika.BasicProperties(user_id="sv.link"))
            table.add_row("sv publishes into us.intake by the default exchange", "-", "accepted!")
            held.append(False)
        except pika.exceptions.ChannelClosedByBroker as exc:
            table.add_row(
                "sv publishes into us.intake by the default exchange",
                "us's broker",
                f"{exc.reply_code} {exc.reply_text[:60]}",
            )
            ch = link.channel()
            ch.confirm_delivery()
        mid = f"forged-{uuid.uuid4().hex[:8]}"
        env = Envelope(mid, "response", "response/1", "sv", "us", f"q-{mid}")
        ingress = "biox.us.partners.sv"
        sealed = load_ring(settings.keys(), "sv").seal(Outgoing(ingress, "us.response", b"", env))
        claims_mx = replace(sealed.envelope, sender="mx")
        props = properties_for(claims_mx, "sv.link")
        ch.basic_publish(ingress, "us.response", sealed.body, props, mandatory=True)
    finally:
        link.close()
    reason = _dead_letter_reason(brokers, "us.response.dlq", mid)
    table.add_row(
        "an answer signed by sv saying it is mx's (biox-from: mx)",
        "us's response worker" if reason else "-",
        reason or "not refused!",
    )
    console.print(table)
    return reason == "forged_sender" and all(held)


def _minted(brokers: SovereignBrokers, table: Table) -> bool:
    """Whoever runs mx's CA issues itself ``us.operators.ada`` (us's administrator): us's
    broker trusts us's CA alone."""
    minted = brokers.pki.mint("mx", "us.operators.ada", trusting="us")
    try:
        pika.BlockingConnection(parameters(brokers.url("us"), minted)).close()
    except pika.exceptions.AMQPConnectionError as exc:
        why = "unknown CA" if "UNKNOWN_CA" in repr(exc) else type(exc).__name__
        table.add_row(
            "a us.operators.ada certificate minted by mx's CA logs in",
            "us's broker (TLS)",
            f"handshake refused: {why}",
        )
        return True
    table.add_row("a us.operators.ada certificate minted by mx's CA logs in", "-", "logged in!")
    return False


def _cc_trick(brokers: SovereignBrokers, table: Table) -> bool:
    """sv adds CC and BCC headers naming us's own-only queues to a query it may send."""
    operators = pika.BlockingConnection(
        parameters(brokers.url("us"), brokers.credentials("us", Role.workers))
    )
    review = operators.channel()
    before = review.queue_declare("us.review", passive=True).method.message_count
    link = pika.BlockingConnection(parameters(brokers.url("us"), brokers.pki.link("sv", "us")))
    try:
        ch = link.channel()
        ch.confirm_delivery()
        keys = ["us.review.decision", "us.notice.send", "us.dead-letter.intake"]
        props = pika.BasicProperties(
            message_id=f"cc-{uuid.uuid4().hex[:8]}",
            type="query",
            user_id="sv.link",
            headers={"CC": keys, "BCC": keys},
        )
        ch.basic_publish("biox.us.partners.sv", "us.query", b"\x80", props, mandatory=True)
    finally:
        link.close()
    time.sleep(1)
    after = review.queue_declare("us.review", passive=True).method.message_count
    operators.close()
    table.add_row(
        "sv's query with CC/BCC: us.review.decision, us.notice.send, ...",
        "us's ingress (no binding)",
        f"{after - before} copies in us.review",
    )
    return bool(after == before)


def _dead_letter_reason(brokers: SovereignBrokers, queue: str, mid: str) -> str | None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        conn = pika.BlockingConnection(
            parameters(brokers.url("us"), brokers.credentials("us", Role.workers))
        )
        try:
            ch = conn.channel()
            while True:
                method, props, _ = ch.basic_get(queue)
                if method is None:
                    break
                if props.message_id == mid:
                    reason = (props.headers or {}).get("biox-reason")
                    return reason.decode() if isinstance(reason, bytes) else reason
        finally:
            conn.close()
        time.sleep(0.3)
    return None
