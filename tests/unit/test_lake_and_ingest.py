from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.demo_data import DemoConfig, write_source
from pipelines.ingest import SourceMissingError, ingest
from pipelines.lake import (
    DATA_FILE,
    MANIFEST_FILE,
    Lake,
    LakeError,
    LocalLake,
    PartitionError,
    open_lake,
    read_partition,
    write_partition,
)
from pipelines.spec import load_spec
from tests.conftest import S3Endpoint
from tests.unit.test_spec import DEMO_SPEC

START = datetime(2026, 1, 2, 10, tzinfo=UTC)


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """The same partition tests on a local folder and on S3 (moto's server: real HTTP, real boto3)."""
    if request.param == "local":
        return open_lake(tmp_path / "lake")
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    return open_lake(f"s3://{endpoint.new_bucket()}/some/prefix", endpoint.options)


def test_partition_round_trip_and_manifest(lake: Lake) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", None]})
    partition = write_partition(lake, "m/raw/p", frame, {"source": "unit"})
    assert partition.rows == 2 and partition.manifest["source"] == "unit"
    assert partition.manifest["schema"] == {"a": "float64", "b": "object"}
    assert partition.uri == lake.uri_of("m/raw/p")
    read, _ = read_partition(lake, "m/raw/p")
    pd.testing.assert_frame_equal(read, frame)
    assert lake.exists(f"m/raw/p/{DATA_FILE}") and lake.exists(f"m/raw/p/{MANIFEST_FILE}")
    assert not lake.exists("m/raw/other/_manifest.json")


def test_tampered_partition_is_detected(lake: Lake) -> None:
    write_partition(lake, "p", pd.DataFrame({"a": [1]}), {})
    lake.put(f"p/{DATA_FILE}", b"not the bytes the manifest describes")
    with pytest.raises(PartitionError, match="does not match the sha256"):
        read_partition(lake, "p")


def test_partition_without_manifest_is_incomplete(lake: Lake) -> None:
    lake.put(f"p/{DATA_FILE}", b"half a write")
    with pytest.raises(PartitionError, match="never completely written"):
        read_partition(lake, "p")


def test_s3_lake_keys_live_under_its_prefix(s3_endpoint: S3Endpoint) -> None:
    import boto3

    bucket = s3_endpoint.new_bucket()
    lake = open_lake(f"s3://{bucket}/team/lake/", s3_endpoint.options)
    write_partition(lake, "m/raw/dt=2026-01-02/hour=10", pd.DataFrame({"a": [1]}), {})
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id="testing-key",
        aws_secret_access_key="testing-secret",
        region_name="us-east-1",
    )
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "team/lake/m/raw/dt=2026-01-02/hour=10/_manifest.json",
        "team/lake/m/raw/dt=2026-01-02/hour=10/data.parquet",
    ]
    assert lake.uri_of("x") == f"s3://{bucket}/team/lake/x"


def test_missing_bucket_and_bad_uri_are_named(s3_endpoint: S3Endpoint) -> None:
    lake = open_lake("s3://no-such-bucket/x", s3_endpoint.options)
    with pytest.raises(LakeError, match="bucket 'no-such-bucket' does not exist"):
        lake.put("k", b"1")
    with pytest.raises(LakeError, match="only a local folder, file:// or s3://"):
        open_lake("gs://bucket/x")
    with pytest.raises(LakeError, match="names no bucket"):
        open_lake("s3:///x")


def test_ingest_is_idempotent_and_typed(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    lake = LocalLake(tmp_path / "lake")
    write_source(tmp_path / "source" / "demo_churn", DemoConfig(), START, START + timedelta(hours=2))
    first = ingest(spec, tmp_path / "source", lake, START, START + timedelta(hours=2))
    second = ingest(spec, tmp_path / "source", lake, START, START + timedelta(hours=2))
    assert len(first) == 2
    assert [p.manifest for p in first] == [p.manifest for p in second]
    frame, partition = read_partition(lake, "demo_churn/raw/dt=2026-01-02/hour=10")
    assert str(frame["event_time"].dtype) == "datetime64[ns, UTC]"
    assert frame["monthly_charges"].dtype == "float64"
    assert partition.manifest["source"]["uri"].endswith("hour=10.csv")
    assert not list((tmp_path / "lake").rglob("*.tmp"))


def test_missing_source_hour_names_the_file(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    with pytest.raises(SourceMissingError, match=r"hour=10\.csv"):
        ingest(spec, tmp_path / "source", LocalLake(tmp_path / "lake"), START, START + timedelta(hours=1))


def test_unparseable_number_is_an_error(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    write_source(tmp_path / "source" / "demo_churn", DemoConfig(), START, START + timedelta(hours=1))
    path = tmp_path / "source" / "demo_churn" / "events" / "dt=2026-01-02" / "hour=10.csv"
    frame = pd.read_csv(path, dtype=str)
    frame.loc[3, "monthly_charges"] = "twelve"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"'monthly_charges' has non-numeric values, e.g. \['twelve'\]"):
        ingest(spec, tmp_path / "source", LocalLake(tmp_path / "lake"), START, START + timedelta(hours=1))
