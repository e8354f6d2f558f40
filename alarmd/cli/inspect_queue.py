"""The commands that read the queue: ``alarmctl list`` (instances, filtered, sorted, paged),
``show ID`` (one instance, its payload and its history) and ``stats`` (the overview)."""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from alarmd.cli.context import EXIT_REJECTED, Context, fail
from alarmd.cli.output import emit_json, make_console, print_renderable, print_table
from alarmd.cli.timeparse import instant_option
from alarmd.queue import AlarmQueue, State
from common.clock import utcnow


@click.command("list")
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
    after = instant_option("--due-after", due_after, now) if due_after else None
    before = instant_option("--due-before", due_before, now) if due_before else None
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
        print_table(
            records,
            ["id", "state", "next_at", "trigger", "attempts", "action", "calid", "uid", "rid", "aid", "last_error"],
        )


@click.command()
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
    console = make_console()
    if record is None:
        console.print(f"alarm {alarm_id} is no longer queued; its history:", markup=False)
    else:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        for key, value in record.items():
            if key != "payload":
                grid.add_row(key, Text("-" if value is None else str(value)))
        print_renderable(console, grid)
        console.print("payload:", markup=False)
        console.print(Text(json.dumps(record["payload"], indent=2, ensure_ascii=False)))
        console.print("history:", markup=False)
    print_table(history, ["at", "event", "attempt", "detail"], console=console)


@click.command()
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
    console = make_console()
    print_table([{"state": s, "count": n} for s, n in body["states"].items()], ["state", "count"], console=console)
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
    print_renderable(console, grid)
    if top:
        console.print(f"failure reasons (top {top}):", markup=False)
        print_table(body["failure_reasons"], ["count", "reason"], console=console)
    if hours:
        due = [row for row in body["due_by_hour"] if row["pending"]]
        console.print(f"pending, due in the next {hours} hour(s), by hour ({body['due_later']} later):", markup=False)
        print_table(due, ["from", "until", "pending"], console=console)
