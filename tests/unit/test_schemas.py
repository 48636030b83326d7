from __future__ import annotations

from pathlib import Path

from biox.schemas import contract

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_schemas_directory_matches_the_models():
    """Fails when a model changes without `biox schemas` being run (the contract drifted)."""
    expected = contract.documents()
    on_disk = {p.name: p.read_text() for p in SCHEMAS.iterdir() if p.is_file()}
    assert sorted(on_disk) == sorted(expected), "run `make schemas`"
    for name, text in expected.items():
        assert on_disk[name] == text, f"schemas/{name} is stale: run `make schemas`"


def test_templates_are_documented_as_binary():
    """As 2020-12 says bytes (issue 21 (7)): no validator knows OpenAPI's format binary."""
    query = contract.documents()["query.v1.json"]
    assert '"contentEncoding": "base64"' in query and '"format": "binary"' not in query
    assert "msgpack bin" in query


def test_every_reason_code_is_explained_and_placed():
    from biox.wire.errors import REASON_TEXT, REASON_USE, Reason

    assert set(REASON_TEXT) == set(Reason) == set(REASON_USE)
    assert all(REASON_USE[r] for r in Reason)
