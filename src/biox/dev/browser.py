"""Debian's Chromium, headless: how a page a person looks at is checked (its DOM as the
browser built it) and photographed for docs/ (``deploy/ensure-chromium.sh`` installs it)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("chromium is not installed: run deploy/ensure-chromium.sh")
    return found


def _run(args: list[str], timeout: float = 120) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    return done.stdout


def dom(page: Path) -> str:
    """The document after the browser parsed and laid it out."""
    return _run(["--dump-dom", page.resolve().as_uri()])


def screenshot(page: Path, png: Path, width: int = 1100, height: int = 1500) -> Path:
    _run(
        [
            f"--screenshot={png.resolve()}",
            f"--window-size={width},{height}",
            page.resolve().as_uri(),
        ]
    )
    return png
