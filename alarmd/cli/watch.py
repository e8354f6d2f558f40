"""``alarmctl watch``: a live view of dispatch (queue states, publication and ack rates,
lateness of recent publications, recent failures) and the figures behind it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import click
import sqlalchemy as sa
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from alarmd.cli.context import EXIT_USAGE, Context, fail
from alarmd.cli.output import build_table, emit_json, make_console, print_renderable
from alarmd.cli.timeparse import duration_option
from alarmd.queue import AlarmQueue
from common.clock import utcnow

RATE_EVENTS = ("published", "delivered", "retry", "failed", "expired")


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
        build_table(
            frame["recent_failures"],
            ["at", "event", "alarm_id", "calid", "uid", "attempt", "detail"],
            terminal=terminal,
        )
        if frame["recent_failures"]
        else Text("(none)")
    )
    return Group(*lines, recent)


@click.command()
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600), help="Seconds.")
@click.option("--window", "window_text", default="60s", show_default=True, help="Rates over this span: 60s, 5m.")
@click.option("--failures", default=5, show_default=True, type=click.IntRange(0, 100), help="Recent failures shown.")
@click.option("--once", is_flag=True, help="One view, then exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON: one object (--once), else one line per interval.")
@click.pass_obj
def watch(obj: Context, interval: float, window_text: str, failures: int, once: bool, as_json: bool) -> None:
    """Live view of dispatch: queue states, rates of publications and acks, lateness of
    recent publications, recent failures. Ctrl-C ends it."""
    window = duration_option("--window", window_text)
    if window <= timedelta(0):
        fail("--window must be longer than 0s", EXIT_USAGE)
    queue = obj.queue()
    console = make_console()
    try:
        if once:
            frame = watch_frame(queue, now=utcnow(), window=window, failures=failures)
            if as_json:
                emit_json(frame)
            else:
                print_renderable(console, _render_frame(frame, console.is_terminal))
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
            print_renderable(console, renderable)
            console.print()

    yield emit
