"""Dependencies point down (DESIGN.md §2): checked on the source, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import edgeadapt

SRC = Path(edgeadapt.__file__).parent


def _imports() -> list[tuple[str, str, list[str], int]]:
    """(importing module, imported module, imported names, line) for every edgeadapt import."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        module = ".".join(("edgeadapt", *parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeadapt"):
                out.append((module, node.module, [a.name for a in node.names], node.lineno))
            elif isinstance(node, ast.Import):
                out += [(module, a.name, [], node.lineno) for a in node.names
                        if a.name.startswith("edgeadapt")]
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_only_recipes_and_the_cli_import_recipes():
    upward = [(m, t, line) for m, t, _, line in _imports()
              if _package(t) == "recipes" and _package(m) not in ("recipes", "cli")]
    assert not upward, f"stages import from recipes/: {upward}"


def test_no_private_name_crosses_a_package():
    crossing = [(m, t, names, line) for m, t, names, line in _imports()
                if _package(m) != _package(t) and any(_private(n) for n in names)]
    crossing += [(m, t, [], line) for m, t, _, line in _imports()
                 if _package(m) != _package(t) and any(_private(p) for p in t.split(".")[1:])]
    assert not crossing, f"private names imported across packages: {crossing}"


def test_the_dataset_registry_does_not_import_the_builtin_datasets():
    back = [(m, t, line) for m, t, names, line in _imports()
            if m == "edgeadapt.data.registry" and (t == "edgeadapt.data.builtin" or "builtin" in names)]
    assert not back, f"data.registry imports data.builtin (an import cycle): {back}"
