"""A project is found through PIPELINES_PROJECT or the current directory; a spec finds its suite in its own."""

import json
from pathlib import Path

import pytest

from pipelines.core.errors import SpecError
from pipelines.core.project import find_project, project_of_spec
from pipelines.core.spec import load_spec
from tests import REPO_ROOT


def make_project(root: Path, suite_columns: list[str] | None = None) -> Path:
    """A copy of the example project's demo_churn model under `root`; its suite optionally narrowed."""
    (root / "dags" / "models").mkdir(parents=True)
    (root / "expectations").mkdir()
    spec = root / "dags" / "models" / "demo_churn.yaml"
    spec.write_text((REPO_ROOT / "dags" / "models" / "demo_churn.yaml").read_text())
    suite = (REPO_ROOT / "expectations" / "demo_churn.json").read_text()
    if suite_columns is not None:
        table = {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": suite_columns}}
        suite = json.dumps({"name": "demo_churn", "expectations": [table]})
    (root / "expectations" / "demo_churn.json").write_text(suite)
    return spec


def test_the_project_is_the_variable_else_the_folder_around_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINES_PROJECT", raising=False)
    make_project(tmp_path / "shop")
    assert find_project(tmp_path / "shop" / "dags").root == (tmp_path / "shop").resolve()
    assert find_project(tmp_path / "shop" / "dags").found_by.startswith("a folder above")
    outside = find_project(tmp_path)  # no dags/models/ here or above: the folder itself, saying so
    assert outside.root == tmp_path.resolve() and "no dags/models/" in outside.found_by
    monkeypatch.setenv("PIPELINES_PROJECT", str(tmp_path / "other"))
    assert find_project(tmp_path / "shop").root == (tmp_path / "other").resolve()


def test_a_spec_checks_and_keeps_the_suite_of_its_own_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PIPELINES_PROJECT names another project (here the repository's): the spec's own suite still rules."""
    monkeypatch.setenv("PIPELINES_PROJECT", str(REPO_ROOT))
    spec_path = make_project(tmp_path / "shop")
    assert project_of_spec(spec_path).root == (tmp_path / "shop").resolve()  # type: ignore[union-attr]
    spec = load_spec(spec_path)
    assert spec.suite_path == (tmp_path / "shop" / "expectations" / "demo_churn.json").resolve()
    assert spec.model_copy(update={"description": "copied"}).suite_path == spec.suite_path  # kept by copies

    narrow = make_project(tmp_path / "narrow", suite_columns=["customer_id", "event_time"])
    with pytest.raises(SpecError, match=r"not among the columns of suite 'demo_churn' \(.*narrow/expectations"):
        load_spec(narrow)  # its own suite, which lacks the features, though the repository's has them
