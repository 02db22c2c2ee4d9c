"""Bring your own data, as a data engineer does: the second example model (daily partitions, read
from SQL tables through an Airflow connection) run with `pipelines run` across a day without a
single row; then `pipelines new-model` scaffolds a model on the same warehouse, and it trains and
scores with nothing but its generated files."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from pipelines.core.errors import ConfigError
from pipelines.core.spec import load_spec
from pipelines.dev.demo import ORDERS, write_orders_source
from pipelines.dev.demo_data import DEMO_WAREHOUSE_CONN_ID
from pipelines.storage import database, tables
from pipelines.storage.lake import open_partition, partition_key
from pipelines.storage.settings import Settings
from tests import REPO_ROOT
from tests.conftest import module_home
from tests.integration.conftest import cli_output

QUIET_DAY = datetime(2025, 12, 25, tzinfo=UTC)  # the shop is closed: no orders at all
SCORED_DAYS = ["2025-12-25", "2025-12-26", "2025-12-27"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("orders")
    with module_home(root) as settings, pytest.MonkeyPatch.context() as patch:
        warehouse = settings.source / ORDERS / "warehouse.db"
        # The connection the spec names, as a user defines one: an AIRFLOW_CONN_* variable.
        patch.setenv(
            f"AIRFLOW_CONN_{DEMO_WAREHOUSE_CONN_ID.upper()}",
            json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
        )
        write_orders_source(settings)
        yield settings


def orders_per_day(home: Settings) -> dict[str, int]:
    with sqlite3.connect(home.source / ORDERS / "warehouse.db") as db:
        return dict(db.execute("SELECT substr(ordered_at, 1, 10), count(*) FROM orders GROUP BY 1").fetchall())


def max_basket_value(home: Settings, first_day: str, end_day: str) -> float:
    with sqlite3.connect(home.source / ORDERS / "warehouse.db") as db:
        query = "SELECT max(basket_value) FROM orders WHERE ordered_at >= ? AND ordered_at < ?"
        return float(db.execute(query, (first_day, end_day)).fetchone()[0])


def pipelines_run(dag_id: str, start: str, end: str, *params: str) -> list[str]:
    """`pipelines run` over a range (`params`: KEY=VALUE, each a --param); every run line must say success."""
    flags = [arg for param in params for arg in ("--param", param)]
    lines = [
        line
        for line in cli_output("run", dag_id, "--start", start, "--end", end, *flags).splitlines()
        if line.startswith(f"{dag_id}  ")
    ]
    assert lines and all("  success  " in line for line in lines), lines
    return lines


def test_a_daily_sql_model_runs_through_every_dag_across_a_quiet_day(home: Settings, engine: Engine) -> None:
    assert len(pipelines_run(f"{ORDERS}__train", "2025-12-25T02:00Z", "2025-12-26T02:00Z")) == 1
    assert len(pipelines_run(f"{ORDERS}__score", "2025-12-25T00:00Z", "2025-12-28T00:00Z")) == 3
    assert len(pipelines_run(f"{ORDERS}__monitor", "2025-12-25T00:00Z", "2025-12-28T00:00Z")) == 3
    assert len(pipelines_run(f"{ORDERS}__backtest", "2025-12-28T04:00Z", "2025-12-31T04:00Z")) == 3

    counts = orders_per_day(home)
    assert "2025-12-25" not in counts
    raw = {day: open_partition(home.lake, f"{ORDERS}/raw/dt={day}").rows for day in SCORED_DAYS}
    assert raw == {"2025-12-25": 0, "2025-12-26": counts["2025-12-26"], "2025-12-27": counts["2025-12-27"]}
    quiet = open_partition(home.lake, partition_key(ORDERS, "scored", QUIET_DAY, "day"))
    assert quiet.rows == 0 and quiet.manifest["model_version"] == "1"
    with engine.connect() as db:
        p = tables.predictions
        as_of = pd.to_datetime(
            [row[0] for row in db.execute(select(p.c.as_of).where(p.c.model_name == ORDERS))], utc=True
        )
        reports = db.execute(
            select(tables.drift_reports.c.interval_start, tables.drift_reports.c.dataset_drift).where(
                tables.drift_reports.c.model_name == ORDERS
            )
        ).all()
        b = tables.current_backtest(ORDERS, slice_column="ALL")
        cohorts = dict(db.execute(select(b.c.cohort, b.c.n).where(b.c.scored_by == "logged")).all())
    logged = pd.Series(as_of.strftime("%Y-%m-%d")).value_counts().to_dict()
    assert logged == {"2025-12-26": counts["2025-12-26"], "2025-12-27": counts["2025-12-27"]}
    assert len(reports) == 3 and all(not drifted for _, drifted in reports)
    # Backtested once the 72 h labels had arrived: every order of the scored days, by its day.
    assert {day: cohorts.get(day) for day in SCORED_DAYS[1:]} == {d: counts[d] for d in SCORED_DAYS[1:]}

    # Re-running the same days changes nothing that served.
    before = open_partition(home.lake, partition_key(ORDERS, "scored", datetime(2025, 12, 26, tzinfo=UTC), "day"))
    pipelines_run(f"{ORDERS}__score", "2025-12-25T00:00Z", "2025-12-28T00:00Z")
    after = open_partition(home.lake, partition_key(ORDERS, "scored", datetime(2025, 12, 26, tzinfo=UTC), "day"))
    assert after.sha256 == before.sha256


@pytest.fixture
def scaffolded() -> Iterator[str]:
    """The files `pipelines new-model shop_returns` writes into the repository, removed afterwards."""
    name = "shop_returns"
    paths = [
        REPO_ROOT / "dags" / "models" / f"{name}.yaml",
        REPO_ROOT / "dags" / f"{name}.py",
        REPO_ROOT / "expectations" / f"{name}.json",
    ]
    assert not any(p.exists() for p in paths), "a shop_returns model is already in the repository"
    try:
        yield name
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def test_new_model_scaffolds_a_model_that_trains_and_scores(
    home: Settings, scaffolded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warehouse = f"sql://{DEMO_WAREHOUSE_CONN_ID}"
    fresh = tmp_path / "fresh" / "tables.db"  # a home nothing has run in: new-model prepares its tables
    out = cli_output(
        "new-model", scaffolded,
        "--events", f"{warehouse}/orders", "--labels", f"{warehouse}/returns",
        "--entity-key", "order_id", "--timestamp", "ordered_at", "--label", "returned",
        "--partition", "day", "--sample-start", "2025-12-01T00:00Z", "--sample-end", "2025-12-08T00:00Z",
        tables_url=f"sqlite:///{fresh}",
    )  # fmt: skip
    assert f"wrote {REPO_ROOT / 'dags' / 'models' / f'{scaffolded}.yaml'}" in out
    assert f"tables sqlite:///{fresh}: created at schema {database.HEAD_REVISION}" in out
    assert database.schema_revision(database.make_engine(f"sqlite:///{fresh}")) == database.HEAD_REVISION
    spec = load_spec(REPO_ROOT / "dags" / "models" / f"{scaffolded}.yaml")
    assert spec.partition == "day" and spec.schedules.score == "0 0 * * *"
    assert spec.features.numeric == ["basket_value", "items", "discount_pct", "customer_tenure_days"]
    assert spec.features.categorical == ["channel", "category"]
    # The label feed was read too: its delay is the longest the sample's labels took.
    assert spec.label.delay_hours == load_spec(home.specs_dir / f"{ORDERS}.yaml").label.delay_hours
    from pipelines.airflow.connections import cli_connection
    from pipelines.dev.scaffold import label_delay
    from pipelines.storage.sources import SourceAccess

    wrong = {"entity_key": "order_id", "timestamp": "ordered_at", "label": "returnd", "arrived_at": "arrived_at"}
    with pytest.raises(ConfigError, match=r"the labels .* have no column\(s\) \['returnd'\]"):
        label_delay(
            "typo", {"kind": "sql", "connection": DEMO_WAREHOUSE_CONN_ID, "table": "returns"}, wrong,
            (datetime(2025, 12, 1, tzinfo=UTC), datetime(2025, 12, 8, tzinfo=UTC)),
            SourceAccess(home.source, cli_connection), "day",
        )  # fmt: skip
    suite = json.loads((REPO_ROOT / "expectations" / f"{scaffolded}.json").read_text())
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "channel") in kinds
    assert ("expect_column_values_to_be_between", "basket_value") in kinds
    assert ("expect_table_row_count_to_be_between", None) in kinds
    assert all(e["meta"]["notes"] for e in suite["expectations"])  # each bound says where it came from

    # Nothing existing is replaced: a second scaffold of the name is refused, naming the files.
    again = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "new-model", scaffolded, "--events", f"{warehouse}/orders",
         "--labels", f"{warehouse}/returns", "--entity-key", "order_id", "--timestamp", "ordered_at",
         "--label", "returned", "--sample-start", "2025-12-01T00:00Z", "--sample-end", "2025-12-02T00:00Z"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert again.returncode == 2 and "already exist; new-model writes new files only" in again.stderr
    assert load_spec(REPO_ROOT / "dags" / "models" / f"{scaffolded}.yaml") == spec

    # A bound too tight for the data: `pipelines suite` says which days fail and how; --accept widens it.
    path = REPO_ROOT / "expectations" / f"{scaffolded}.json"
    tight = json.loads(path.read_text())
    index = next(
        i
        for i, e in enumerate(tight["expectations"])
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "basket_value"
    )
    tight["expectations"][index]["kwargs"]["max_value"] = tight["expectations"][index]["kwargs"]["min_value"] + 1
    path.write_text(json.dumps(tight, indent=2))
    old_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    # The range the first training validates: its window, sized by the scaffold, up to the 14th.
    first = (datetime(2025, 12, 14, tzinfo=UTC) - timedelta(days=spec.training.window_days)).isoformat()
    days = ["suite", scaffolded, "--start", first, "--end", "2025-12-14T00:00Z"]
    from pipelines.cli import main

    assert main(days) == 1  # in process: the --accept below runs it as a user does
    checked = capsys.readouterr().out
    assert "  2025-12-08T00:00:00+00:00  FAILS" in checked and "  2025-12-09T00:00:00+00:00  FAILS" in checked
    assert f"expectation {index + 1} expect_column_values_to_be_between on basket_value: allowed " in checked
    assert 'to accept: set {"max_value": ' in checked and path.read_bytes() == json.dumps(tight, indent=2).encode()
    accepted = cli_output(*days, "--accept")
    assert f"accepted: {path} sha256 {old_sha[:12]} -> " in accepted
    widened = json.loads(path.read_text())
    assert widened["meta"]["accepted_changes"][-1]["previous_sha256"] == old_sha
    new_max = widened["expectations"][index]["kwargs"]["max_value"]
    assert new_max == max_basket_value(home, first[:10], "2025-12-14")

    pipelines_run(f"{scaffolded}__train", "2025-12-14T02:00Z", "2025-12-15T02:00Z")
    pipelines_run(f"{scaffolded}__score", "2025-12-24T00:00Z", "2025-12-26T00:00Z")  # the 25th is quiet
    assert open_partition(home.lake, f"{scaffolded}/scored/dt=2025-12-25").rows == 0
    assert open_partition(home.lake, f"{scaffolded}/scored/dt=2025-12-24").rows == orders_per_day(home)["2025-12-24"]


def test_a_kept_challenger_that_wins_its_replay_gets_a_second_hearing(
    home: Settings, engine: Engine, airflow_db: object
) -> None:
    """A weak model serves (a human rolled back to it); a strong one trained after it is kept out (a
    dry run). Once its replays beat the champion on the same orders over `gate.second_hearing_cohorts`
    (3) whole days, the backtest DAG proposes it through the gate, in the spec's mode (enabled), and
    promotes it; the decision's figures are those of an independent join of the stored rows."""
    from mlflow import MlflowClient
    from sklearn.metrics import roc_auc_score

    from pipelines.airflow.dags import run_in_process
    from pipelines.storage.lake import read_partition
    from pipelines.storage.registry import CHALLENGER, CHAMPION, alias_version, fresh_from

    def states(dag_run: Any) -> dict[str, str]:
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}

    def run(dag_id: str, at: datetime, conf: dict[str, Any] | None = None) -> Any:
        dag_run = run_in_process(f"{ORDERS}__{dag_id}", at, run_conf=conf)
        assert dag_run.state == "success", states(dag_run)
        return dag_run

    # Params as the trigger form sets them, through `pipelines run --param` (values read as JSON).
    weak = ("num_boost_round=2", 'xgboost_params={"max_depth": 1}')
    pipelines_run(f"{ORDERS}__train", "2025-12-26T02:00Z", "2025-12-27T02:00Z", *weak)
    weak_version = alias_version(home, ORDERS, CHALLENGER)
    rollback = run_in_process(
        f"{ORDERS}__rollback", None, run_conf={"version": weak_version, "reason": "test"}, run_after=datetime.now(UTC)
    )
    assert rollback.state == "success", states(rollback)
    typo = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", f"{ORDERS}__train", "--start", "2025-12-27T02:00Z",
         "--end", "2025-12-28T02:00Z", "--param", "dryrun=true"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert typo.returncode == 2 and f"{ORDERS}__train has no param dryrun; its params: " in typo.stderr
    assert "dry_run" in typo.stderr and alias_version(home, ORDERS, CHALLENGER) == weak_version  # nothing ran
    run("train", datetime(2025, 12, 28, 2, tzinfo=UTC), {"dry_run": True})
    strong = alias_version(home, ORDERS, CHALLENGER)
    assert strong != weak_version and alias_version(home, ORDERS, CHAMPION) == weak_version
    since = fresh_from(home, ORDERS, str(strong))  # its holdout's start: rows from then on are new to it
    assert since is not None and since < datetime(2025, 12, 28, tzinfo=UTC)
    days = ["2025-12-28", "2025-12-29", "2025-12-30"]  # served by the weak champion, new to the strong one
    pipelines_run(f"{ORDERS}__score", "2025-12-28T00:00Z", "2025-12-31T00:00Z")

    # Up to 01-02 04:00 the 30th's labels (72 h) are still due: two whole days, no hearing yet.
    early = run("backtest", datetime(2026, 1, 2, 4, tzinfo=UTC))
    assert states(early)["route"] == "success" and states(early)["promote"] == "skipped"
    assert alias_version(home, ORDERS, CHAMPION) == weak_version

    heard = run("backtest", datetime(2026, 1, 3, 4, tzinfo=UTC))
    assert {k: states(heard)[k] for k in ("route", "approve", "promote")} == {
        "route": "success",
        "approve": "skipped",
        "promote": "success",
    }
    assert alias_version(home, ORDERS, CHAMPION) == strong
    e = tables.model_events
    with engine.connect() as db:
        events = [dict(r) for r in db.execute(select(e).where(e.c.model_name == ORDERS).order_by(e.c.id)).mappings()]
        p = tables.predictions
        served = pd.DataFrame(
            db.execute(
                select(p.c.entity_id, p.c.as_of, p.c.score).where(
                    p.c.model_name == ORDERS, p.c.model_version == weak_version
                )
            ).all(),
            columns=["entity_id", "as_of", "champion"],
        )
    decision = json.loads(next(x for x in reversed(events) if x["event"] == "gate_decision")["details"])
    moved = events[-1]
    assert (moved["event"], moved["to_version"], moved["from_version"]) == ("alias_moved", strong, weak_version)
    assert moved["reason"].startswith("second hearing: the replay beat the champion")
    assert (decision["challenger_version"], decision["champion_version"], decision["action"]) == (
        strong,
        weak_version,
        "promote",
    )
    assert decision["replay"]["cohorts"] == days

    # The same figures from the stored rows, joined here: the champion's logged scores, the warehouse's
    # labels and every replayed score of the strong version in the lake.
    served["as_of"] = pd.to_datetime(served["as_of"], utc=True)
    with sqlite3.connect(home.source / ORDERS / "warehouse.db") as db:
        labels = pd.read_sql("SELECT order_id AS entity_id, ordered_at AS as_of, returned FROM returns", db)
    labels["as_of"] = pd.to_datetime(labels["as_of"], utc=True, format="ISO8601")
    replay_keys = {k.rsplit("/", 1)[0] for k in home.lake.keys(f"{ORDERS}/replay/v{strong}/")}
    replayed = pd.concat([read_partition(home.lake, key)[0] for key in replay_keys]).drop_duplicates(
        ["entity_id", "as_of"]
    )
    replayed["as_of"] = pd.to_datetime(replayed["as_of"], utc=True)
    joined = (
        served.assign(entity_id=served["entity_id"].astype(str))
        .merge(labels.assign(entity_id=labels["entity_id"].astype(str)), on=["entity_id", "as_of"])
        .merge(replayed[["entity_id", "as_of", "score"]].astype({"entity_id": str}), on=["entity_id", "as_of"])
    )
    joined = joined[joined["as_of"].dt.strftime("%Y-%m-%d").isin(days)]
    counts = orders_per_day(home)
    assert (
        decision["replay"]["rows"] == decision["replay"]["rows_offered"] == len(joined) == sum(counts[d] for d in days)
    )
    expected = roc_auc_score(joined["returned"], joined["score"]) - roc_auc_score(
        joined["returned"], joined["champion"]
    )
    assert decision["interval"]["point"] == pytest.approx(expected, rel=1e-9)
    assert decision["interval"]["lower"] > 0
    run_id = MlflowClient().get_model_version(ORDERS, str(strong)).run_id
    assert "gate/second_hearing_20260103T0400.json" in {a.path for a in MlflowClient().list_artifacts(run_id, "gate")}

    # A re-run of the same DAG run decides nothing new; the status says why the champion moved.
    before = len(events)
    run("backtest", datetime(2026, 1, 3, 4, tzinfo=UTC))
    with engine.connect() as db:
        assert db.execute(select(func.count()).select_from(e).where(e.c.model_name == ORDERS)).scalar_one() == before
    status = cli_output("status")
    assert f"champion: v{strong}" in status and "second hearing: the replay beat the champion" in status
