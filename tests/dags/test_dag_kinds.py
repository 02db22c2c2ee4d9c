"""The DAG kinds table (pipelines/core/dag_kinds.py) and the code that builds and reads each kind agree."""

from __future__ import annotations

from pipelines.airflow.dags import DAG_BUILDERS, model_dags
from pipelines.core.dag_kinds import DAG_KINDS, EVIDENCE_TASKS, SCHEDULED_KINDS
from pipelines.core.spec import ScheduleSpec
from pipelines.views.model_page import EVIDENCE_READERS
from tests import REPO_ROOT


def test_every_kind_has_a_builder_and_every_builder_a_kind() -> None:
    assert list(DAG_BUILDERS) == list(DAG_KINDS)
    assert SCHEDULED_KINDS == ("train", "score", "monitor", "backtest")  # rollback runs by hand
    assert {kind.schedule for kind in DAG_KINDS.values()} - {None} <= set(ScheduleSpec.model_fields)


def test_each_kinds_evidence_tasks_exist_in_its_dags_and_the_pages_read_them() -> None:
    dags = model_dags(REPO_ROOT / "dags" / "models" / "demo_churn.yaml")
    for name, kind in DAG_KINDS.items():
        task_ids = dags[f"demo_churn__{name}"].task_ids
        for prefix in kind.evidence_tasks:
            assert any(t.startswith(prefix) for t in task_ids), f"{name}: no task {prefix}* in {task_ids}"
    assert set(EVIDENCE_READERS) == set(EVIDENCE_TASKS)
