"""Summarises a ``mutmut run`` (``make mutation``): the score per module, and the surviving
mutants that docs/testing.md does not explain as equivalent.

Score = mutants the unit tests kill (a failing test, or a hang cut off by the timeout)
over all mutants made, so a mutant no test even reaches counts against the score. Exits
1 when the score is below the target, so the target can gate a change.

    python -m tests.mutation_report [--target 0.85] [--list]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLED = {1, 3, -9, -11}  # a test failed, pytest crashed, the mutant crashed the run
TIMEOUT = {-24, 24, 152, 255, 36}  # the mutant made the tests hang: cut off, detected
SURVIVED = {0}
NO_TESTS = {5, 33}


def results(mutants: Path) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for meta in sorted(mutants.rglob("*.meta")):
        out.update(json.loads(meta.read_text()).get("exit_code_by_key", {}))
    return out


def explained(doc: Path) -> set[str]:
    """Mutant names docs/testing.md lists as equivalent (in backticks)."""
    if not doc.exists():
        return set()
    return set(re.findall(r"`(biox\.[\w.ǁ]+__mutmut_\d+)`", doc.read_text()))


def module_of(name: str) -> str:
    return name.rpartition(".x")[0] if ".x" in name else name.rsplit(".", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "testing.md")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--list", action="store_true", help="print every unexplained survivor")
    args = parser.parse_args()

    codes = results(args.mutants)
    if not codes:
        print(f"no results under {args.mutants}: run `make mutation` first")
        return 2
    per: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for name, code in codes.items():
        if code in KILLED or code in TIMEOUT:
            outcome = "killed"
        elif code in SURVIVED or code in NO_TESTS:
            outcome = "survived" if code in SURVIVED else "no test"
            survivors.append(name)
        else:
            outcome = "not run"
        per[module_of(name)][outcome] += 1
    known = explained(args.doc)
    print(
        f"{'module':<34} {'mutants':>7} {'killed':>7} {'survived':>8} {'no test':>7} {'score':>6}"
    )
    totals: Counter[str] = Counter()
    for module in sorted(per):
        c = per[module]
        n = sum(c.values())
        totals.update(c)
        print(
            f"{module:<34} {n:>7} {c['killed']:>7} {c['survived']:>8} {c['no test']:>7} "
            f"{c['killed'] / n:>6.1%}"
        )
    total = sum(totals.values())
    score = totals["killed"] / total
    print(
        f"{'all':<34} {total:>7} {totals['killed']:>7} {totals['survived']:>8} "
        f"{totals['no test']:>7} {score:>6.1%}"
    )
    if totals["not run"]:
        print(f"{totals['not run']} mutants not run yet (an interrupted run resumes)")
    unexplained = sorted(set(survivors) - known)
    equivalent = len(set(survivors) & known)
    print(
        f"\n{len(survivors)} survivors: {equivalent} explained as equivalent in "
        f"{args.doc.name}, {len(unexplained)} not"
    )
    if args.list:
        for name in unexplained:
            print(f"  {name}")
    elif unexplained:
        print("  `python -m tests.mutation_report --list` names them; `mutmut show NAME` shows one")
    if score < args.target:
        print(f"score {score:.1%} is below the target {args.target:.0%}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
