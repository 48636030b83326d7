"""What a local launcher needs from its host: a free port, a service's own user to run
as (RabbitMQ and PostgreSQL refuse root), and an epmd to stop (``dev/broker.py``,
``dev/cluster.py``, ``dev/postgres.py``)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
