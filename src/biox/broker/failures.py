"""Where a message that failed goes, and what it carries with it (docs/architecture.md,
"One consume loop"): a retry tier or the dead-letter queue, the body untouched, the
original properties kept, and headers saying why, where, when and who failed it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from biox.agreement.ledgers import RefusalRow
from biox.broker.link import Delivery
from biox.wire import addresses
from biox.wire.codec import H_ATTEMPT, H_ORIGINAL_USER, H_REASON, Envelope
from biox.wire.errors import REASON_TEXT, BioxError

H_ERROR = "biox-error"
H_ERROR_CLASS = "biox-error-class"
H_PERMANENT = "biox-permanent"
H_WORKER = "biox-worker"
H_FAILED_AT = "biox-failed-at"
H_FIRST_FAILED_AT = "biox-first-failed-at"
H_ORIGINAL_EXCHANGE = "biox-original-exchange"
H_ORIGINAL_ROUTING_KEY = "biox-original-routing-key"


def retry_target(participant: str, role: str, seconds: int, recorded: bool) -> tuple[str, str]:
    """Through the participant's inbox; on a key the audit records, except for the audit
    queue's own hops (``recorded=False``), which would feed it."""
    inbox = addresses.inbox(participant)
    if recorded:
        return inbox, addresses.retry_key(participant, role, seconds)
    return inbox, addresses.unrecorded_retry_key(participant, role, seconds)


def dead_letter_target(participant: str, role: str, recorded: bool) -> tuple[str, str]:
    inbox = addresses.inbox(participant)
    if recorded:
        return inbox, addresses.dead_letter_key(participant, role)
    return inbox, addresses.unrecorded_dead_letter_key(participant, role)


def describe(exc: BaseException) -> str:
    """A failure as the logs and the dead letter's ``biox-error`` header say it, never with
    the values that caused it: a pydantic error names the fields and what is wrong with
    them, not their content (a gallery record's name, a template), docs/security.md."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<value>'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)[:5]
        )
        return problems[:1000]
    if isinstance(exc, BioxError):  # the code is biox-reason's: the text says the rest
        return (exc.detail or REASON_TEXT[exc.reason])[:1000]
    return str(exc)[:1000]


def reason_of(exc: BaseException) -> str:
    """A failure's reason code; ``handler_error`` for anything the handler did not name."""
    return exc.reason.value if isinstance(exc, BioxError) else "handler_error"


def headers(
    env: Envelope, d: Delivery, exc: BaseException, attempt: int, worker: str
) -> dict[str, Any]:
    """The original's headers, the first failure's where and when kept across hops, and
    this failure's why."""
    now = datetime.now(UTC).isoformat()
    out = dict(env.headers)
    out.setdefault(H_ORIGINAL_EXCHANGE, d.exchange)
    out.setdefault(H_ORIGINAL_ROUTING_KEY, d.routing_key)
    out.setdefault(H_FIRST_FAILED_AT, now)
    if d.properties.user_id:
        out.setdefault(H_ORIGINAL_USER, d.properties.user_id)
    out.update(
        {
            H_ATTEMPT: attempt,
            H_ERROR: describe(exc),
            H_ERROR_CLASS: type(exc).__name__,
            H_REASON: reason_of(exc),
            H_PERMANENT: bool(getattr(exc, "permanent", False)),
            H_WORKER: worker,
            H_FAILED_AT: now,
        }
    )
    return out


def refusal(queue: str, env: Envelope, error: BioxError, answered: bool) -> RefusalRow:
    """The row the annual review counts (§27): what was refused, from whom, and why."""
    return RefusalRow(
        queue=queue,
        kind=env.kind or "?",
        sender=env.sender or None,
        correlation_id=env.correlation_id,
        message_id=env.message_id,
        reason=error.reason.value,
        answered=answered,
    )
