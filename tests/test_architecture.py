"""The shape of the house (docs/architecture.md): packages in layers with one direction
of imports, no import cycle, HQQ behind the quantizer seam, short modules, a flat root
of at most 10 modules, and registries the command line reads without torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autoq"

# Lowest first: a module may import its own layer and the layers below it, never above.
LAYERS = [
    {"autoq.errors", "autoq.io", "autoq.progress", "autoq.registry", "autoq.metrics"},
    {"autoq.quant"},
    {"autoq.plan", "autoq.study", "autoq.serve"},
    {"autoq.models"},
    {"autoq.tasks"},
    {"autoq.pipeline", "autoq.api"},
    {"autoq.search"},
    {"autoq.report"},
    {"autoq.cli"},
    {"autoq"},                      # the package itself (autoq.load / autoq.quantize, lazily)
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (annotations only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every autoq module `name` imports when it runs, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import submodule` imports the submodule; `from mod import name`, mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer_of(name: str) -> int:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        for i, layer in enumerate(LAYERS):
            if ".".join(parts[:n]) in layer:
                return i
    raise AssertionError(f"{name} is in no layer of tests/test_architecture.py: add it")


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)


def test_imports_go_down_the_layers_only():
    """(The package itself, `autoq`, runs first whenever any module is imported, so
    reading its __version__ is no upward import.)"""
    wrong = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
             for a, targets in graph().items() for b in sorted(targets)
             if b != "autoq" and layer_of(b) > layer_of(a)]
    assert not wrong, "\n".join(wrong)


def test_nothing_outside_the_cli_imports_it():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if b.startswith("autoq.cli") and not a.startswith("autoq.cli")]
    assert not wrong, "\n".join(wrong)


def test_hqq_is_known_only_behind_the_quantizer_seam():
    pattern = re.compile(r"^\s*(import hqq|from hqq)|HQQLinear", re.M)
    found = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert found and all(f.startswith("autoq/quant/") for f in found), found


def test_a_flat_root_and_short_modules():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 10, root
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_registries_the_cli_reads_import_no_torch():
    code = ("import sys, autoq.cli, autoq.quant, autoq.serve, autoq.search, autoq.tasks, "
            "autoq.models.kinds, autoq.metrics\n"
            "from autoq.quant import METHODS, LayerConfig\n"
            "METHODS.get('hqq').problem(LayerConfig(4, 64), 576, 1536)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'timm', 'optuna', 'hqq') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
