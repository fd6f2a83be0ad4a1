"""The layout's rules, checked on the source itself (issue 13): data reads one way,
schemas → config → privacy/state → sdk/topics → processors → pipeline/sinks → worker/CLI, with
dev tooling on top and never imported by the product; only ``streams.worker`` touches faust;
no module imports another module's private name.

Every import statement is read with :mod:`ast`, including imports inside functions (the CLI
imports lazily), so a rule cannot be dodged by moving an import into a function body.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: layer of each module prefix (longest prefix wins); a module may import only lower layers, or
#: modules of its own package (same prefix)
LAYERS: dict[str, int] = {
    "schemas": 0,
    "streams.errors": 1,
    "streams.config": 2,
    "streams.privacy": 3,
    "streams.signing": 3,
    "streams.state": 3,
    "streams.sdk": 4,
    "streams.topics": 4,
    "streams.processors": 5,
    "streams.pipeline": 6,
    "streams.sinks": 6,
    "streams.telemetry": 6,
    "streams.readapi": 6,
    "streams.evalset": 7,
    "streams.otlp": 7,
    "streams.replay": 7,
    "streams.report": 8,
    "streams.worker": 8,
    "streams.cli": 9,
    "streams.devtools": 10,
}
#: third-party packages only the worker may import (every faust internal is touched there)
WORKER_ONLY = ("faust", "mode")


@dataclass(frozen=True)
class Import:
    """One imported name: ``importer`` (dotted module), ``target`` (dotted module), ``names``
    (imported names for ``from`` imports, empty for ``import x``), ``line`` (1-based)."""

    importer: str
    target: str
    names: tuple[str, ...]
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> list[Import]:
    found: list[Import] = []
    for path in sorted(SRC.rglob("*.py")):
        mod = _module_name(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [Import(mod, a.name, (), node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against the importer's package
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append(Import(mod, base, tuple(a.name for a in node.names), node.lineno))
    return found


def _layer(module: str) -> tuple[str, int] | None:
    best = None
    for prefix, rank in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rank)
    return best


def layer_violations(imports: list[Import]) -> list[str]:
    """Imports that point up (or sideways into another package of the same layer)."""
    wrong = []
    for i in imports:
        src, dst = _layer(i.importer), _layer(i.target)
        if src is None or dst is None or src[0] == dst[0]:
            continue
        if dst[1] >= src[1]:
            wrong.append(f"{i.importer}:{i.line} imports {i.target} (layer {dst[1]} >= {src[1]})")
    return wrong


def devtools_violations(imports: list[Import]) -> list[str]:
    """Product modules importing ``streams.devtools``."""
    return [f"{i.importer}:{i.line} imports {i.target}" for i in imports
            if i.target.startswith("streams.devtools") and not i.importer.startswith("streams.devtools")]


def worker_only_violations(imports: list[Import]) -> list[str]:
    """Modules outside ``streams.worker`` importing faust or mode."""
    return [f"{i.importer}:{i.line} imports {i.target}" for i in imports
            if any(i.target == p or i.target.startswith(p + ".") for p in WORKER_ONLY)
            and not i.importer.startswith("streams.worker")]


def private_violations(imports: list[Import]) -> list[str]:
    """``from streams.x import _name``: another module's private name (ruff's SLF001 covers
    ``obj._name`` attribute access, not this)."""
    return [f"{i.importer}:{i.line} imports {n} from {i.target}" for i in imports for n in i.names
            if n.startswith("_") and not n.startswith("__") and _layer(i.target) is not None
            and i.target != i.importer]


IMPORTS = _imports()


def test_the_source_tree_is_read_and_every_module_has_a_layer() -> None:
    assert any(i.importer.startswith("streams.processors") for i in IMPORTS)
    unplaced = sorted({i.importer for i in IMPORTS if _layer(i.importer) is None} - {"streams"})
    assert not unplaced, f"modules with no layer in LAYERS: {unplaced}"


@pytest.mark.parametrize("check", [layer_violations, devtools_violations, worker_only_violations,
                                   private_violations])
def test_the_product_keeps_the_rule(check) -> None:
    wrong = check(IMPORTS)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("check", "bad"), [
    (layer_violations, Import("streams.processors.drift.engine", "streams.worker.app", ("run_worker",), 1)),
    (layer_violations, Import("streams.sinks.clickhouse", "streams.pipeline", ("Pipeline",), 1)),
    (layer_violations, Import("schemas.codec", "streams.config", ("Settings",), 1)),
    (devtools_violations, Import("streams.cli", "streams.devtools.bench", ("run",), 1)),
    (worker_only_violations, Import("streams.sinks.clickhouse", "faust", (), 1)),
    (worker_only_violations, Import("streams.pipeline", "mode.utils", ("x",), 1)),
    (private_violations, Import("streams.devtools.chaos", "streams.processors.incidents", ("_overlap",), 1)),
])
def test_each_check_reports_a_planted_violation(check, bad: Import) -> None:
    assert check([bad]), f"{check.__name__} missed {bad}"
