"""DAGs of the demo_churn model (train, score, backtest), built from dags/models/demo_churn.yaml.

To add a model: copy this file and its YAML spec under a new name. A broken spec breaks only
the DAGs of its own file, with an import error naming the spec file and field.
"""

from pathlib import Path

from pipelines.airflow.dags import model_dags

globals().update(model_dags(Path(__file__).parent / "models" / f"{Path(__file__).stem}.yaml"))
