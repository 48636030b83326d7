"""Sorts the survivors of ``make mutation`` into kinds that do not change behaviour, and
writes them into docs/testing.md between the mutation markers, each by name.

A survivor is put in a kind only by where the mutation sits in the source (inside a
log call; on a line of timing constants) or by what it changes (only the wording of a
text meant for people). Anything else is listed as "to review": those are the ones to
kill with a test or to explain by hand in ``REVIEWED`` below.

    python -m tests.mutation_explain          # rewrite the section of docs/testing.md
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.mutation_report import ROOT, results

DOC = ROOT / "docs" / "testing.md"
TIMING = re.compile(r"timeout|sleep|wait_exponential|monotonic|batch_wait|requeue_pause|\.wait\(")
STRING = re.compile(r"""f?"(?:[^"\\]|\\.)*"|f?'(?:[^'\\]|\\.)*'""")

KINDS = {
    "log": "a log call's event name or fields (what is logged where operators rely on it is "
    "tested in test_consume_loop.py and test_handler_details.py; the rest is not behaviour)",
    "timing": "a timing constant (poll interval, retry back-off, wait bound): the same "
    "outcome, sooner or later",
    "wording": "the wording of a text for people (an error detail, a reason, a "
    "justification): no decision or data changes",
    "reviewed": "reviewed one by one: equivalent for the reason given",
}

#: survivors reviewed by hand, by what the mutation does → why it changes nothing
REVIEWED: dict[str, str] = {
    'float("-INF")': "float('-INF') is the same value as float('-inf')",
    "exclude_none=False": "the data in question has no None field there (all set)",
    'mode="XXjsonXX"': "pydantic dumps a model of text fields the same in any mode",
    'mode="JSON"': "pydantic dumps a model of text fields the same in any mode",
    "mode=None": "pydantic dumps a model of text fields the same in any mode",
    "strict=None": "the lengths always match (the handler contract is tested separately)",
    "strict=False": "the lengths always match (the handler contract is tested separately)",
}


def show(name: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True, cwd=ROOT
    ).stdout


def parse(shown: str) -> tuple[list[tuple[str, str]], list[int]]:
    """(removed, added) line pairs, and the removed lines' numbers within the function
    (1 = its ``def`` line), from a mutant's diff."""
    minus: list[str] = []
    plus: list[str] = []
    where: list[int] = []
    line = 0
    for text in shown.splitlines():
        if text.startswith(("---", "+++", "#")):
            continue
        if text.startswith("@@"):
            line = int(re.match(r"@@ -(\d+)", text).group(1)) - 1  # type: ignore[union-attr]
        elif text.startswith("-"):
            line += 1
            minus.append(text[1:])
            where.append(line)
        elif text.startswith("+"):
            plus.append(text[1:])
        else:
            line += 1
    pairs = list(zip(minus, plus + [""] * (len(minus) - len(plus)), strict=False))
    return pairs or [("", "")], where


def function_span(name: str) -> tuple[Path, int, int]:
    """The source file and the first and last lines of the function a mutant lives in."""
    module, _, rest = name.rpartition(".x")
    path = ROOT / "src" / (module.replace(".", "/") + ".py")
    rest = rest.rsplit("__mutmut_", 1)[0]
    parts = rest.split("ǁ")[1:] if rest.startswith("ǁ") else [rest[1:]]
    tree = ast.parse(path.read_text())
    body: list[ast.stmt] = tree.body
    for part in parts[:-1]:  # classes
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == part).body
    functions = [n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    func = next(n for n in functions if n.name == parts[-1])
    return path, func.lineno, func.end_lineno or func.lineno


def source_lines(
    path: Path, first: int, last: int, removed: list[str], where: list[int]
) -> list[int]:
    """Where the removed lines are in the source: found by their text inside the function
    (the nearest to mutmut's own count when a line occurs more than once)."""
    text = path.read_text().splitlines()
    out = []
    for line, guess in zip(removed, where, strict=False):
        found = [n for n in range(first, last + 1) if text[n - 1].strip() == line.strip()]
        if found:
            out.append(min(found, key=lambda n: abs(n - (first + guess - 1))))
    return out


def log_lines(path: Path) -> set[int]:
    """Every line inside a ``log.*(...)`` call of a module."""
    out: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
        ):
            out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return out


def kind_of(pairs: list[tuple[str, str]], lines: list[int], logged: set[int]) -> str:
    removed = " ".join(a.strip() for a, _ in pairs)
    added = " ".join(b.strip() for _, b in pairs)
    if lines and all(n in logged for n in lines):
        return "log"
    if TIMING.search(removed):
        return "timing"
    if removed and STRING.sub('""', removed) == STRING.sub('""', added):
        literals = STRING.findall(removed)
        if any(" " in lit or lit.startswith(("f'", 'f"')) for lit in literals):
            return "wording"
    if any(key in added for key in REVIEWED):
        return "reviewed"
    return "to review"


def main() -> int:
    codes = results(ROOT / "mutants")
    survivors = sorted(n for n, c in codes.items() if c in (0, 5, 33))
    by_kind: dict[str, list[tuple[str, str]]] = defaultdict(list)
    logged: dict[Path, set[int]] = {}
    for name in survivors:
        path, first, last = function_span(name)
        pairs, where = parse(show(name))
        lines = source_lines(path, first, last, [a for a, _ in pairs if a], where)
        kind = kind_of(pairs, lines, logged.setdefault(path, log_lines(path)))
        shown = f"{pairs[0][0].strip()} → {pairs[0][1].strip()}".replace("|", "\\|")
        by_kind[kind].append((name, shown[:140]))
    lines = ["### Survivors, by kind", ""]
    lines += ["| kind | survivors | why it changes no behaviour |", "| --- | ---: | --- |"]
    for kind, why in KINDS.items():
        lines.append(f"| {kind} | {len(by_kind.get(kind, []))} | {why} |")
    if by_kind.get("to review"):
        lines.append(
            f"| **to review** | {len(by_kind['to review'])} | not yet killed or explained |"
        )
    for kind in [*KINDS, "to review"]:
        if not by_kind.get(kind):
            continue
        lines += ["", f"<details><summary>{kind}: {len(by_kind[kind])}</summary>", ""]
        for name, shown in by_kind[kind]:
            explained = f"`{name}`" if kind != "to review" else name
            lines.append(f"- {explained}: `{shown}`")
        lines += ["", "</details>"]
    text = DOC.read_text()
    start = text.index("<!-- survivors:start -->") + len("<!-- survivors:start -->")
    end = text.index("<!-- survivors:end -->")
    DOC.write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])
    print({k: len(v) for k, v in by_kind.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
