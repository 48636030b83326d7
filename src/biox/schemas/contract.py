"""The integration contract in ``schemas/``: JSON Schema per message kind, reason codes,
routing.

Generated from the route table and the models so it cannot drift; a test regenerates it
and compares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biox.routes import ROUTES, RouteTable, Sender
from biox.wire.codec import H_ATTEMPT, H_FROM, H_SCHEMA, H_TO
from biox.wire.errors import REASON_TEXT, REASON_USE

WIRE_NOTE = (
    "Body encoding: msgpack map. Fields typed string with contentEncoding base64 are "
    "msgpack bin on the wire (raw bytes: float32 little-endian vectors, packed bit strings; "
    "base64 only in a JSON view of the body); date-time fields are msgpack "
    "timestamps (extension type -1). AMQP properties (not headers): message_id "
    "(idempotency key), correlation_id (query id; the encounter id on encounter.submit and "
    "encounter.result), reply_to (on encounter.submit: the encounter system's reply queue, "
    "where its results go), type (= kind), user_id (set by the broker's check), "
    f"content_type=application/msgpack, delivery_mode=2. Headers: {H_SCHEMA}, {H_FROM}, "
    f"{H_TO}, {H_ATTEMPT}."
)


SENDERS = {
    Sender.encounter_system: "the participant's own encounter systems",
    Sender.own: "the participant itself (its workers, examiners, operators)",
    Sender.partner: "another participant",
}


def _standard(node: Any) -> Any:
    """Bytes as 2020-12 says them (a string with ``contentEncoding: base64``, the JSON view
    of a msgpack bin), where pydantic writes OpenAPI's ``format: binary``, which no
    2020-12 validator knows."""
    if isinstance(node, dict):
        out = {k: _standard(v) for k, v in node.items()}
        if out.get("format") == "binary":
            del out["format"]
            out["contentEncoding"] = "base64"
        return out
    if isinstance(node, list):
        return [_standard(v) for v in node]
    return node


def documents(routes: RouteTable = ROUTES) -> dict[str, str]:
    docs: dict[str, str] = {}
    for kind in routes.kinds:
        model = routes.routes[kind].model
        schema = _standard(model.model_json_schema(mode="validation"))
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"urn:biox:{model.schema_id()}",
            "$comment": WIRE_NOTE,
            "x-biox-kind": kind,
            "x-biox-schema": model.schema_id(),
            **schema,
        }
        docs[f"{kind}.v{model.VERSION}.json"] = (
            json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        )
    docs["reason-codes.json"] = (
        json.dumps(
            {
                "$comment": (
                    "Closed list of reason codes. appears_in: 'rejected' and 'declined' "
                    "responses (response/1 status, and the outcome of that status in an "
                    "encounter result), retrieval responses (retrieval.response/1, same "
                    "meaning), 'refused' encounter results (encounter.result/1 status), "
                    "'skipped' and 'timed_out' outcomes of an encounter result, or only the "
                    "biox-reason header of a dead letter ('dead-letter'), also when the "
                    "sender could not be identified. rejected = the message could not be "
                    "processed; declined = the provider decided not to answer or release "
                    "(§9); refused = intake sent no query (§2-4); skipped = intake did not "
                    "ask that partner; timed_out = no answer by answer_due."
                ),
                "codes": {
                    r.value: {"text": text, "appears_in": list(REASON_USE.get(r, ()))}
                    for r, text in REASON_TEXT.items()
                },
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    docs["README.md"] = _index(routes)
    from biox.schemas import asyncapi

    docs["asyncapi.yaml"] = asyncapi.text(routes)
    docs["routing.json"] = (
        json.dumps(
            {
                "$comment": (
                    "Generated from the route table. Routing key = <to>.<kind>; a participant "
                    "publishes to a partner on biox.<code>.out, to itself on biox.<code>; "
                    "the links between participants carry partner_kinds only."
                ),
                "exchanges": {"inbox": "biox.<code>", "outbox": "biox.<code>.out"},
                "queues": {f"<code>.{role}": list(routes.kinds_of(role)) for role in routes.queues},
                "partner_kinds": list(routes.partner_kinds()),
                "senders": {
                    kind: sorted(s.value for s in r.senders) for kind, r in routes.routes.items()
                },
            },
            indent=2,
        )
        + "\n"
    )
    return docs


def _index(routes: RouteTable) -> str:
    """schemas/README.md: which file is which message, who sends it, where it lands."""
    lines = [
        "# biox message schemas",
        "",
        "Generated by `biox schemas` from the route table and the models; do not edit. One",
        "JSON Schema per message kind; bodies are msgpack maps (see `$comment` in each file for",
        "the wire encoding of bytes and times). `reason-codes.json` is the closed list of",
        "reason codes and where each appears; `routing.json` the exchanges, queues and senders.",
        "",
        "| kind | schema file | consumed from | sent by | what it is |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in routes.kinds:
        r = routes.routes[kind]
        doc = " ".join((r.model.__doc__ or "").strip().split("\n\n")[0].split())
        if r.queue is not None:
            queue = f"`<code>.{r.queue}`"
        elif r.audited and routes.audit is not None:
            queue = f"`<code>.{routes.audit.role}` only"
        else:
            queue = "the encounter system's `reply_to` queue, bound to `biox.<code>.results`"
        senders = ", ".join(SENDERS[s] for s in sorted(r.senders))
        lines.append(
            f"| `{kind}` | `{kind}.v{r.model.VERSION}.json` | {queue} | {senders} | {doc} |"
        )
    lines += [
        "",
        "Partners can send each other only: "
        + ", ".join(f"`{k}`" for k in routes.partner_kinds())
        + ". Every other kind is taken only from the participant itself (its encounter",
        "system, its matcher, its examiners and operators).",
        "",
    ]
    return "\n".join(lines)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in documents().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
