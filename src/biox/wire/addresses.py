"""Names of exchanges, queues and routing keys, in one place.

Everything that publishes or declares asks this module, so a name is spelled once, and
everything that reads a name back parses it here (the functions at the end); which kind
goes where is the route table's (``routes.py``).
"""

from __future__ import annotations


def inbox(code: str) -> str:
    return f"biox.{code}"


def ingress(code: str, partner: str) -> str:
    """Where ``partner`` delivers to ``code``: one exchange per partner, bound only to that
    partner's arrival queues (``arrival_queue``), so no routing key, CC or BCC header a
    partner writes reaches any other queue, and no partner another's (docs/security.md,
    "Partner ingress")."""
    return f"biox.{code}.partners.{partner}"


def arrival_queue(code: str, role: str, partner: str) -> str:
    """Where ``partner``'s messages for ``code``'s ``role`` queue wait, apart from every
    other partner's: the worker consumes each partner's and its own, so a flood from one
    partner delays that partner alone (docs/security.md, "Quotas")."""
    return f"{code}.{role}.from.{partner}"


def submissions(code: str) -> str:
    """Where ``code``'s encounter systems submit: bound only to the intake queue."""
    return f"biox.{code}.submit"


def outbox(code: str) -> str:
    return f"biox.{code}.out"


def results(code: str) -> str:
    """Where a participant's encounter systems get their results: a topic exchange, each
    reply queue bound by its own name, which only its own system may bind
    (docs/integration.md)."""
    return f"biox.{code}.results"


def held_results_exchange(code: str) -> str:
    """The results exchange's alternate exchange: what no reply queue took."""
    return f"biox.{code}.results.held"


def held_results_queue(code: str) -> str:
    """Where results wait whose encounter system's queue is missing or unnamed."""
    return f"{code}.results.held"


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


def retry_key(code: str, role: str, seconds: int) -> str:
    """Routing key of a retry hop on the participant's inbox (so the audit sees it)."""
    return f"{code}.retry.{role}.{seconds}"


def dead_letter_key(code: str, role: str) -> str:
    return f"{code}.dead-letter.{role}"


def unrecorded_retry_key(code: str, role: str, seconds: int) -> str:
    """A hop of the audit queue's own: through the inbox like the others (nobody writes to
    the default exchange), on a key the audit queue is not bound to (it would feed it)."""
    return f"{code}.unrecorded.retry.{role}.{seconds}"


def unrecorded_dead_letter_key(code: str, role: str) -> str:
    return f"{code}.unrecorded.dead-letter.{role}"


def reply_queues(code: str, system: str) -> str:
    """The prefix of encounter system ``system``'s reply queues: ``<code>.replies.<system>``
    itself, or any name under it (``<code>.replies.<system>.<desk>``)."""
    return f"{code}.replies.{system}"


def replay_key(code: str, role: str) -> str:
    """A dead letter an operator sends back to ``<code>.<role>`` (``biox dlq replay``)."""
    return f"{code}.replay.{role}"


# --- reading names back -----------------------------------------------------------------------

#: the participant's own hops through its inbox, the second part of their routing keys
HOPS = ("retry", "dead-letter", "replay")


def is_exchange(name: str) -> bool:
    """Exchanges are ``biox.``-prefixed (``inbox``, ``ingress``, ``submissions``,
    ``outbox``, ``results``); queues are not."""
    return name.startswith("biox.")


def owner(name: str) -> str:
    """The participant a queue name or a routing key belongs to (its first part)."""
    return name.partition(".")[0]


def work_queue(name: str) -> tuple[str, str]:
    """``(code, role)`` of a work queue (``queue``)."""
    code, _, role = name.partition(".")
    return code, role


def work_queue_of(dead_letters: str) -> str:
    """The work queue whose dead-letter queue (``dead_letter_queue``) this is."""
    return dead_letters.removesuffix(".dlq")


def hop(routing_key: str) -> str:
    """Which own hop a routing key names (``retry``, ``dead-letter``, ``replay``; see
    ``retry_key``, ``dead_letter_key``, ``replay_key``), or "" for a kind's key."""
    parts = routing_key.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in HOPS else ""
