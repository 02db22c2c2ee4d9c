"""Upserts on both backends we support: SQLite (embedded default) and the PostgreSQL on this machine."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pandas as pd
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from pipelines.core import errors
from pipelines.core.errors import BadDataError
from pipelines.storage import bulk, database, tables


def prediction_rows(model: str, n: int, score: float) -> list[dict[str, object]]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {
            "model_name": model,
            "entity_id": f"E{i}",
            "as_of": at + timedelta(seconds=i),
            "model_version": "1",
            "score": score,
            "features_sha256": "f" * 64,
            "dag_run_id": f"run-{score}",
            "scored_at": at,
        }
        for i in range(n)
    ]


def snapshot(engine: Engine, model: str) -> list[tuple[object, ...]]:
    p = tables.predictions
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(select(p).where(p.c.model_name == model).order_by(p.c.entity_id))]


def test_upsert_replay_changes_nothing_and_new_score_updates(engine: Engine) -> None:
    model = f"m_{uuid4().hex[:8]}"  # PostgreSQL is shared between runs: keep each test's rows apart
    key = ["model_name", "entity_id", "as_of"]
    watch = ["model_version", "score", "features_sha256"]
    bulk.upsert(engine, tables.predictions, prediction_rows(model, 25_000, 0.25), key, watch)
    before = snapshot(engine, model)
    replay = prediction_rows(model, 25_000, 0.25)
    for row in replay:
        row["dag_run_id"] = "a-retry"  # a retry of the same scoring must not rewrite the row
    bulk.upsert(engine, tables.predictions, replay, key, watch)
    assert snapshot(engine, model) == before
    assert tables.count_rows(engine, tables.predictions, model) == 25_000

    bulk.upsert(engine, tables.predictions, prediction_rows(model, 10, 0.75), key, watch)
    after = snapshot(engine, model)
    assert len(after) == 25_000
    assert sum(1 for row in after if row[4] == 0.75) == 10


def prediction_frame(model: str, n: int, score: float, start: int = 0) -> pd.DataFrame:
    rows = pd.DataFrame(prediction_rows(model, n + start, score)).iloc[start:]
    rows["unseen_categories"] = 0
    return rows.reset_index(drop=True)


def in_hour(model: str) -> Any:
    p = tables.predictions
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return (p.c.model_name == model) & (p.c.as_of >= at) & (p.c.as_of < at + timedelta(hours=1))


def test_merge_frame_bulk_path_matches_upsert_and_replays_to_nothing(engine: Engine) -> None:
    model, twin = f"m_{uuid4().hex[:8]}", f"m_{uuid4().hex[:8]}"
    key = ["model_name", "entity_id", "as_of"]
    watch = ["model_version", "score", "features_sha256", "unseen_categories"]
    frame = prediction_frame(model, 20_000, 0.25)
    assert (
        bulk.merge_frame(engine, tables.predictions, frame, key, update_when_changed=watch, replaces=in_hour(model))
        == 0
    )
    # The bulk path (COPY / executemany into a staging table) stores exactly what the row-wise upsert stores.
    bulk.upsert(engine, tables.predictions, prediction_frame(twin, 20_000, 0.25).to_dict("records"), key, watch)
    assert [r[1:] for r in snapshot(engine, model)] == [r[1:] for r in snapshot(engine, twin)]

    before = snapshot(engine, model)
    retry = frame.assign(dag_run_id="a-retry")
    bulk.merge_frame(engine, tables.predictions, retry, key, update_when_changed=watch, replaces=in_hour(model))
    assert snapshot(engine, model) == before  # not even dag_run_id moved: the rows did not change


def test_merge_frame_replaces_its_scope_and_nothing_else(engine: Engine) -> None:
    model = f"m_{uuid4().hex[:8]}"
    key = ["model_name", "entity_id", "as_of"]
    bulk.merge_frame(engine, tables.predictions, prediction_frame(model, 100, 0.25), key, replaces=in_hour(model))
    # The source of that hour was corrected: 10 rows fewer. They go, in the same transaction.
    deleted = bulk.merge_frame(
        engine, tables.predictions, prediction_frame(model, 90, 0.5, start=10), key, replaces=in_hour(model)
    )
    rows = snapshot(engine, model)
    assert deleted == 10 and len(rows) == 90 and {r[4] for r in rows} == {0.5}
    assert rows[0][1] == "E10"


def test_merge_frame_refuses_duplicate_keys_and_writes_nothing(engine: Engine) -> None:
    model = f"m_{uuid4().hex[:8]}"
    frame = prediction_frame(model, 10, 0.25)
    frame = pd.concat([frame, frame.iloc[[3]]], ignore_index=True)
    with pytest.raises(BadDataError, match=r"2 rows share a key .*'entity_id': 'E3'"):
        bulk.merge_frame(engine, tables.predictions, frame, ["model_name", "entity_id", "as_of"])
    assert tables.count_rows(engine, tables.predictions, model) == 0


def test_merge_frame_failure_rolls_back_everything(engine: Engine) -> None:
    model = f"m_{uuid4().hex[:8]}"
    key = ["model_name", "entity_id", "as_of"]
    bulk.merge_frame(engine, tables.predictions, prediction_frame(model, 50, 0.25), key, replaces=in_hour(model))
    before = snapshot(engine, model)
    broken = prediction_frame(model, 40, 0.5)
    broken.loc[7, "score"] = None  # NOT NULL: the merge fails after the stage was loaded
    with pytest.raises(IntegrityError):
        bulk.merge_frame(engine, tables.predictions, broken, key, replaces=in_hour(model))
    assert snapshot(engine, model) == before


def test_merge_frame_keeps_every_replaced_row_in_the_history(engine: Engine) -> None:
    model = f"m_{uuid4().hex[:8]}"
    key = ["model_name", "entity_id", "as_of"]
    watch = ["model_version", "score", "features_sha256", "unseen_categories"]
    h = tables.predictions_history
    at = datetime(2026, 1, 2, tzinfo=UTC)
    history = (h, {"superseded_at": at, "superseded_by_run": "run-2"})
    first = prediction_frame(model, 100, 0.25)
    bulk.merge_frame(
        engine, tables.predictions, first, key, update_when_changed=watch, replaces=in_hour(model), history=history
    )
    assert tables.count_rows(engine, h, model) == 0  # nothing replaced yet
    second = prediction_frame(model, 90, 0.5, start=10)  # 90 rows re-scored, 10 gone from the source
    second.loc[:39, "score"] = 0.25  # 40 of them unchanged
    deleted = bulk.merge_frame(
        engine, tables.predictions, second, key, update_when_changed=watch, replaces=in_hour(model), history=history
    )
    assert deleted == 10
    with engine.connect() as connection:
        kept = connection.execute(
            select(h.c.entity_id, h.c.score, h.c.superseded_by_run).where(h.c.model_name == model)
        ).all()
    # The 10 removed and the 50 changed rows, as they were; the 40 unchanged rows are not history.
    assert len(kept) == 60 and {r.score for r in kept} == {0.25} and {r.superseded_by_run for r in kept} == {"run-2"}
    assert {r.entity_id for r in kept} == {f"E{i}" for i in [*range(10), *range(50, 100)]}
    bulk.merge_frame(
        engine, tables.predictions, second, key, update_when_changed=watch, replaces=in_hour(model), history=history
    )
    assert tables.count_rows(engine, h, model) == 60  # the same merge again replaces nothing


def test_a_record_is_never_rewritten(engine: Engine) -> None:
    model = f"m_{uuid4().hex[:8]}"
    key = ["model_name", "entity_id", "as_of"]
    bulk.merge_frame(engine, tables.predictions, prediction_frame(model, 10, 0.25), key, refuse_changed=["score"])
    before = snapshot(engine, model)
    more = prediction_frame(model, 12, 0.25).assign(dag_run_id="other")  # two new rows, ten the same scores
    bulk.merge_frame(engine, tables.predictions, more, key, refuse_changed=["score"])
    assert set(before) < set(snapshot(engine, model)) and tables.count_rows(engine, tables.predictions, model) == 12
    with pytest.raises(errors.RecordConflictError, match=r"'score': 0.25.*'new_score': 0.5"):
        bulk.merge_frame(engine, tables.predictions, prediction_frame(model, 12, 0.5), key, refuse_changed=["score"])
    assert set(before) < set(snapshot(engine, model))


def test_a_read_only_engine_refuses_every_write(engine: Engine) -> None:
    import sqlalchemy.exc
    from sqlalchemy import insert

    reader = database.make_engine(engine.url.render_as_string(hide_password=False), read_only=True)
    row = {
        "model_name": "read_only_probe",
        "entity_id": "E1",
        "as_of": datetime(2026, 1, 3, tzinfo=UTC),
        "model_version": "1",
        "score": 0.5,
        "features_sha256": "0" * 64,
        "dag_run_id": "test",
        "scored_at": datetime(2026, 1, 3, tzinfo=UTC),
    }
    with pytest.raises(sqlalchemy.exc.DBAPIError, match=r"read-only|readonly"), reader.begin() as connection:
        connection.execute(insert(tables.predictions), [row])
    assert tables.count_rows(reader, tables.predictions, "read_only_probe") == 0
    reader.dispose()


def awkward_predictions(model: str) -> pd.DataFrame:
    """Values a bulk path can get wrong: microseconds, text needing quotes, empty text, NULLs, floats."""
    at = datetime(2026, 1, 1, 3, 4, 5, 678901, tzinfo=UTC)
    return pd.DataFrame(
        {
            "model_name": model,
            "entity_id": pd.Series(["plain", 'with "quotes", commas', "line\nbreak", "é ü 😀"], dtype="string"),
            "as_of": pd.Series(
                [at, at + timedelta(microseconds=1), at + timedelta(hours=1), at], dtype="datetime64[ns, UTC]"
            ),
            "model_version": "1",
            "score": [0.1 + 0.2, 1e-300, -0.0, 0.5],
            "features_sha256": "f" * 64,
            "dag_run_id": "run",
            "scored_at": at,
            "unseen_categories": pd.Series([0, None, 2, 3], dtype="Int64"),
            "predicted_class": pd.Series(["", None, "b", "a,b"], dtype="string"),
            "class_probabilities": pd.Series(['{"a": 0.25, "b": 0.75}', None, "{}", '{"a,b": 1.0}'], dtype="string"),
        }
    )


def test_insert_frame_stores_what_a_row_by_row_insert_stores(engine: Engine) -> None:
    written, rowwise = f"m_{uuid4().hex[:8]}", f"m_{uuid4().hex[:8]}"
    with engine.begin() as connection:
        bulk.insert_frame(connection, tables.predictions, awkward_predictions(written))
        records = awkward_predictions(rowwise).astype(object).to_dict("records")
        connection.execute(
            tables.predictions.insert(),
            [{k: None if pd.isna(v) else v for k, v in r.items()} for r in records],
        )
    assert [r[1:] for r in snapshot(engine, written)] == [r[1:] for r in snapshot(engine, rowwise)]
    assert len(snapshot(engine, written)) == 4


def test_insert_frame_refuses_a_taken_key_and_writes_nothing(engine: Engine) -> None:
    model = f"m_{uuid4().hex[:8]}"
    frame = awkward_predictions(model)
    with engine.begin() as connection:
        bulk.insert_frame(connection, tables.predictions, frame.iloc[:1])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        bulk.insert_frame(connection, tables.predictions, frame)  # the first row again: all of it rolls back
    assert len(snapshot(engine, model)) == 1


def test_status_counts_the_day_up_to_the_latest_prediction(engine: Engine) -> None:
    from pipelines.views.status import recent_rows

    model = f"m_{uuid4().hex[:8]}"
    latest = datetime(2026, 1, 3, 12, tzinfo=UTC)
    frame = awkward_predictions(model).iloc[:1]
    hours_before = [48, 25, 23, 1, 0]  # the first two are older than the 24 h before the latest
    frame = pd.concat([frame.assign(as_of=latest - timedelta(hours=h)) for h in hours_before], ignore_index=True)
    with engine.begin() as connection:
        bulk.insert_frame(connection, tables.predictions, frame)
    count, at = recent_rows(engine, tables.predictions, model)
    assert count == 3 and at is not None and at.replace(tzinfo=UTC) == latest
    assert recent_rows(engine, tables.predictions, f"m_{uuid4().hex[:8]}") == (0, None)


def test_stale_planner_statistics_are_refreshed_once() -> None:
    """A fresh PostgreSQL table is analyzed before the backtest's join; a second call finds it current."""
    from tests.conftest import postgres_database

    with postgres_database("pipelines_stats") as url:
        database.upgrade_schema(url)
        engine = database.make_engine(url)
        try:
            with engine.begin() as connection:
                bulk.insert_frame(connection, tables.predictions, awkward_predictions("m"))
            assert sorted(database.refresh_statistics(engine, tables.predictions, tables.labels)) == [
                "labels",
                "predictions",
            ]
            assert database.refresh_statistics(engine, tables.predictions, tables.labels) == []
        finally:
            engine.dispose()
    from sqlalchemy import create_engine

    assert database.refresh_statistics(create_engine("sqlite://"), tables.predictions) == []  # SQLite needs none


