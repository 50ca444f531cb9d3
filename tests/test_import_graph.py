"""The floors import downwards only: wiring -> assets -> resources/checks/retry -> data layer -> models.

Reads every module's source (imports inside functions included) with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIRING_TOP = (
    "convrec_dagster.definitions",
    "convrec_dagster.jobs",
    "convrec_dagster.schedules",
    "convrec_dagster.sensors",
)
ASSET_WIRING = ("convrec_dagster.resources", "convrec_dagster.checks", "convrec_dagster.retry")
DAGSTER = ("dagster", "dagster_duckdb", "dagster_webserver")

# package (as a folder under the repository root) -> module prefixes it must never import
FORBIDDEN = {
    "models": (*DAGSTER, "duckdb", "convrec_dagster", "assets"),
    "convrec_dagster/data": (*DAGSTER, *WIRING_TOP, *ASSET_WIRING, "assets"),
    "assets": WIRING_TOP,
    "convrec_dagster/resources.py": (*WIRING_TOP, "assets"),
    "convrec_dagster/checks.py": (*WIRING_TOP, "assets"),
    "convrec_dagster/retry.py": (*WIRING_TOP, "assets"),
}


def imported_modules(source: str) -> set[str]:
    """Every module named by an import statement anywhere in ``source`` (absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations(source: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported_modules(source) for f in forbidden if m == f or m.startswith(f + "."))


def _files(target: str) -> list[Path]:
    path = ROOT / target
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("target", sorted(FORBIDDEN))
def test_no_import_runs_back_up(target: str) -> None:
    files = _files(target)
    assert files, f"{target} holds no Python file: the floor plan in this test is out of date"
    bad = {
        str(f.relative_to(ROOT)): v
        for f in files
        if (v := violations(f.read_text(encoding="utf-8"), FORBIDDEN[target]))
    }
    assert not bad, f"imports that run back up the floors (see docs/ARCHITECTURE.md): {bad}"


def test_the_checker_sees_nested_and_from_imports() -> None:
    source = "import numpy\ndef f():\n    from dagster import asset\n    import duckdb.typing\nfrom convrec_dagster import jobs\n"
    assert violations(source, FORBIDDEN["models"]) == [
        "convrec_dagster",
        "convrec_dagster.jobs",
        "dagster",
        "dagster.asset",
        "duckdb.typing",
    ]
    assert violations(source, FORBIDDEN["assets"]) == ["convrec_dagster.jobs"]
    assert violations("import dagsterish\n", DAGSTER) == []
