"""The package's imports run one way (docs/architecture.md, "Layout"): no module reaches back to
one that imports it, at module level or inside a function (a lazy import is still an edge)."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def project_modules() -> dict[str, Path]:
    """Dotted name -> file for every module installed as redcompile.* (package-dir mapping)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = config["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in folders.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imported(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `path` imports anywhere (typing-only blocks excluded)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    modules = project_modules()
    graph = {name: imported(path, modules) - {name} for name, path in modules.items()}
    # a package's own __init__ importing its submodules is not a cycle worth reporting
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Layers as docs/architecture.md draws them: a module may import its own layer and those below.
FOUNDATION = {
    "redcompile",
    "redcompile.config",
    "redcompile.errors",
    "redcompile.io_contract",
    "redcompile.onnx_graphs",
}


def layer_of(module: str) -> int:
    """0 the torch-free foundation (settings, errors, I/O contract), 1 ops and CUDA sources,
    2 models, 3 passes, 4 compiler, runtimes, verification, benchmarking, training, 5 the
    API, 6 the CLI."""
    if module in FOUNDATION:
        return 0
    for prefix, layer in (
        ("redcompile.ops", 1),
        ("redcompile.cuda", 1),
        ("redcompile.models", 2),
        ("redcompile.passes", 3),
        ("redcompile.api", 5),
        ("redcompile.cli", 6),  # cli and cli_options
    ):
        if module == prefix or module.startswith(prefix + ".") or module.startswith(prefix + "_"):
            return layer
    return 4


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a module to a higher layer, as 'a -> b'."""
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]


def test_imports_run_down_the_layers():
    modules = project_modules()
    graph = {name: imported(path, modules) - {name} for name, path in modules.items()}
    assert back_edges(graph) == []


def test_a_back_edge_is_found():
    # the edge the compiler had when it built a Generator through the API to take its module
    graph = {"redcompile.compiler": {"redcompile.api"}, "redcompile.api": set()}
    assert back_edges(graph) == ["redcompile.compiler -> redcompile.api"]
    assert back_edges({"redcompile.models.step": {"redcompile.passes.base"}}) != []
