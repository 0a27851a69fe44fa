"""The repository's layout rules, checked so they stay true as the code grows.

A newcomer finds a module's tests next to its name (``featureinterp/records/sources.py`` ->
``tests/featureinterp/records/test_sources.py``; a package's modules -> ``test_<package>.py`` or
``tests/featureinterp/<package>/test_<module>.py``) and never has to read a file of more than
450 lines to follow one stage of the paper.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py")


def _test_files_for(module: Path) -> list[Path]:
    rel = module.relative_to(ROOT).with_suffix("")  # featureinterp/explain/tree
    tests = ROOT / "tests" / rel.parts[0]
    candidates = [tests.joinpath(*rel.parts[1:-1], f"test_{rel.parts[-1]}.py")]
    if len(rel.parts) > 2:  # a module inside a sub-package: the package's own test file counts
        candidates.append(tests.joinpath(*rel.parts[1:-2], f"test_{rel.parts[-2]}.py"))
    return candidates


@pytest.mark.parametrize("module", _modules("featureinterp"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_library_module_has_a_test_file(module: Path) -> None:
    candidates = _test_files_for(module)
    assert any(c.exists() for c in candidates), (
        f"{module.relative_to(ROOT)} has no test file: add one of "
        + ", ".join(str(c.relative_to(ROOT)) for c in candidates)
    )


@pytest.mark.parametrize(
    "module",
    _modules("featureinterp") + _modules("featureinterp_assets"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_module_over_the_line_budget(module: Path) -> None:
    lines = len(module.read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"{module.relative_to(ROOT)} has {lines} lines (> {MAX_LINES}): split it by stage "
        "into modules a newcomer can find by name"
    )


def test_library_never_imports_dagster() -> None:
    """``featureinterp/`` is the plain library; Dagster lives only in ``featureinterp_assets/``."""
    offenders = []
    for module in _modules("featureinterp") + [ROOT / "featureinterp" / "__init__.py"]:
        for node in ast.walk(ast.parse(module.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            if any(n == "dagster" or n.startswith(("dagster.", "dagster_")) for n in names):
                offenders.append(str(module.relative_to(ROOT)))
    assert not offenders, f"the library imports dagster in {sorted(set(offenders))}"


def test_tests_use_public_dagster_names() -> None:
    """Tests drive Dagster through its public API (the few private names without a public equivalent
    are imported once, in tests/helpers.py, with the reason), so an upgrade breaks them only when users'
    code would break too."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("*.py")
        if p.name not in ("test_layout.py", "helpers.py") and "dagster._" in p.read_text()
    ]
    assert not offenders, f"tests import private dagster modules: {offenders}"


def _import_graph(package: str) -> dict[str, set[str]]:
    """module -> project modules it imports, function-local and TYPE_CHECKING imports included
    (each one is an edge a reader follows)."""
    modules = {}
    for path in (ROOT / package).rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t.split(".")[0] == package and (dep := resolve(t)) and dep != name:
                    graph[name].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["featureinterp", "featureinterp_assets"])
def test_no_import_cycles_between_modules(package: str) -> None:
    """Module by module (lint-imports checks packages: pyproject.toml [tool.importlinter]): no
    module reaches itself through its imports, so every stage reads from the bottom up."""
    cycles = _cycles(_import_graph(package))
    assert not cycles, f"import cycles in {package}: {cycles}"


def test_every_stage_package_says_what_it_holds() -> None:
    """Each folder of the library opens with a docstring naming its modules (a newcomer's map)."""
    for init in sorted((ROOT / "featureinterp").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        modules = sorted(p.stem for p in init.parent.glob("*.py") if p.name != "__init__.py")
        missing = [m for m in modules if f"``{m}``" not in doc]
        assert doc and not missing, f"{init.relative_to(ROOT)}: docstring does not name {missing or 'anything'}"
