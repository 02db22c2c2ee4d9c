"""The Models pages serve the lake and the Data Docs site, and nothing outside them."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import HTTPException

from pipelines.airflow.ui import lake_key, safe_key, within
from pipelines.storage.lake import LocalLake, S3Lake


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../tables.db", "demo/../../tables.db", "demo/./x", "demo\\..\\x", "demo/\0x"]
)
def test_a_key_that_could_leave_the_lake_is_not_found(key: str) -> None:
    with pytest.raises(HTTPException) as refused:
        safe_key(key)
    assert refused.value.status_code == 404


def test_files_are_served_only_from_under_their_root(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "report.html").write_text("<html>")
    (tmp_path / "secret.txt").write_text("no")
    (root / "demo" / "link.txt").symlink_to(tmp_path / "secret.txt")  # a link out of the lake
    assert within(root, "demo/report.html") == (root / "demo" / "report.html").resolve()
    for key in ("demo/link.txt", "demo/missing.html", "demo"):
        with pytest.raises(HTTPException):
            within(root, key)


def test_recorded_uris_map_to_lake_keys_only_inside_the_lake(tmp_path: Path) -> None:
    local = LocalLake(tmp_path / "lake")
    assert lake_key(local, local.uri_of("demo/reports/a.html")) == "demo/reports/a.html"
    assert lake_key(local, (tmp_path / "elsewhere.html").as_uri()) is None
    assert lake_key(local, None) is None
    s3 = S3Lake("bucket", "lake")
    assert lake_key(s3, "s3://bucket/lake/demo/a.json") == "demo/a.json"
    assert lake_key(s3, "s3://bucket/lakeside/demo/a.json") is None
