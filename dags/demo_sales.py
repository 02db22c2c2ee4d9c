"""DAGs of the demo_sales model (a daily regression), built from dags/models/demo_sales.yaml."""

from pathlib import Path

from pipelines.airflow.dags import model_dags

globals().update(model_dags(Path(__file__).parent / "models" / f"{Path(__file__).stem}.yaml"))
