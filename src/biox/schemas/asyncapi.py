"""``schemas/asyncapi.yaml``: the exchange as an AsyncAPI 3.0 document, generated from the
route table (docs/integration.md points to it; a test regenerates it and compares).

Channels are one participant's exchanges and queues, the participant a parameter
(``biox.{participant}``, ``{participant}.query``); each kind is a message whose payload is
its JSON Schema in this directory, by reference; operations say who sends each kind where
and which queue receives it. AMQP bindings carry what a client must get right: exchange
types, durable quorum queues, persistent delivery, ``mandatory`` and the routing key.
"""

from __future__ import annotations

from typing import Any

import yaml

from biox.routes import ROUTES, RouteTable, Sender
from biox.wire import addresses
from biox.wire.codec import (
    H_ATTEMPT,
    H_FROM,
    H_SCHEMA,
    H_SEALED_TO,
    H_SIGNATURE,
    H_SIGNED_AT,
    H_SIGNING_KEY,
    H_TO,
)

P = "{participant}"
AMQP = "0.3.0"  # the AMQP bindings' version
VHOST = "/"


def _routing_key(kind: str, partner: bool) -> str:
    if kind == "encounter.result":  # to the queue the submission named
        return "<the submission's reply_to: <participant>.replies.<system>[.<name>]>"
    return f"<{'partner' if partner else 'participant'}>.{kind}"


def _name(kind: str) -> str:
    """``retrieval.request`` -> ``retrievalRequest`` (component keys: letters and dots)."""
    head, *rest = kind.replace("-", ".").split(".")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": name,
                "type": kind,
                "durable": True,
                "autoDelete": False,
                "vhost": VHOST,
            },
            "bindingVersion": AMQP,
        }
    }


def _queue(name: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "queue",
            "queue": {
                "name": name,
                "durable": True,
                "exclusive": False,
                "autoDelete": False,
                "vhost": VHOST,
            },
            "bindingVersion": AMQP,
        }
    }


PARTICIPANT = {
    "participant": {
        "description": "the participant's code (us, mx, sv)",
        "examples": ["us", "mx", "sv"],
    }
}
SHARD = {"shard": {"description": "the shard, 0 to BIOX_SHARDS - 1", "examples": ["0", "1"]}}


def _headers(partner: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        H_SCHEMA: {"type": "string", "description": "<kind>/<version>, e.g. query/1"},
        H_FROM: {"type": "string", "description": "the sending participant's code"},
        H_TO: {"type": "string", "description": "the receiving participant's code"},
        H_ATTEMPT: {"type": "integer", "description": "set by biox on retries; send 0 or omit"},
    }
    required = [H_SCHEMA, H_FROM, H_TO]
    if partner:
        props |= {
            H_SIGNATURE: {"type": "string", "description": "Ed25519 signature (docs/security.md)"},
            H_SIGNING_KEY: {"type": "string", "description": "the signing key's id"},
            H_SEALED_TO: {"type": "string", "description": "the key the body is sealed to"},
            H_SIGNED_AT: {"type": "string", "description": "signing time, ISO 8601"},
        }
        required += [H_SIGNATURE, H_SIGNING_KEY, H_SEALED_TO, H_SIGNED_AT]
    return {"type": "object", "required": required, "properties": props}


