"""The commands that change queued instances: ``alarmctl retry`` (send failed ones again),
``delete`` (an instance, or a calendar's) and ``purge`` (old failed/expired ones)."""

from __future__ import annotations

import sys

import click

from alarmd.cli.context import EXIT_REJECTED, EXIT_USAGE, Context, fail
from alarmd.cli.output import emit_json, print_table
from alarmd.cli.timeparse import duration_option
from alarmd.queue import State
from common.clock import utcnow


@click.command()
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
    print_table([r.to_json() for r in records], ["id", "calid", "uid", "rid", "aid", "trigger", "last_error"])


@click.command()
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


@click.command()
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
    age = duration_option("--older-than", older_than)
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
