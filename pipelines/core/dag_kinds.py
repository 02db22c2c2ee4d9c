"""The DAG kinds every model gets, in one table: what runs each, and which of its tasks record evidence.

The Airflow side of a kind is its builder (pipelines/airflow/<kind>.py, listed in
pipelines/airflow/dags.py); everything else reads this table: `pipelines run` (which kinds run over a
range, on which schedule), the plugin's Evidence links, the Models page. A new kind is an entry here
and a builder there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DagKind:
    name: str  # the DAG id is <model>__<name>
    schedule: str | None  # the spec's `schedules` field whose cron times its intervals; None: triggered by hand
    evidence_tasks: tuple[str, ...]  # task id prefixes whose evidence (results, reports, decisions) the pages show
    summary: str


DAG_KINDS: dict[str, DagKind] = {
    kind.name: kind
    for kind in (
        DagKind("train", "train", ("validate", "gate", "approve", "promote"),
                "nightly: ingest the window, validate, train, register, gate, promote"),
        DagKind("score", "score", ("validate",), "each interval: ingest, validate, score with the champion, log"),
        # Runs on the score DAG's predictions events; `pipelines run` times it by the score schedule.
        DagKind("monitor", "score", ("drift_report", "quality_report"), "each scored interval: drift and quality"),
        DagKind("backtest", "backtest", ("backtest", "approve", "promote"),
                "daily: metrics per cohort from the labels known, the challenger's replay, a second hearing"),
        DagKind("rollback", None, (), "by hand: move the champion alias back to a version"),
    )
}  # fmt: skip

# Every task id that records evidence, whatever its kind (the plugin's Evidence tab and extra link).
EVIDENCE_TASKS: tuple[str, ...] = tuple(dict.fromkeys(t for kind in DAG_KINDS.values() for t in kind.evidence_tasks))
SCHEDULED_KINDS: tuple[str, ...] = tuple(name for name, kind in DAG_KINDS.items() if kind.schedule is not None)
