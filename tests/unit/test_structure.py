"""The layering rules of docs/architecture.md ("Layers"), checked on the import graph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "biox"
MODULES = sorted(SRC.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def importers_of(prefix: str) -> list[str]:
    return [
        module_name(p)
        for p in MODULES
        if any(i == prefix or i.startswith(prefix + ".") for i in imports(p))
    ]


def test_production_code_never_imports_the_simulators():
    outside = [m for m in importers_of("biox.sim") if not m.startswith("biox.sim")]
    assert outside == ["biox.cli.sim"], "only `biox demo` / `biox synth` may reach biox.sim"


def test_only_development_tools_start_a_local_broker():
    users = [m for m in importers_of("biox.dev") if not m.startswith("biox.dev")]
    assert sorted(users) == ["biox.cli.broker", "biox.sim.processes", "biox.sim.sovereign_demo"]


@pytest.mark.parametrize(
    "package",
    ["biox.handlers", "biox.gallery", "biox.policy", "biox.answers", "biox.results",
     "biox.enrolment", "biox.audit", "biox.provenance", "biox.messages", "biox.inbound"],
)  # fmt: skip
def test_handlers_and_domain_know_no_broker(package):
    offenders = [
        module_name(p)
        for p in MODULES
        if module_name(p) == package or module_name(p).startswith(package + ".")
        if any(i.split(".")[0] == "pika" or i.startswith("biox.broker") for i in imports(p))
    ]
    assert offenders == []


def test_handlers_live_only_in_handlers():
    """Every handler class the route table names is in biox.handlers, and that package
    holds handlers only (plus their base)."""
    from biox.routes import ROUTES

    for queue in ROUTES.queues.values():
        assert queue.handler.__module__.startswith("biox.handlers."), queue.handler
    for path in (SRC / "handlers").glob("*.py"):
        if path.stem in ("__init__", "base"):
            continue
        tree = ast.parse(path.read_text())
        classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
        assert classes and all(c.endswith("Handler") for c in classes), (path.name, classes)


def test_no_module_outside_tests_is_too_long_to_read():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}


def test_code_cites_the_design_in_the_repository():
    """docs/architecture.md is the design of record; no file outside the repo is cited."""
    cited = [module_name(p) for p in MODULES if "DESIGN" in p.read_text()]
    assert cited == []
