"""The house rules of the layout, checked on the source (no I/O beyond reading it).

- No import cycle among evstate's modules, counting imports inside functions and under
  ``TYPE_CHECKING`` too.
- Each I/O or codec library is imported in one room only: aiokafka in ``evstate/kafka/``,
  rocksdict in ``evstate/view/``, fastavro in ``events.py``, cryptography in ``secrets.py``.
- No module over 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "evstate"
ROOMS = {
    "aiokafka": "evstate.kafka",
    "rocksdict": "evstate.view",
    "fastavro": "evstate.events",
    "cryptography": "evstate.secrets",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in MODULES else node.module)
    return names


# Parsed once, at collection: CPython 3.11's AST constructor can fail with "recursion depth
# mismatch" once an earlier test in the process has hit a RecursionError (the deeply nested
# input tests do, on purpose).
IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _graph() -> dict[str, set[str]]:
    return {name: {i for i in IMPORTS[name] if i in MODULES} for name in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any."""
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return [*trail[trail.index(node) :], node]
        if node in done:
            return None
        for dep in sorted(graph[node]):
            found = visit(dep, [*trail, node])
            if found:
                return found
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_one_that_imports_it_back() -> None:
    # A package imports its modules; a module importing its own package's __init__
    # is not a cycle we mean (the package imports only modules below it).
    graph = _graph()
    for name in graph:
        package = name.rsplit(".", 1)[0]
        graph[name].discard(package if name != package else "")
    assert _cycle(graph) is None


def test_each_library_is_imported_in_one_room() -> None:
    for library, room in ROOMS.items():
        importers = {
            name
            for name in MODULES
            if any(i == library or i.startswith(f"{library}.") for i in IMPORTS[name])
        }
        outside = {name for name in importers if name != room and not name.startswith(room + ".")}
        assert importers, f"nothing imports {library}"
        assert not outside, f"{library} is imported outside {room}: {sorted(outside)}"


def test_modules_stay_small() -> None:
    big = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text().splitlines())) > 600
    }
    assert not big, big
