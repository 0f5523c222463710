"""The package's shape: no import cycle between its modules, the format below everything that reads
or writes it, the read side apart from the write side, and the card template shipped as package
data identical to the top-level ``dataset_card/`` copy."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import vindex_hub

PACKAGE_ROOT = Path(vindex_hub.__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


def _modules() -> dict[str, Path]:
    out = {}
    for info in pkgutil.walk_packages([str(PACKAGE_ROOT)], "vindex_hub."):
        spec = importlib.util.find_spec(info.name)
        out[info.name] = Path(spec.origin)
    out["vindex_hub"] = PACKAGE_ROOT / "__init__.py"
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _runtime_nodes(tree: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.If)
                and getattr(child.test, "id", getattr(child.test, "attr", None)) == "TYPE_CHECKING"
            ):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every vindex_hub module each module imports, at any depth of its code (function-level
    imports included: hiding a cycle inside a function does not remove it). Imports under
    ``if TYPE_CHECKING:`` are annotations only and are left out."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve(module, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def _without_package_inits(
    graph: dict[str, set[str]], modules: dict[str, Path]
) -> dict[str, set[str]]:
    """Edges into a package's ``__init__`` (a re-export) are not dependencies on its submodules."""
    return {
        m: {t for t in targets if modules[t].name != "__init__.py" or t == "vindex_hub.arch"}
        for m, targets in graph.items()
        if modules[m].name != "__init__.py"
    }


def test_every_module_imports():
    for module in _modules():
        if not module.endswith("__main__"):
            importlib.import_module(module)


def test_no_import_cycle():
    modules = _modules()
    graph = _without_package_inits(_imports(modules), modules)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


# Which parts of the package each part may import (besides itself and the leaf utilities).
LEAVES = {
    "vindex_hub",
    "vindex_hub.errors",
    "vindex_hub.fsutil",
    "vindex_hub.checksums",
    "vindex_hub.compat",
    "vindex_hub.safetext",
}
MAY_IMPORT = {
    "vindex_hub.format": set(),
    "vindex_hub.numerics": {"vindex_hub.format"},
    "vindex_hub.hub": set(),
    # numerics is pure math that imports only format: the read side uses it (Vindex.overlap) so
    # that every formula has one home; it still never imports the write side.
    "vindex_hub.load": {"vindex_hub.format", "vindex_hub.hub", "vindex_hub.numerics"},
    "vindex_hub.writers": {"vindex_hub.format", "vindex_hub.numerics", "vindex_hub.results"},
}


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_format_the_read_side_and_the_write_side_keep_their_direction():
    modules = _modules()
    graph = _imports(modules)
    wrong = []
    for module, targets in sorted(graph.items()):
        allowed = MAY_IMPORT.get(_part(module))
        if allowed is None:
            continue
        for target in sorted(targets):
            if target in LEAVES or _part(target) == _part(module) or _part(target) in allowed:
                continue
            wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_card_template_ships_in_the_package_and_matches_dataset_card():
    from vindex_hub.writers.card import TEMPLATE_DIR, TEMPLATE_FILE

    packaged = TEMPLATE_DIR / TEMPLATE_FILE
    assert packaged.is_file() and not packaged.is_symlink()
    top_level = REPO_ROOT / "dataset_card" / TEMPLATE_FILE
    assert top_level.read_bytes() == packaged.read_bytes(), (
        f"{top_level} and {packaged} differ: edit the packaged one and copy it over "
        "(python scripts/sync_card_template.py)"
    )
