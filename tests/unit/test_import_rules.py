"""Imports run one way (docs/ARCHITECTURE.md): ``models`` imports neither ``pipeline`` nor ``training``; the
serving core imports no training code and no developer tooling; no module-level import circle.

Read from the source with ``ast``, function-level imports included (they are imports all the same).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "pipeline", "training")
# Developer tooling in pipeline/: the CLI, the dev stack (embedded broker and Redis, demo, bench, chaos, child
# processes, status, replay) and the console's own CLI and test server.
TOOLING_PACKAGES = ("pipeline.cli", "pipeline.devstack")
TOOLING_MODULES = {"pipeline.console.server"}


def is_tooling(name: str) -> bool:
    return name in TOOLING_MODULES or any(name == p or name.startswith(p + ".") for p in TOOLING_PACKAGES)


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Project modules ``path`` imports (``from a import b`` counts as ``a.b`` where that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    known = modules()
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def test_models_import_neither_pipeline_nor_training() -> None:
    bad = {name: sorted(i for i in imports(path) if not i.startswith("models"))
           for name, path in modules().items() if name.startswith("models")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_serving_core_imports_no_training_code_and_no_tooling() -> None:
    serving = {name: path for name, path in modules().items() if name.startswith("pipeline") and not is_tooling(name)}
    bad = {name: sorted(i for i in imports(path) if i.startswith("training") or is_tooling(i))
           for name, path in serving.items()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_module_level_import_circle() -> None:
    graph = {name: {i for i in imports(path, top_level_only=True) if i in modules()} for name, path in modules().items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []
