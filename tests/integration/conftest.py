"""Fixtures shared by the integration modules; each module defines its own `home` (its storage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from pipelines.storage import database
from pipelines.storage.settings import Settings
from tests import REPO_ROOT


@pytest.fixture(scope="module")
def engine(home: Settings) -> Iterator[Engine]:
    """The tables of the module's home, on whichever backend it uses."""
    engine = database.make_engine(home.tables_url)
    yield engine
    engine.dispose()


def cli_output(*args: str, tables_url: str | None = None) -> str:
    """What `pipelines ARGS` prints, run as a user runs it (a fresh process), on the given tables."""
    env = {**os.environ, **({"PIPELINES_TABLES_URL": tables_url} if tables_url else {})}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
        env=env,
    )
    return result.stdout


def status_report(tables_url: str | None = None) -> dict[str, Any]:
    """`pipelines status --json`."""
    return dict(json.loads(cli_output("status", "--json", tables_url=tables_url)))
