"""The documents' claims stay tied to tests that exist.

docs/reliability.md and docs/workflows.md name, for each guarantee and each workflow, the
tests that would fail without it. A renamed or deleted test would leave a claim without
its proof; this test fails instead.
"""

from __future__ import annotations

import ast
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


def test_every_attack_in_the_security_page_names_the_test_that_performs_it():
    """docs/security.md, "What each party can and cannot do": one row per attempt by a
    hostile partner, encounter system or operator, each naming its test."""
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## What each party can and cannot do", 1)[1].split("\n## ", 1)[0]
    rows = [
        r
        for r in section.splitlines()
        if r.startswith("|") and not r.startswith("| ---") and "what stops it" not in r
    ]
    assert len(rows) >= 20
    bare = [r.split("|")[1].strip() for r in rows if not CITATION.search(r)]
    assert bare == [], f"claims without a test: {bare}"


def test_every_workflow_section_names_its_tests():
    text = (ROOT / "docs" / "workflows.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    untested = [s.splitlines()[0] for s in sections if not CITATION.search(s)]
    assert untested == [], f"workflow sections without a test: {untested}"


def logged_events() -> dict[str, set[str]]:
    """event → the levels it is logged at, from every ``log.<level>("event", ...)`` in src."""
    from tests.logcalls import log_calls

    out: dict[str, set[str]] = {}
    for path in (ROOT / "src" / "biox").rglob("*.py"):
        for call in log_calls(path):
            if call.args and isinstance(call.args[0], ast.Constant):
                assert isinstance(call.func, ast.Attribute)
                out.setdefault(str(call.args[0].value), set()).add(call.func.attr)
    return out


def test_every_logged_event_in_the_operations_table_is_emitted():
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Logs", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) > 10
    emitted = logged_events()
    wrong = []
    for names, level in rows:
        for event in re.findall(r"`([\w.]+)`", names):
            if emitted.get(event) != {level.strip()}:
                wrong.append(f"{event}: table says {level.strip()}, code {emitted.get(event)}")
    assert wrong == []
    # and every warning or error the code logs is in the table, so none goes unexplained
    documented = {e for names, _ in rows for e in re.findall(r"`([\w.]+)`", names)}
    local_only = {"postgres_stop_failed"}  # the test database launcher
    alarms = {e for e, levels in emitted.items() if levels & {"warning", "error"}}
    assert alarms - documented - local_only == set()


# --- the statement's index (docs/statement.md) ------------------------------------------------

STATEMENT = ROOT / "docs" / "statement.md"
PARAGRAPH_ROW = re.compile(r"^\| §(\d+) \|", re.M)
CITED = re.compile(r"§(\d+)(?:[a-z]|\([ivx]+\))*(?:-(\d+))?")


def cited_paragraphs() -> dict[int, set[str]]:
    """Every §N the code, tests and docs cite (both ends of a range), with where."""
    out: dict[int, set[str]] = {}
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *DOCS]
    files += [ROOT / "README.md", *(ROOT / "schemas").glob("*")]
    for path in files:
        if "egg-info" in path.parts or path == STATEMENT or not path.is_file():
            continue
        for start, end in CITED.findall(path.read_text()):
            for n in {start, end} - {""}:
                out.setdefault(int(n), set()).add(str(path.relative_to(ROOT)))
    return out


def test_every_paragraph_the_repository_cites_has_a_line_in_the_statements_index():
    indexed = {int(n) for n in PARAGRAPH_ROW.findall(STATEMENT.read_text())}
    cited = cited_paragraphs()
    assert len(cited) > 20  # the reading works: the code cites most of the statement
    assert {n: sorted(w) for n, w in cited.items() if n not in indexed} == {}
    assert indexed == set(range(1, 37))  # and the index has every paragraph, once
    assert len(PARAGRAPH_ROW.findall(STATEMENT.read_text())) == 36


def test_every_path_the_statements_index_names_exists():
    named = re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.(?:py|toml))`", STATEMENT.read_text())
    assert len(named) > 50
    missing = [
        p
        for p in named
        if not any((ROOT / base / p).is_file() for base in ("src/biox", "tests", "."))
    ]
    assert missing == []
