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
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, getaddresses, make_msgid
from itertools import count
from pathlib import Path
from typing import Any, NoReturn

import click
import sqlalchemy as sa
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from alarmd.ical import CalendarError, parse_calendar
from alarmd.queue import AlarmQueue, InvalidLocale, PutResult, State, UnknownTimeZone, parse_tz
from alarmd.triggers import plan_alarms, plan_queue
from common.clock import utcnow
from common.db import migrate
from common.ens import BusError, BusUnavailable, create_bus
from common.settings import ConfigError, Settings, load_settings

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_UNREACHABLE = 4

HISTORY_EVENTS_OF_FAILURE = ("failed", "retry", "expired")
RATE_EVENTS = ("published", "delivered", "retry", "failed", "expired")


class Context:
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
        problem = _database_problem(settings.database.url)
        if problem is not None:
            fail(problem, EXIT_DATABASE)
        return AlarmQueue.from_settings(settings)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"alarmctl: {message}", err=True)
    sys.exit(code)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _safe_url(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _database_problem(url: str) -> str | None:
    """Why the database at ``url`` cannot be used (with the fix), or None."""
    try:
        current, head = migrate.current_revision(url), migrate.head_revision()
    except sa.exc.OperationalError as exc:
        return f"database {_safe_url(url)} is not reachable: {str(exc.orig).strip()}"
    if current != head:
        return f"database {_safe_url(url)} is at revision {current or 'none'}, not {head}: run 'alarmctl db upgrade'"
    return None


# --------------------------------------------------------------------------- pure helpers

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|w|d|h|m|s))+")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``45s``, ``500ms``, ``2w``, or several together (``1h30m``);
    ``0`` alone is zero. Raises ValueError with the accepted forms."""
    compact = text.strip().lower().replace(" ", "")
    if compact == "0":
        return timedelta(0)
    if not _DURATION.fullmatch(compact):
        raise ValueError(f"{text!r} is not a duration such as 7d, 12h, 30m, 45s or 1h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(compact))
    return timedelta(seconds=seconds)


def parse_instant(text: str, now: datetime) -> datetime:
    """An ISO 8601 date-time (UTC when it has no offset), ``now``, or ``+DURATION`` /
    ``-DURATION`` from ``now``. Raises ValueError with the accepted forms."""
    value = text.strip()
    if value.lower() == "now":
        return now
    if value[:1] in "+-" and value[1:2].isdigit():
        offset = parse_duration(value[1:])
        return now + offset if value[0] == "+" else now - offset
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an instant: write ISO 8601 (2026-11-23T10:00:00Z), now, or +2h / -30m from now"
        ) from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def lateness_summary(values: Sequence[float]) -> dict[str, Any]:
    """How many, and the median, 95th percentile and maximum of ``values`` (seconds,
    nearest rank); None for each when there are none."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {"count": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "max": round(ordered[-1], 3)}


def event_rates(events: dict[str, int], seconds: float) -> dict[str, float]:
    """Events per second over ``seconds`` for each of :data:`RATE_EVENTS`, and ``acked``
    (every ack applied: delivered, retry and failed)."""
    span = max(seconds, 1e-9)
    rates = {name: round(events.get(name, 0) / span, 3) for name in RATE_EVENTS}
    rates["acked"] = round(sum(events.get(name, 0) for name in ("delivered", "retry", "failed")) / span, 3)
    return rates


def exit_code(checks: Sequence[Check]) -> int:
    """``check``'s exit status: 0 when every check passed, else the lowest code of a
    failed one (configuration 2, database 3, bus and SMTP 4)."""
    return min((c.code for c in checks if not c.ok), default=EXIT_OK)


# --------------------------------------------------------------------------- output


def _console(*, stderr: bool = False) -> Console:
    """A console for tables: the terminal's width there; elsewhere (a pipe, a file) no
    colours and no wrapping, one line per row."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, width=100_000, color_system=None)


def _print(console: Console, renderable: RenderableType) -> None:
    """``console.print``; off a terminal without the padding rich leaves at the ends of lines."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, console: Console | None = None) -> None:
    console = console or _console()
    if not rows:
        console.print("(none)")
        return
    _print(console, _build_table(rows, columns, terminal=console.is_terminal))


def _build_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, terminal: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD if terminal else None, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column.upper(), overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if row.get(c) is None else str(row.get(c))) for c in columns))
    return table


