"""The layering of docs/architecture.md ("Packages" and "Layers"), checked on the whole
import graph: what a module loads is everything it reaches, not only what it names.

The graph is read from the source (``ast``): every ``import`` a module runs, at its top or
inside a function, except those under ``if TYPE_CHECKING:``, which Python never runs. A
rule on what a package loads is checked on the transitive closure; cycles on the imports
that run when a module is first loaded. One test imports the lowest packages in a fresh
interpreter, so the reading of the source is itself checked against what Python does.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "biox"
MODULES = sorted(SRC.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {module_name(p): p for p in MODULES}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, here: str) -> set[str]:
    """The modules an import statement loads: a ``from package import name`` loads the
    submodule when ``name`` is one, else only the package."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = node.module or ""
    if node.level:  # relative: resolved against this module's package
        package = here.split(".")[: -node.level] if here in NAMES else here.split(".")
        base = ".".join([*package, *([base] if base else [])])
    out = {base}
    out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in NAMES)
    return out


class _Imports(ast.NodeVisitor):
    def __init__(self, name: str, top_level_only: bool) -> None:
        self.name, self.top_level_only = name, top_level_only
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        for child in node.orelse if _is_type_checking(node) else [*node.body, *node.orelse]:
            self.visit(child)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if not self.top_level_only:  # a function's imports run when it is called
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        self.found.update(_targets(node, self.name))

    visit_ImportFrom = visit_Import


@cache
def imports(name: str, top_level_only: bool = False) -> frozenset[str]:
    """What ``name`` imports when it runs: every statement, or with ``top_level_only``
    those that run as the module is first loaded (not inside a function)."""
    visitor = _Imports(name, top_level_only)
    visitor.visit(ast.parse(NAMES[name].read_text()))
    return frozenset(visitor.found)


def _with_parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@cache
def loads(name: str) -> frozenset[str]:
    """Every module, biox's and others', that importing ``name`` may load (its closure)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        for target in imports(current):
            for module in _with_parents(target):
                if module not in seen:
                    seen.add(module)
                    if module in NAMES:
                        todo.append(module)
    return frozenset(seen)


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def third_party(name: str) -> set[str]:
    return {m.split(".")[0] for m in loads(name) if not m.startswith("biox")}


def modules_of(*packages: str) -> list[str]:
    return [n for n in NAMES if any(in_package(n, p) for p in packages)]


# --- the rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", modules_of("biox.wire"))
def test_the_wire_contract_loads_no_numpy_faiss_pika_or_database(name):
    """An integrator's code, the codec and the schema tools import the wire contract
    alone: no numpy, FAISS, pika or SQL, and of biox only the wire and the registry (the
    purposes a query names, read by the one file reader)."""
    assert third_party(name) & {"numpy", "faiss", "pika", "sqlalchemy", "sqlmodel"} == set()
    allowed = {"biox.registry", "biox.config"}
    outside = {
        m
        for m in loads(name)
        if m.startswith("biox.") and not in_package(m, "biox.wire") and m not in allowed
    }
    assert outside == set(), f"{name} reaches {sorted(outside)}"


DOMAIN = ("biox.queries", "biox.agreement", "biox.trust", "biox.policy")


@pytest.mark.parametrize("name", modules_of(*DOMAIN, "biox.handlers", "biox.gallery"))
def test_handlers_and_the_domain_never_load_the_broker_client(name):
    assert "pika" not in third_party(name)
    assert not any(in_package(m, "biox.broker") for m in loads(name)), sorted(loads(name))


@pytest.mark.parametrize("name", modules_of(*DOMAIN))
def test_the_domain_never_loads_the_search_engine(name):
    """The query domain and the agreement decide on records and scores, not on vectors:
    a Found (queries/answers.py) carries what the search found."""
    assert third_party(name) & {"numpy", "faiss"} == set()
    assert not any(in_package(m, "biox.gallery") for m in loads(name))


def test_production_code_never_imports_the_tools():
    """The simulators (``biox.sim``), the development broker and PKI (``biox.dev``) and
    the command line (``biox.cli``) stand above the exchange: nothing below reaches them."""
    tools = ("biox.sim", "biox.dev", "biox.cli")
    reaching = {
        name: sorted(m for m in loads(name) if any(in_package(m, t) for t in tools))
        for name in NAMES
        if not any(in_package(name, t) for t in tools) and name != "biox.__main__"
    }
    assert {k: v for k, v in reaching.items() if v} == {}


def test_the_command_line_is_below_nothing_but_its_entry_point():
    users = {
        n
        for n in NAMES
        if "biox.cli" in imports(n) or any(in_package(m, "biox.cli") for m in imports(n))
    } - set(modules_of("biox.cli"))
    assert users == {"biox.__main__"}


def test_only_development_tools_start_a_local_broker():
    users = {n for n in NAMES if any(in_package(m, "biox.dev") for m in imports(n))}
    assert users - set(modules_of("biox.dev")) == {
        "biox.cli.broker",
        "biox.sim.processes",
        "biox.sim.sovereign_demo",
    }


def test_no_import_cycle():
    """No cycle among the imports that run when a module is loaded."""
    graph = {
        n: {t for m in imports(n, top_level_only=True) for t in _with_parents(m) if t in NAMES}
        - {n}
        for n in NAMES
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            walk(n, [n])
    # a package's own __init__ importing a submodule that imports the package back is
    # Python's normal arrangement: only cycles between modules count
    real = [c for c in cycles if not any(in_package(c[i + 1], c[i]) for i in range(len(c) - 1))]
    assert real == []


def package_of(name: str) -> str:
    """``biox.wire`` for ``biox.wire.codec``; a module at the top stands for itself."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or name in PACKAGES else name


