from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.demo_data import DemoConfig, write_source
from pipelines.ingest import SourceMissingError, ingest
from pipelines.lake import DATA_FILE, MANIFEST_FILE, PartitionError, read_partition, write_partition
from pipelines.spec import load_spec
from tests.unit.test_spec import DEMO_SPEC

START = datetime(2026, 1, 2, 10, tzinfo=UTC)


def test_partition_round_trip_and_manifest(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", None]})
    partition = write_partition(tmp_path / "p", frame, {"source": "unit"})
    assert partition.rows == 2 and partition.manifest["source"] == "unit"
    assert partition.manifest["schema"] == {"a": "float64", "b": "object"}
    read, _ = read_partition(tmp_path / "p")
    pd.testing.assert_frame_equal(read, frame)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [MANIFEST_FILE, DATA_FILE]


def test_tampered_partition_is_detected(tmp_path: Path) -> None:
    write_partition(tmp_path / "p", pd.DataFrame({"a": [1]}), {})
    pd.DataFrame({"a": [2]}).to_parquet(tmp_path / "p" / DATA_FILE)
    with pytest.raises(PartitionError, match="does not match the sha256"):
        read_partition(tmp_path / "p")


def test_partition_without_manifest_is_incomplete(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "p" / DATA_FILE)
    with pytest.raises(PartitionError, match="never completely written"):
        read_partition(tmp_path / "p")


def test_ingest_is_idempotent_and_typed(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    write_source(tmp_path / "source" / "demo_churn", DemoConfig(), START, START + timedelta(hours=2))
    first = ingest(spec, tmp_path / "source", tmp_path / "lake", START, START + timedelta(hours=2))
    second = ingest(spec, tmp_path / "source", tmp_path / "lake", START, START + timedelta(hours=2))
    assert len(first) == 2
    assert [p.manifest for p in first] == [p.manifest for p in second]
    frame, partition = read_partition(first[0].path)
    assert str(frame["event_time"].dtype) == "datetime64[ns, UTC]"
    assert frame["monthly_charges"].dtype == "float64"
    assert partition.manifest["source"]["uri"].endswith("hour=10.csv")
    assert len(list(first[0].path.parent.rglob("*.tmp"))) == 0


def test_missing_source_hour_names_the_file(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    with pytest.raises(SourceMissingError, match=r"hour=10\.csv"):
        ingest(spec, tmp_path / "source", tmp_path / "lake", START, START + timedelta(hours=1))


def test_unparseable_number_is_an_error(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    write_source(tmp_path / "source" / "demo_churn", DemoConfig(), START, START + timedelta(hours=1))
    path = tmp_path / "source" / "demo_churn" / "events" / "dt=2026-01-02" / "hour=10.csv"
    frame = pd.read_csv(path, dtype=str)
    frame.loc[3, "monthly_charges"] = "twelve"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"'monthly_charges' has non-numeric values, e.g. \['twelve'\]"):
        ingest(spec, tmp_path / "source", tmp_path / "lake", START, START + timedelta(hours=1))
