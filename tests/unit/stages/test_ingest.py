"""Ingest: one staged, typed delivery per source hour; bad files named, nothing published."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.errors import BadDataError, SourceMissingError
from pipelines.core.spec import load_spec
from pipelines.dev.demo_data import DemoConfig, write_source
from pipelines.stages.ingest import ingest
from pipelines.storage.lake import MANIFEST_FILE, LocalLake, read_object
from pipelines.storage.sources import SourceAccess
from tests.unit.core.test_spec import DEMO_SPEC

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

    from pipelines.stages.ingest import to_numbers

    texts = ["1", "2.5", None, "x", "1e3", " 7 ", "nan", "inf", "-0", "0", "12345678901234567890", "", "2.5"]
    series = [pd.Series(texts, dtype=dtype) for dtype in (object, "string", "string[pyarrow]")]
    for values in (*series, pd.Series([0.0, -0.0, np.nan])):
        # Text of any storage parses as pandas parses Python strings (what read_csv gave before Arrow read CSV).
        original = values.astype(object) if values.dtype != "float64" else values
        expected = pd.to_numeric(original, errors="coerce").astype("float64").to_numpy()
        got = to_numbers(values).to_numpy()
        assert np.array_equal(got, expected, equal_nan=True) and got.dtype == np.float64
        assert (np.signbit(got) == np.signbit(expected)).all()  # -0 keeps its sign


def test_csv_missing_texts_are_pandas_own() -> None:
    from pandas._libs.parsers import STR_NA_VALUES

    from pipelines.storage.sources import CSV_MISSING

    assert sorted(CSV_MISSING) == sorted(STR_NA_VALUES)


EDGE_CSV = (
    "\ufeffcustomer_id,event_time,tenure_months,monthly_charges,support_calls,days_since_last_login,"
    "usage_minutes,plan,region,payment_method,note\n"
    'C000001,2026-01-02T10:00:00Z,007,"1.5",NA,,1e3,basic,north,card,"quoted, with comma"\n'
    'C000002,2026-01-02T10:00:01.5+00:00,0,-0,nan,inf,-inf,"NA",é ü,NULL,"line\nbreak ""q"""\n'
    "\n"
    "C000003,2026-01-02T10:00:02Z, 7 ,+2.5,None,#N/A,n/a,<NA>,,,\n"
    "C000004,2026-01-02T11:00:00Z,12345678901234567890,1,null,1.#IND,-1.#QNAN,premium, south ,cash, \n"
)


def test_a_csv_read_by_arrow_is_typed_and_staged_as_pandas_read_csv_would_have_it() -> None:
    """Arrow reads CSV files; what ingest makes of them is what it made of pandas' read_csv(dtype=str)."""
    import hashlib
    import io

    from pipelines.stages.ingest import type_events
    from pipelines.storage.sources import csv_by_arrow

    spec = load_spec(DEMO_SPEC)
    payload = EDGE_CSV.encode()
    by_arrow = csv_by_arrow(payload)
    assert by_arrow is not None
    by_pandas = pd.read_csv(io.BytesIO(payload), dtype=str, keep_default_na=True)
    typed_arrow, typed_pandas = (type_events(spec, raw, "edge.csv") for raw in (by_arrow, by_pandas))
    pd.testing.assert_frame_equal(typed_arrow, typed_pandas)
    assert typed_arrow["note"].isna().tolist() == [False, False, True, False]  # the extra column kept as text

    def parquet_sha(frame: pd.DataFrame) -> str:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return hashlib.sha256(buffer.getvalue()).hexdigest()

    assert parquet_sha(typed_arrow) == parquet_sha(typed_pandas)  # the same staged object, byte for byte
    bad = payload.replace(b'"1.5"', b"x1.5")
    errors = []
    for raw in (csv_by_arrow(bad), pd.read_csv(io.BytesIO(bad), dtype=str, keep_default_na=True)):
        with pytest.raises(BadDataError) as refused:
            type_events(spec, raw, "edge.csv")
        errors.append(str(refused.value))
    assert errors[0] == errors[1] and "'monthly_charges' has non-numeric values, e.g. ['x1.5']" in errors[0]