def awkward_row(table: Any, i: int) -> dict[str, object]:
    """Row i of a table, each column a value of its type a bulk path can get wrong (NULL where nullable)."""
    from sqlalchemy import Boolean, DateTime, Float, Integer

    at = datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) + timedelta(days=400 * i, microseconds=i)
    values: dict[str, object] = {}
    for column in table.columns:
        if column.primary_key and column.autoincrement is True:
            continue
        if column.nullable and i == 2:
            values[column.name] = None
        elif isinstance(column.type, DateTime):
            values[column.name] = at
        elif isinstance(column.type, Boolean):
            values[column.name] = i % 2 == 0
        elif isinstance(column.type, Integer):
            values[column.name] = [2**31 - 1, -(2**31), 7][i]
        elif isinstance(column.type, Float):
            values[column.name] = [0.1 + 0.2, -0.0, 1e-300][i]
        else:
            values[column.name] = [f'r{i} "q", c\n', f"r{i} é 😀", f"r{i}"][i][: column.type.length or None]
    return values


@pytest.mark.parametrize("table", tables.metadata.sorted_tables, ids=lambda t: t.name)
def test_every_table_bulk_loads_what_a_row_by_row_insert_stores(engine: Engine, table: Any) -> None:
    """The bulk path (binary COPY on PostgreSQL) takes every column type of every table, as an insert does."""
    from sqlalchemy import delete

    rows = [awkward_row(table, i) for i in range(3)]
    frame = pd.DataFrame(rows)
    integers = [c for c in frame if isinstance(rows[0][c], int) and not isinstance(rows[0][c], bool)]
    frame = frame.astype(dict.fromkeys(integers, "Int64"))  # nullable, as the score stage sends them
    stored = []
    for load in ("bulk", "rows"):
        with engine.begin() as connection:
            connection.execute(delete(table))
            if load == "bulk":
                bulk.insert_frame(connection, table, frame)
            else:
                connection.execute(table.insert(), rows)
            columns = [table.c[name] for name in frame.columns]
            stored.append(sorted(map(tuple, connection.execute(select(*columns)).all()), key=repr))
    assert stored[0] == stored[1]
    assert len(stored[0]) == 3


