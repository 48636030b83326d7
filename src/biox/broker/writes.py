"""pika's socket writes, one per turn of its I/O loop instead of one per AMQP frame.

pika buffers every frame it marshals (a publish is three: method, header, body; an ack
one) and, when the socket is writable, sends the buffers one ``send()`` each. With
``TCP_NODELAY`` each is a segment of its own on the wire, which the broker reads and
parses one by one: a batch of 64 publishes and its acks was some 250 system calls and
segments. Joining what is buffered into pieces of up to ``PIECE`` bytes before pika sends
them writes the very same bytes in the same order, at the same moment, in a few calls.
Measured on the 10 k pipeline (docs/performance.md, "One write per turn of the loop"):
the broker's CPU per query fell by a third to two fifths, the pipeline's throughput rose
by 7-29 %, the sovereign layout's by 16 %.

pika has no option for it and creates its transports itself, so ``install`` wraps the
transports' common ``_produce`` (TLS's calls it too). It checks the private names it
relies on first; if a pika release changes them, it leaves pika as it is and logs why,
and ``tests/unit/test_writes.py`` fails, so that an upgrade is noticed.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("biox.broker")

#: the most a joined piece holds: large enough for a batch of queries in one call, small
#: enough that a backlog behind a slow socket is not copied whole on every turn
PIECE = 256 * 1024


def regroup(buffers: deque[bytes], piece: int = PIECE) -> None:
    """Joins runs of small buffers in place into pieces of at least ``piece`` bytes
    where there is that much (the last may be smaller), keeping the order; a buffer
    already as large is kept as it is, never copied again. (``bytes.join`` of one
    buffer is that buffer: a run of one is not copied either.)"""
    if len(buffers) < 2:
        return
    out: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for data in buffers:
        if len(data) >= piece:
            if run:
                out.append(b"".join(run))
                run, size = [], 0
            out.append(data)
            continue
        run.append(data)
        size += len(data)
        if size >= piece:
            out.append(b"".join(run))
            run, size = [], 0
    if run:
        out.append(b"".join(run))
    buffers.clear()
    buffers.extend(out)


#: what ``wrap`` relies on in pika's transport class, besides each instance's
#: ``_tx_buffers`` (the deque of frames waiting to be sent)
NEEDS = ("_produce", "_sigint_safe_send", "_buffer_tx_data")


def install() -> bool:
    """Makes pika's transports send what they have buffered in few writes. Idempotent;
    False (and pika untouched) when pika's internals are not what this expects."""
    try:
        from pika.adapters.utils import io_services_utils as ios

        base = ios._AsyncTransportBase
    except (ImportError, AttributeError) as exc:
        log.warning("pika_writes_unchanged", why=f"{type(exc).__name__}: {exc}")
        return False
    return wrap(base)


def wrap(transport: type) -> bool:
    """Regroups a transport class's buffers before each of its ``_produce`` calls; True
    once it does (again: a second call changes nothing), False with a warning naming
    what is missing when the class is not the one this was written for."""
    missing = [name for name in NEEDS if not hasattr(transport, name)]
    if missing:
        log.warning("pika_writes_unchanged", why=f"pika's transport has no {', '.join(missing)}")
        return False
    produce: Callable[[Any], None] = transport._produce  # type: ignore[attr-defined]
    if getattr(produce, "_biox_regroups", False):
        return True

    @functools.wraps(produce)
    def _produce(self: Any) -> None:
        regroup(self._tx_buffers)
        produce(self)

    _produce._biox_regroups = True  # type: ignore[attr-defined]
    setattr(transport, "_produce", _produce)  # noqa: B010  (private: no public way to ask it)
    return True
