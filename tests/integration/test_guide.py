"""docs/integration.md walked as a stranger walks it (issue 21): biox installed from its
wheel into a new virtual environment, an empty directory, no BIOX_* setting, and the
guide's shell block run line for line, with the guide's example client saved beside it.

The one line done differently is `pip install`: the wheel goes in without its
dependencies, which the new environment reads from this one (a ``.pth`` file), so the
test downloads nothing. Everything else, from `biox broker start` to `biox broker stop`,
is the guide's text: a guide that drifts from the CLI fails here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import site
import subprocess
import sys
from pathlib import Path

import pytest

from biox.dev.broker import SERVER
from tests.wheel import REPO, build_wheel

GUIDE = REPO / "docs" / "integration.md"

pytestmark = pytest.mark.integration


def guide_blocks() -> tuple[str, str]:
    """The example client and the shell block that runs it, as the guide prints them."""
    text = GUIDE.read_text()
    client = re.search(
        r"<!-- example-client:start -->\n```python\n(.*?)```\n<!-- example-client:end -->",
        text,
        re.S,
    )
    shell = re.search(r"```bash\n(pip install biox.*?)```", text, re.S)
    assert client is not None and shell is not None, "the guide lost its client or its block"
    return client.group(1), shell.group(1)


def fresh_install(where: Path) -> Path:
    """A new virtual environment holding biox from its wheel; returns its bin directory."""
    wheel = build_wheel(where)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies only: a path listed in a .pth is not itself a site directory, so
    # this environment's editable biox (a .pth of its own there) is not picked up
    Path(purelib, "_biox_test_dependencies.pth").write_text("\n".join(site.getsitepackages()))
    return venv / "bin"


def test_the_guide_runs_as_written_from_a_fresh_install(tmp_path):
    if not SERVER.exists():
        pytest.skip("rabbitmq-server is not installed (make rabbitmq)")
    client, shell = guide_blocks()
    lines = shell.splitlines()
    assert lines[0].startswith("pip install"), lines[0]
    bin_dir = fresh_install(tmp_path / "install")

    work = tmp_path / "work"  # the stranger's empty directory
    work.mkdir()
    (work / "example_client.py").write_text(client)
    script = "set -euo pipefail\n" + "\n".join(lines[1:]) + "\n"
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIOX_", "VIRTUAL_ENV"))}
    env |= {
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path / "home"),
        "XDG_STATE_HOME": str(state),
    }
    run = subprocess.Popen(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the guide's `&` jobs: all of them stopped below
    )
    try:
        out, _ = run.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        out, _ = run.communicate()
        pytest.fail(f"the guide's block did not finish in 480 s:\n{out[-4000:]}")
    finally:  # whatever the block reached: its jobs, then its broker (a session apart)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        subprocess.run([bin_dir / "biox", "broker", "stop"], env=env, timeout=60)
    assert run.returncode == 0, out[-6000:]

    revisions = re.findall(r"^revision (\d+): (\w+) +(.*)$", out, re.M)
    assert revisions, out[-4000:]
    # each printed revision newer than the last (the client skips one that a newer
    # overtook, as the guide says), ending complete with both partners' answers
    numbers = [int(r[0]) for r in revisions]
    assert numbers == sorted(set(numbers)), out[-4000:]
    last = revisions[-1]
    assert last[1] == "complete" and "mx=no_match" in last[2] and "sv=no_match" in last[2], out
    assert (work / "probe.msgpack").stat().st_size > 0
    assert re.search(r"^1[0-9] passed, 0 failed$", out, re.M), out[-4000:]  # conformance
    # nothing of biox's own in the stranger's directory: the data went to the state dir
    assert sorted(p.name for p in work.iterdir()) == ["example_client.py", "probe.msgpack"]
    assert (state / "biox" / "us").is_dir()
