"""The ``log.<level>(...)`` calls of a module, read from its source: what the operators'
log table (docs/operations.md) and the mutation explainer both need to find."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path


def log_calls(path: Path) -> Iterator[ast.Call]:
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
        ):
            yield node