def document(routes: RouteTable = ROUTES) -> dict[str, Any]:
    partner_kinds = set(routes.partner_kinds())
    channels: dict[str, Any] = {
        "inbox": {
            "address": addresses.inbox(P),
            "title": "the participant's inbox (topic exchange)",
            "description": "What a participant's own workers and operators send it (review "
            "cases and decisions, requests, notices to send, its own retry and dead-letter "
            "hops). Routing key <participant>.<kind>. Nobody else may write to it.",
            "parameters": PARTICIPANT,
            "messages": {},
            "bindings": _exchange(addresses.inbox(P), "topic"),
        },
        "ingress": {
            "address": addresses.ingress(P, "{partner}"),
            "title": "a partner's ingress (topic exchange)",
            "description": "What one partner sends the participant, over its link: bound "
            "only to that partner's arrival queues <participant>.<queue>.from.<partner> (and "
            "the audit queue), so no routing key, CC or BCC header reaches any other queue. "
            "Routing key <participant>.<kind>.",
            "parameters": {**PARTICIPANT, "partner": {"description": "the sending partner"}},
            "messages": {},
            "bindings": _exchange(addresses.ingress(P, "{partner}"), "topic"),
        },
        "submissions": {
            "address": addresses.submissions(P),
            "title": "the submissions exchange (topic exchange)",
            "description": "Where the participant's encounter systems publish "
            "encounter.submit, routing key <participant>.encounter.submit; bound to the intake "
            "queue only.",
            "parameters": PARTICIPANT,
            "messages": {},
            "bindings": _exchange(addresses.submissions(P), "topic"),
        },
        "outbox": {
            "address": addresses.outbox(P),
            "title": "the participant's outbox (topic exchange)",
            "description": "What a participant sends partners, routing key <partner>.<kind>; "
            "only partner kinds travel here (a submission sent here goes nowhere: publish "
            "with mandatory).",
            "parameters": PARTICIPANT,
            "messages": {},
            "bindings": _exchange(addresses.outbox(P), "topic"),
        },
        "results": {
            "address": addresses.results(P),
            "title": "results for encounter systems (topic exchange)",
            "description": "Routing key = the reply queue's name; each encounter system may "
            "bind only its own names. What no queue takes goes to its alternate exchange, "
            f"into {addresses.held_results_queue(P)}.",
            "parameters": PARTICIPANT,
            "messages": {},
            "bindings": _exchange(addresses.results(P), "topic"),
        },
        "replies": {
            "address": f"{P}.replies.{{system}}",
            "title": "an encounter system's reply queue",
            "description": "Declared by the encounter system, durable, bound to "
            f"{addresses.results(P)} with its own name; {P}.replies.{{system}}.<name> too "
            "(docs/integration.md).",
            "parameters": {**PARTICIPANT, "system": {"description": "the encounter system"}},
            "messages": {},
            "bindings": _queue(f"{P}.replies.{{system}}"),
        },
    }
    for role, q in routes.specs.items():
        name = addresses.queue(P, f"{role}.{{shard}}" if q.sharded else role)
        channels[f"{role}Queue"] = {
            "address": name,
            "title": f"the {role} work queue" + (", one per shard" if q.sharded else ""),
            "description": f"{q.doc}. Quorum queue; retries through "
            f"{addresses.retry_queue(name, 0)[:-1]}<seconds>, dead letters "
            f"to {addresses.dead_letter_queue(name)}."
            + (" Declared only when BIOX_SHARDS is above 1." if q.sharded else ""),
            "parameters": {**PARTICIPANT, **SHARD} if q.sharded else PARTICIPANT,
            "messages": {},
            "bindings": _queue(name),
        }

    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for kind, r in routes.routes.items():
        name = _name(kind)
        model = r.model
        partner = kind in partner_kinds
        messages[name] = {
            "name": kind,
            "title": model.schema_id(),
            "summary": " ".join((model.__doc__ or "").strip().split("\n\n")[0].split()),
            "contentType": "application/msgpack",
            "payload": {
                "schemaFormat": "application/schema+json;version=draft-2020-12",
                "schema": {"$ref": f"./{kind}.v{model.VERSION}.json"},
            },
            "headers": _headers(partner),
            "correlationId": {
                "description": "the AMQP correlation_id property (a property, not an entry "
                "of the headers table): the query id; the encounter id on encounter.submit "
                "and encounter.result",
                "location": "$message.header#/correlation_id",
            },
            "bindings": {"amqp": {"messageType": kind, "bindingVersion": AMQP}},
        }
        ref = {"$ref": f"#/components/messages/{name}"}
        sends_on = "outbox" if partner else "inbox"
        if kind == "encounter.result":
            sends_on = "results"
        elif Sender.encounter_system in r.senders:
            sends_on = "submissions"
        channels[sends_on]["messages"][name] = ref
        who = ", ".join(sorted(s.value for s in r.senders))
        operations[f"send{name[:1].upper()}{name[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{sends_on}"},
            "summary": f"sent by: {who}",
            "messages": [{"$ref": f"#/channels/{sends_on}/messages/{name}"}],
            "bindings": {
                "amqp": {
                    "deliveryMode": 2,
                    "mandatory": True,
                    "cc": [_routing_key(kind, partner)],
                    "bindingVersion": AMQP,
                }
            },
        }
        if partner:  # what a partner's outbox carries arrives on the receiver's ingress
            channels["ingress"]["messages"][name] = ref
        receiver = (
            "replies" if kind == "encounter.result" else (f"{r.queue}Queue" if r.queue else None)
        )
        if receiver is None:
            continue  # recorded by the audit queue only
        channels[receiver]["messages"][name] = ref
        operations[f"receive{name[:1].upper()}{name[1:]}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{receiver}"},
            "summary": "the encounter system" if receiver == "replies" else f"the {r.queue} worker",
            "messages": [{"$ref": f"#/channels/{receiver}/messages/{name}"}],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP}},
        }
    return {
        "asyncapi": "3.0.0",
        "id": "urn:biox:exchange",
        "info": {
            "title": "biox",
            "version": "1.0.0",
            "description": "Biometric immigration queries between participating countries. "
            "Generated by `biox schemas` from the route table; do not edit. Bodies are "
            "msgpack maps (bytes as bin, times as timestamps); each payload is the JSON "
            "Schema next to this file. docs/integration.md is the guide.",
        },
        "defaultContentType": "application/msgpack",
        "servers": {
            "participant": {
                "host": "{host}:5671",
                "protocol": "amqps",
                "description": "A participant's own broker: TLS only, client certificates "
                "(the certificate's common name is the broker user, <code>.<role>).",
                "variables": {"host": {"description": "the participant's broker"}},
                "security": [{"$ref": "#/components/securitySchemes/certificate"}],
            },
            "development": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "description": "`biox broker start`: plain AMQP, guest; development only.",
                "security": [{"$ref": "#/components/securitySchemes/password"}],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "securitySchemes": {
                "certificate": {
                    "type": "X509",
                    "description": "EXTERNAL login by client certificate (docs/security.md)",
                },
                "password": {"type": "userPassword", "description": "development broker only"},
            },
        },
    }


def text(routes: RouteTable = ROUTES) -> str:
    return "# Generated by `biox schemas` from the route table; do not edit.\n" + yaml.safe_dump(
        document(routes), sort_keys=False, allow_unicode=True, width=100
    )
