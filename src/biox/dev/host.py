"""What a local launcher needs from its host: a free port, a service's own user to run
as (RabbitMQ and PostgreSQL refuse root), and an epmd to stop (``dev/broker.py``,
``dev/cluster.py``, ``dev/postgres.py``)."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import socket
import subprocess
from pathlib import Path

#: ports this process has handed out: a broker binds its five some seconds after they are
#: chosen, and two brokers of one layout start at once
_GIVEN: set[int] = set()
_LOWEST = 10_000
#: the operating system's randomness, not the module's: a test or a simulation that seeds
#: ``random`` would otherwise have every process it starts try the same ports in turn
_RNG = random.SystemRandom()


def free_port() -> int:
    """A port no one listens on, below the kernel's ephemeral range.

    Asking the kernel for one (binding port 0) answers from the ephemeral range, where
    every outgoing connection also takes its local port: a broker still starting lost its
    distribution port to another's readiness probe that way (``dist_port_already_used``,
    2026-12-06). Below that range only listeners compete, and none of this process's twice."""
    low = ephemeral_range()[0]
    if low - _LOWEST < 1000:  # a host whose ephemeral range starts low: the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        _GIVEN.add(port)
        return port
    for _ in range(500):
        port = _RNG.randrange(_LOWEST, low)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # someone listens there, or did a moment ago
        _GIVEN.add(port)
        return port
    raise OSError(f"no free port found between {_LOWEST} and {low}")


def ephemeral_range() -> tuple[int, int]:
    """Where the kernel takes outgoing connections' local ports (Linux's default if the
    setting cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def alive(pid: int, process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:
        return process.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_epmd(port: int) -> None:
    """epmd daemonises out of our process group; ask it to stop."""
    epmd = shutil.which("epmd") or "/usr/bin/epmd"
    with contextlib.suppress(Exception):
        subprocess.run(
            [epmd, "-kill"],
            env={**os.environ, "ERL_EPMD_PORT": str(port)},
            capture_output=True,
            timeout=10,
        )


def chown_tree(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o700)


def setpriv_args(user: str) -> list[str]:
    pw = pwd.getpwnam(user)
    return [f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
