"""The tables on both backends: a SQLite file per test, and a database of the module's own on the
PostgreSQL server, both at this code's schema revision."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from pipelines.storage import database
from tests.conftest import postgres_database


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_database("pipelines_tables") as url:
        database.upgrade_schema(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 't.db'}"
        database.upgrade_schema(url)
    else:
        url = request.getfixturevalue("postgres_url")
    engine = database.make_engine(url)
    yield engine
    engine.dispose()
