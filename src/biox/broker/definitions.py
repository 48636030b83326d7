"""RabbitMQ definitions for one participant's own broker, generated from the registry and
the route table (docs/security.md, "What each broker allows").

Loaded at broker start (``load_definitions``), they are the whole of what the broker
knows: its exchanges, queues and bindings; one user per role of its own participant and
one link user per partner, all authenticating by certificate (no passwords); what each
may configure, write and read; which routing keys each may publish (topic permissions);
and one shovel per partner, which moves what waits in the link queue to that partner's
inbox on the partner's broker, acking only what the partner's broker confirmed.

What each user may do, on ``us``'s broker:

=================  ===================================  ===================================
user               may publish                          may read
=================  ===================================  ===================================
us.workers         its inbox (own kinds, retry and      its own queues
                   dead-letter hops) and outbox
                   (partner kinds to partners), its
                   results exchange
us.operators.<p>   its inbox: the kinds the person's    on-call and administrators: its
(one per person)   duties send (``trust.staff``) and    own queues (dead-letter tools,
                   the record of their reads; on-call   held results); examiners and
                   and administrators also replays      privacy officers: nothing
                   and imports, and held results sent
                   on through its results exchange
us.encounters      its inbox, ``us.encounter.submit``   its reply queues ``us.replies.*``
                   only                                 (declared and bound to
                                                        ``biox.us.results`` by itself)
mx.link, sv.link   us's inbox, the partner kinds        nothing
                   addressed to us, only
=================  ===================================  ===================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from biox.broker.topology import (
    PARKED_ARGUMENTS,
    arrival_queues,
    bindings,
    entrance_exchanges,
    results_arguments,
    retry_queue_arguments,
    work_queue_arguments,
)
from biox.routes import ROUTES, RouteTable, Sender
from biox.trust.identity import Role, broker_user, encounter_user
from biox.trust.staff import EVERYONE_SENDS, READS_QUEUES, SENDS, Duty, operator_user
from biox.wire import addresses

VHOST = "/"
NOTHING = "^$"


@dataclass(frozen=True)
class Limits:
    """What one participant's broker lets any one queue and any one user hold
    (docs/security.md, "Quotas"). A full work or retry queue refuses a publish (the
    publisher's confirm fails and it retries later: nothing is dropped); a full
    dead-letter queue, held-results queue or link queue does the same; a reply queue an
    encounter system declared keeps its newest results (``biox encounters redeliver``
    sends any again)."""

    queue_messages: int = 200_000
    queue_bytes: int = 2 * 1024**3
    connections: int = 16
    channels: int = 64

    def per_user(self) -> dict[str, int]:
        return {"max-connections": self.connections, "max-channels": self.channels}


#: a link queue holds what waits for a partner that is down: bounded, never dropped
LINK_ARGUMENTS: dict[str, object] = {"x-queue-type": "quorum", "x-overflow": "reject-publish"}
#: the most a shovel holds unacknowledged (RabbitMQ's default, written out so that it is
#: reviewed): on-confirm, that many messages may be on the wire to the partner at once, so
#: a link of 100 ms round trip still carries 10 000 a second. Under `bench.sovereign`'s
#: saturated load a shovel held 64 at most, one batch of a worker's (docs/performance.md,
#: "The layout's levers")
SHOVEL_PREFETCH = 1000


def _either(*names: str) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def _keys(to: Iterable[str], kinds: Iterable[str]) -> str:
    return (
        "^("
        + "|".join(re.escape(t) for t in to)
        + r")\.("
        + "|".join(re.escape(k) for k in kinds)
        + ")$"
    )


def shovel_uri(host: str, port: int, ca: str, cert: str, key: str) -> str:
    """An ``amqps://`` URI for a shovel that logs in by its certificate (EXTERNAL)."""
    query = urlencode(
        {
            "cacertfile": ca,
            "certfile": cert,
            "keyfile": key,
            "verify": "verify_peer",
            "server_name_indication": "localhost" if host == "127.0.0.1" else host,
            "auth_mechanism": "external",
            "heartbeat": "15",
        }
    )
    return f"amqps://{host}:{port}/{quote(VHOST, safe='')}?{query}"


def definitions(
    code: str,
    codes: Iterable[str],
    tiers: Iterable[int],
    delivery_limit: int,
    partner_uris: dict[str, str | list[str]],
    routes: RouteTable = ROUTES,
    dead_letter_days: int = 30,
    encounter_systems: Iterable[str] = (),
    limits: Limits | None = None,
    linked: Iterable[str] | None = None,
    staff: dict[str, frozenset[Duty]] | None = None,
) -> dict[str, Any]:
    """Everything ``code``'s broker holds. ``partner_uris``: for each partner, the URI its
    shovel uses to reach that partner's broker (as ``code``'s link user), or one per node
    of that partner's cluster: the shovel dials one, and another when it fails.
    ``dead_letter_days``: how long a dead letter is kept (a policy, so it changes live).
    ``encounter_systems``: one broker user each (``<code>.encounters.<system>``).
    ``limits``: queue bounds and per-user connection and channel limits. ``linked``: the
    partners ``code`` has an agreement with (``Registry.linked``; default: all): only
    they get a link user, a link queue and a shovel. ``staff``: ``code``'s people and
    their duties (``Staff.of``): one user each, ``<code>.operators.<person>``."""
    limits = limits or Limits()
    partners = sorted(linked) if linked is not None else [c for c in codes if c != code]
    codes = sorted({code, *partners})
    tiers = list(tiers)
    inbox, outbox = addresses.inbox(code), addresses.outbox(code)
    submit = addresses.submissions(code)
    partner_kinds = routes.partner_kinds()
    own_kinds = sorted(k for k, r in routes.routes.items() if Sender.own in r.senders)
    submit_kinds = sorted(
        k for k, r in routes.routes.items() if Sender.encounter_system in r.senders
    )
    hop_keys = rf"^{re.escape(code)}\.(unrecorded\.)?(retry|dead-letter)\..*$"
    replay_keys = rf"^{re.escape(code)}\.(replay|dead-letter|unrecorded\.dead-letter)\..*$"
    results = addresses.results(code)
    own_keys = _keys([code], own_kinds)

    users, permissions, topic_permissions = [], [], []

    def user(name: str, configure: str, write: str, read: str, tags: str = "") -> None:
        users.append(
            {
                "name": name,
                "password_hash": "",  # certificate only: no password can log in
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": tags,
                "limits": dict(limits.per_user()),
            }
        )
        permissions.append(
            {"user": name, "vhost": VHOST, "configure": configure, "write": write, "read": read}
        )

    def topic(name: str, exchange: str, write: str, read: str = ".*") -> None:
        topic_permissions.append(
            {"user": name, "vhost": VHOST, "exchange": exchange, "write": write, "read": read}
        )

    mine = rf"^{re.escape(code)}\..*$"
    # nobody writes to the default exchange: results go by the results exchange, every
    # hop and replay through the inbox on keys the topic permissions pin
    workers = broker_user(code, Role.workers)
    held = addresses.held_results_exchange(code)
    user(workers, NOTHING, _either(inbox, outbox, results, held), mine)
    topic(workers, outbox, _keys(partners, partner_kinds) if partners else NOTHING)
    topic(workers, inbox, f"({own_keys})|({hop_keys})")
    topic(workers, results, ".*")
    for person, duties in sorted((staff or {}).items()):
        # one user per person, allowed what their duties send (trust/staff.py)
        name = operator_user(code, person)
        kinds = set(EVERYONE_SENDS).union(*(SENDS[d] for d in duties))
        if duties & READS_QUEUES:
            # replays, imports, and held results sent on (`biox encounters redeliver`)
            user(name, NOTHING, _either(inbox, results), mine, tags="monitoring")
            topic(name, inbox, f"({_keys([code], kinds)})|({replay_keys})")
            topic(name, results, ".*")
        else:
            user(name, NOTHING, _either(inbox), NOTHING)
            topic(name, inbox, _keys([code], kinds))
    for system in encounter_systems:
        # one identity per system: it submits on the submissions exchange only (so it can
        # name no other exchange as a dead-letter target) and declares, reads and binds
        # its own reply queues only, by their own names (topic read permission)
        name = encounter_user(code, system)
        own = re.escape(addresses.reply_queues(code, system)) + r"(\.[A-Za-z0-9_-]+)*"
        user(
            name,
            f"^{own}$",
            f"^({re.escape(submit)}|{own})$",  # a queue is bound with write on it
            f"^({re.escape(results)}|{own})$",  # and read on the exchange
        )
        topic(name, submit, _keys([code], submit_kinds), read=NOTHING)
        topic(name, results, NOTHING, read=f"^{own}$")
    for partner in partners:  # each partner writes to its own ingress alone
        link, ingress = broker_user(partner, Role.link), addresses.ingress(code, partner)
        user(link, NOTHING, _either(ingress), NOTHING)
        topic(link, ingress, _keys([code], partner_kinds))

    exchanges = [_exchange(name, "topic") for name in entrance_exchanges(code, partners)] + [
        _exchange(results, "topic", results_arguments(code)),
        _exchange(held, "fanout"),
    ]
    queues = []
    for q in routes.queues.values():
        name = addresses.queue(code, q.role)
        queues.append(_queue(name, work_queue_arguments(name, delivery_limit)))
        dead_letters = addresses.dead_letter_queue(name)
        queues.append(_queue(dead_letters, PARKED_ARGUMENTS))
        for arrival in arrival_queues(code, q.role, partners, routes):
            args = work_queue_arguments(arrival, delivery_limit, dead_letters)
            queues.append(_queue(arrival, args))
        for seconds in tiers:
            queues.append(
                _queue(addresses.retry_queue(name, seconds), retry_queue_arguments(name, seconds))
            )
    for partner in partners:
        queues.append(_queue(addresses.link_queue(code, partner), LINK_ARGUMENTS))
    held_queue = addresses.held_results_queue(code)
    queues.append(_queue(held_queue, PARKED_ARGUMENTS))

    binds = []
    for destination, source, key in bindings(code, codes, routes, tiers, sovereign=True):
        kind = "exchange" if addresses.is_exchange(destination) else "queue"
        binds.append(
            {
                "source": source,
                "vhost": VHOST,
                "destination": destination,
                "destination_type": kind,
                "routing_key": key,
                "arguments": {},
            }
        )

    parameters = [
        {
            "vhost": VHOST,
            "component": "shovel",
            "name": f"{code}-to-{partner}",
            "value": {
                "src-protocol": "amqp091",
                "src-uri": "amqp://",  # this broker itself, directly
                "src-queue": addresses.link_queue(code, partner),
                "dest-protocol": "amqp091",
                "dest-uri": partner_uris[partner],
                "dest-exchange": addresses.ingress(partner, code),
                # the partner's broker stamps who is speaking: our link user
                "dest-publish-properties": {"user_id": broker_user(code, Role.link)},
                "ack-mode": "on-confirm",
                "src-prefetch-count": SHOVEL_PREFETCH,
                "reconnect-delay": 2,
            },
        }
        for partner in partners
    ]
    # every queue bounded, whatever its arguments and whoever declared it: an operator
    # policy (a runtime parameter; docs/security.md, "Quotas")
    parameters.append(
        {
            "vhost": VHOST,
            "component": "operator_policy",
            "name": f"{code}-bounded",
            "value": {
                "pattern": rf"^{re.escape(code)}\.",
                "apply-to": "queues",
                "priority": 0,
                "definition": {
                    "max-length": limits.queue_messages,
                    "max-length-bytes": limits.queue_bytes,
                },
            },
        }
    )
    return {
        "rabbit_version": "3.10.8",
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": parameters,
        "policies": [
            {
                "vhost": VHOST,
                "name": f"{code}-dead-letter-retention",
                "pattern": rf"^{re.escape(code)}\..*\.dlq$",
                "apply-to": "queues",
                "priority": 0,
                # kept a while, and refused (never dropped) once the queue is full
                "definition": {
                    "message-ttl": dead_letter_days * 86_400_000,
                    "overflow": "reject-publish",
                },
            },
            {
                "vhost": VHOST,
                "name": f"{code}-held-results",
                "pattern": f"^{re.escape(held_queue)}$",
                "apply-to": "queues",
                "priority": 0,
                # an encounter system gone for a month gets its encounters' current state
                # from a new revision, not results that may carry since-deleted data (§22)
                "definition": {
                    "message-ttl": dead_letter_days * 86_400_000,
                    "overflow": "reject-publish",
                },
            },
        ],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": binds,
    }


def split_shovels(defs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``defs`` in two: what a broker loads at its first boot, and its shovels, imported
    once it runs (``rabbitmqctl import_definitions``).

    RabbitMQ imports parameters before queues, and a shovel whose source queue is not
    there yet declares it: a classic queue, without the link queue's arguments (quorum,
    ``reject-publish``), kept from then on. On a cluster that queue lives on one node, and
    what is routed to it while that node is down is lost. A node that restarts holds its
    queues already, so the whole file is safe to load then.
    """
    shovel = [p for p in defs.get("parameters", []) if p.get("component") == "shovel"]
    boot = {**defs, "parameters": [p for p in defs.get("parameters", []) if p not in shovel]}
    return boot, {"parameters": shovel}


def _exchange(name: str, kind: str, arguments: dict[str, object] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": VHOST,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": arguments or {},
    }


def _queue(name: str, arguments: dict[str, object]) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": VHOST,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments,
    }
