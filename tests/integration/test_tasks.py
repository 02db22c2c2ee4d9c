"""Regression and multiclass models through their real DAGs (`dag.test()`): train -> gate -> score ->
monitor -> backtest. For each task: the gate keeps the champion against an identical challenger and
promotes a clearly better one; the backtest's metrics, logged and replayed, equal scikit-learn's on
the same rows; a re-run changes no row; status shows the task's own metrics.

The regression model is the demo's `demo_sales`; the multiclass (`ticket_priority`) and binary
(`ticket_escalation`) ones, over the same support tickets, are written into the repository by the
test, as a data engineer would add them, and removed afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from pipelines.airflow.dags import run_in_process
from pipelines.core.intervals import interval_key
from pipelines.core.metrics import TASK_METRICS
from pipelines.core.spec import ModelSpec, load_spec
from pipelines.core.tasks import Task
from pipelines.dev.demo import SALES, write_sales_source
from pipelines.dev.demo_data import write_csv
from pipelines.storage import tables
from pipelines.storage.lake import open_partition, read_partition
from pipelines.storage.settings import Settings
from tests import REPO_ROOT
from tests.conftest import module_home
from tests.integration.conftest import cli_output, status_report

TICKETS = "ticket_priority"
PRIORITIES = ["low", "normal", "urgent"]
FIRST_NIGHT = datetime(2025, 12, 15, 2, tzinfo=UTC)
SCORED_DAYS = [datetime(2025, 12, 15, tzinfo=UTC) + timedelta(days=d) for d in range(3)]
BACKTEST_NIGHTS = [datetime(2025, 12, 18, 7, tzinfo=UTC), datetime(2025, 12, 19, 7, tzinfo=UTC)]
# A crippled training: a few shallow trees. Trained twice on the same window it gives an identical
# model; the spec's own training is clearly better.
WEAK = {"num_boost_round": 3, "xgboost_params": {"max_depth": 1}}

ESCALATIONS = "ticket_escalation"


def tickets_spec(name: str, task: str, label: str, labels_missing: str = "empty") -> str:
    """A daily model of the support tickets, as a data engineer would write it."""
    return f"""
name: {name}
description: "Support tickets ({task}), written by tests/integration/test_tasks.py."
start_date: 2025-10-01T00:00:00+00:00
partition: day
task: {task}
source:
  events: {{kind: files, path: "{TICKETS}/events/dt={{start:%Y-%m-%d}}.csv"}}
  labels: {{kind: files, path: "{TICKETS}/labels/dt={{start:%Y-%m-%d}}.csv", when_missing: {labels_missing}}}
entity_key: ticket_id
timestamp: opened_at
label: {label}
features:
  numeric: [words, open_tickets, account_age_days]
  categorical: [channel, tier]
suite: {TICKETS}
schedules: {{train: "0 2 * * *", score: "0 0 * * *", backtest: "0 7 * * *"}}
training: {{window_days: 28, min_rows: 2000, num_boost_round: 200, params: {{max_depth: 4, eta: 0.2}}}}
gate: {{min_holdout_rows: 300, slices: [tier]}}
drift: {{reference_rows: 2000}}
backtest: {{lookback_days: 14, slices: [tier], replay_intervals: 7}}
"""


# The same tickets, two models: which priority support gives a ticket (multiclass), and whether it
# is escalated (binary). Neither names gate.metric: each gets its task's default.
MODEL_SPECS = {
    TICKETS: tickets_spec(TICKETS, "multiclass", f"{{column: priority, delay_hours: 30, classes: {PRIORITIES}}}"),
    # A feed that is expected every day: a missing file is waited for, not read as no labels.
    ESCALATIONS: tickets_spec(ESCALATIONS, "binary", "{column: escalated, delay_hours: 30}", labels_missing="wait"),
}

TICKETS_SUITE = {
    "name": TICKETS,
    "expectations": [
        {
            "type": "expect_table_columns_to_match_set",
            "kwargs": {
                "column_set": ["ticket_id", "opened_at", "words", "open_tickets", "account_age_days", "channel", "tier"]
            },
        },
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "ticket_id"}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "ticket_id"}},
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "tier", "value_set": ["free", "pro", "ent"]},
        },
    ],
}


def ticket_day(day: datetime, rows: int = 300) -> pd.DataFrame:
    """One day's tickets with the priority support gave them (a softmax of the features)."""
    rng = np.random.default_rng(int(day.timestamp()))
    frame = pd.DataFrame(
        {
            "ticket_id": [f"T{day:%Y%m%d}{i:04d}" for i in range(rows)],
            "opened_at": [day + timedelta(seconds=int(s)) for s in np.sort(rng.choice(86_400, rows, replace=False))],
            "words": rng.gamma(2.0, 60.0, rows).round(0),
            "open_tickets": rng.poisson(1.5, rows),
            "account_age_days": rng.integers(0, 3000, rows),
            "channel": rng.choice(["email", "chat", "phone"], rows),
            "tier": rng.choice(["free", "pro", "ent"], rows, p=[0.6, 0.3, 0.1]),
        }
    )
    tier = frame["tier"].map({"free": 0.0, "pro": 1.0, "ent": 2.5}).to_numpy()
    urgency = 0.9 * tier + 0.6 * frame["open_tickets"] + 1.2 * (frame["channel"] == "phone") - 1.5
    logits = np.column_stack([-urgency, np.zeros(rows), urgency]) + rng.gumbel(size=(rows, 3))
    frame["priority"] = np.array(PRIORITIES)[logits.argmax(axis=1)]
    return frame


