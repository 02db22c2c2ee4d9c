"""The lake: content-addressed objects, manifests, integrity checks, on a local folder and on S3."""

from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.errors import LakeError, PartitionError
from pipelines.storage.lake import (
    DATA_FILE,
    MANIFEST_FILE,
    Lake,
    LocalLake,
    object_key,
    open_lake,
    read_object,
    read_partition,
    write_partition,
)
from tests.conftest import S3Endpoint


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
    # The data is stored by content, the partition is its manifest naming it.
    assert partition.manifest["data"] == object_key("m", partition.sha256) and lake.exists(partition.manifest["data"])
    assert lake.exists(f"m/raw/p/{MANIFEST_FILE}") and not lake.exists(f"m/raw/p/{DATA_FILE}")
    assert not lake.exists("m/raw/other/_manifest.json")


def test_republishing_keeps_the_object_the_partition_named(lake: Lake) -> None:
    first = write_partition(lake, "m/raw/p", pd.DataFrame({"a": [1.0]}), {})
    second = write_partition(lake, "m/raw/p", pd.DataFrame({"a": [2.0]}), {})
    assert read_partition(lake, "m/raw/p")[0]["a"].tolist() == [2.0]
    assert read_object(lake, first.manifest, "the first manifest")["a"].tolist() == [1.0]  # readable by sha256
    assert first.sha256 != second.sha256


def test_a_partition_of_the_earlier_layout_is_still_read(lake: Lake) -> None:
    import hashlib
    import io
    import json

    buffer = io.BytesIO()
    pd.DataFrame({"a": [3]}).to_parquet(buffer, index=False)
    lake.put(f"m/raw/old/{DATA_FILE}", buffer.getvalue())
    lake.put(
        f"m/raw/old/{MANIFEST_FILE}",
        json.dumps({"rows": 1, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}).encode(),
    )
    assert read_partition(lake, "m/raw/old")[0]["a"].tolist() == [3]


def test_tampered_partition_is_detected(lake: Lake) -> None:
    partition = write_partition(lake, "p", pd.DataFrame({"a": [1]}), {})
    lake.put(partition.manifest["data"], b"not the bytes the manifest describes")
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
    partition = write_partition(lake, "m/raw/dt=2026-01-02/hour=10", pd.DataFrame({"a": [1]}), {})
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id="testing-key",
        aws_secret_access_key="testing-secret",
        region_name="us-east-1",
    )
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        f"team/lake/m/objects/{partition.sha256}.parquet",
        "team/lake/m/raw/dt=2026-01-02/hour=10/_manifest.json",
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


def test_a_partition_streamed_in_chunks_is_the_same_object_as_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The score stage writes a new hour chunk by chunk and a re-run whole: the bytes must agree."""
    import numpy as np

    from pipelines.stages import score
    from pipelines.storage.lake import ParquetStream, partition_chunks

    monkeypatch.setattr(score, "CHUNK_ROWS", 100)
    lake = LocalLake(tmp_path)
    frame = pd.DataFrame(
        {
            "id": pd.Series([f"C{i}" for i in range(250)], dtype="string"),
            "at": pd.date_range("2026-01-01", periods=250, freq="s", tz="UTC"),
            "x": np.where(np.arange(250) % 7 == 0, np.nan, np.arange(250) / 3),
            # all-null in the last chunk: the stream keeps the first chunk's type
            "note": pd.Series(["a"] * 100 + [None] * 150, dtype="string"),
        }
    )
    write_partition(lake, "m/raw/dt=2026-01-01", frame, {"model": "m"})
    chunks = list(partition_chunks(lake, "m/raw/dt=2026-01-01", 100))
    assert [len(c) for c in chunks] == [100, 100, 50]
    streamed, whole = ParquetStream(), ParquetStream()
    for chunk in chunks:
        streamed.write(chunk)
    for chunk in score.chunks_of(read_partition(lake, "m/raw/dt=2026-01-01")[0]):
        whole.write(chunk)
    a, b = streamed.stage(lake, "m", {}), whole.stage(lake, "m", {})
    assert a["sha256"] == b["sha256"] and a["rows"] == 250
    write_partition(lake, "m/raw/empty", frame.head(0), {"model": "m"})
    (empty,) = partition_chunks(lake, "m/raw/empty", 100)
    assert empty.empty and list(empty.columns) == list(frame.columns)


def test_writing_the_same_content_again_repairs_a_damaged_object(lake: Lake, caplog: pytest.LogCaptureFixture) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    partition = write_partition(lake, "m/raw/p", frame, {"source": {"kind": "files", "uri": "/data/feed/10.csv"}})
    key = str(partition.manifest["data"])
    damaged = bytearray(lake.get(key))
    for at in (10, 20, 30):
        damaged[at] ^= 0xFF  # three flipped bytes, the length kept
    lake.put(key, bytes(damaged))
    with pytest.raises(PartitionError, match=r"it is rebuilt from its source /data/feed/10.csv \(restore that first"):
        read_partition(lake, "m/raw/p")
    with caplog.at_level("WARNING", logger="pipelines.storage.lake"):
        write_partition(lake, "m/raw/p", frame, partition.manifest)  # the task's rerun: the same content
    assert f"repaired {lake.uri_of(key)}: its bytes did not match its address" in caplog.text
    pd.testing.assert_frame_equal(read_partition(lake, "m/raw/p")[0], frame)
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipelines.storage.lake"):
        write_partition(lake, "m/raw/p", frame, partition.manifest)  # intact: kept, nothing said
    assert caplog.text == ""


def test_keys_lists_a_folder_of_the_lake(lake: Lake) -> None:
    write_partition(lake, "m/scored/dt=2026-01-02/hour=03", pd.DataFrame({"a": [1]}), {})
    write_partition(lake, "m/scored/dt=2026-01-02/hour=04", pd.DataFrame({"a": [2]}), {})
    write_partition(lake, "other/scored/dt=2026-01-02/hour=03", pd.DataFrame({"a": [3]}), {})
    assert lake.keys("m/scored/") == [
        f"m/scored/dt=2026-01-02/hour=03/{MANIFEST_FILE}",
        f"m/scored/dt=2026-01-02/hour=04/{MANIFEST_FILE}",
    ]
    assert lake.keys("absent/") == []
