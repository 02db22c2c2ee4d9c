"""Ingest: one staged, typed delivery per source hour; bad files named, nothing published."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.demo_data import DemoConfig, write_source
from pipelines.errors import BadDataError
from pipelines.ingest import SourceMissingError, ingest
from pipelines.lake import MANIFEST_FILE, LocalLake, read_object
from pipelines.sources import SourceAccess
from pipelines.spec import load_spec
from tests.unit.test_spec import DEMO_SPEC

START = datetime(2026, 1, 2, 10, tzinfo=UTC)


def test_ingest_stages_typed_deliveries_and_publishes_nothing(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    lake = LocalLake(tmp_path / "lake")
    write_source(tmp_path / "source" / "demo_churn", DemoConfig(), START, START + timedelta(hours=2))
    first = ingest(spec, SourceAccess(tmp_path / "source"), lake, START, START + timedelta(hours=2))
    second = ingest(spec, SourceAccess(tmp_path / "source"), lake, START, START + timedelta(hours=2))
    assert len(first) == 2 and first == second  # the same source stages the same objects
    assert not lake.exists(f"demo_churn/raw/dt=2026-01-02/hour=10/{MANIFEST_FILE}")  # validation publishes
    frame = read_object(lake, first[0], "the staged delivery")
    assert str(frame["event_time"].dtype) == "datetime64[ns, UTC]"
    assert frame["monthly_charges"].dtype == "float64"
    assert first[0]["source"]["uri"].endswith("hour=10.csv")
    assert first[0]["partition"] == "demo_churn/raw/dt=2026-01-02/hour=10"
    assert not list((tmp_path / "lake").rglob("*.tmp"))


def test_missing_source_hour_names_the_file(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    with pytest.raises(SourceMissingError, match=r"hour=10\.csv"):
        ingest(spec, SourceAccess(tmp_path / "source"), LocalLake(tmp_path / "lake"), START, START + timedelta(hours=1))


def test_unparseable_number_is_an_error(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    write_source(tmp_path / "source" / "demo_churn", DemoConfig(), START, START + timedelta(hours=1))
    path = tmp_path / "source" / "demo_churn" / "events" / "dt=2026-01-02" / "hour=10.csv"
    frame = pd.read_csv(path, dtype=str)
    frame.loc[3, "monthly_charges"] = "twelve"
    frame.to_csv(path, index=False)
    with pytest.raises(BadDataError, match=r"'monthly_charges' has non-numeric values, e.g. \['twelve'\]"):
        ingest(spec, SourceAccess(tmp_path / "source"), LocalLake(tmp_path / "lake"), START, START + timedelta(hours=1))


def source_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "source" / "demo_churn" / "events" / "dt=2026-01-02" / "hour=10.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b'customer_id,event_time\n"C1,2026-01-02T10:00:00Z\n', "not a readable CSV file"),
        (b"customer_id,event_time\nC1,yesterday\n", r"column 'event_time' has values that are not ISO 8601 times"),
    ],
)
def test_an_unreadable_source_file_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = source_file(tmp_path, content)
    lake = LocalLake(tmp_path / "lake")
    with pytest.raises(BadDataError, match=message) as refused:
        ingest(load_spec(DEMO_SPEC), SourceAccess(tmp_path / "source"), lake, START, START + timedelta(hours=1))
    assert str(path) in str(refused.value)
    assert not (tmp_path / "lake").exists()  # nothing staged


def test_to_numbers_parses_as_to_numeric_does() -> None:
    """Each distinct text is parsed once; the result is what pd.to_numeric gives row by row."""
    import numpy as np

    from pipelines.ingest import to_numbers

    texts = ["1", "2.5", None, "x", "1e3", " 7 ", "nan", "inf", "-0", "0", "12345678901234567890", "", "2.5"]
    for values in (pd.Series(texts, dtype=object), pd.Series(texts, dtype="string"), pd.Series([0.0, -0.0, np.nan])):
        expected = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
        got = to_numbers(values).to_numpy()
        assert np.array_equal(got, expected, equal_nan=True) and got.dtype == np.float64
        assert (np.signbit(got) == np.signbit(expected)).all()  # -0 keeps its sign