PACKAGES = {n for n, p in NAMES.items() if p.name == "__init__.py"}


def test_the_packages_stand_in_layers_none_importing_another_that_imports_it_back():
    """Taken whole, the packages and the modules at the top form no cycle either (any
    import, lazy ones included): each stands on those below it (docs/architecture.md,
    "Layers")."""
    edges: dict[str, set[str]] = {}
    for name in NAMES:
        for target in imports(name):
            ours, theirs = package_of(name), package_of(target)
            if target in NAMES and ours != theirs and "biox" not in (ours, theirs):
                edges.setdefault(ours, set()).add(theirs)
    back = sorted(
        (a, b) for a, targets in edges.items() for b in targets if a in loads_between(edges, b)
    )
    assert back == []


def loads_between(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every package ``start`` reaches through ``edges``."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_reading_of_the_source_matches_what_python_loads():
    """The wire contract imported in a fresh interpreter loads none of what the rules
    forbid, and every biox module it loads is one the static closure names."""
    wire = modules_of("biox.wire")
    script = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in wire)
        + "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert loaded & {"numpy", "faiss", "pika", "sqlmodel"} == set()
    static = set().union(*(loads(m) for m in wire)) | set(wire)
    assert {m for m in loaded if m.startswith("biox")} <= static


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


def test_the_top_level_holds_only_the_modules_that_tie_the_packages_together():
    """docs/architecture.md, "Packages": everything else lives in a package by concern."""
    top = {p.stem for p in SRC.glob("*.py")}
    assert top == {
        "__init__",
        "__main__",
        "routes",
        "runtime",
        "supervisor",
        "settings",
        "registry",
        "store",
        "database",
        "metrics",
        "logs",
        "render",
    }


def test_every_module_is_named_in_the_design_of_record():
    design = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    unnamed = [
        name
        for name, path in NAMES.items()
        if path.stem not in ("__init__", "__main__")
        if str(path.relative_to(SRC)) not in design
    ]
    assert unnamed == []


def test_no_module_outside_tests_is_too_long_to_read():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}


def test_code_cites_the_design_in_the_repository():
    """docs/architecture.md is the design of record; no file outside the repo is cited."""
    cited = [module_name(p) for p in MODULES if "DESIGN" in p.read_text()]
    assert cited == []