def test_bulk_insert_streams_frames_and_a_conflict_in_a_later_one_writes_nothing(engine: Engine) -> None:
    model = f"m_{uuid4().hex[:8]}"
    frame = awkward_predictions(model)
    columns = list(frame.columns)
    with engine.begin() as connection, bulk.bulk_insert(connection, tables.predictions, columns) as write:
        write(frame.iloc[:2])
        write(frame.iloc[2:])
    assert len(snapshot(engine, model)) == 4
    other = f"m_{uuid4().hex[:8]}"
    with (
        pytest.raises(IntegrityError),
        engine.begin() as connection,
        bulk.bulk_insert(connection, tables.predictions, columns) as write,
    ):
        write(awkward_predictions(other))
        write(awkward_predictions(other).iloc[1:2])  # a key of the first frame again
    assert snapshot(engine, other) == []


def test_bulk_insert_names_the_column_of_a_value_its_type_cannot_hold(postgres_url: str) -> None:
    """Only PostgreSQL's binary COPY checks: SQLite stores any value in any column."""
    engine = database.make_engine(postgres_url)
    model = f"m_{uuid4().hex[:8]}"
    frame = awkward_predictions(model).astype({"unseen_categories": "float64"})
    for value, problem in [(1.5, r"1\.5"), (2.0**40, "32-bit")]:
        frame.loc[1, "unseen_categories"] = value
        with pytest.raises(BadDataError, match=rf"predictions\.unseen_categories.*{problem}"), engine.begin() as c:
            bulk.insert_frame(c, tables.predictions, frame)
    assert snapshot(engine, model) == []
    engine.dispose()