@pytest.mark.parametrize(
    "content",
    [
        b"a,b\n1,2\n3\n",  # a short row: pandas fills it with missing values
        b"a,b\n1,2,3\n4,5,6\n",  # one field more in every row: pandas takes the first as the index
        b"a,a\n1,2\n",  # repeated names: pandas renames the second
        b"a,\n1,2\n",  # an unnamed column: pandas names it
        b"a,b\n\xff,2\n",  # not UTF-8: pandas' error names it
        b"",
    ],
)
def test_a_csv_arrow_would_read_otherwise_is_left_to_pandas(content: bytes) -> None:
    from pipelines.storage.sources import csv_by_arrow

    assert csv_by_arrow(content) is None


def test_to_times_parses_as_to_datetime_does() -> None:
    """Each distinct text is parsed once; the result is what pd.to_datetime gives row by row."""
    from pipelines.stages.ingest import to_times

    texts = ["2026-01-02T10:00:00Z", "2026-01-02T10:00:00.123456+02:00", None, "yesterday", "2026-01-02",
             "2026-01-02 10:00:00-05:30", "", "2026-01-02T10:00:00Z", "2026-13-02T10:00:00Z"]  # fmt: skip
    for dtype in (object, "string", "string[pyarrow]"):
        values = pd.Series(texts, dtype=dtype, index=range(10, 10 + len(texts)))
        expected = pd.to_datetime(values.astype("string"), utc=True, format="ISO8601", errors="coerce")
        pd.testing.assert_series_equal(to_times(values), expected, check_names=False)


def test_quoted_line_breaks_across_arrow_blocks_are_read_as_pandas_reads_them() -> None:
    import io

    from pipelines.storage.sources import csv_by_arrow

    payload = ("a,b\n" + "".join(f'{i},"line {i}\nnext, ""q"""\n' for i in range(120_000))).encode()
    assert len(payload) > 2**21  # Arrow parses in blocks of 1 MiB: values span their edges
    by_arrow = csv_by_arrow(payload)
    assert by_arrow is not None
    by_pandas = pd.read_csv(io.BytesIO(payload), dtype=str, keep_default_na=True)
    pd.testing.assert_frame_equal(by_arrow.astype(object), by_pandas)


def test_missing_markers_mean_missing_in_every_source_and_bad_rows_are_set_aside_under_quarantine() -> None:
    """A parquet file (or a table) holding "n/a" in a numeric column says what a CSV file does: missing.
    A value that is no number and an exact copy of a row are set aside, one row each, naming why."""
    from pipelines.stages.ingest import SET_ASIDE_BECAUSE, split_off_set_aside, type_events

    spec = load_spec(DEMO_SPEC)
    raw = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3", "c1"],
            "event_time": ["2026-01-02T10:00:00Z"] * 3 + ["2026-01-02T10:00:00Z"],
            "monthly_charges": ["12.5", "n/a", "abc", "12.5"],  # object text, as a parquet string column holds it
            "plan": ["basic", "NULL", "basic", "basic"],
        }
    )
    with pytest.raises(BadDataError, match=r"'monthly_charges' has non-numeric values, e.g. \['abc'\]"):
        type_events(spec, raw, "day.parquet")  # policies block and warn: the read fails, naming the value
    typed = type_events(spec, raw, "day.parquet", set_aside=True)
    assert typed["monthly_charges"].isna().tolist() == [False, True, True, False]
    assert typed["plan"].isna().tolist() == [False, True, False, False]  # "NULL" is missing, as in a CSV
    kept, aside = split_off_set_aside(typed)
    assert kept["customer_id"].tolist() == ["c1", "c2"]  # one copy of the duplicated row is kept
    assert aside[SET_ASIDE_BECAUSE].tolist() == [
        "column 'monthly_charges' holds a value that is not a number: 'abc'",
        "an exact copy of an earlier row",
    ]
    untouched, nothing = split_off_set_aside(type_events(spec, raw.iloc[:2], "day.parquet"))
    assert len(untouched) == 2 and nothing.empty
