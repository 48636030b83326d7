"""The integration contract in ``schemas/``: JSON Schema per message kind, reason codes.

Generated from the models so it cannot drift; a test regenerates it and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

from biox.addresses import WORK_QUEUES
from biox.codec import H_ATTEMPT, H_FROM, H_SCHEMA, H_TO
from biox.errors import REASON_TEXT
from biox.messages import CATALOGUE

WIRE_NOTE = (
    "Body encoding: msgpack map. Fields typed string/binary are msgpack bin (raw bytes: "
    "float32 little-endian vectors, packed bit strings); date-time fields are msgpack "
    "timestamps (extension type -1). AMQP properties: message_id (idempotency key), "
    "correlation_id (query id; encounter id on results), type (= kind), user_id, "
    f"content_type=application/msgpack, delivery_mode=2. Headers: {H_SCHEMA}, {H_FROM}, "
    f"{H_TO}, {H_ATTEMPT}."
)


def documents() -> dict[str, str]:
    docs: dict[str, str] = {}
    for kind, model in sorted(CATALOGUE.items()):
        schema = model.model_json_schema(mode="validation")
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
                "$comment": "Closed list of reason codes in rejected responses and refusals.",
                "codes": {r.value: text for r, text in REASON_TEXT.items()},
            },
            indent=2,
        )
        + "\n"
    )
    docs["routing.json"] = (
        json.dumps(
            {
                "$comment": "Routing key = <to>.<kind>; participants publish on biox.<code>.out.",
                "exchanges": {"inbox": "biox.<code>", "outbox": "biox.<code>.out"},
                "queues": {f"<code>.{role}": list(kinds) for role, kinds in WORK_QUEUES.items()},
            },
            indent=2,
        )
        + "\n"
    )
    return docs


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in documents().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
