"""schemas/asyncapi.yaml: generated from the route table (no drift), a valid AsyncAPI 3.0
document (the asyncapi3 object model, with its AMQP bindings), every reference resolved,
and every kind of the route table sent and received where the topology says."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

from biox.routes import ROUTES
from biox.schemas import asyncapi
from biox.wire import addresses

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def load() -> dict:
    return yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())


def test_the_document_is_the_one_the_route_table_generates():
    assert (SCHEMAS / "asyncapi.yaml").read_text() == asyncapi.text()


def test_it_is_a_valid_asyncapi_3_document():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library's own field-name warnings
        from asyncapi3 import AsyncAPI3

    doc = AsyncAPI3.model_validate(load())
    assert doc.asyncapi == "3.0.0"


def resolve(doc: dict, ref: str) -> object:
    node: object = doc
    for part in ref.removeprefix("#/").split("/"):
        assert isinstance(node, dict) and part in node, f"{ref}: no {part!r}"
        node = node[part]
    return node


def refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_every_reference_resolves_and_every_payload_is_a_json_schema():
    doc = load()
    for ref in refs(doc):
        if ref.startswith("#/"):
            resolve(doc, ref)
        else:  # a payload: the JSON Schema file next to the document
            schema = json.loads((SCHEMAS / ref.removeprefix("./")).read_text())
            Draft202012Validator.check_schema(schema)
    for name, op in doc["operations"].items():
        channel = op["channel"]["$ref"].removeprefix("#/channels/")
        for m in op["messages"]:
            assert m["$ref"].startswith(f"#/channels/{channel}/messages/"), name


def test_each_kind_is_sent_where_the_topology_routes_it_and_received_by_its_queue():
    doc = load()
    ops = doc["operations"]
    for kind, r in ROUTES.routes.items():
        name = asyncapi._name(kind)
        cap = name[:1].upper() + name[1:]
        sent = ops[f"send{cap}"]["channel"]["$ref"]
        partner = kind in ROUTES.partner_kinds()
        if kind == "encounter.result":
            assert sent == "#/channels/results"
        elif kind == "encounter.submit":  # an encounter system's own way in
            assert sent == "#/channels/submissions"
        else:
            assert sent == ("#/channels/outbox" if partner else "#/channels/inbox"), kind
        if r.queue is not None:
            got = ops[f"receive{cap}"]["channel"]["$ref"]
            channel = resolve(doc, got)
            role = f"{r.queue}.{{shard}}" if ROUTES.specs[r.queue].sharded else r.queue
            assert channel["address"] == addresses.queue("{participant}", role)
            assert channel["bindings"]["amqp"]["queue"]["durable"] is True
        message = doc["components"]["messages"][name]
        assert message["payload"]["schema"]["$ref"] == f"./{kind}.v{r.model.VERSION}.json"
        signed = "biox-signature" in message["headers"]["required"]
        assert signed is partner  # partner kinds travel signed and sealed
    assert doc["channels"]["results"]["bindings"]["amqp"]["exchange"]["type"] == "topic"
    assert doc["channels"]["inbox"]["bindings"]["amqp"]["exchange"]["type"] == "topic"


def test_a_result_goes_by_the_submissions_reply_to_and_correlates_by_a_property():
    """Issue 21 (7): the routing key of a result is the reply queue's name, and
    correlation_id and reply_to are AMQP properties, not headers."""
    doc = load()
    [key] = doc["operations"]["sendEncounterResult"]["bindings"]["amqp"]["cc"]
    assert "reply_to" in key and "replies" in key
    message = doc["components"]["messages"]["encounterResult"]
    assert (
        "a property, not an entry of the headers table" in message["correlationId"]["description"]
    )
    assert "correlation_id" not in json.dumps(message["headers"])
    note = json.loads((SCHEMAS / "encounter.submit.v1.json").read_text())["$comment"]
    assert "reply_to (on encounter.submit" in note
