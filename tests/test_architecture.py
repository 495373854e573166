"""The package's layers (docs/architecture.md): every import points down, and no import cycle.

Read off the source with ``ast``, counting every import statement, function-level ones included, so
a lazy import inside a function cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "gatedvae"

#: module prefix -> layer; a module may import only modules of its own layer or a lower one.
LAYERS: dict[str, int] = {
    "gatedvae": 0,  # the lazy top-level package: no import statement of its own
    "gatedvae.errors": 0,
    "gatedvae.io": 0,
    "gatedvae.config": 0,
    "gatedvae.runlock": 0,
    "gatedvae.progress": 0,
    "gatedvae.data": 1,
    "gatedvae.metrics": 1,
    "gatedvae.losses": 2,
    "gatedvae.nets": 2,
    "gatedvae.gating": 3,
    "gatedvae.models": 4,
    "gatedvae.checkpoint": 5,
    "gatedvae.run": 6,
    "gatedvae.train": 7,
    "gatedvae.evaluation": 8,
    "gatedvae.viz": 8,
    "gatedvae.evaluate": 8,
    "gatedvae.callbacks": 8,
    "gatedvae.encode": 9,
    "gatedvae.quickstart": 9,
    "gatedvae.baselines": 9,
    "gatedvae.face_study": 9,
    "gatedvae.scan": 9,
    "gatedvae.sweep": 9,
    "gatedvae.explore": 9,
    "gatedvae.bench": 10,
    "gatedvae.cli": 11,
    "gatedvae.__main__": 12,
}

#: the layers under which PyTorch must never be imported.
TORCH_FREE = (
    "gatedvae.config",
    "gatedvae.errors",
    "gatedvae.io",
    "gatedvae.runlock",
    "gatedvae.progress",
    "gatedvae.metrics",
)

MAX_LINES = 900


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import statement in module ``name`` (any depth)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node.level, node.module)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def _internal_edges() -> dict[str, set[str]]:
    """Module -> the package modules it imports, with the packages whose ``__init__`` an import
    runs on the way (importing ``a.b.c`` runs ``a.b``), except the importer's own packages."""
    edges: dict[str, set[str]] = {}
    for name in MODULES:
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        out = set()
        for target, _ in imports_of(name):
            if not target.startswith("gatedvae"):
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in MODULES and mod != name and mod not in own:
                    out.add(mod)
        edges[name] = out
    return edges


def layer_of(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"module {name} has no layer in tests/test_architecture.py LAYERS; add it"
    return LAYERS[best]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    edges = _internal_edges()
    # a function-level import (cli imports its commands lazily) and a relative one two levels up
    assert "gatedvae.train.loop" in edges["gatedvae.cli"] or any(
        m.startswith("gatedvae.train") for m in edges["gatedvae.cli"]
    )
    assert "gatedvae.errors" in edges["gatedvae.models.base"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(_internal_edges()) == []


def test_every_import_points_down_or_sideways():
    bad = []
    for name in MODULES:
        for target, line in imports_of(name):
            if not target.startswith("gatedvae") or target not in MODULES:
                continue
            if layer_of(target) > layer_of(name):
                where = f"{MODULES[name].relative_to(SRC)}:{line}"
                bad.append(f"{where} imports {target} (layer {layer_of(target)} > {layer_of(name)})")
    assert bad == []


def test_pure_layers_never_import_torch():
    bad = []
    for name in MODULES:
        if not any(name == p or name.startswith(p + ".") for p in TORCH_FREE):
            continue
        for target, line in imports_of(name):
            if target.split(".")[0] in ("torch", "torchvision"):
                bad.append(f"{MODULES[name].relative_to(SRC)}:{line} imports {target}")
    assert bad == []


@pytest.mark.parametrize("module", ["gatedvae", "gatedvae.config", "gatedvae.metrics"])
def test_importing_a_pure_layer_loads_no_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"import {module} loaded torch: {proc.stderr[-500:]}"


def test_documented_top_level_imports_work():
    code = (
        "import gatedvae\n"
        "from gatedvae import load_run, build_dataset, DataConfig, Config, load_config, TrainedRun, FactorSpace\n"
        "assert set(gatedvae.__all__) <= set(dir(gatedvae))\n"
        "for name in gatedvae.__all__:\n"
        "    getattr(gatedvae, name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1000:]


def test_no_module_is_longer_than_the_limit():
    long = {
        str(p.relative_to(SRC)): n
        for p in MODULES.values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
