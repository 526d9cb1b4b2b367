"""The layers of DESIGN.md hold: every import in src/togi points down, and no modules import each other in a circle.

Every import counts, wherever it is written: at the top of a module, inside a function (a lazy import is still a
dependency, only a later one) or under ``TYPE_CHECKING``. The imports are read from the source with ``ast``;
nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "togi"

# Bottom to top. A module may import its own layer and the layers below it, never one above it.
LAYERS: list[tuple[str, ...]] = [
    ("base",),  # togi.paths, togi.errors, togi.version, togi.process_tree: what every layer may use; they import nothing of togi
    ("data",),  # formats, validation, templates, data generators that take a model as a plain callable
    ("models",),  # resolving, loading and running models (generation, streaming, ChatModel)
    ("config",),  # the recipe schema: it names the embedded models and the data formats
    ("runs",),  # the run directory (togi.runs): written by training, read by evaluate, export and serve
    ("train", "evaluate", "export"),  # siblings, see SIBLINGS
    ("serve",),
    ("cli",),  # togi.cli and ``python -m togi``
    ("api",),  # the package root (togi/__init__.py): the Python API over the library; nothing in togi imports it
]
# Imports allowed between siblings of one rank, as (importer, imported). None: train, evaluate and export each build
# on the layers below them only; what two of them need (loading a run's trained model) goes down to runs or models.
SIBLINGS: set[tuple[str, str]] = set()
# There is no list of excused imports: code that needs one moves to the layer it belongs in.

RANK = {layer: rank for rank, layers in enumerate(LAYERS) for layer in layers}
# Top-level modules that are not a layer of their own (togi.config and togi.runs are).
TOP_LEVEL = {"paths": "base", "errors": "base", "version": "base", "process_tree": "base", "__main__": "cli"}


def layer_of(module: str) -> str:
    """The layer of a module of togi, by its name: the package root, its subpackage or top-level module, or TOP_LEVEL."""
    parts = module.split(".")
    if parts == ["togi"]:
        return "api"
    if parts[1] in TOP_LEVEL:
        return TOP_LEVEL[parts[1]]
    if parts[1] in RANK and parts[1] not in ("base", "api"):
        return parts[1]
    raise AssertionError(f"{module} has no layer: add it to TOP_LEVEL in {Path(__file__).name}")


def module_name(path: Path, source: Path = SOURCE) -> str:
    parts = list(path.relative_to(source).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = SOURCE / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@dataclass(frozen=True)
class Import:
    importer: str
    path: Path
    line: int
    imported: str  # the module of togi the statement loads: ``from togi.x import y`` loads togi.x.y when that is a module, else togi.x

    def __str__(self) -> str:
        return f"{self.path.relative_to(SOURCE.parent) if self.path.is_relative_to(SOURCE) else self.path}:{self.line} imports {self.imported}"


def imports_of(path: Path, source: Path = SOURCE) -> Iterator[Import]:
    """The imports of togi's modules in the module at ``path`` under the source root ``source``; whether a name is a
    submodule is looked up in togi's own source."""
    importer = module_name(path, source)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "togi":
                    yield Import(importer, path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, up level - 1 packages
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "togi":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield Import(importer, path, node.lineno, submodule if is_module(submodule) else source)


def all_imports() -> list[Import]:
    return [found for path in sorted(PACKAGE.rglob("*.py")) for found in imports_of(path)]


def against_the_layers(found: Import) -> str | None:
    """Why an import goes against the layers, or None when it does not."""
    importer, imported = layer_of(found.importer), layer_of(found.imported)
    if RANK[imported] > RANK[importer]:
        return f"{importer} imports {imported}, a layer above it"
    if RANK[imported] == RANK[importer] and imported != importer and (importer, imported) not in SIBLINGS:
        return f"{importer} imports its sibling {imported}"
    return None


def layer_graph() -> dict[str, set[str]]:
    """Layer -> the other layers its modules import (shown when the test fails, and in the issue's closing note)."""
    graph: dict[str, set[str]] = {layer: set() for layer in RANK}
    for found in all_imports():
        importer, imported = layer_of(found.importer), layer_of(found.imported)
        if imported != importer:
            graph[importer].add(imported)
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges.get(node, ()):
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


def test_no_import_points_up_the_layers():
    wrong = [f"{found}: {reason}" for found in all_imports() if (reason := against_the_layers(found))]
    graph = "\n".join(f"  {layer} -> {', '.join(sorted(targets, key=RANK.get)) or '-'}" for layer, targets in layer_graph().items())
    assert not wrong, "imports against the layers of DESIGN.md:\n  " + "\n  ".join(wrong) + "\nlayer graph now:\n" + graph


def test_no_modules_import_each_other_in_a_circle():
    imports = all_imports()
    edges: dict[str, set[str]] = {}
    for found in imports:
        edges.setdefault(found.importer, set()).add(found.imported)
    circles = cycles(edges)
    where = {(found.importer, found.imported): found for found in imports}
    lines = []
    for circle in circles:
        members = set(circle)
        lines.append(" <-> ".join(circle) + ":\n    " + "\n    ".join(
            str(where[(importer, imported)]) for importer in circle for imported in sorted(edges[importer] & members)))
    assert not circles, "modules that import each other:\n  " + "\n  ".join(lines)


def test_the_checker_sees_lazy_relative_and_type_checking_imports(tmp_path):
    """The test above can fail: a module that imports upward in each way the package's code does is caught."""
    module = tmp_path / "togi" / "data" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("from typing import TYPE_CHECKING\n"
                      "from . import examples\n"
                      "if TYPE_CHECKING:\n    from togi.models.resolve import ModelSource\n"
                      "def later():\n    import togi.serve.app\n    from ..train import sft\n", encoding="utf-8")
    found = sorted((item.line, item.imported) for item in imports_of(module, tmp_path))
    assert found == [(2, "togi.data.examples"), (4, "togi.models.resolve"), (6, "togi.serve.app"), (7, "togi.train.sft")]
    layers = [layer_of(imported) for _, imported in found]
    assert layers == ["data", "models", "serve", "train"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