def write_tickets_source(settings: Settings, start: datetime, end: datetime) -> None:
    root = settings.source / TICKETS
    for day in pd.date_range(start, end, freq="D", inclusive="left").to_pydatetime():
        frame = ticket_day(day)
        arrival = day + timedelta(hours=30)
        labels = frame[["ticket_id", "opened_at", "priority"]].assign(
            escalated=(frame["priority"] == "urgent").astype(int), arrived_at=arrival
        )
        write_csv(frame.drop(columns=["priority"]), root / "events" / f"dt={day:%Y-%m-%d}.csv")
        write_csv(labels, root / "labels" / f"dt={arrival:%Y-%m-%d}.csv")


@dataclass(frozen=True)
class Case:
    model: str
    task: str
    write_source: Callable[[Settings], Any]


def write_tickets(settings: Settings) -> None:
    write_tickets_source(settings, datetime(2025, 10, 1, tzinfo=UTC), datetime(2026, 1, 5, tzinfo=UTC))


CASES = {
    "binary": Case(ESCALATIONS, "binary", write_tickets),
    "regression": Case(SALES, "regression", write_sales_source),
    "multiclass": Case(TICKETS, "multiclass", write_tickets),
}


@pytest.fixture(scope="module")
def tickets_models() -> Iterator[None]:
    """The ticket models' files in the repository, as `pipelines new-model` would leave them."""
    paths = {REPO_ROOT / "expectations" / f"{TICKETS}.json": json.dumps(TICKETS_SUITE)}
    for name, text in MODEL_SPECS.items():
        paths[REPO_ROOT / "dags" / "models" / f"{name}.yaml"] = text
        paths[REPO_ROOT / "dags" / f"{name}.py"] = (REPO_ROOT / "dags" / f"{SALES}.py").read_text()
    assert not any(p.exists() for p in paths), f"a ticket model is already in the repository: {list(paths)}"
    try:
        for path, text in paths.items():
            path.write_text(text)
        yield
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def home(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory, tickets_models: None) -> Iterator[Settings]:
    with module_home(tmp_path_factory.mktemp("tasks")) as settings:
        for write_source in {case.write_source for case in CASES.values()}:
            write_source(settings)
        yield settings


def run(dag_id: str, logical_date: datetime, conf: dict[str, Any] | None = None, attempt: int = 0) -> None:
    """One DAG run; `attempt` > 0 makes another run of the same interval (a new run id)."""
    began = datetime.now(UTC)
    if dag_id.endswith("__monitor"):
        interval = {
            "interval_start": (logical_date - timedelta(days=1)).isoformat(),
            "interval_end": logical_date.isoformat(),
        }
        dag_run = run_in_process(dag_id, None, run_conf=interval, run_after=logical_date)
    else:
        dag_run = run_in_process(
            dag_id, logical_date, run_conf=conf, run_after=logical_date + timedelta(minutes=attempt)
        )
    assert dag_run.state == "success", f"{dag_id} {logical_date} ended {dag_run.state}"
    # The UI shows the run from when it really started, not from its logical date.
    assert stored_start(dag_id, dag_run.run_id) >= began
    # ... and each task's log, read the way the UI reads it (not "not found on worker").
    for task_id, text in task_logs(dag_id, dag_run.run_id).items():
        assert "pipelines." in text and "Could not read" not in text, f"{dag_id}.{task_id}: {text[:500]}"


