"""Settings from the environment: the home in the project, never in the package; MLflow's artifacts."""

from pathlib import Path

import pytest

from pipelines.storage.settings import get_settings


def test_the_default_home_lies_in_the_project_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "shop"
    (project / "dags" / "models").mkdir(parents=True)
    (project / "dags" / "models" / "sub").mkdir()
    monkeypatch.delenv("PIPELINES_HOME", raising=False)
    monkeypatch.delenv("PIPELINES_PROJECT", raising=False)
    monkeypatch.delenv("PIPELINES_SPECS_DIR", raising=False)
    monkeypatch.chdir(project / "dags" / "models" / "sub")  # anywhere inside the project
    settings = get_settings()
    assert settings.project.root == project.resolve() and settings.home == project.resolve() / ".pipelines"
    assert settings.specs_dir == project.resolve() / "dags" / "models"
    monkeypatch.setenv("PIPELINES_PROJECT", str(tmp_path / "elsewhere"))
    assert get_settings().project.root == (tmp_path / "elsewhere").resolve()
    assert get_settings().project.found_by == "PIPELINES_PROJECT"


def test_a_tracking_server_keeps_the_artifacts_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.storage.settings import get_settings

    monkeypatch.setenv("PIPELINES_HOME", str(tmp_path))
    monkeypatch.delenv("PIPELINES_MLFLOW_ARTIFACTS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert get_settings().mlflow_artifacts == tmp_path / "mlflow" / "artifacts"  # next to the SQLite store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert get_settings().mlflow_artifacts is None  # the server's --artifacts-destination
    monkeypatch.setenv("PIPELINES_MLFLOW_ARTIFACTS", str(tmp_path / "shared"))
    assert get_settings().mlflow_artifacts == tmp_path / "shared"
