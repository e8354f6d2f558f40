"""What every ``alarmctl`` command shares: the exit codes, :func:`fail`, and the
:class:`Context` that loads the settings and opens the queue on first use."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
import sqlalchemy as sa

from alarmd.queue import AlarmQueue
from common.db import migrate
from common.settings import ConfigError, Settings, load_settings

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_UNREACHABLE = 4


class Context:
    """The ``--config`` option, and what is made from it when a command asks."""

    def __init__(self, config: str | None) -> None:
        self._config = config
        self._settings: Settings | None = None

    @property
    def config(self) -> str | None:
        return self._config

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self._config)
            except ConfigError as exc:
                fail(f"configuration: {exc}", EXIT_USAGE)
        return self._settings

    def queue(self) -> AlarmQueue:
        settings = self.settings
        problem = database_problem(settings.database.url)
        if problem is not None:
            fail(problem, EXIT_DATABASE)
        return AlarmQueue.from_settings(settings)


def fail(message: str, code: int) -> NoReturn:
    """Print ``alarmctl: MESSAGE`` on stderr and exit with ``code``."""
    click.echo(f"alarmctl: {message}", err=True)
    sys.exit(code)


def safe_url(url: str) -> str:
    """A database URL fit to print: the password hidden."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def database_problem(url: str) -> str | None:
    """Why the database at ``url`` cannot be used (with the fix), or None."""
    try:
        current, head = migrate.current_revision(url), migrate.head_revision()
    except sa.exc.OperationalError as exc:
        return f"database {safe_url(url)} is not reachable: {str(exc.orig).strip()}"
    if current != head:
        return f"database {safe_url(url)} is at revision {current or 'none'}, not {head}: run 'alarmctl db upgrade'"
    return None
