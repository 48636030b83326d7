"""A TCP relay in front of a partner's broker that can be cut like a network: the partner
link of the sovereign layout, broken on purpose (``make chaos``, docs/reliability.md).

A cut is a partition, not a refusal: nothing is closed or reset, bytes simply stop
arriving, so each side finds out only through its own timeouts (the shovel's 15 s AMQP
heartbeat), as on a real network whose packets are dropped. New connections made during
the cut are accepted and go nowhere either. Mending closes every connection opened
before it (their peers gave up on them long ago; a real network would answer their late
packets with a reset) and relays the new ones.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import structlog

log = structlog.get_logger("biox.partition")


class LinkRelay:
    """Listens on 127.0.0.1 at ``port`` (a free one by default) and relays each connection
    to ``127.0.0.1:target``."""

    def __init__(self, target: int, port: int = 0, name: str = "link") -> None:
        self.target = target
        self.name = name
        self._server = socket.create_server(("127.0.0.1", port))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._epoch = 0  # a connection relays while the relay is mended in its epoch
        self._cut = False
        self._open: list[tuple[int, socket.socket, socket.socket]] = []
        self._closed = False
        threading.Thread(target=self._accept, name=f"relay-{name}", daemon=True).start()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        """From now on no byte crosses, either way, on any connection, old or new."""
        with self._lock:
            self._cut = True
        log.info("link_cut", link=self.name)

    def mend(self) -> None:
        """Bytes cross again, for connections opened from now on; the older ones close."""
        with self._lock:
            self._cut = False
            self._epoch += 1
            stale = [pair for pair in self._open if pair[0] < self._epoch]
            self._open = [pair for pair in self._open if pair[0] >= self._epoch]
        for _, a, b in stale:
            _close(a, b)
        log.info("link_mended", link=self.name, closed=len(stale))

    def close(self) -> None:
        self._closed = True
        with self._lock:
            pairs, self._open = self._open, []
        for _, a, b in pairs:
            _close(a, b)
        _close(self._server)

    def _passes(self, epoch: int) -> bool:
        return not self._cut and epoch == self._epoch

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the broker itself is down: refused, as it would be
                continue
            with self._lock:
                epoch = self._epoch if not self._cut else -1  # made during a cut: never mended
                self._open.append((epoch, client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, epoch), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, epoch: int) -> None:
        """Copies ``src`` to ``dst`` while the link passes; during a cut what arrives is
        read and dropped, so the sender's writes never block or fail (packets lost), and
        a side that closes is not seen closing by the other."""
        try:
            while data := src.recv(65536):
                if self._passes(epoch):
                    dst.sendall(data)
        except OSError:
            pass
        if self._passes(epoch):  # a close crosses as the bytes do; in a cut, at the mend
            _close(src, dst)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
