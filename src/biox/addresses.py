"""Names of exchanges, queues and routing keys, in one place.

Everything that publishes or declares asks this module, so a name is spelled once; which
kind goes where is the route table's (``routes.py``).
"""

from __future__ import annotations


def inbox(code: str) -> str:
    return f"biox.{code}"


def outbox(code: str) -> str:
    return f"biox.{code}.out"


def routing_key(to: str, kind: str) -> str:
    return f"{to}.{kind}"


def queue(code: str, role: str) -> str:
    return f"{code}.{role}"


def link_queue(code: str, partner: str) -> str:
    """On ``code``'s broker: what waits for the shovel to ``partner``'s broker."""
    return f"{code}.link.{partner}"


def retry_queue(work_queue: str, seconds: int) -> str:
    return f"{work_queue}.retry.{seconds}"


def dead_letter_queue(work_queue: str) -> str:
    return f"{work_queue}.dlq"


def audit_queue(code: str) -> str:
    return f"{code}.audit"


def retry_key(code: str, role: str, seconds: int) -> str:
    """Routing key of a retry hop on the participant's inbox (so the audit sees it)."""
    return f"{code}.retry.{role}.{seconds}"


def dead_letter_key(code: str, role: str) -> str:
    return f"{code}.dead-letter.{role}"
