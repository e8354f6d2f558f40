"""Run the Alembic migrations in ``migrations/`` (``alarmctl db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import OperationalError

from common.db.engine import create_engine_from_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class MigrationsMissing(RuntimeError):
    """The migrations directory is not where this installation expects it."""


class SchemaNotReady(RuntimeError):
    """The database cannot be used as it is; the message says what to run."""


def _config(url: str) -> Config:
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise MigrationsMissing(
            f"no Alembic migrations at {MIGRATIONS_DIR}; install calalarm from its source tree "
            "(pip install -e .) so that migrations/ sits beside the packages"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating it for SQLite)."""
    command.upgrade(_config(url), revision)


def current_revision(url: str) -> str | None:
    engine = create_engine_from_url(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config("sqlite://")).get_current_head()


def ensure_schema(url: str) -> None:
    """SQLite is migrated on start (embedded default); PostgreSQL must be migrated by the operator."""
    try:
        current, head = current_revision(url), head_revision()
        if current == head:
            return
        if url.startswith("sqlite"):
            upgrade(url)
            return
    except OperationalError as exc:
        raise SchemaNotReady(f"database is not reachable: {exc.orig}") from None
    raise SchemaNotReady(f"database is at revision {current or 'none'}, not {head}: run 'alarmctl db upgrade'")
