"""The package's role folders are stacked: a module imports only from its own floor or below.

core (spec, intervals, features, metrics, errors: no I/O) < storage < stages < views < airflow < dev
< the CLI. Only pipelines/airflow imports Airflow (dev and the CLI reach it through that package).
Checked over every import of every module, function-level ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests import REPO_ROOT

PACKAGE = REPO_ROOT / "pipelines"
FLOORS = ["core", "storage", "stages", "views", "airflow", "dev", "cli"]


def floor_of(module: str) -> int | None:
    """The floor of a `pipelines.` module name; None for the package itself."""
    parts = module.split(".")
    if parts[0] != "pipelines" or len(parts) < 2:
        return None
    return FLOORS.index(parts[1])


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts or p.name != "env.py")


def test_every_module_lies_in_a_role_folder() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "cli.py"}]
    assert loose == [], f"modules outside the role folders {FLOORS[:-1]}: {loose}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(FLOORS[:-1])


def upward_imports(path: Path, module: str) -> list[str]:
    """The imports of the module `module` (read from `path`) that reach a floor above its own."""
    own = floor_of(module)
    if own is None:
        return []
    return [
        f"{module}:{line} ({FLOORS[own]}) imports {imported}"
        for line, imported in imports_of(path)
        if (floor := floor_of(imported)) is not None and floor > own
    ]


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    assert [found for path in modules() for found in upward_imports(path, module_name(path))] == []


def test_only_the_airflow_folder_imports_airflow() -> None:
    outside = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {imported}"
        for path in modules()
        if "airflow" not in path.relative_to(PACKAGE).parts[:1]
        for line, imported in imports_of(path)
        if imported == "airflow" or imported.startswith("airflow.")
    ]
    assert outside == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The graph check itself can fail: a core module importing a stage, inside a function, is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from pipelines.core.errors import SpecError\n\n\ndef f():\n    from pipelines.stages.train import train_model\n"
    )
    assert upward_imports(bad, "pipelines.core.bad") == ["pipelines.core.bad:5 (core) imports pipelines.stages.train"]
    assert upward_imports(bad, "pipelines.dev.bad") == []  # dev may import stages


def test_every_error_class_lives_in_core_errors() -> None:
    """One error model: a class raised on purpose derives from core/errors.py's classes and lives there."""
    elsewhere = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno} class {node.name}"
        for path in modules()
        if path != PACKAGE / "core" / "errors.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(isinstance(base, ast.Name) and base.id.endswith("Error") for base in node.bases)
    ]
    assert elsewhere == []
