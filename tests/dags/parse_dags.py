"""Parse a DAG folder in a fresh interpreter and print what the integrity tests check, as JSON."""

import json
import sys
import time


def seconds(duration: object) -> float:
    return duration.total_seconds() if hasattr(duration, "total_seconds") else float(duration)  # type: ignore[arg-type]


def asset_names(condition: object) -> list[str]:
    """The assets a schedule waits on (an Asset, or AssetAll/AssetAny of them)."""
    if condition is None:
        return []
    if hasattr(condition, "objects"):
        return sorted(name for inner in condition.objects for name in asset_names(inner))
    return [condition.name]  # type: ignore[attr-defined]


folder = sys.argv[1]
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag  # noqa: E402

bag = DagBag(folder)
HEAVY = ["pandas", "xgboost", "mlflow", "great_expectations", "evidently", "sklearn"]
print(
    json.dumps(
        {
            "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
            "parse_seconds": {stat.file: seconds(stat.duration) for stat in bag.dagbag_stats},
            "total_seconds": time.perf_counter() - started,
            "heavy_modules_loaded": [m for m in HEAVY if m in sys.modules],
            "dags": {
                dag_id: {
                    "fileloc": dag.fileloc,
                    "timetable": type(dag.timetable).__name__,
                    "schedule": getattr(getattr(dag.timetable, "timetable", dag.timetable), "expression", None),
                    "schedule_assets": asset_names(getattr(dag.timetable, "asset_condition", None)),
                    "outlets": {t.task_id: [o.name for o in t.outlets] for t in dag.tasks if t.outlets},
                    "start_date_tz": str(dag.start_date.tzinfo) if dag.start_date and dag.start_date.tzinfo else None,
                    "catchup": dag.catchup,
                    "tags": sorted(dag.tags),
                    "doc_md": dag.doc_md or "",
                    "retries": [task.retries for task in dag.tasks],
                    "queues": {task.task_id: task.queue for task in dag.tasks},
                    "tasks": sorted(dag.task_ids),
                    "params": sorted(dag.params),
                }
                for dag_id, dag in bag.dags.items()
            },
        }
    )
)
