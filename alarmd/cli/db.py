"""``alarmctl db upgrade`` and ``db current``: the database schema (Alembic migrations)."""

from __future__ import annotations

import click
import sqlalchemy as sa

from alarmd.cli.context import EXIT_DATABASE, Context, fail, safe_url
from common.db import migrate


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(obj: Context, revision: str) -> None:
    """Apply migrations up to REVISION."""
    url = obj.settings.database.url
    try:
        migrate.upgrade(url, revision)
    except sa.exc.OperationalError as exc:
        fail(f"database {safe_url(url)} is not reachable: {exc.orig}", EXIT_DATABASE)
    click.echo(f"database {safe_url(url)} is at revision {migrate.current_revision(url)}")


@db.command("current")
@click.pass_obj
def db_current(obj: Context) -> None:
    """Show the database's revision and the newest one this build knows."""
    url = obj.settings.database.url
    click.echo(f"current: {migrate.current_revision(url) or 'none'}\nhead:    {migrate.head_revision()}")
