"""The house rules of the code's layout (issue 22), checked on the source itself.

- No module in ``services/``, ``shared/`` or ``churnwatch/`` is longer than
  ``MAX_LINES``: a module a reader can take in at one sitting.
- No import cycle among the project's modules, counting every import: at the
  top, inside a function, or for type checking only (a cycle hidden in a
  function is still two modules that cannot be understood one before the other).
- The layering: nothing in ``shared/`` imports a service or the tools; no
  service imports ``churnwatch`` or ``bench``; no service imports another one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("services", "shared", "churnwatch", "bench", "migrations")
LIMITED = ("services", "shared", "churnwatch")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    """Every project module by dotted name (a package by its ``__init__``)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The project modules ``module`` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name``
            # imports mod.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: set(_imported(module, path, known)) for module, path in known.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None (depth-first search)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            # A package's own submodule importing the package (its __init__ re-exports
            # names from it) is how a package is built, not a cycle between two jobs.
            if child in on_path and not (node.startswith(child + ".")):
                return [*path[path.index(child) :], child]
            if child not in done and child not in on_path:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
                on_path.add(child)
    return None


def test_no_module_is_longer_than_a_sitting() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for module, path in _modules().items()
        if module.split(".")[0] in LIMITED
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_import_cycle() -> None:
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The instrument above must be able to fail."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_layers_import_downwards_only() -> None:
    wrong = []
    for module, imports in _graph().items():
        top = module.split(".")
        for target in imports:
            there = target.split(".")
            if top[0] == "shared" and there[0] != "shared":
                wrong.append((module, target))
            if top[0] == "services" and there[0] in ("churnwatch", "bench", "migrations"):
                wrong.append((module, target))
            if (
                top[0] == "services"
                and there[0] == "services"
                and len(top) > 1
                and len(there) > 1
                and top[1] != there[1]
            ):
                wrong.append((module, target))
    assert wrong == []
