"""The import layering of the project, read from the sources (``ast``; imports inside functions included):

- ``recsys`` is the core: no module under ``recsys/`` imports ``features``, ``models`` or ``pipelines``,
  except the application layer ``recsys/cli.py`` on top of everything, which nothing imports;
- the project's modules import each other without a cycle;
- no "package.module:function" string dispatches to a project module (stages are looked up in typed
  registries, not imported by name);
- only ``recsys/tracking/`` talks to MLflow (``mlflow`` and Lightning's ``MLFlowLogger``).

Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys", "features", "models", "pipelines")
CLI = "recsys.cli"
TRACKING = "recsys.tracking"
UPPER_LAYERS = ("features", "models", "pipelines")
DISPATCH_STRING = re.compile(r"""["'](recsys|features|models|pipelines)(\.\w+)+:\w+["']""")
MLFLOW_LOGGER = "MLFlowLogger"


@dataclass(frozen=True)
class Import:
    """One import statement of a module: the imported module's dotted name and the names taken from it."""

    importer: str
    module: str
    names: tuple[str, ...]
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def project_modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of the four packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _statements(node)


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_package = project_modules()[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    tree = ast.parse(project_modules()[module].read_text(), filename=str(project_modules()[module]))
    found = []
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, (), node.lineno) for alias in node.names]
        else:
            names = tuple(alias.name for alias in node.names)
            found.append(Import(module, _absolute(module, node), names, node.lineno))
    return tuple(found)


def project_targets(item: Import) -> set[str]:
    """The project modules an import statement loads: ``from pkg import sub`` loads ``pkg.sub`` when that is
    a module, else ``pkg`` itself."""
    modules = project_modules()
    if item.module.split(".")[0] not in PACKAGES:
        return set()
    targets = {f"{item.module}.{n}" for n in item.names if f"{item.module}.{n}" in modules}
    if (item.module in modules and len(targets) < len(item.names)) or not item.names:
        targets.add(item.module)
    # `import a.b.c` of a module that does not exist (a typo) still names the deepest existing package.
    if not targets:
        parts = item.module.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts:
            targets.add(".".join(parts))
    return targets


def _where(item: Import) -> str:
    return f"{project_modules()[item.importer].relative_to(REPO)}:{item.line} imports {item.module}"


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def test_the_sources_are_found() -> None:
    modules = project_modules()
    for expected in (CLI, "recsys.stage", "recsys.paths", "pipelines.stages", "models.dlrm.train"):
        assert expected in modules
    assert all(imports_of(m) is not None for m in modules)


def test_the_core_does_not_import_the_layers_above_it() -> None:
    offending = [
        _where(item)
        for module in project_modules()
        if _in(module, "recsys") and module != CLI
        for item in imports_of(module)
        if any(_in(item.module, layer) for layer in UPPER_LAYERS)
    ]
    assert not offending, "recsys/ (the core) must not import features, models or pipelines:\n" + "\n".join(
        offending
    )


def test_nothing_imports_the_cli() -> None:
    offending = [
        _where(item)
        for module in project_modules()
        for item in imports_of(module)
        if CLI in project_targets(item) or (item.module == "recsys" and "cli" in item.names)
    ]
    assert not offending, "recsys.cli is the application layer; nothing may import it:\n" + "\n".join(
        offending
    )


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for following in sorted(graph.get(node, ())):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in on_stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return sorted(found)


def _cycle_in(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module, as ``[a, b, ..., a]`` (breadth-first: shortest)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following_frontier = []
        for node in frontier:
            for following in sorted(graph.get(node, set()) & members):
                if following == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if following not in parents:
                    parents[following] = node
                    following_frontier.append(following)
        frontier = following_frontier
    raise AssertionError(f"{component} is not strongly connected")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of modules that import each other (directly or through others)."""
    return [_cycle_in(graph, component) for component in _components(graph)]


def import_graph() -> dict[str, set[str]]:
    return {
        module: {t for item in imports_of(module) for t in project_targets(item) if t != module}
        for module in project_modules()
    }


def test_find_cycles_reports_the_modules_on_each_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"f"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"]]


def test_the_module_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    report = []
    for cycle in find_cycles(graph):
        report.append("import cycle: " + " -> ".join(cycle))
        for importer, imported in itertools.pairwise(cycle):
            report += [f"  {_where(i)}" for i in imports_of(importer) if imported in project_targets(i)]
    assert not report, "\n".join(report)


def test_no_module_function_strings_are_used_for_dispatch() -> None:
    offending = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in project_modules().values()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if DISPATCH_STRING.search(line)
    ]
    assert not offending, "dispatch by 'package.module:function' string:\n" + "\n".join(offending)


def test_only_recsys_tracking_imports_mlflow() -> None:
    offending = [
        _where(item)
        for module in project_modules()
        if not _in(module, TRACKING)
        for item in imports_of(module)
        if _in(item.module, "mlflow")
        or "mlflow" in item.module.split(".")
        or (item.module.split(".")[0] in ("lightning", "pytorch_lightning") and MLFLOW_LOGGER in item.names)
    ]
    assert not offending, "MLflow is reached only through recsys/tracking/:\n" + "\n".join(offending)