def task_logs(dag_id: str, run_id: str) -> dict[str, str]:
    """The log text, as JSON lines, of each task that ran in a DAG run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.log.log_reader import TaskLogReader
    from airflow.utils.session import create_session

    reader = TaskLogReader()
    texts = {}
    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id))
        for ti in tis:
            if ti.try_number == 0:  # skipped before it ran
                continue
            stream, _ = reader.read_log_chunks(ti, ti.try_number, {})
            texts[ti.task_id] = "\n".join(message.model_dump_json() for message in stream)
    assert texts, f"no task of {dag_id} {run_id} has a log"
    return texts


def stored_start(dag_id: str, run_id: str) -> datetime:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        start = session.scalar(select(DagRun.start_date).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    return start if start.tzinfo else start.replace(tzinfo=UTC)


def gate_decisions(engine: Engine, model: str) -> list[tuple[str, str | None, str]]:
    """(challenger, champion it was judged against, verdict) of each gate decision, in order."""
    e = tables.model_events
    with engine.connect() as db:
        rows = db.execute(
            select(e.c.details).where(e.c.model_name == model, e.c.event == "gate_decision").order_by(e.c.id)
        ).scalars()
        decisions = [json.loads(r) for r in rows]
    return [(d["challenger_version"], d["champion_version"], d["verdict"]) for d in decisions]


def table_rows(engine: Engine, table: Any, model: str) -> list[tuple[Any, ...]]:
    with engine.connect() as db:
        return sorted(tuple(r) for r in db.execute(select(table).where(table.c.model_name == model)))


def expected_metrics(spec: ModelSpec, frame: pd.DataFrame) -> dict[str, Any]:
    """scikit-learn's metrics of the rows, called here directly on the logged labels and outputs."""
    from sklearn import metrics

    if spec.task == "multiclass":
        truth = np.array([PRIORITIES.index(c) for c in frame["label"]])
        probabilities = np.array([[json.loads(p)[c] for c in PRIORITIES] for p in frame["class_probabilities"]])
        predicted = probabilities.argmax(axis=1)
        present = sorted(set(truth.tolist()))
        recall = metrics.recall_score(truth, predicted, labels=present, average=None)
        return {
            "logloss": metrics.log_loss(truth, probabilities, labels=[0, 1, 2]),
            "accuracy": metrics.accuracy_score(truth, predicted),
            "macro_f1": metrics.f1_score(truth, predicted, average="macro"),
            "class_recall": {PRIORITIES[k]: r for k, r in zip(present, recall, strict=True)},
        }
    labels, values = frame["label"].to_numpy(dtype=float), frame["score"].to_numpy(dtype=float)
    if spec.task == "binary":
        return {
            "auc": metrics.roc_auc_score(labels, values),
            "logloss": metrics.log_loss(labels, values),
            "brier": metrics.brier_score_loss(labels, values),
        }
    return {
        "rmse": np.sqrt(metrics.mean_squared_error(labels, values)),
        "mae": metrics.mean_absolute_error(labels, values),
        "r2": metrics.r2_score(labels, values),
        "mean_error": np.mean(values - labels),
    }


def labelled(spec: ModelSpec, engine: Engine, scored: pd.DataFrame) -> pd.DataFrame:
    """The rows with their label as delivered (the test's sources deliver each label once)."""
    label = tables.labels.c.label_class if spec.task == "multiclass" else tables.labels.c.label
    with engine.connect() as db:
        labels = pd.DataFrame(
            db.execute(
                select(tables.labels.c.entity_id, tables.labels.c.as_of, label).where(
                    tables.labels.c.model_name == spec.name
                )
            ).all(),
            columns=["entity_id", "as_of", "label"],
        )
    labels["as_of"] = pd.to_datetime(labels["as_of"], utc=True)
    return scored.merge(labels, on=["entity_id", "as_of"], how="inner", validate="one_to_one")


