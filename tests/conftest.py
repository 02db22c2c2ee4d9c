"""Every test session gets its own pipelines home (and so its own Airflow, MLflow, lake and tables).

The environment is set here, at import time, because Airflow reads its configuration when it is
first imported.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SESSION_HOME = Path(tempfile.mkdtemp(prefix="pipelines-test-"))
os.environ["PIPELINES_HOME"] = str(SESSION_HOME)
os.environ["PIPELINES_TASK_RETRIES"] = "0"
for variable in ("MLFLOW_TRACKING_URI", "PIPELINES_LAKE", "PIPELINES_SOURCE", "PIPELINES_TABLES_URL"):
    os.environ.pop(variable, None)

from pipelines.config import Settings, apply_airflow_environment, get_settings, migrate_airflow_db  # noqa: E402

apply_airflow_environment()

POSTGRES_URL = os.environ.get("PIPELINES_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database under the session home."""
    migrate_airflow_db(get_settings())
    return SESSION_HOME / "airflow" / "airflow.db"


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point lake, source, tables and MLflow at an empty folder for one test."""
    monkeypatch.setenv("PIPELINES_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("PIPELINES_SOURCE", str(tmp_path / "source"))
    monkeypatch.setenv("PIPELINES_TABLES_URL", f"sqlite:///{tmp_path / 'tables.db'}")
    yield tmp_path


@contextmanager
def module_home(root: Path) -> Iterator[Settings]:
    """Lake, source, tables, MLflow store and artifacts of one test module under `root` (Airflow is shared)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPELINES_LAKE", str(root / "lake"))
        patch.setenv("PIPELINES_SOURCE", str(root / "source"))
        patch.setenv("PIPELINES_TABLES_URL", f"sqlite:///{root / 'tables.db'}")
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("PIPELINES_MLFLOW_ARTIFACTS", str(root / "artifacts"))
        yield get_settings()
