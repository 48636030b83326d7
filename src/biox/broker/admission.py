"""What a delivery must prove before a handler sees it (docs/security.md, "Identity",
"Freshness", "Duplicates"): the broker identity that speaks for ``biox-from``, the
route's sender, a partner's signature made within the freshness window; then the kind's
queue, the size and the body. The consume loop asks ``admit`` for each delivery and
``key`` for its duplicate marker; nothing here touches the broker or the database.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from biox.broker.link import Delivery
from biox.routes import Queue, RouteTable
from biox.settings import Settings
from biox.store import marker_key
from biox.trust.identity import check_identity
from biox.trust.sealing import KeyRing
from biox.wire import addresses
from biox.wire.codec import Envelope
from biox.wire.errors import BioxError, PermanentError, Reason
from biox.wire.inbound import Inbound, first_arrival, hop_key
from biox.wire.messages import utcnow


class Admission:
    def __init__(
        self,
        participant: str,
        queue: Queue,
        routes: RouteTable,
        settings: Settings,
        keys: KeyRing,
        known: Callable[[str], bool],
    ) -> None:
        self.participant = participant
        self.queue = queue
        self.name = addresses.queue(participant, queue.role)
        self.routes = routes
        self.settings = settings
        self.keys = keys
        self.known = known

    def key(self, env: Envelope, d: Delivery) -> str:
        """Idempotency key: the message id under the sender the broker vouches for (a
        partner cannot squat another's ids, docs/security.md, "Duplicates"), unless the
        queue sees hops of one message as distinct events (the audit queue records each
        retry hop, and whose broker user sent it)."""
        if self.queue.decodes:
            return marker_key(env.sender, env.message_id)
        return hop_key(env, d.exchange, d.routing_key)

    def admit(self, env: Envelope, d: Delivery) -> Inbound[Any] | BioxError:
        """The message as its handler gets it: identity, sender and signature checked
        first, then size and body. A refusal found before the sender is proven is never
        answered (``BioxError.answerable``): verify, then answer (docs/security.md)."""
        if not self.queue.decodes:
            return Inbound(env, None, d.body, d.exchange, d.routing_key)
        r = self.routes.get(env.kind)
        proven = False
        try:
            size = header_bytes(env.headers)
            if size > self.settings.max_header_bytes:  # the broker counts the body only
                raise PermanentError(
                    Reason.too_large, f"headers of {size} bytes > {self.settings.max_header_bytes}"
                )
            if r is None:
                raise self._unknown_kind(env.kind)
            if not self.settings.dev_shared_broker:
                check_identity(env, self.participant, self.routes.sender_roles(env.kind))
            self.routes.check_sender(env.kind, env.sender, self.participant, self.known)
            body = d.body
            if self.routes.sealed(env.kind, env.sender, self.participant):
                self.keys.refresh()  # a revocation in the trust file, seen within a second
                fresh = first_arrival(d.exchange, d.routing_key, self.participant, d.properties)
                body = self.keys.open(env, body, self._window() if fresh else None)
            proven = True
            if r.queue != self.queue.takes:  # a shard's queue takes its family's kinds
                raise self._unknown_kind(env.kind)
            if len(d.body) > self.settings.max_message_bytes:  # the broker's limit, again
                raise PermanentError(
                    Reason.too_large, f"{len(d.body)} bytes > {self.settings.max_message_bytes}"
                )
            message = self.routes.decode(env.kind, env.schema, body)
        except BioxError as exc:
            exc.answerable = proven
            return exc
        return Inbound(env, message, body, d.exchange, d.routing_key)

    def _unknown_kind(self, kind: str) -> PermanentError:
        return PermanentError(
            Reason.unknown_kind,
            f"{kind!r} on {self.name}, which takes "
            + ", ".join(self.routes.kinds_of(self.queue.role)),
        )

    def _window(self) -> tuple[datetime, datetime]:
        """When a partner's signature on a first arrival may have been made (freshness)."""
        now, skew = utcnow(), timedelta(seconds=self.settings.clock_skew_s)
        return now - timedelta(seconds=self.settings.signature_max_age_s) - skew, now + skew


def header_bytes(value: Any, depth: int = 0) -> int:
    """About how many bytes a message's headers take (names and values, nested ones
    included): RabbitMQ's ``max_message_size`` counts the body alone."""
    if depth > 8:
        return 1 << 30  # nested past any header biox writes: too large by definition
    if isinstance(value, dict):
        return sum(len(str(k)) + header_bytes(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(header_bytes(v, depth + 1) for v in value)
    if isinstance(value, str | bytes):
        return len(value)
    return 8