def check_backtest_equals_sklearn(spec: ModelSpec, settings: Settings, engine: Engine, challenger: str) -> None:
    b, p = tables.current_backtest(spec.name, slice_column="ALL"), tables.predictions
    with engine.connect() as db:
        stored = pd.DataFrame(db.execute(select(b)).mappings().all())
        logged = pd.DataFrame(
            db.execute(
                select(p.c.entity_id, p.c.as_of, p.c.model_version, p.c.score, p.c.class_probabilities).where(
                    p.c.model_name == spec.name
                )
            ).all(),
            columns=["entity_id", "as_of", "model_version", "score", "class_probabilities"],
        )
    logged["as_of"] = pd.to_datetime(logged["as_of"], utc=True)
    night = BACKTEST_NIGHTS[-1]
    window = interval_key(night - timedelta(days=spec.backtest.lookback_days), night)
    replayed = read_partition(settings.lake, f"{spec.name}/replay/v{challenger}/{window}")[0]
    replayed["as_of"] = pd.to_datetime(replayed["as_of"], utc=True)
    compared = 0
    for scored_by, frame in (("logged", labelled(spec, engine, logged)), ("replay", labelled(spec, engine, replayed))):
        cohorts = frame["as_of"].dt.strftime("%Y-%m-%d")
        for cohort, rows in frame.groupby(cohorts):
            version = challenger if scored_by == "replay" else str(rows["model_version"].iloc[0])
            row = stored[
                (stored["cohort"] == cohort) & (stored["scored_by"] == scored_by) & (stored["model_version"] == version)
            ]
            assert len(row) == 1, (scored_by, cohort, version)
            expected = expected_metrics(spec, rows)
            assert int(row["n"].iloc[0]) == len(rows)
            for name in TASK_METRICS[spec.task]:
                assert row[name].iloc[0] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), (
                    scored_by,
                    cohort,
                    name,
                )
            if spec.task == "multiclass":
                assert json.loads(row["class_recall"].iloc[0]) == pytest.approx(expected["class_recall"])
            compared += 1
    assert compared >= 4  # several cohorts, logged and replayed


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_model_of_each_task_lives_through_its_dags(home: Settings, engine: Engine, case: Case) -> None:
    model = case.model
    spec = load_spec(home.specs_dir / f"{model}.yaml")
    assert spec.task == case.task

    # The gate, in the task's own metric: v1 (weak) is the first champion; v2, the same weak training
    # again, is identical and kept; v3, the spec's training, is clearly better and promoted.
    run(f"{model}__train", FIRST_NIGHT, {**WEAK})
    run(f"{model}__train", FIRST_NIGHT, {**WEAK}, attempt=1)
    run(f"{model}__train", FIRST_NIGHT, attempt=2)
    decisions = gate_decisions(engine, model)
    assert [(c, ch, v) for c, ch, v in decisions] == [("1", None, "promote"), ("2", "1", "keep"), ("3", "1", "promote")]
    with engine.connect() as db:
        details = [
            json.loads(d)
            for d in db.execute(
                select(tables.model_events.c.details).where(
                    tables.model_events.c.model_name == model, tables.model_events.c.event == "gate_decision"
                )
            ).scalars()
        ]
    identical, better = details[1], details[2]
    assert identical["metric"] == spec.gate.metric and identical["interval"]["point"] == 0.0
    assert identical["reason"].startswith("no real improvement")
    assert better["interval"]["lower"] > 0, better["reason"]

    for day in SCORED_DAYS:
        run(f"{model}__score", day + timedelta(days=1))
    for day in SCORED_DAYS[1:]:
        run(f"{model}__monitor", day + timedelta(days=1))
    # v4, weak again on a later window, is kept: the backtest replays it beside the serving v3.
    run(f"{model}__train", FIRST_NIGHT + timedelta(days=3), {**WEAK})
    assert gate_decisions(engine, model)[-1] == ("4", "3", "keep")
    for night in BACKTEST_NIGHTS:
        run(f"{model}__backtest", night)

    # The prediction log holds what the task predicts.
    logged = table_rows(engine, tables.predictions, model)
    assert len(logged) == sum(open_partition(home.lake, f"{model}/raw/dt={d:%Y-%m-%d}").rows for d in SCORED_DAYS)
    with engine.connect() as db:
        sample = (
            db.execute(select(tables.predictions).where(tables.predictions.c.model_name == model).limit(1))
            .mappings()
            .one()
        )
    if case.task == "multiclass":
        probabilities = json.loads(sample["class_probabilities"])
        assert list(probabilities) == PRIORITIES and sum(probabilities.values()) == pytest.approx(1.0)
        assert sample["predicted_class"] == max(probabilities, key=probabilities.get)
        assert sample["score"] == max(probabilities.values())
    elif case.task == "binary":
        assert sample["predicted_class"] is None and 0 < sample["score"] < 1
    else:
        assert sample["predicted_class"] is None and sample["score"] > 1  # units, not a probability

    check_backtest_equals_sklearn(spec, home, engine, challenger="4")

    # Quality: the monitor judged the labelled day with the task's metrics and an Evidently report.
    with engine.connect() as db:
        quality = (
            db.execute(select(tables.quality_reports).where(tables.quality_reports.c.model_name == model))
            .mappings()
            .all()
        )
    assert [q["interval_start"].date().isoformat() for q in quality] == ["2025-12-15"]
    report = quality[0]
    assert set(TASK_METRICS[case.task]) <= set(json.loads(report["metrics"])) and report["rows"] > 0
    html = Path(report["report_path"].removeprefix("file://")).read_bytes()
    assert html.lstrip().lower().startswith(b"<!doctype html>") and len(html) > 10_000

    # A re-run of the same intervals changes no row.
    before = {
        t.name: table_rows(engine, t, model)
        for t in (tables.predictions, tables.backtest_metrics, tables.quality_reports)
    }
    run(f"{model}__score", SCORED_DAYS[1] + timedelta(days=1))
    run(f"{model}__monitor", SCORED_DAYS[2] + timedelta(days=1))
    run(f"{model}__backtest", BACKTEST_NIGHTS[-1])
    after = {
        t.name: table_rows(engine, t, model)
        for t in (tables.predictions, tables.backtest_metrics, tables.quality_reports)
    }
    assert after == before

    # Status shows the task's own metrics.
    (status,) = [m for m in status_report()["models"] if m["model"] == model]
    assert status["task"] == case.task and status["champion_version"] == "3"
    assert status["latest_backtest"] and set(TASK_METRICS[case.task]) <= set(status["latest_backtest"][0])
    text = cli_output("status")
    section = text.split(f"model {model} ({case.task})", 1)[1].split("\nmodel ", 1)[0]
    others = {n for names in TASK_METRICS.values() for n in names} - set(TASK_METRICS[case.task])
    assert all(f" {n}=" in section for n in TASK_METRICS[case.task])
    assert not [n for n in others if f" {n}=" in section]


