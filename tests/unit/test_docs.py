"""The documents' claims stay tied to tests that exist.

docs/reliability.md and docs/workflows.md name, for each guarantee and each workflow, the
tests that would fail without it. A renamed or deleted test would leave a claim without
its proof; this test fails instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"`(?:tests/[\w/]+/)?(test_\w+\.py)::(test_\w+)`")
BARE = re.compile(r"`(test_[a-z0-9_]+)`")  # a test named without its file
DOCS = sorted((ROOT / "docs").glob("*.md"))


def defined_tests() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        names = set(re.findall(r"^def (test_\w+)\(", path.read_text(), re.M))
        out.setdefault(path.name, set()).update(names)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_a_document_cites_exists(doc: Path):
    tests = defined_tests()
    cited = CITATION.findall(doc.read_text())
    missing = [f"{f}::{t}" for f, t in cited if t not in tests.get(f, set())]
    anywhere = set().union(*tests.values())
    missing += [t for t in BARE.findall(doc.read_text()) if t not in anywhere]
    assert missing == [], f"{doc.name} cites tests that do not exist: {missing}"


def test_every_reliability_guarantee_names_a_test():
    text = (ROOT / "docs" / "reliability.md").read_text()
    table = text.split("| guarantee |", 1)[1].split("\n\n", 1)[0]
    rows = [r for r in table.splitlines()[2:] if r.startswith("|")]
    assert len(rows) >= 10
    bare = [r.split("|")[1].strip() for r in rows if not CITATION.search(r)]
    assert bare == [], f"guarantees without a test: {bare}"


def test_every_workflow_section_names_its_tests():
    text = (ROOT / "docs" / "workflows.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    untested = [s.splitlines()[0] for s in sections if not CITATION.search(s)]
    assert untested == [], f"workflow sections without a test: {untested}"
