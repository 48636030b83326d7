"""pika's buffered frames leave in few socket writes (``broker/writes.py``): the same
bytes, in the same order, and pika left alone when its internals are not as expected."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika.adapters.utils import io_services_utils as ios
from structlog.testing import capture_logs

from biox.broker import writes


class Socket:
    """Takes at most ``limit`` bytes a call, as a full socket buffer would."""

    def __init__(self, limit: int | None = None) -> None:
        self.calls: list[bytes] = []
        self.limit = limit

    def send(self, data: bytes) -> int:
        taken = bytes(data[: self.limit] if self.limit else data)
        self.calls.append(taken)
        return len(taken)

    def fileno(self) -> int:
        return 99


def transport(sock: Socket) -> ios._AsyncPlaintextTransport:
    return ios._AsyncPlaintextTransport(sock, mock.Mock(), mock.Mock())


frames = st.lists(st.binary(min_size=1, max_size=300), max_size=40)


@settings(max_examples=200, deadline=None)
@given(frames, st.integers(min_value=1, max_value=1000))
def test_regrouping_keeps_every_byte_in_order(parts: list[bytes], piece: int) -> None:
    buffers = deque(parts)
    writes.regroup(buffers, piece)
    assert b"".join(buffers) == b"".join(parts)
    assert all(buffers)  # never an empty write, which pika refuses
    assert len(buffers) <= max(len(parts), 1)
    # a piece is short only at the end, or where a buffer already as large comes next
    out = list(buffers)
    for short, after in itertools.pairwise(out):
        if len(short) < piece:
            assert len(after) >= piece and any(after is p for p in parts)


def test_a_large_buffer_is_kept_as_it_is_and_small_ones_around_it_joined() -> None:
    large = b"L" * 10
    buffers = deque([b"a", b"b", large, b"c", b"d"])
    writes.regroup(buffers, piece=10)
    assert list(buffers) == [b"ab", large, b"cd"]
    assert buffers[1] is large  # not copied again on the next turn


def test_small_buffers_are_joined_until_a_piece_is_full() -> None:
    buffers = deque([b"12345", b"67890", b"abc", b"de", b"f"])
    writes.regroup(buffers, piece=8)
    assert list(buffers) == [b"1234567890", b"abcdef"]


def test_a_piece_is_full_at_exactly_its_size_and_the_next_starts_empty() -> None:
    buffers = deque([b"1234", b"5678", b"1234567", b"x", b"ab", b"L" * 8, b"1234567", b"y"])
    writes.regroup(buffers, piece=8)
    assert list(buffers) == [b"12345678", b"1234567x", b"ab", b"L" * 8, b"1234567y"]


def test_a_lone_small_buffer_between_large_ones_is_not_copied() -> None:
    small = b"s" * 3
    buffers = deque([b"L" * 8, small, b"M" * 8])
    writes.regroup(buffers, piece=8)
    assert list(buffers) == [b"L" * 8, small, b"M" * 8] and buffers[1] is small


def test_one_buffer_or_none_is_left_alone() -> None:
    one = deque([b"x"])
    writes.regroup(one, piece=4)
    assert list(one) == [b"x"]
    empty: deque[bytes] = deque()
    writes.regroup(empty, piece=4)
    assert not empty


def test_a_turn_of_pikas_loop_writes_a_batch_of_frames_at_once() -> None:
    assert writes.install()
    sock = Socket()
    t = transport(sock)
    sent = [bytes([i % 251]) * (10 + i) for i in range(192)]  # 64 publishes' frames
    for frame in sent:
        t.write(frame)
    t._on_socket_writable()
    assert len(sock.calls) == 1
    assert sock.calls[0] == b"".join(sent)
    assert t.get_write_buffer_size() == 0


def test_a_partial_write_keeps_the_rest_for_the_next_turn() -> None:
    assert writes.install()
    sock = Socket(limit=7)
    t = transport(sock)
    for frame in (b"abcde", b"fghij", b"klmno"):
        t.write(frame)
    sock.limit = None
    t._produce()  # pika's loop: the first call takes 7 bytes only with a full socket
    assert b"".join(sock.calls) == b"abcdefghijklmno"
    assert t.get_write_buffer_size() == 0


def test_a_backlog_larger_than_a_piece_is_written_a_piece_at_a_time() -> None:
    assert writes.install()
    sock = Socket()
    t = transport(sock)
    frame = b"x" * 5000
    for _ in range(200):  # 1 MB behind a slow socket
        t.write(frame)
    t._on_socket_writable()
    assert b"".join(sock.calls) == frame * 200
    assert 1 < len(sock.calls) <= 1_000_000 // writes.PIECE + 1


def test_installing_twice_wraps_once() -> None:
    assert writes.install()
    produce = ios._AsyncTransportBase._produce
    assert writes.install()
    assert ios._AsyncTransportBase._produce is produce
    assert produce._biox_regroups


class Transport:
    """A transport class as pika 1.4 shapes it: what ``wrap`` relies on, and a
    ``_produce`` that shows what it was given."""

    def __init__(self, *buffers: bytes) -> None:
        self._tx_buffers = deque(buffers)
        self.given: list[bytes] = []

    def _produce(self) -> None:
        """pika's own."""
        self.given = list(self._tx_buffers)

    @staticmethod
    def _sigint_safe_send(sock: Any, data: bytes) -> int:
        return len(data)

    def _buffer_tx_data(self, data: bytes) -> None:
        self._tx_buffers.append(data)


def test_a_wrapped_transport_is_given_its_buffers_joined_and_keeps_its_own_method() -> None:
    class Fresh(Transport):
        pass

    own = Fresh._produce
    assert writes.wrap(Fresh)
    t = Fresh(b"ab", b"cd", b"ef")
    t._produce()
    assert t.given == [b"abcdef"]
    assert Fresh._produce.__doc__ == "pika's own." and Fresh._produce.__wrapped__ is own
    wrapped = Fresh._produce
    assert writes.wrap(Fresh) and Fresh._produce is wrapped  # not wrapped twice


@pytest.mark.parametrize("gone", writes.NEEDS)
def test_a_transport_without_what_this_relies_on_is_left_alone(gone: str) -> None:
    attrs = {n: getattr(Transport, n) for n in ("__init__", *writes.NEEDS) if n != gone}
    Changed = type("Changed", (), attrs)
    with capture_logs() as logs:
        assert not writes.wrap(Changed)
    assert not getattr(getattr(Changed, "_produce", None), "_biox_regroups", False)
    assert [(e["event"], e["log_level"]) for e in logs] == [("pika_writes_unchanged", "warning")]
    assert gone in logs[0]["why"]


def test_a_pika_without_the_transport_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ios, "_AsyncTransportBase")
    with capture_logs() as logs:
        assert not writes.install()
    assert logs[0]["event"] == "pika_writes_unchanged" and "AttributeError" in logs[0]["why"]
