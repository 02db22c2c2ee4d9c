"""`pipelines init DIR` writes a new project's folders and README, and never over an existing one."""

from pathlib import Path

import pytest

from pipelines.core.errors import ConfigError
from pipelines.core.project import find_project
from pipelines.dev.project import init_project


def test_init_makes_a_project_that_is_found_and_refuses_to_write_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINES_PROJECT", raising=False)
    root = tmp_path / "shop"
    written = init_project(root)
    assert sorted(p.relative_to(root).as_posix() for p in written) == [
        ".gitignore", "README.md", "dags/models/README.md", "expectations/.gitkeep",
    ]  # fmt: skip
    assert find_project(root / "dags").root == root.resolve()
    assert (
        "PIPELINES_PROJECT" in (root / "README.md").read_text() and ".pipelines/" in (root / ".gitignore").read_text()
    )
    before = {p: p.read_bytes() for p in written}
    with pytest.raises(ConfigError, match="exist already"):
        init_project(root)
    assert {p: p.read_bytes() for p in written} == before  # nothing rewritten
