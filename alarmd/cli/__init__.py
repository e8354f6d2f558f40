"""``alarmctl``: the admin and enqueue command line.

Commands (``alarmctl COMMAND --help`` shows every option):

- ``db upgrade`` / ``db current``: the schema (Alembic).
- ``enqueue FILE...``: put calendar objects into the queue; a progress bar on stderr
  when it is a terminal, then a summary (enqueued, skipped with the reasons).
- ``preview FILE``: what an enqueue would queue, without the database.
- ``list``: instances, filtered (``--state``, ``--calid``, ``--uid``, ``--due-after``,
  ``--due-before``), sorted (``--sort``, ``--desc``) and paged (``--limit``, ``--offset``).
- ``show ID``: one instance, its payload and its whole history.
- ``stats``: counts per state, in flight, overdue and the oldest overdue's lateness,
  the most common failure reasons, pending instances due per hour ahead.
- ``retry ID`` / ``retry --failed``: send failed (``retry ID`` also expired) instances
  again, due now, attempts counted afresh.
- ``delete ID`` / ``delete --calid C [--uid U]``: remove instances (and a calendar's
  stored objects).
- ``purge --failed|--expired --older-than DURATION``: remove old failed/expired rows;
  their history stays until ``alarmd.history_retention``.
- ``watch``: a live view of dispatch (rates, lateness, failures) every ``--interval``.
- ``check``: configuration, database, bus and SMTP server, one line each.
- ``test-email ADDRESS``: one real message through notifyd's SMTP sender.

Every listing takes ``--json`` (for scripts); human output is tables. Durations are
written ``7d``, ``12h``, ``30m``, ``45s``, ``2w`` or combined (``1h30m``); instants as ISO
8601 (UTC unless an offset is given), ``now``, or an offset from now (``+2h``, ``-30m``).

Exit codes:

- 0 success (a bulk ``retry``/``delete``/``purge`` that matched nothing included);
- 1 the command ran but input was rejected or matched nothing: a calendar file or
  object that could not be read (the rest was enqueued), an ID that is not queued or
  not in a state the command acts on; ``test-email``: the server refused the message;
- 2 usage or configuration error (``check``: the configuration);
- 3 the database is unreachable or not migrated (``alarmctl db upgrade``);
- 4 another dependency is unreachable: ``check`` (the bus or the SMTP server: refused
  connection, TLS or certificate, AUTH), ``test-email`` (the message could not be
  handed over, or the server answered 4xx: try again later).

This module is the entry point (``alarmd.cli:main``): the ``alarmctl`` group, to which
the commands are added from the modules of the package, one per group of commands:

- :mod:`alarmd.cli.context`: the exit codes, ``fail``, the settings and queue (``Context``);
- :mod:`alarmd.cli.output`: JSON and tables; :mod:`alarmd.cli.timeparse`: durations, instants;
- :mod:`alarmd.cli.db`: ``db upgrade``, ``db current``;
- :mod:`alarmd.cli.enqueue`: ``enqueue``, ``preview``;
- :mod:`alarmd.cli.inspect_queue`: ``list``, ``show``, ``stats``;
- :mod:`alarmd.cli.change_queue`: ``retry``, ``delete``, ``purge``;
- :mod:`alarmd.cli.watch`: ``watch``;
- :mod:`alarmd.cli.check`: ``check``, ``test-email``.
"""

from __future__ import annotations

import click
import sqlalchemy as sa

from alarmd.cli.change_queue import delete, purge, retry
from alarmd.cli.check import check, test_email
from alarmd.cli.context import EXIT_DATABASE, Context, fail
from alarmd.cli.db import db
from alarmd.cli.enqueue import enqueue, preview
from alarmd.cli.inspect_queue import list_, show, stats
from alarmd.cli.watch import watch


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False), help="TOML configuration (default: $CALALARM_CONFIG).")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Inspect and feed the calalarm alarm queue.

    Exit codes: 0 success; 1 input rejected or nothing matched; 2 usage or configuration
    error; 3 database unreachable or not migrated; 4 bus or SMTP server unreachable.
    """
    ctx.obj = Context(config)


for _command in (db, enqueue, preview, list_, show, stats, retry, delete, purge, watch, check, test_email):
    cli.add_command(_command)


def main() -> None:
    try:
        cli(prog_name="alarmctl")
    except sa.exc.OperationalError as exc:  # the database went away while a command ran
        fail(f"database error: {str(exc.orig).strip()}", EXIT_DATABASE)
