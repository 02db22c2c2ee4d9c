"""DAGs of the demo_orders model (daily, from SQL tables), built from dags/models/demo_orders.yaml."""

from pathlib import Path

from pipelines.airflow.dags import model_dags

globals().update(model_dags(Path(__file__).parent / "models" / f"{Path(__file__).stem}.yaml"))
