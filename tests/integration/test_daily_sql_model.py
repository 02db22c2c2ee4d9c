"""Bring your own data, as a data engineer does: the second example model (daily partitions, read
from SQL tables through an Airflow connection) run with `pipelines run` across a day without a
single row; then `pipelines new-model` scaffolds a model on the same warehouse, and it trains and
scores with nothing but its generated files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pandas as pd
import pytest
from sqlalchemy import Engine, select

from pipelines import tables
from pipelines.config import DEMO_WAREHOUSE_CONN_ID, REPO_ROOT, Settings
from pipelines.demo import ORDERS, write_orders_source
from pipelines.lake import open_partition, partition_key
from pipelines.spec import EXPECTATIONS_DIR, load_spec
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


def pipelines_run(dag_id: str, start: str, end: str) -> list[str]:
    """`pipelines run` over a range; every run line must say success."""
    lines = [
        line
        for line in cli_output("run", dag_id, "--start", start, "--end", end).splitlines()
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
        b = tables.backtest_metrics
        cohorts = dict(
            db.execute(
                select(b.c.cohort, b.c.n).where(
                    b.c.model_name == ORDERS, b.c.slice_column == "ALL", b.c.scored_by == "logged"
                )
            ).all()
        )
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
        EXPECTATIONS_DIR / f"{name}.json",
    ]
    assert not any(p.exists() for p in paths), "a shop_returns model is already in the repository"
    try:
        yield name
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def test_new_model_scaffolds_a_model_that_trains_and_scores(home: Settings, scaffolded: str) -> None:
    warehouse = f"sql://{DEMO_WAREHOUSE_CONN_ID}"
    out = cli_output(
        "new-model", scaffolded,
        "--events", f"{warehouse}/orders", "--labels", f"{warehouse}/returns",
        "--entity-key", "order_id", "--timestamp", "ordered_at", "--label", "returned",
        "--partition", "day", "--sample-start", "2025-12-01T00:00Z", "--sample-end", "2025-12-08T00:00Z",
    )  # fmt: skip
    assert f"wrote {REPO_ROOT / 'dags' / 'models' / f'{scaffolded}.yaml'}" in out
    spec = load_spec(REPO_ROOT / "dags" / "models" / f"{scaffolded}.yaml")
    assert spec.partition == "day" and spec.schedules.score == "0 0 * * *"
    assert spec.features.numeric == ["basket_value", "items", "discount_pct", "customer_tenure_days"]
    assert spec.features.categorical == ["channel", "category"]
    suite = json.loads((EXPECTATIONS_DIR / f"{scaffolded}.json").read_text())
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "channel") in kinds
    assert ("expect_column_values_to_be_between", "basket_value") in kinds
    assert ("expect_table_row_count_to_be_between", None) in kinds

    # Nothing existing is replaced: a second scaffold of the name is refused, naming the files.
    again = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "new-model", scaffolded, "--events", f"{warehouse}/orders",
         "--labels", f"{warehouse}/returns", "--entity-key", "order_id", "--timestamp", "ordered_at",
         "--label", "returned", "--sample-start", "2025-12-01T00:00Z", "--sample-end", "2025-12-02T00:00Z"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert again.returncode == 2 and "already exist; new-model writes new files only" in again.stderr
    assert load_spec(REPO_ROOT / "dags" / "models" / f"{scaffolded}.yaml") == spec

    pipelines_run(f"{scaffolded}__train", "2025-12-14T02:00Z", "2025-12-15T02:00Z")
    pipelines_run(f"{scaffolded}__score", "2025-12-24T00:00Z", "2025-12-26T00:00Z")  # the 25th is quiet
    assert open_partition(home.lake, f"{scaffolded}/scored/dt=2025-12-25").rows == 0
    assert open_partition(home.lake, f"{scaffolded}/scored/dt=2025-12-24").rows == orders_per_day(home)["2025-12-24"]
