"""streams.devtools stays out of the product: no product module imports it (the CLI mounts its
commands by name, guarded, so a product install without it still starts)."""

from __future__ import annotations

import ast
from pathlib import Path

import streams

SRC = Path(streams.__file__).resolve().parent


def _names(node: ast.AST) -> list[str]:
    """Modules an import statement names (absolute imports)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def _imports(path: Path) -> set[str]:
    return {m for node in ast.walk(ast.parse(path.read_text(), str(path))) for m in _names(node)}


def test_no_product_module_imports_devtools():
    offenders = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "devtools" or rel == Path("cli.py"):
            continue
        bad = {n for n in _imports(path) if n == "streams.devtools" or n.startswith("streams.devtools.")}
        if bad:
            offenders[str(rel)] = bad
    assert offenders == {}


def test_the_cli_mounts_devtools_only_through_its_guarded_import():
    # cli.py names streams.devtools in exactly one place: the try/except that mounts the commands
    tree = ast.parse((SRC / "cli.py").read_text())

    def devtools_imports(root: ast.AST) -> list[ast.AST]:
        return [n for n in ast.walk(root) if isinstance(n, ast.Import | ast.ImportFrom)
                and any(m.startswith("streams.devtools") for m in _names(n))]

    guarded = [n for t in ast.walk(tree) if isinstance(t, ast.Try) for n in devtools_imports(t)]
    every = devtools_imports(tree)
    assert len(guarded) == len(every) == 1
    assert any(isinstance(h.type, ast.Name) and h.type.id == "ModuleNotFoundError"
               for t in ast.walk(tree) if isinstance(t, ast.Try) for h in t.handlers)
