"""Shared fixtures: migrated databases on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alarmd.queue import AlarmQueue
from common.db import migrate
from tests.services import fresh_postgres_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'alarms.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A migrated database of its own for each test module."""
    with fresh_postgres_database() as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def clean_postgres_url(postgres_url: str) -> str:
    """The module's PostgreSQL database, emptied for this test."""
    _truncate(postgres_url)
    return postgres_url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "clean_postgres_url"))


@pytest.fixture
def queue(database_url: str) -> Iterator[AlarmQueue]:
    q = AlarmQueue.from_url(database_url)
    yield q
    q.close()


def _truncate(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE alarms, alarm_history, sources, deliveries RESTART IDENTITY"))
    engine.dispose()
