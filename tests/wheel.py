"""biox's wheel, as a fresh install gets it: built from this checkout without its
dependencies (the tests that install it read those from their own environment)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def build_wheel(where: Path) -> Path:
    if not (REPO / "pyproject.toml").exists():  # a copy of the sources alone (mutmut's)
        pytest.skip("no project to build here")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(where)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = where.glob("biox-*.whl")
    return wheel
