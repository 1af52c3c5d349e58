"""The import graph of app/, read from the source: what may import what.

Nothing under app/ imports relay/, scripts/, bench/ or tests/ (they build on app/, not
the other way round); the modules at app/'s top level that the feature folders build on
import no feature folder, so that a feature changes without moving its base; and no two
feature folders reach each other, so that the features stand in layers, each built on
those below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
OUTSIDE = frozenset({"relay", "scripts", "bench", "tests"})
FEATURES = frozenset(path.parent.name for path in APP.glob("*/__init__.py"))
# The entry point and the app factory assemble the features; nothing builds on them.
ASSEMBLERS = frozenset({"app.main", "app.__main__"})
# Pairs that break the rules today, each to be removed by a change of its own: an
# (importer, package) upward import, or a (package, package) cycle of feature folders.
# Each is a strict xfail below, so it fails once the pair is gone, until it is struck
# from this list.
KNOWN = {
    ("app.approvals", "app.inbound"): "inbound records its unreadable deliveries in "
    "approvals' processed_events, whose rows approvals writes from inbound's events",
}


def _module(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The modules `path` imports, as written (app/ uses absolute imports only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}: a relative import"
            # `from app.inbound import intake` names a module too: counted as app.inbound.
            found.add(node.module)
    return found


GRAPH = {_module(path): _imports(path) for path in sorted(APP.rglob("*.py"))}


def _package(module: str) -> str | None:
    """The folder a module counts against: outside app/, or a feature folder of app/."""
    parts = module.split(".")
    if parts[0] in OUTSIDE:
        return parts[0]
    if parts[0] == "app" and len(parts) > 1 and parts[1] in FEATURES:
        return f"app.{parts[1]}"
    return None


# The bases: every module at app/'s top level but the assemblers. What serves one
# concept (a controller, say) lives in a feature folder, not beside the bases.
BASES = frozenset(module for module in GRAPH if module.count(".") == 1 and module not in ASSEMBLERS)


def _violations() -> set[tuple[str, str]]:
    found = set()
    for importer, imports in GRAPH.items():
        for package in filter(None, map(_package, imports)):
            if package.split(".")[0] in OUTSIDE or importer in BASES:
                found.add((importer, package))
    return found


# Which feature folders each one imports, its own left out.
FEATURE_GRAPH = {
    f"app.{feature}": {
        package
        for importer, imports in GRAPH.items()
        if _package(importer) == f"app.{feature}"
        for package in map(_package, imports)
        if package and package.startswith("app.") and package != f"app.{feature}"
    }
    for feature in FEATURES
}


def _reaches(start: str) -> set[str]:
    """The feature folders `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for package in FEATURE_GRAPH[todo.pop()] - seen:
            seen.add(package)
            todo.append(package)
    return seen


def _cycles() -> set[tuple[str, str]]:
    """Pairs of feature folders that reach each other, each pair named once in order."""
    return {
        (first, second)
        for first in FEATURE_GRAPH
        for second in _reaches(first)
        if first < second and first in _reaches(second)
    }


def test_the_walk_sees_the_graph() -> None:
    """The checks below pass by finding nothing; this one shows that they can find."""
    assert {"markets", "approvals", "inbound", "webhooks"} <= FEATURES
    assert "app.unit_of_work" in GRAPH["app.markets.service"]
    # Each use case binds its repositories to the transaction itself.
    assert "app.markets.repository" in GRAPH["app.markets.service"]
    assert {"app.settings", "app.errors", "app.db", "app.openapi", "app.unit_of_work"} <= BASES
    assert "app.main" not in BASES
    assert "app.markets" in FEATURE_GRAPH["app.approvals"]
    assert "app.markets" in _reaches("app.webhooks")  # through app.inbound


def test_no_upward_import_beyond_the_known_ones() -> None:
    assert sorted(_violations() - KNOWN.keys()) == []


def test_no_feature_folders_import_each_other_beyond_the_known_ones() -> None:
    assert sorted(_cycles() - KNOWN.keys()) == []


@pytest.mark.parametrize(
    ("importer", "package"),
    [
        pytest.param(*pair, marks=pytest.mark.xfail(strict=True, reason=reason))
        for pair, reason in KNOWN.items()
    ],
)
def test_a_known_break_is_gone(importer: str, package: str) -> None:
    assert (importer, package) not in _violations() | _cycles(), f"{importer} -> {package}"
