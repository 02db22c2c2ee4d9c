"""The task wrapper's error mapping: permanent errors fail the task at once, transient ones are retried."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pipelines.airflow.context import fail_or_retry, failure_verdict, outcome_line
from pipelines.core.errors import BadDataError, SourceNotReadyError


def test_a_permanent_error_fails_at_once_with_its_message() -> None:
    error = BadDataError("/data/hour=10.csv: the file is empty")
    raised = fail_or_retry(error)
    assert isinstance(raised, AirflowFailException) and str(raised) == str(error)
    assert failure_verdict(error, raised, SimpleNamespace(try_number=1, max_tries=2)) == "failed, not retried"


def test_a_bug_fails_at_once_naming_its_type() -> None:
    raised = fail_or_retry(KeyError("device_type"))
    assert isinstance(raised, AirflowFailException)
    assert str(raised).startswith("unexpected KeyError: 'device_type' (not retried")


def test_a_transient_error_is_raised_as_is_for_airflow_to_retry() -> None:
    error = SourceNotReadyError("no source file yet")
    assert fail_or_retry(error) is error
    assert failure_verdict(error, error, SimpleNamespace(try_number=1, max_tries=2)) == (
        "failed (transient), will be retried: try 1 of 3"
    )
    assert failure_verdict(error, error, SimpleNamespace(try_number=3, max_tries=2)) == (
        "failed (transient) on its last try, 3 of 3"
    )


def test_airflow_s_own_exceptions_pass_through() -> None:
    skip = AirflowSkipException("nothing to do")
    assert fail_or_retry(skip) is skip


def test_the_outcome_line_keeps_the_scalars() -> None:
    assert outcome_line({"rows": 3, "model_version": "1", "scored": ["a"], "x": None}) == (
        "rows=3, model_version=1, x=None"
    )
    assert outcome_line([1, 2]) == "2 item(s)"


def test_a_read_only_tables_database_and_a_full_disk_fail_at_once_naming_the_file(tmp_path: Path) -> None:
    """Real faults: SQLite refusing a write to a read-only database, and the kernel's ENOSPC from
    /dev/full. Retrying cannot fix either: the task fails at once and says what to fix, not "unexpected"."""
    import sqlalchemy.exc
    from sqlalchemy import create_engine, text

    database = tmp_path / "tables.db"
    create_engine(f"sqlite:///{database}").connect().close()
    read_only = create_engine(f"sqlite:///file:{database}?mode=ro&uri=true")
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused, read_only.begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
    url = f"sqlite:///{database}"
    raised = fail_or_retry(refused.value, url)
    assert isinstance(raised, AirflowFailException)
    assert str(raised).startswith(f"the tables database is read-only to this process ({url})")

    with pytest.raises(OSError) as full, open("/dev/full", "wb") as handle:
        handle.write(b"a partition")
        handle.flush()
    raised = fail_or_retry(full.value)
    assert isinstance(raised, AirflowFailException) and str(raised).startswith("the disk is full")
    assert "not retried" in str(raised) and "unexpected" not in str(raised)
