"""``alarmctl enqueue`` (calendar files into the queue, with a progress bar and a summary)
and ``alarmctl preview`` (what an enqueue would queue, without the database)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from alarmd.cli.context import EXIT_REJECTED, EXIT_USAGE, Context, fail
from alarmd.cli.output import emit_json, make_console, print_table
from alarmd.cli.timeparse import instant_option
from alarmd.ical import CalendarError, parse_calendar
from alarmd.queue import InvalidLocale, PutResult, UnknownTimeZone, parse_tz
from alarmd.triggers import plan_alarms, plan_queue
from common.clock import utcnow


@dataclass
class _EnqueueTotals:
    files: int = 0
    objects: int = 0
    added: int = 0
    kept: int = 0
    removed: int = 0
    skipped_files: int = 0
    skipped_objects: int = 0


@click.command()
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
        console=make_console(stderr=True),
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


@click.command()
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
    window_start = instant_option("--from", start, now) if start else now
    window_end = instant_option("--until", end, now) if end else None
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
        print_table(
            [{**r, "recipients": ", ".join(r["recipients"])} for r in rows],
            ["trigger", "component", "action", "uid", "rid", "aid", "recipients"],
        )
    if errors:
        sys.exit(EXIT_REJECTED)