# --------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False), help="TOML configuration (default: $CALALARM_CONFIG).")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Inspect and feed the calalarm alarm queue.

    Exit codes: 0 success; 1 input rejected or nothing matched; 2 usage or configuration
    error; 3 database unreachable or not migrated; 4 bus or SMTP server unreachable.
    """
    ctx.obj = Context(config)


@cli.group()
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
        fail(f"database {_safe_url(url)} is not reachable: {exc.orig}", EXIT_DATABASE)
    click.echo(f"database {_safe_url(url)} is at revision {migrate.current_revision(url)}")


@db.command("current")
@click.pass_obj
def db_current(obj: Context) -> None:
    """Show the database's revision and the newest one this build knows."""
    url = obj.settings.database.url
    click.echo(f"current: {migrate.current_revision(url) or 'none'}\nhead:    {migrate.head_revision()}")


@dataclass
class _EnqueueTotals:
    files: int = 0
    objects: int = 0
    added: int = 0
    kept: int = 0
    removed: int = 0
    skipped_files: int = 0
    skipped_objects: int = 0


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calid", required=True, help="Calendar id the objects belong to.")
@click.option("--owner", default="", help="Calendar owner's email; DISPLAY alarms are mailed there.")
@click.option("--tz", default=None, help="Time zone for floating and all-day times (default: alarmd.default_tz).")
@click.option("--locale", default="", help="Language of the reminders, e.g. de or fr_CA (default: notifyd.locale).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one entry per file.")
@click.pass_obj
def enqueue(
    obj: Context, files: tuple[Path, ...], calid: str, owner: str, tz: str | None, locale: str, as_json: bool
) -> None:
    """Put calendar objects (VEVENT/VTODO with VALARMs) from FILES into the queue.

    A progress bar goes to stderr while it is a terminal; a summary (enqueued, skipped
    with the reasons) ends the output.
    """
    if tz is not None:
        try:
            parse_tz(tz)
        except UnknownTimeZone as exc:
            fail(str(exc), EXIT_USAGE)
    queue = obj.queue()
    sizes = {path: _file_size(path) for path in files}
    show_progress = sys.stderr.isatty()
    progress = Progress(
        TextColumn("enqueue"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        disable=not show_progress,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    totals = _EnqueueTotals()
    skipped: list[str] = []
    report: list[dict[str, Any]] = []

    def diagnose(text: str) -> None:  # stderr, above the bar while there is one
        if show_progress:
            progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(text, err=True)

    def say(text: str) -> None:  # stdout; on the terminal above the bar when both share it
        if show_progress and sys.stdout.isatty():
            progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(text)

    with progress:
        task = progress.add_task("enqueue", total=max(sum(sizes.values()), 1), detail="")
        done_bytes = 0
        for number, path in enumerate(files, start=1):
            entry: dict[str, Any] = {"file": str(path)}
            size = sizes[path]
            progress.update(task, detail=f"file {number}/{len(files)}, {totals.added} alarm(s) added")
            try:
                parsed = parse_calendar(path.read_bytes())
            except (OSError, CalendarError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                diagnose(f"alarmctl: {path}: {reason}; nothing enqueued from this file")
                entry["error"] = reason
                skipped.append(f"{path}: {reason}")
                totals.skipped_files += 1
            else:
                share = size / max(len(parsed.objects), 1)

                ticks = count(1)

                def advance(
                    _result: PutResult, base: int = done_bytes, share: float = share, ticks: Iterator[int] = ticks
                ) -> None:
                    progress.update(task, completed=base + share * next(ticks))

                try:
                    result = queue.put_objects(
                        calid, parsed.objects, now=utcnow(), owner=owner, tz=tz, locale=locale, progress=advance
                    )
                except InvalidLocale as exc:
                    fail(str(exc), EXIT_USAGE)
                result.errors[:0] = parsed.errors
                entry.update(result.to_json())
                for error in result.errors:
                    diagnose(f"alarmctl: {path}: {error}; that object was skipped")
                    skipped.append(f"{path}: {error}")
                for warning in result.warnings:
                    diagnose(f"alarmctl: {path}: warning: {warning}")
                totals.files += 1
                totals.objects += result.objects
                totals.added += result.added
                totals.kept += result.kept
                totals.removed += result.removed
                totals.skipped_objects += len(result.errors)
                if not as_json:
                    say(
                        f"{path}: {result.objects} object(s), {result.added} alarm(s) added, "
                        f"{result.kept} kept, {result.removed} removed"
                    )
            done_bytes += size
            progress.update(task, completed=done_bytes, detail=f"{number}/{len(files)} file(s)")
            report.append(entry)
    queue.close()
    if as_json:
        emit_json(report)
    else:
        click.echo(
            f"enqueued: {totals.added} alarm(s) added, {totals.kept} kept, {totals.removed} removed, "
            f"from {totals.objects} object(s) in {totals.files} file(s)"
        )
        if skipped:
            click.echo(f"skipped: {totals.skipped_files} file(s), {totals.skipped_objects} object(s):")
            for reason in skipped:
                click.echo(f"  {reason}")
    if skipped:
        sys.exit(EXIT_REJECTED)


def _file_size(path: Path) -> int:
    try:
        return max(path.stat().st_size, 1)
    except OSError:
        return 1


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tz", default=None, help="Time zone for floating and all-day times (default: alarmd.default_tz).")
@click.option("--from", "start", default=None, help="Window start, ISO 8601 (default: now).")
@click.option(
    "--until",
    "end",
    default=None,
    help="Window end, ISO 8601, exclusive. Without it: exactly what an enqueue at --from would queue "
    "(a one-off object's every instance; a series up to --from + alarmd.horizon_days and each alarm's next one).",
)
@click.option("--calid", default="preview", show_default=True, help="Calendar id shown in the references.")
@click.option("--owner", default="", help="Calendar owner's email (recipient of DISPLAY alarms).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def preview(
    obj: Context,
    file: Path,
    tz: str | None,
    start: str | None,
    end: str | None,
    calid: str,
    owner: str,
    as_json: bool,
) -> None:
    """Show the instances FILE would queue, without touching the database."""
    settings = obj.settings.alarmd
    now = utcnow().replace(microsecond=0)
    window_start = _instant_option("--from", start, now) if start else now
    window_end = _instant_option("--until", end, now) if end else None
    if window_end is not None and window_end <= window_start:
        fail("--until must be later than --from", EXIT_USAGE)
    try:
        zone = parse_tz(tz or settings.default_tz)
        parsed = parse_calendar(file.read_bytes())
    except (OSError, CalendarError, UnknownTimeZone) as exc:
        fail(f"{file}: {exc}", EXIT_REJECTED)
    min_interval = timedelta(seconds=settings.min_interval)
    rows: list[dict[str, Any]] = []
    errors: list[CalendarError] = list(parsed.errors)
    warnings: list[str] = []
    for cal_object in parsed.objects:
        try:
            if window_end is None:
                plan = plan_queue(
                    cal_object,
                    calid=calid,
                    tz=zone,
                    owner=owner,
                    now=window_start,
                    horizon=timedelta(days=settings.horizon_days),
                    min_interval=min_interval,
                )
                planned, notes = plan.alarms, plan.warnings
            else:
                window = plan_alarms(
                    cal_object,
                    calid=calid,
                    tz=zone,
                    owner=owner,
                    window_start=window_start,
                    window_end=window_end,
                    min_interval=min_interval,
                )
                planned, notes = window.alarms, window.warnings
        except CalendarError as exc:
            errors.append(exc)
            continue
        warnings.extend(notes)
        rows.extend(
            {
                "ref": str(p.ref),
                "component": p.component,
                "uid": p.uid,
                "rid": p.rid,
                "aid": p.aid,
                "action": p.action,
                "trigger": p.payload.trigger,
                "recipients": p.payload.recipients,
            }
            for p in planned
        )
    rows.sort(key=lambda r: (r["trigger"], r["uid"], r["rid"], r["aid"]))
    for warning in warnings:
        click.echo(f"alarmctl: {file}: warning: {warning}", err=True)
    for error in errors:
        click.echo(f"alarmctl: {file}: {error}; that object would be skipped", err=True)
    if as_json:
        emit_json(rows)
    else:
        _table(
            [{**r, "recipients": ", ".join(r["recipients"])} for r in rows],
            ["trigger", "component", "action", "uid", "rid", "aid", "recipients"],
        )
    if errors:
        sys.exit(EXIT_REJECTED)


def _instant_option(name: str, text: str, now: datetime) -> datetime:
    try:
        return parse_instant(text, now)
    except ValueError as exc:
        fail(f"{name}: {exc}", EXIT_USAGE)


def _duration_option(name: str, text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{name}: {exc}", EXIT_USAGE)


@cli.command("list")
@click.option("--state", type=click.Choice([s.value for s in State]), default=None)
@click.option("--calid", default=None)
@click.option("--uid", default=None)
@click.option("--due-after", default=None, help="Only instances due (next_at) at or after this: ISO 8601, now, -1h.")
@click.option("--due-before", default=None, help="Only instances due before this: ISO 8601, now, +2h.")
@click.option(
    "--sort", type=click.Choice(AlarmQueue.SORT_KEYS), default="next_at", show_default=True, help="Order by this."
)
@click.option("--desc", "descending", is_flag=True, help="Largest (latest) first.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_(
    obj: Context,
    state: str | None,
    calid: str | None,
    uid: str | None,
    due_after: str | None,
    due_before: str | None,
    sort: str,
    descending: bool,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List alarm instances (soonest due first unless --sort/--desc say otherwise)."""
    now = utcnow()
    after = _instant_option("--due-after", due_after, now) if due_after else None
    before = _instant_option("--due-before", due_before, now) if due_before else None
    queue = obj.queue()
    records = [
        r.to_json()
        for r in queue.list_alarms(
            state=state,
            calid=calid,
            uid=uid,
            due_after=after,
            due_before=before,
            sort=sort,
            descending=descending,
            limit=limit,
            offset=offset,
        )
    ]
    queue.close()
    if as_json:
        emit_json(records)
    else:
        _table(
            records,
            ["id", "state", "next_at", "trigger", "attempts", "action", "calid", "uid", "rid", "aid", "last_error"],
        )


@cli.command()
@click.argument("alarm_id", type=int)
@click.option("--json", "as_json", is_flag=True, help='Print {"alarm": {...} or null, "history": [...]}.')
@click.pass_obj
def show(obj: Context, alarm_id: int, as_json: bool) -> None:
    """Show one instance (while it is queued), its payload and its whole history."""
    queue = obj.queue()
    record = queue.alarm(alarm_id)
    history = queue.history(alarm_id)
    queue.close()
    if record is None and not history:
        fail(f"no alarm instance {alarm_id}", EXIT_REJECTED)
    if as_json:
        emit_json({"alarm": record, "history": history})
        return
    console = _console()
    if record is None:
        console.print(f"alarm {alarm_id} is no longer queued; its history:", markup=False)
    else:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        for key, value in record.items():
            if key != "payload":
                grid.add_row(key, Text("-" if value is None else str(value)))
        _print(console, grid)
        console.print("payload:", markup=False)
        console.print(Text(json.dumps(record["payload"], indent=2, ensure_ascii=False)))
        console.print("history:", markup=False)
    _table(history, ["at", "event", "attempt", "detail"], console=console)


@cli.command()
@click.option("--top", default=5, show_default=True, type=click.IntRange(0, 100), help="Failure reasons shown.")
@click.option("--hours", default=24, show_default=True, type=click.IntRange(0, 24 * 14), help="Hours ahead shown.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stats(obj: Context, top: int, hours: int, as_json: bool) -> None:
    """Counts per state, in flight, overdue (and the oldest's lateness), failure reasons,
    pending instances due per hour ahead."""
    queue = obj.queue()
    body = queue.overview(now=utcnow(), top=top, hours=hours)
    queue.close()
    if as_json:
        emit_json(body)
        return
    console = _console()
    _table([{"state": s, "count": n} for s, n in body["states"].items()], ["state", "count"], console=console)
    lateness = f" ({body['oldest_overdue_seconds']:.1f} s late)" if body["oldest_overdue"] else ""
    facts = [
        ("in flight", body["inflight"]),
        ("overdue", body["overdue"]),
        ("oldest overdue", f"{body['oldest_overdue'] or '-'}{lateness}"),
        ("next due", body["next_due"] or "-"),
        ("calendar objects", body["sources"]),
    ]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in facts:
        grid.add_row(key, Text(str(value)))
    _print(console, grid)
    if top:
        console.print(f"failure reasons (top {top}):", markup=False)
        _table(body["failure_reasons"], ["count", "reason"], console=console)
    if hours:
        due = [row for row in body["due_by_hour"] if row["pending"]]
        console.print(f"pending, due in the next {hours} hour(s), by hour ({body['due_later']} later):", markup=False)
        _table(due, ["from", "until", "pending"], console=console)


@cli.command()
@click.argument("alarm_id", type=int, required=False)
@click.option("--failed", "every_failed", is_flag=True, help="Every failed instance (of --calid, if given).")
@click.option("--calid", default=None, help="With --failed: only this calendar's.")
@click.option("--json", "as_json", is_flag=True, help='Print {"requeued": [instances]}.')
@click.pass_obj
def retry(obj: Context, alarm_id: int | None, every_failed: bool, calid: str | None, as_json: bool) -> None:
    """Send a failed (or expired) instance again, or every failed one: due now, attempts
    counted afresh; the history records it ("requeued")."""
    if (alarm_id is None) == (not every_failed):
        fail("give an instance ID or --failed (not both)", EXIT_USAGE)
    if calid and not every_failed:
        fail("--calid goes with --failed", EXIT_USAGE)
    queue = obj.queue()
    now = utcnow()
    if alarm_id is not None:
        records = queue.retry(now=now, alarm_id=alarm_id, states=(State.FAILED, State.EXPIRED))
        if not records:
            current = queue.alarm(alarm_id)
            queue.close()
            if current is None:
                fail(
                    f"no queued alarm instance {alarm_id} (alarmctl show {alarm_id} tells what happened to it)",
                    EXIT_REJECTED,
                )
            fail(f"alarm {alarm_id} is {current['state']}, not failed or expired: nothing to retry", EXIT_REJECTED)
    else:
        records = queue.retry(now=now, calid=calid, states=(State.FAILED,))
    queue.close()
    if as_json:
        emit_json({"requeued": [r.to_json() for r in records]})
        return
    click.echo(f"requeued {len(records)} instance(s), due now" + (":" if records else ""))
    _table([r.to_json() for r in records], ["id", "calid", "uid", "rid", "aid", "trigger", "last_error"])


@cli.command()
@click.argument("alarm_id", type=int, required=False)
@click.option("--calid", default=None, help="Every instance of this calendar, and its stored calendar objects.")
@click.option("--uid", default=None, help="With --calid: only this calendar object's.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting a whole calendar (--calid).")
@click.option("--json", "as_json", is_flag=True, help='Print {"deleted": N, "objects": M}.')
@click.pass_obj
def delete(obj: Context, alarm_id: int | None, calid: str | None, uid: str | None, yes: bool, as_json: bool) -> None:
    """Delete an instance (any state), or a calendar's instances and stored objects.

    The history records each ("removed"). An in-flight instance may still be mailed. A
    single instance of a series whose object stays may be queued again when the series
    is re-planned: to stop a calendar object's reminders, delete --calid C --uid U.
    """
    if (alarm_id is None) == (calid is None):
        fail("give an instance ID or --calid (not both)", EXIT_USAGE)
    if uid is not None and calid is None:
        fail("--uid goes with --calid", EXIT_USAGE)
    if calid is not None and not yes:
        what = f"calendar object {uid!r} of calendar {calid!r}" if uid else f"calendar {calid!r}"
        if not sys.stdin.isatty():
            fail(f"deleting every instance of {what}: confirm with --yes", EXIT_USAGE)
        click.confirm(f"Delete every instance of {what} and its stored objects?", abort=True)
    queue = obj.queue()
    deleted, objects = queue.delete(now=utcnow(), alarm_id=alarm_id, calid=calid, uid=uid)
    queue.close()
    if as_json:
        emit_json({"deleted": deleted, "objects": objects})
    else:
        click.echo(f"deleted {deleted} instance(s) and {objects} calendar object(s)")
    if alarm_id is not None and not deleted:
        fail(f"no queued alarm instance {alarm_id}", EXIT_REJECTED)


@cli.command()
@click.option("--failed", "purge_failed", is_flag=True, help="Failed instances.")
@click.option("--expired", "purge_expired", is_flag=True, help="Expired instances.")
@click.option(
    "--older-than", "older_than", required=True, help="Failed/expired for at least this long: 7d, 12h, 30m, 0s."
)
@click.option("--json", "as_json", is_flag=True, help='Print {"purged": N, ...}.')
@click.pass_obj
def purge(obj: Context, purge_failed: bool, purge_expired: bool, older_than: str, as_json: bool) -> None:
    """Delete failed and/or expired instances that have been so for longer than
    --older-than. Their history stays until alarmd.history_retention (alarmctl show ID)."""
    if not (purge_failed or purge_expired):
        fail("say what to purge: --failed, --expired or both", EXIT_USAGE)
    age = _duration_option("--older-than", older_than)
    states = [s for s, wanted in ((State.FAILED, purge_failed), (State.EXPIRED, purge_expired)) if wanted]
    queue = obj.queue()
    now = utcnow()
    purged = queue.purge(now=now, states=states, older_than=age)
    queue.close()
    if as_json:
        emit_json(
            {
                "purged": purged,
                "states": [s.value for s in states],
                "older_than_seconds": age.total_seconds(),
                "before": (now - age).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
        )
    else:
        click.echo(f"purged {purged} {' and '.join(s.value for s in states)} instance(s) older than {older_than}")


# --------------------------------------------------------------------------- watch


def watch_frame(queue: AlarmQueue, *, now: datetime, window: timedelta, failures: int) -> dict[str, Any]:
    """One view of dispatch: the queue now, and what happened over the last ``window``."""
    state = queue.overview(now=now, top=0, hours=0)
    seen = queue.activity(since=now - window, now=now, failures=failures)
    return {
        "at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "window_seconds": window.total_seconds(),
        "states": state["states"],
        "inflight": state["inflight"],
        "overdue": state["overdue"],
        "oldest_overdue": state["oldest_overdue"],
        "oldest_overdue_seconds": state["oldest_overdue_seconds"],
        "next_due": state["next_due"],
        "events": seen["events"],
        "rates": event_rates(seen["events"], window.total_seconds()),
        "lateness": lateness_summary(seen["lateness"]),
        "recent_failures": seen["failures"],
    }


def _render_frame(frame: dict[str, Any], terminal: bool) -> RenderableType:
    states = "  ".join(f"{name} {count}" for name, count in frame["states"].items())
    overdue = frame["overdue"]
    oldest = f", oldest {frame['oldest_overdue_seconds']:.1f} s late" if frame["oldest_overdue"] else ""
    rates = frame["rates"]
    late = frame["lateness"]
    lateness = (
        f"p50 {late['p50']:.3f} s  p95 {late['p95']:.3f} s  max {late['max']:.3f} s "
        f"({late['count']} first publications)"
        if late["count"]
        else "no first publication in the window"
    )
    lines = [
        Text(f"calalarm dispatch at {frame['at']} (rates over the last {frame['window_seconds']:g} s)", style="bold"),
        Text(f"queue      {states}  |  overdue {overdue}{oldest}  |  next due {frame['next_due'] or '-'}"),
        Text(
            f"per second published {rates['published']:g}  acked {rates['acked']:g} "
            f"(delivered {rates['delivered']:g}, retry {rates['retry']:g}, failed {rates['failed']:g})  "
            f"expired {rates['expired']:g}"
        ),
        Text(f"lateness   trigger → first publication: {lateness}"),
        Text("recent failures:"),
    ]
    recent: RenderableType = (
        _build_table(
            frame["recent_failures"],
            ["at", "event", "alarm_id", "calid", "uid", "attempt", "detail"],
            terminal=terminal,
        )
        if frame["recent_failures"]
        else Text("(none)")
    )
    return Group(*lines, recent)


@cli.command()
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600), help="Seconds.")
@click.option("--window", "window_text", default="60s", show_default=True, help="Rates over this span: 60s, 5m.")
@click.option("--failures", default=5, show_default=True, type=click.IntRange(0, 100), help="Recent failures shown.")
@click.option("--once", is_flag=True, help="One view, then exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON: one object (--once), else one line per interval.")
@click.pass_obj
def watch(obj: Context, interval: float, window_text: str, failures: int, once: bool, as_json: bool) -> None:
    """Live view of dispatch: queue states, rates of publications and acks, lateness of
    recent publications, recent failures. Ctrl-C ends it."""
    window = _duration_option("--window", window_text)
    if window <= timedelta(0):
        fail("--window must be longer than 0s", EXIT_USAGE)
    queue = obj.queue()
    console = _console()
    try:
        if once:
            frame = watch_frame(queue, now=utcnow(), window=window, failures=failures)
            if as_json:
                emit_json(frame)
            else:
                _print(console, _render_frame(frame, console.is_terminal))
            return
        with _live(console, enabled=console.is_terminal and not as_json) as show:
            while True:
                try:
                    frame = watch_frame(queue, now=utcnow(), window=window, failures=failures)
                except sa.exc.OperationalError as exc:  # a database restart: say so, keep watching
                    problem = f"database unreachable: {str(exc.orig).strip()}; retrying in {interval:g} s"
                    if as_json:
                        click.echo(f"alarmctl: {problem}", err=True)
                    else:
                        show(Text(problem), None)
                else:
                    show(_render_frame(frame, console.is_terminal), frame if as_json else None)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        queue.close()


@contextmanager
def _live(console: Console, *, enabled: bool) -> Iterator[Callable[[RenderableType, dict[str, Any] | None], None]]:
    """A function that shows a frame: in place on a terminal (rich.live), else one after another
    (or one JSON line per frame when given one)."""
    if enabled:
        with Live(console=console, auto_refresh=False, transient=False) as live:

            def update(renderable: RenderableType, _frame: dict[str, Any] | None) -> None:
                live.update(renderable, refresh=True)

            yield update
        return

    def emit(renderable: RenderableType, frame: dict[str, Any] | None) -> None:
        if frame is not None:
            click.echo(json.dumps(frame, ensure_ascii=False))
        else:
            _print(console, renderable)
            console.print()

    yield emit


# --------------------------------------------------------------------------- check and test-email


@dataclass(frozen=True)
class Check:
    """One line of ``alarmctl check``: what was checked, whether it passed, the facts or
    the reason with the fix, and the exit code it stands for when it failed."""

    name: str
    target: str
    ok: bool
    detail: str
    code: int = EXIT_OK

    def line(self) -> str:
        return f"{self.name:<13} {self.target}: " + (f"ok ({self.detail})" if self.ok else f"FAILED: {self.detail}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "ok": self.ok, "detail": self.detail, "code": self.code}


@cli.command()
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 300), help="Seconds per check.")
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": bool, "checks": [...]}.')
@click.pass_obj
def check(obj: Context, timeout: float, as_json: bool) -> None:
    """Check the configuration, and that the database, the bus and the SMTP server (TLS
    verified, AUTH) can be reached; one line each. Exit 2 (configuration), 3 (database)
    or 4 (bus or SMTP) naming what is wrong."""
    _quiet_library_logs()
    source = obj.config or os.environ.get("CALALARM_CONFIG") or "defaults and CALALARM_* variables"
    try:
        settings = load_settings(obj.config)
    except ConfigError as exc:
        checks = [Check("configuration", source, False, f"{exc}", EXIT_USAGE)]
    else:
        checks = [Check("configuration", source, True, "settings valid"), _check_notifyd_files(settings)]
        checks.append(_check_database(settings.database.url))
        checks.extend(asyncio.run(_check_services(settings, timeout)))
    if as_json:
        emit_json({"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]})
    else:
        for c in checks:
            click.echo(c.line())
    failed = [c.name for c in checks if not c.ok]
    if failed:
        click.echo(f"alarmctl: check failed: {', '.join(failed)}", err=True)
    sys.exit(exit_code(checks))


def _quiet_library_logs() -> None:
    """The checks report failures themselves; aio-pika's and aiosmtplib's own log lines would repeat them."""
    logging.getLogger().addHandler(logging.NullHandler())


def _check_notifyd_files(settings: Settings) -> Check:
    from notifyd.email import sample_context
    from notifyd.recipients import Directory
    from notifyd.templates import Templates

    options = settings.notifyd
    target = f"templates {options.templates or '(shipped)'}" + (
        f", directory {options.directory}" if options.directory else ""
    )
    try:
        templates = Templates(options.templates, options.locale)
        templates.check(sample_context())
        if options.directory:
            Directory.load(options.directory)
    except ConfigError as exc:
        return Check("notifyd files", target, False, str(exc), EXIT_USAGE)
    return Check("notifyd files", target, True, f"locales {', '.join(sorted(templates.locales))}")


def _check_database(url: str) -> Check:
    target = _safe_url(url)
    parsed = sa.engine.make_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" and parsed.database != ":memory:" else None
    if file and not Path(file).exists():  # connecting would create an empty file
        return Check(
            "database",
            target,
            False,
            f"{file} does not exist; fix: check database.url, or create it with 'alarmctl db upgrade'",
            EXIT_DATABASE,
        )
    try:
        current, head = migrate.current_revision(url), migrate.head_revision()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        return Check(
            "database",
            target,
            False,
            f"cannot connect: {reason}; fix: check database.url and that the server is running",
            EXIT_DATABASE,
        )
    if current != head:
        return Check(
            "database",
            target,
            False,
            f"at revision {current or 'none'}, not {head}; fix: run 'alarmctl db upgrade'",
            EXIT_DATABASE,
        )
    return Check("database", target, True, f"revision {current}")


async def _check_services(settings: Settings, seconds: float) -> list[Check]:
    return [await _check_bus(settings.bus.url, seconds), await _check_smtp(settings, seconds)]


async def _check_bus(url: str, seconds: float) -> Check:
    from common.ens.amqp import redacted

    target = redacted(url)
    if url.startswith("memory:"):
        return Check("bus", target, True, "in-process bus: nothing to reach; only alarmd --with-notifier uses it")
    try:
        bus = create_bus(url)
    except BusError as exc:
        return Check("bus", target, False, f"{exc}; fix: bus.url", EXIT_USAGE)
    try:
        async with asyncio.timeout(seconds):
            await bus.start()
    except (BusUnavailable, TimeoutError) as exc:
        reason = str(exc) or f"no answer within {seconds:g} s"
        return Check(
            "bus",
            target,
            False,
            f"{reason}; fix: check bus.url (host, port, user, password, vhost) and that RabbitMQ is running",
            EXIT_UNREACHABLE,
        )
    except BusError as exc:
        return Check("bus", target, False, f"{exc}; fix: bus.url", EXIT_USAGE)
    finally:
        await bus.close()
    return Check("bus", target, True, "connected, exchange declared")


async def _check_smtp(settings: Settings, seconds: float) -> Check:
    """Open one SMTP session exactly as notifyd's sender does (its connection code: TLS
    mode of the URL, certificate verification, AUTH), then QUIT."""
    from notifyd.smtp import SmtpSender, _ConnectFailed

    smtp_settings = settings.smtp
    endpoint = smtp_settings.endpoint
    target = f"{smtp_settings.url.partition('://')[0]}://{endpoint.host}:{endpoint.port}"
    try:
        sender = SmtpSender(smtp_settings)
    except ConfigError as exc:
        return Check("smtp", target, False, str(exc), EXIT_USAGE)
    # SmtpSender has no public "open a session and report" (notifyd.smtp would be its place):
    # the first slot of its pool is asked for its connection, which opens it as a send would.
    connection = sender._connections[0]
    try:
        async with asyncio.timeout(seconds):
            session = await connection._connection()
            encrypted = session.get_transport_info("ssl_object") is not None
    except _ConnectFailed as exc:
        return Check("smtp", target, False, f"{exc.reason}; fix: {_smtp_fix(exc.reason)}", EXIT_UNREACHABLE)
    except TimeoutError:
        return Check("smtp", target, False, f"no answer within {seconds:g} s; fix: {_smtp_fix('')}", EXIT_UNREACHABLE)
    finally:
        await sender.close()
    mode = {
        "starttls": "STARTTLS",
        "implicit": "TLS from the first byte (smtps)",
        "plain": "plain text (smtp.allow_plaintext)",
    }[endpoint.tls]
    facts = [mode]
    if encrypted:
        facts.append("certificate verified")
    username = smtp_settings.username or endpoint.username
    facts.append(f"AUTH as {username}" if username else "no AUTH")
    return Check("smtp", target, True, ", ".join(facts))


def _smtp_fix(reason: str) -> str:
    lowered = reason.lower()
    if "certificate" in lowered or "ssl" in lowered or ("tls" in lowered and "starttls" not in lowered):
        return (
            "the server's certificate must be valid for the host in smtp.url and signed by a CA this machine "
            "trusts (system store or SSL_CERT_FILE); calalarm never skips verification"
        )
    if "starttls" in lowered:
        return (
            "the server does not offer STARTTLS: use smtps:// if it speaks TLS from the first byte, or "
            "smtp.allow_plaintext = true for a relay on this host"
        )
    if "auth" in lowered:
        return "check smtp.username and the password (smtp.password_file, CALALARM_SMTP_PASSWORD)"
    return "check smtp.url (host and port) and that the SMTP server is running"


def build_test_message(sender: str, recipient: str, now: datetime, server: str) -> tuple[bytes, str]:
    """The message ``alarmctl test-email`` sends, as SMTP sends it, and its Message-ID:
    written by notifyd's MIME code with the reminders' header rules (cleaned values,
    encoded words, Auto-Submitted)."""
    from notifyd import mime
    from notifyd.email import ADDRESS_MAX, clean_header
    from notifyd.recipients import mailbox

    name, address = getaddresses([clean_header(sender, ADDRESS_MAX)])[0]
    from_address = mime.header_address(mailbox(address) or "") or "calalarm@calalarm.invalid"
    to_address = mime.header_address(recipient)
    domain = from_address.rpartition("@")[2]
    message_id = make_msgid(domain=domain)
    headers = [
        ("From", f"{mime.phrase(clean_header(name, ADDRESS_MAX))} <{from_address}>" if name else from_address),
        ("To", to_address or "undisclosed-recipients:;"),
        ("Subject", mime.unstructured("Subject", "calalarm test message")),
        ("Date", format_datetime(now.astimezone(UTC))),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-generated"),
    ]
    body = (
        "This is a test message from calalarm, sent by 'alarmctl test-email' through the SMTP server\n"
        f"{server} at {now.astimezone(UTC).isoformat(timespec='seconds').replace('+00:00', 'Z')}.\n\n"
        "Calendar reminders sent the same way can reach this address.\n"
    )
    return mime.message_bytes(headers, mime.text_part("plain", body)), message_id


@cli.command("test-email")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help='Print {"status", "reason", "server", ...}.')
@click.pass_obj
def test_email(obj: Context, address: str, as_json: bool) -> None:
    """Send one real message ("calalarm test message") to ADDRESS through notifyd's SMTP
    sender and its settings. Exit 1 when the server refuses it, 4 when it cannot be
    handed over (connection, TLS, AUTH, or a 4xx reply)."""
    from common.ens.envelope import AckStatus
    from notifyd.recipients import mailbox
    from notifyd.smtp import SendResult, SmtpSender

    settings = obj.settings
    recipient = mailbox(address)
    if recipient is None:
        fail(f"{address!r} is not one email address", EXIT_USAGE)
    to: str = recipient
    _quiet_library_logs()

    async def send() -> tuple[SendResult, str, str]:
        sender = SmtpSender(settings.smtp)
        try:
            message, message_id = build_test_message(settings.smtp.sender, to, utcnow(), sender.server)
            return await sender.send(message, [to]), message_id, sender.server
        finally:
            await sender.close()

    try:
        result, message_id, server = asyncio.run(send())
    except ConfigError as exc:
        fail(f"configuration: {exc}", EXIT_USAGE)
    sent = result.status is AckStatus.DELIVERED and not result.rejected
    body = {
        "sent": sent,
        "status": result.status.value,
        "reason": result.reason,
        "server": server,
        "recipient": recipient,
        "message_id": message_id,
    }
    if as_json:
        emit_json(body)
    elif sent:
        click.echo(f"test message {message_id} to {recipient}: accepted by the SMTP server {server}")
    else:
        click.echo(f"test message to {recipient} not sent: {result.reason}")
    if not sent:
        sys.exit(EXIT_REJECTED if result.status is not AckStatus.RETRY else EXIT_UNREACHABLE)


def main() -> None:
    try:
        cli(prog_name="alarmctl")
    except sa.exc.OperationalError as exc:  # the database went away while a command ran
        fail(f"database error: {str(exc.orig).strip()}", EXIT_DATABASE)
