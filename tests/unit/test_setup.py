"""Set-up outside a clone (issue 21 (2)): the defaults work from any directory, a missing
file a setting names is one line naming the setting, and `biox init` copies the examples
to edit as one's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from biox.config import NAMES, example
from biox.settings import Settings
from tests.wheel import build_wheel

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a stranger's shell: no BIOX_* setting at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOX_")}
    return {**env, **extra}


def biox(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "biox", *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_defaults_are_the_shipped_examples_and_a_state_directory(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("BIOX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.data_dir == tmp_path / "state" / "biox"
    for path in (s.registry, s.policy, s.agreement, s.staff):
        assert path.is_absolute() and path.exists(), path
    # a clone's deploy/ links the very same files (copies of them where links are not kept)
    for name in NAMES:
        assert (REPO / "deploy" / name).read_bytes() == example(name).read_bytes()


def test_from_another_directory_the_cli_runs_and_a_missing_file_is_one_line(tmp_path):
    state = str(tmp_path / "state")
    listed = biox("participants", "list", "-p", "us", cwd=tmp_path, XDG_STATE_HOME=state)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "pending" in listed.stdout  # everyone starts pending (§34)
    assert (tmp_path / "state" / "biox").is_dir() and not (tmp_path / "var").exists()
    missing = biox("participants", "list", "-p", "us", cwd=tmp_path, BIOX_REGISTRY="nowhere.toml")
    said = (missing.stdout + missing.stderr).strip()
    assert missing.returncode == 2 and "Traceback" not in said
    assert said.startswith("no file at nowhere.toml (BIOX_REGISTRY)"), said
    assert len(said.splitlines()) <= 2  # one line, wrapped at most once


def test_init_copies_the_examples_keeps_what_exists_and_prints_the_settings(tmp_path):
    target = tmp_path / "conf"
    (target).mkdir()
    (target / "policy.toml").write_text("# mine\n")
    done = biox("init", str(target), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (target / "policy.toml").read_text() == "# mine\n"  # kept
    for name in ("participants.toml", "agreement.toml", "staff.toml"):
        assert (target / name).read_text() == example(name).read_text()
    exports = [line for line in done.stdout.splitlines() if line.startswith("export ")]
    assert f"export BIOX_REGISTRY={target / 'participants.toml'}" in exports
    assert len(exports) == 4


def test_an_installed_biox_carries_its_examples_and_reads_them_from_its_own_files(tmp_path):
    """The wheel a fresh install gets holds the four examples (package data), and the
    settings' defaults resolve to those installed files, not to a clone's deploy/."""
    import zipfile

    wheel = build_wheel(tmp_path)
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        assert {f"biox/config/{n}" for n in NAMES} <= set(z.namelist())
        z.extractall(unpacked)
    said = subprocess.run(
        [
            sys.executable,
            "-c",
            "from biox.settings import Settings; s = Settings(); "
            "print(s.registry); print(s.registry.read_text().count('status = \"pending\"'))",
        ],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(unpacked)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert said.returncode == 0, said.stderr
    where, pending = said.stdout.split()
    assert where == str(unpacked / "biox" / "config" / "participants.toml")
    assert pending == "3"


def test_the_suite_keeps_out_of_the_users_state_directory():
    """A test that takes Settings' defaults writes under a directory of the suite's own
    (tests/conftest.py), not ~/.local/state/biox, where a demo or a walk through the docs
    keeps its data and where two test processes would meet."""
    home_state = Path.home() / ".local" / "state"
    assert not Settings().data_dir.resolve().is_relative_to(home_state.resolve())
    assert Settings().data_dir.parent.name.startswith("biox-state-")
