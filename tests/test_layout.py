"""The repository's layout rules, checked so they stay true as the code grows.

A newcomer finds a module's tests next to its name (``featureinterp/records.py`` ->
``tests/featureinterp/test_records.py``; a package's modules -> ``test_<package>.py`` or
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
