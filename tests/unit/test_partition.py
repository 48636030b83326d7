"""The relay ``make chaos`` cuts partner links with: a partition drops bytes silently and
closes nothing; mending closes what was open and relays what comes next."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from biox.dev.partition import LinkRelay


@pytest.fixture
def echo() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def dial(relay: LinkRelay) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", relay.port), timeout=2)
    s.settimeout(0.5)
    return s


def silent(s: socket.socket) -> bool:
    """Nothing arrives, and the connection is not closed either (a close reads as b"")."""
    try:
        return s.recv(4096) == b"does not happen"
    except TimeoutError:
        return True


def test_bytes_cross_both_ways_until_the_cut_then_nothing_and_nothing_closes(echo):
    relay = LinkRelay(echo, name="us->mx")
    try:
        before = dial(relay)
        before.sendall(b"ping")
        assert before.recv(4096) == b"ping"
        relay.cut()
        assert relay.is_cut
        before.sendall(b"lost")
        assert silent(before)
        during = dial(relay)  # a reconnect during the cut is accepted and goes nowhere
        during.sendall(b"lost too")
        assert silent(during)
        relay.mend()
        assert not relay.is_cut
        # what was open across the cut is closed at the mend, never resumed
        before.settimeout(2)
        during.settimeout(2)
        assert before.recv(4096) == b""
        assert during.recv(4096) == b""
        after = dial(relay)
        after.sendall(b"pong")
        assert after.recv(4096) == b"pong"
    finally:
        relay.close()


def test_a_second_cut_after_a_mend_cuts_the_connections_made_in_between(echo):
    relay = LinkRelay(echo)
    try:
        relay.cut()
        relay.mend()
        between = dial(relay)
        between.sendall(b"a")
        assert between.recv(4096) == b"a"
        relay.cut()
        between.sendall(b"b")
        assert silent(between)
    finally:
        relay.close()


def test_a_broker_that_is_down_is_refused_through_the_relay_as_it_would_be_directly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]  # bound, not listening: refused
        relay = LinkRelay(nobody)
        try:
            conn = dial(relay)
            conn.settimeout(2)
            assert conn.recv(4096) == b""
        finally:
            relay.close()
