"""MLflow setup: our tracking URI and one experiment per model with artifacts under our home."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from pipelines.core.errors import VersionRefusedError
from pipelines.storage.settings import Settings

if TYPE_CHECKING:
    import pandas as pd


def use_tracking(settings: Settings) -> None:
    import mlflow

    # Artifact downloads print tqdm bars on stderr, which Airflow logs as ERROR lines in successful tasks.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def experiment_name(model_name: str) -> str:
    return f"pipelines/{model_name}"


def experiment_id(settings: Settings, model_name: str) -> str:
    """Get or create the model's experiment; artifacts live next to our other state, not in ./mlruns."""
    import mlflow

    use_tracking(settings)
    name = experiment_name(model_name)
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    if settings.mlflow_artifacts is None:  # the tracking server's artifact store
        return str(mlflow.create_experiment(name))
    location = settings.mlflow_artifacts / model_name
    location.mkdir(parents=True, exist_ok=True)
    return str(mlflow.create_experiment(name, artifact_location=location.as_uri()))


def download_run_artifact(settings: Settings, run_id: str, artifact: str, owner: str) -> pd.DataFrame:
    """A parquet artifact a training run logged; `owner` (model and version) names it in the error."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    use_tracking(settings)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=scratch)
            return pd.read_parquet(local)
        except (MlflowException, OSError, ValueError) as exc:  # ValueError: pyarrow cannot read what is there
            raise VersionRefusedError(
                f"{owner}: the artifact '{artifact}' of its MLflow run {run_id} is missing or unreadable "
                f"({type(exc).__name__}: {exc}); retrain, or roll back to a version whose run is intact"
            ) from exc
