"""Every encounter result the unit suite produces is held to the published contract as it
is made (issue 21 (4)): ``schemas/encounter.result.v1.json`` with a standard 2020-12
validator, and each reason code to where ``schemas/reason-codes.json`` says it appears.
A test whose handlers send a result the schemas do not describe fails, so the code and
the schemas cannot drift apart."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest
from jsonschema import Draft202012Validator

from biox.wire import codec

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
_RESULT = Draft202012Validator(json.loads((SCHEMAS / "encounter.result.v1.json").read_text()))
_USE = {
    code: set(entry["appears_in"])
    for code, entry in json.loads((SCHEMAS / "reason-codes.json").read_text())["codes"].items()
}
#: an outcome's status -> the appears_in entry its reason code must carry
_OUTCOME_USE = {
    "skipped": "skipped",
    "declined": "declined",
    "rejected": "rejected",
    "timed_out": "timed_out",
}


def as_json(value: Any) -> Any:
    """The wire value as a JSON client sees it after decoding msgpack."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def contract_violations(body: bytes) -> list[str]:
    result = as_json(msgpack.unpackb(body, raw=False, timestamp=3))
    found = [
        f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _RESULT.iter_errors(result)
    ]
    code = result.get("reason_code")
    if result.get("status") == "refused" and "refused" not in _USE.get(code, set()):
        found.append(f"refused with {code!r}, whose appears_in lacks 'refused'")
    for o in result.get("outcomes", []):
        use, code = _OUTCOME_USE.get(o["status"]), o.get("reason_code")
        if code is not None and use is not None and use not in _USE.get(code, set()):
            found.append(f"{o['status']} outcome with {code!r}, whose appears_in lacks {use!r}")
    return found


_seen: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _results_held_to_the_contract() -> Iterator[None]:
    real = codec.to_reply_queue

    def checked(*args: Any, **kwargs: Any) -> codec.Outgoing:
        out = real(*args, **kwargs)
        _seen.extend(contract_violations(out.body))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "to_reply_queue", checked)
        yield


@pytest.fixture(autouse=True)
def _no_result_outside_the_contract() -> Iterator[None]:
    _seen.clear()
    yield
    found, _seen[:] = list(_seen), []
    assert not found, f"results outside schemas/: {found[:5]}"
