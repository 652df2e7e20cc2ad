"""The package's shape: its folders are layers and every import points down (or stays in its
layer), no import cycles between its modules, no module importing another's private names, and
a core that imports neither pytest nor a backend at module level.

Imports are read from the source (``ast``), function-level ones included: a lazy import that
closes a cycle is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_mlxperf

PACKAGE = Path(pytest_mlxperf.__file__).parent
# the only modules that may import pytest: the hooks and the fixture
PYTEST_MODULES = {"pytest_mlxperf.plugin", "pytest_mlxperf.fixtures"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, list[str], bool]]:
    """(imported module, names taken from it, at module level?) for every import in a module;
    relative imports resolved, ``from package import submodule`` read as the submodule."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    is_package = MODULES[name].name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [alias.name for alias in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            for sub in submodules:
                out.append((sub, [], id(node) in top_level))
            rest = [n for n in names if f"{base}.{n}" not in MODULES]
            if rest or not submodules:
                out.append((base, rest, id(node) in top_level))
    return out


def _graph() -> dict[str, set[str]]:
    return {
        name: {mod for mod, _, _ in _imports(name) if mod in MODULES and mod != name}
        for name in MODULES
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_finds_the_package_and_its_imports() -> None:
    # guards the checks below against passing because they saw nothing
    assert {
        "pytest_mlxperf.plugin",
        "pytest_mlxperf.session",
        "pytest_mlxperf.stats.verdicts",
    } <= set(MODULES)
    assert "pytest_mlxperf.gates.judge" in _graph()["pytest_mlxperf.session"]


# The layers, bottom first: a module imports only from its own layer or one below. A module's
# layer is its folder (``pytest_mlxperf.gates.ab``: gates); the top-level modules (the pytest
# plugin and fixture, the session that orchestrates, the CLI, public re-exports) are "top".
LAYERS = (
    "host",  # the machine: fingerprint, package versions, cores, process memory
    "stats",  # metrics, verdicts on repetitions and processes, identity, canary
    "settings",  # the option table and Settings
    "measuring",  # the LoadedModel interface and records, workloads, protocol, progress
    "synth",  # synthetic models
    "backends",  # one module per backend, its worker, its model sources, smoke test
    "serving",  # servers: start, connect, measure
    "interop",  # pytest-benchmark
    "store",  # baselines, results documents, atomic files
    "gates",  # judge, cross-file comparison, A/B, bisect
    "render",  # text, Markdown, HTML, exports
    "top",
)


def layer(module: str) -> int:
    """The layer of a module (-1: the package root, which holds the version alone)."""
    if module == "pytest_mlxperf":
        return -1
    parts = module.split(".")
    folder = parts[1] if len(parts) > 2 or parts[1] in LAYERS else "top"
    return LAYERS.index(folder)


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        assert layer(name) < len(LAYERS)
    assert layer("pytest_mlxperf.session") == LAYERS.index("top")
    assert layer("pytest_mlxperf.host.machine") < layer("pytest_mlxperf.gates.ab")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_layers(name: str) -> None:
    upward = sorted(
        f"{mod} ({LAYERS[layer(mod)]})"
        for mod in _graph()[name]
        if mod.startswith("pytest_mlxperf") and layer(mod) > layer(name)
    )
    assert not upward, f"{name} ({LAYERS[layer(name)]}) imports up: {', '.join(upward)}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_modules() -> None:
    graph = _graph()
    # a package's __init__ may re-export its submodules; the submodules must not import back
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_imported_from_another_module(name: str) -> None:
    private = [
        f"{mod}.{n}"
        for mod, names, _ in _imports(name)
        if mod.startswith("pytest_mlxperf") and mod != name
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert not private, f"{name} imports private names: {', '.join(private)}"


@pytest.mark.parametrize("name", sorted(set(MODULES) - PYTEST_MODULES))
def test_core_modules_do_not_import_pytest(name: str) -> None:
    pytest_imports = [mod for mod, _, _ in _imports(name) if mod.split(".")[0] == "pytest"]
    assert not pytest_imports, f"{name} imports pytest: the core must serve the CLI too"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_backend_imported_at_module_level(name: str) -> None:
    eager = [
        mod
        for mod, _, top in _imports(name)
        if top and mod.split(".")[0] in {"mlx", "mlx_lm", "llama_cpp"}
    ]
    assert not eager, f"{name} imports {', '.join(eager)} at module level: import it lazily"
