"""The stack has floors, and no import runs back up: the shared vocabulary, registry and cache at
the bottom; model adapters and datasets on it (neither importing the other); editors on those;
the harness (config, loop, run, CLI) on top. Every import in every file counts, the ones inside
functions included, because a lazy import is still a dependency."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "data", "editors")
FOUNDATION = {"benchmark.types", "benchmark.registry", "benchmark.cache", "benchmark.records",
              "benchmark.fact_source", "benchmark.keep_best", "benchmark.metrics", "benchmark.csvlog",
              "benchmark.distributed", "benchmark.corpus", "benchmark.record_types"}
# floor -> the floors it may import (its own included)
MAY_IMPORT = {"foundation": {"foundation"}, "models": {"foundation", "models"}, "data": {"foundation", "data"},
              "editors": {"foundation", "models", "editors"},
              "harness": {"foundation", "models", "data", "editors", "harness"}}


def floor(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module == "benchmark.models" or module.startswith("benchmark.models."):
        return "models"
    top = module.split(".")[0]
    return {"data": "data", "editors": "editors"}.get(top, "harness")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str) -> set[str]:
    """Every project module `source` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from benchmark import run`
    return {name for name in found if name.split(".")[0] in PACKAGES and _exists(name)}


def _exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(source: str, module: str) -> list[str]:
    own = floor(module)
    return [f"{module} ({own}) imports {target} ({floor(target)})" for target in sorted(imports(source))
            if floor(target) not in MAY_IMPORT[own]]


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_import_runs_back_up():
    found = [v for path in project_files() for v in violations(path.read_text(), module_name(path))]
    assert not found, "\n".join(found)


def test_the_check_fails_when_an_import_runs_back_up():
    assert violations("from benchmark.run import run\n", "editors.tpatcher")
    assert violations("def f():\n    from editors.base import Editor\n", "benchmark.models.base")
    assert violations("import data.facts\n", "benchmark.models.zoo")  # siblings do not import each other
    assert violations("from benchmark import loop\n", "benchmark.types")
    assert not violations("from benchmark.types import Example\n", "editors.tpatcher")


def test_no_import_cycle_between_modules():
    graph = {module_name(p): imports(p.read_text()) for p in project_files()}
    graph = {m: {t for t in targets if t in graph and t != m and not m.startswith(t + ".")}
             for m, targets in graph.items()}  # a package's __init__ importing its modules is not a cycle
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and not nxt.startswith(node + "."):
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            pytest.fail("import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]):]))


TORCH_FREE = {"benchmark.types", "benchmark.registry", "benchmark.fact_source", "benchmark.models.config",
              "editors.configs", "data.configs", "benchmark.config", "benchmark.cli"}


@pytest.mark.parametrize("module", sorted(TORCH_FREE))
def test_the_bottom_floor_and_every_config_import_neither_torch_nor_lightning(module):
    """The bottom floor, and every config with the registry filled (what `seqedit list`, `help`
    and `config` read), start without torch, Lightning or transformers."""
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "from benchmark.config import _register_all, compose; _register_all(); "
            "compose(['editor=tpatcher', 'data=facts', 'model=smollm2-135m']); "
            "print(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_floor_imports_on_its_own():
    for path in project_files():
        importlib.import_module(module_name(path))
