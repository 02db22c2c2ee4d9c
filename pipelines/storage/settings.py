"""Where state lives. Everything derives from one home folder so the demo never touches ~/airflow.

The home defaults to `.pipelines/` in the project (pipelines.core.project), never in the package.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipelines.core.project import Project, find_project
from pipelines.storage.lake import Lake, open_lake


@dataclass(frozen=True)
class Settings:
    home: Path
    lake: Lake
    source: Path
    specs_dir: Path
    tables_url: str
    mlflow_tracking_uri: str
    mlflow_artifacts: Path | None  # None: a tracking server's own artifact store (its --artifacts-destination)
    gx_root: Path
    project: Project
    tables_from: str = "the embedded default"  # where tables_url came from, for the CLI to say
    lake_credentials_from: str = "the environment (boto3's default chain)"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"


def mlflow_artifacts(home: Path) -> Path | None:
    """Where new experiments keep their artifacts: PIPELINES_MLFLOW_ARTIFACTS, else the tracking
    server's store when MLFLOW_TRACKING_URI names a server (workers on other machines upload through
    it), else next to our other state."""
    if explicit := os.environ.get("PIPELINES_MLFLOW_ARTIFACTS"):
        return Path(explicit)
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        return None
    return home / "mlflow" / "artifacts"


def get_settings() -> Settings:
    """Read settings from the environment; every value has an embedded default under PIPELINES_HOME."""
    project = find_project()
    home = Path(os.environ.get("PIPELINES_HOME", project.root / ".pipelines")).resolve()
    tables_from = "PIPELINES_TABLES_URL" if os.environ.get("PIPELINES_TABLES_URL") else "the embedded default"
    return Settings(
        home=home,
        lake=open_lake(os.environ.get("PIPELINES_LAKE", str(home / "lake"))),
        source=Path(os.environ.get("PIPELINES_SOURCE", home / "source")),
        specs_dir=Path(os.environ.get("PIPELINES_SPECS_DIR", project.specs_dir)),
        tables_url=os.environ.get("PIPELINES_TABLES_URL", f"sqlite:///{home / 'tables.db'}"),
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"),
        mlflow_artifacts=mlflow_artifacts(home),
        gx_root=home / "gx",
        project=project,
        tables_from=tables_from,
    )


def project_commit(project: Project) -> str:
    """The commit of the project whose models run, for lineage; 'unknown' outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(project.root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip()
