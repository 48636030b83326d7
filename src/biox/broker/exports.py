"""Dead letters as files and as people see them: the lossless JSON line ``biox dlq
export`` writes and ``import`` reads back, and the redacted view ``biox dlq show`` prints.

The view is an allow-list (docs/security.md, "Operators"): of a body, only the values
of keys named in ``SHOWN`` appear as they are; every other text is replaced by its
length, every binary value (a template) by its size and a digest, and the body is
decoded under the same size limits a worker applies, so a crafted dead letter can
neither fill the terminal nor the operator's memory.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from biox.broker.deadletters import DeadLetter

#: body keys whose values say what the message is, not who it is about
SHOWN = frozenset(
    {
        "query_id",
        "retrieval_id",
        "notice_id",
        "case_id",
        "encounter_id",
        "submission_id",
        "kind",
        "type",
        "purpose",
        "status",
        "reason_code",
        "modality",
        "algorithm",
        "requesting",
        "providing",
        "asker",
        "holder",
        "sender",
        "recipient",
        "to",
        "country",
        "sent_at",
        "answered_at",
        "revision",
        "position",
        "elements",
        "decided_by",
        "quality",
        "outcome",
    }
)
#: the largest body ``show`` decodes, and the most items of one array or map
MAX_SHOWN_BYTES = 2 * 1024 * 1024
MAX_ITEMS = 4096


def export_line(d: DeadLetter, expires_at: datetime) -> dict[str, Any]:
    """The line of one dead letter. ``expires_at``: when the dead letter would have left
    its queue (its failure plus the dead-letter retention): an import after it is
    refused, so that an export file cannot keep data longer than the queue may (§21)."""
    p = d.properties
    props = {
        k: getattr(p, k)
        for k in (
            "content_type",
            "content_encoding",
            "delivery_mode",
            "message_id",
            "correlation_id",
            "reply_to",
            "type",
            "app_id",
            "timestamp",
            "user_id",
        )
        if getattr(p, k) is not None
    }
    props["headers"] = _jsonable(d.headers)
    return {
        "queue": d.queue,
        "properties": props,
        "body": base64.b64encode(d.body).decode(),
        "expires_at": expires_at.isoformat(),
    }


def expired(line: dict[str, Any], now: datetime) -> str | None:
    """Why an exported line may no longer be imported: past its ``expires_at``, or
    without one (written before lines carried it, so of unknown age)."""
    expires = line.get("expires_at")
    if not expires:
        return "expired (no expiry: exported before lines carried one)"
    return f"expired ({expires})" if datetime.fromisoformat(expires) <= now else None


def redacted_body(d: DeadLetter) -> Any:
    """The decoded body with what it is about (``SHOWN``) and nothing of whom."""
    if len(d.body) > MAX_SHOWN_BYTES:
        return {"<too large>": f"{len(d.body)} bytes"}
    try:
        data = msgpack.unpackb(
            d.body,
            raw=False,
            timestamp=3,
            strict_map_key=False,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_str_len=MAX_SHOWN_BYTES,
            max_bin_len=MAX_SHOWN_BYTES,
        )
    except Exception as exc:
        return {"<undecodable>": f"{len(d.body)} bytes ({type(exc).__name__})"}
    return _redact(data)


def _redact(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k if isinstance(k, str) else None) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes sha256:{hashlib.sha256(value).hexdigest()[:16]}>"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and key not in SHOWN:
        return f"<redacted: {len(value)} characters>"
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value