def test_a_monitor_judges_quality_on_the_labels_known_while_a_label_file_is_late(
    home: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The monitor runs right after scoring; the feed of the labels that arrived meanwhile may come later.
    Its drift report and the quality of the matured window go ahead; the backtest waits for the feed."""
    day = SCORED_DAYS[-1] + timedelta(days=1)
    run(f"{ESCALATIONS}__score", day + timedelta(days=1))
    late = home.source / TICKETS / "labels" / f"dt={day:%Y-%m-%d}.csv"
    held = late.rename(late.with_suffix(".late"))
    try:
        run(f"{ESCALATIONS}__monitor", day + timedelta(days=1))
    finally:
        held.rename(late)
    assert f"labels of [{day}, {day + timedelta(days=1)}) not delivered yet" in caplog.text
    q = tables.quality_reports
    with engine.connect() as db:
        judged = db.execute(select(q.c.interval_start, q.c.rows).where(q.c.model_name == ESCALATIONS)).all()
    assert [(start.date().isoformat(), rows) for start, rows in judged] == [("2025-12-15", 300), ("2025-12-16", 300)]


def test_a_version_of_another_task_is_refused_by_scoring_and_rollback(home: Settings, engine: Engine) -> None:
    """Its author changes demo_sales's task: no stored version (each a regression) may serve it."""
    from pipelines.core.errors import VersionNotServableError
    from pipelines.stages.score import score_interval
    from pipelines.storage.registry import champion_version, rollback

    spec = load_spec(home.specs_dir / f"{SALES}.yaml")
    changed = spec.model_copy(update={"task": Task.BINARY})
    before = table_rows(engine, tables.predictions, SALES)
    refused = rf"{SALES} v3 predicts task regression, but the spec's task is binary"
    day = SCORED_DAYS[0]
    with pytest.raises(VersionNotServableError, match=refused):
        score_interval(
            changed,
            home,
            engine,
            day,
            day + timedelta(days=1),
            dag_run_id="manual__task_changed",
            rescore_with="champion",
        )
    with pytest.raises(VersionNotServableError, match=rf"{SALES} v1 predicts task regression"):
        rollback(home, engine, SALES, "binary", "1", reason="task changed", dag_run_id=None, actor="test")
    assert champion_version(home, SALES) == "3" and table_rows(engine, tables.predictions, SALES) == before