def test_a_failure_while_bulk_loading_writes_nothing_and_is_raised_as_it_was(engine: Engine) -> None:
    """The caller failing between two frames (a scoring error, say) aborts the load: its own error comes out."""
    model = f"m_{uuid4().hex[:8]}"
    frame = awkward_predictions(model)
    with (
        pytest.raises(BadDataError, match="between two frames"),
        engine.begin() as connection,
        bulk.bulk_insert(connection, tables.predictions, list(frame.columns)) as write,
    ):
        write(frame.iloc[:2])
        raise BadDataError("between two frames")
    assert snapshot(engine, model) == []


def test_bulk_insert_names_the_column_of_a_mixed_text_column(postgres_url: str) -> None:
    engine = database.make_engine(postgres_url)
    model = f"m_{uuid4().hex[:8]}"
    frame = awkward_predictions(model).astype({"entity_id": object})
    frame.loc[1, "entity_id"] = 7  # numbers and text in one object column
    frame.loc[2, "entity_id"] = b"bytes"
    with pytest.raises(BadDataError, match=r"predictions\.entity_id"), engine.begin() as connection:
        bulk.insert_frame(connection, tables.predictions, frame)
    assert snapshot(engine, model) == []
    engine.dispose()


def test_missing_tables_in_the_default_home_ask_where_the_home_is_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PIPELINES_HOME the home is a guess: `db upgrade` there could start a second, empty home."""
    from pipelines.core.errors import SchemaError
    from pipelines.storage.database import make_engine

    monkeypatch.delenv("PIPELINES_HOME", raising=False)
    monkeypatch.delenv("PIPELINES_TABLES_URL", raising=False)
    with pytest.raises(SchemaError, match="PIPELINES_HOME is not set, so this is the default home; if your"):
        make_engine(f"sqlite:///{tmp_path / 'default.db'}")
    monkeypatch.setenv("PIPELINES_HOME", str(tmp_path))
    with pytest.raises(SchemaError, match=r"do not exist yet: run `pipelines db upgrade`"):
        make_engine(f"sqlite:///{tmp_path / 'chosen.db'}")
