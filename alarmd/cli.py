"""``alarmctl``: the admin and enqueue command line.

Exit codes: 0 success; 1 the command ran but some input was rejected (e.g. one
calendar file of several could not be read); 2 usage or configuration error;
3 the database could not be reached or is not migrated.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
import sqlalchemy as sa

from alarmd.ical import CalendarError, parse_calendar
from alarmd.queue import AlarmQueue, InvalidLocale, State, UnknownTimeZone, parse_tz
from alarmd.triggers import plan_alarms, plan_queue
from common.clock import utcnow
from common.db import migrate
from common.settings import ConfigError, Settings, load_settings

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3


class Context:
    def __init__(self, config: str | None) -> None:
        self._config = config
        self._settings: Settings | None = None

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
        url = settings.database.url
        try:
            current, head = migrate.current_revision(url), migrate.head_revision()
        except sa.exc.OperationalError as exc:
            fail(f"database {_safe_url(url)} is not reachable: {exc.orig}", EXIT_DATABASE)
        if current != head:
            fail(
                f"database {_safe_url(url)} is at revision {current or 'none'}, not {head}: run 'alarmctl db upgrade'",
                EXIT_DATABASE,
            )
        return AlarmQueue.from_settings(settings)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"alarmctl: {message}", err=True)
    sys.exit(code)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _safe_url(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _parse_when(text: str | None, default: datetime) -> datetime:
    if text is None:
        return default
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{text!r} is not an ISO 8601 date-time such as 2026-11-23T10:00:00Z", EXIT_USAGE)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False), help="TOML configuration (default: $CALALARM_CONFIG).")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Inspect and feed the calalarm alarm queue."""
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


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calid", required=True, help="Calendar id the objects belong to.")
@click.option("--owner", default="", help="Calendar owner's email; DISPLAY alarms are mailed there.")
@click.option("--tz", default=None, help="Time zone for floating and all-day times (default: alarmd.default_tz).")
@click.option("--locale", default="", help="Language of the reminders, e.g. de or fr_CA (default: notifyd.locale).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_obj
def enqueue(
    obj: Context, files: tuple[Path, ...], calid: str, owner: str, tz: str | None, locale: str, as_json: bool
) -> None:
    """Put calendar objects (VEVENT/VTODO with VALARMs) from FILES into the queue."""
    queue = obj.queue()
    report: list[dict[str, Any]] = []
    rejected = False
    for path in files:
        entry: dict[str, Any] = {"file": str(path)}
        try:
            result = queue.put(calid, path.read_bytes(), now=utcnow(), owner=owner, tz=tz, locale=locale)
        except InvalidLocale as exc:
            fail(str(exc), EXIT_USAGE)
        except (OSError, CalendarError, UnknownTimeZone) as exc:
            click.echo(f"alarmctl: {path}: {exc}; nothing enqueued from this file", err=True)
            entry["error"] = str(exc)
            rejected = True
        else:
            entry.update(result.to_json())
            for error in result.errors:
                click.echo(f"alarmctl: {path}: {error}; that object was skipped", err=True)
                rejected = True
            for warning in result.warnings:
                click.echo(f"alarmctl: {path}: warning: {warning}", err=True)
            if not as_json:
                click.echo(
                    f"{path}: {result.objects} object(s), {result.added} alarm(s) added, "
                    f"{result.kept} kept, {result.removed} removed"
                )
        report.append(entry)
    queue.close()
    if as_json:
        emit_json(report)
    if rejected:
        sys.exit(EXIT_REJECTED)


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
    window_start = _parse_when(start, utcnow().replace(microsecond=0))
    window_end = _parse_when(end, window_start) if end else None
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


@cli.command("list")
@click.option("--state", type=click.Choice([s.value for s in State]), default=None)
@click.option("--calid", default=None)
@click.option("--uid", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_(
    obj: Context, state: str | None, calid: str | None, uid: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """List alarm instances, soonest first."""
    queue = obj.queue()
    records = [r.to_json() for r in queue.list_alarms(state=state, calid=calid, uid=uid, limit=limit, offset=offset)]
    queue.close()
    if as_json:
        emit_json(records)
    else:
        _table(records, ["id", "state", "next_at", "trigger", "attempts", "action", "calid", "uid", "aid"])


@cli.command()
@click.argument("alarm_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(obj: Context, alarm_id: int, as_json: bool) -> None:
    """Show one instance (if still queued) and its history."""
    queue = obj.queue()
    record = next((r for r in queue.list_alarms(limit=1, alarm_id=alarm_id)), None)
    history = queue.history(alarm_id)
    queue.close()
    if record is None and not history:
        fail(f"no alarm instance {alarm_id}", EXIT_REJECTED)
    body = {"alarm": record.to_json() if record else None, "history": history}
    if as_json:
        emit_json(body)
        return
    if record is None:
        click.echo(f"alarm {alarm_id} is no longer queued")
    else:
        for key, value in record.to_json().items():
            click.echo(f"{key:>10}: {value}")
    click.echo("history:")
    _table(history, ["at", "event", "attempt", "detail"])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def stats(obj: Context, as_json: bool) -> None:
    """Counts per state, next due and oldest overdue instance."""
    queue = obj.queue()
    body = queue.stats(now=utcnow())
    queue.close()
    if as_json:
        emit_json(body)
        return
    for state, count in body["states"].items():
        click.echo(f"{state:>14}: {count}")
    click.echo(f"{'next due':>14}: {body['next_due'] or '-'}")
    click.echo(f"{'oldest overdue':>14}: {body['oldest_overdue'] or '-'}")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def main() -> None:
    cli(prog_name="alarmctl")
