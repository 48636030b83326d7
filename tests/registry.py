"""The registry the suite runs on: the shipped ``deploy/participants.toml`` as it stands
once every pair has exchanged its readiness notices (§34). The shipped file starts every
participant ``pending``; the exchange itself is shown by
``test_participants.py`` (in process) and ``test_lifecycle.py`` (over the broker), and
``make demo`` performs it. Everything else starts where operations have commenced."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from biox.registry import Registry

SHIPPED = Path(__file__).parents[1] / "deploy" / "participants.toml"


def install() -> Path:
    """Writes the commenced registry once per session and points ``BIOX_REGISTRY`` (and so
    every ``Settings`` and worker process of the suite) at it, unless one is set. The
    file goes when the process that wrote it exits (each xdist worker writes its own)."""
    if os.environ.get("BIOX_REGISTRY"):
        return Path(os.environ["BIOX_REGISTRY"])
    text = SHIPPED.read_text()
    pending = text.count('status = "pending"')
    assert pending == len(Registry.load(SHIPPED).codes), "every participant ships pending"
    directory = tempfile.mkdtemp(prefix="biox-registry-")
    atexit.register(shutil.rmtree, directory, True)  # the suite leaves nothing in /tmp
    path = Path(directory) / "participants.toml"
    path.write_text(text.replace('status = "pending"', 'status = "active"'))
    os.environ["BIOX_REGISTRY"] = str(path)
    return path


def operating() -> Registry:
    return Registry.load(install())
