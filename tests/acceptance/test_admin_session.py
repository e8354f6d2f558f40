"""An administrator's session with alarmctl against the real standard deployment.

``alarmd`` and ``notifyd`` run as processes (PostgreSQL + RabbitMQ, started by
:class:`tests.benchmarks.deployment.Deployment`) and mail through an aiosmtpd server in
this test's event loop that refuses ``ghost@example.com`` with 550 until told otherwise.
Every step is an ``alarmctl`` command, as an admin would type it, with the deployment's
configuration file: migrate and check, enqueue a reminder a few seconds ahead and watch it
being delivered, see one fail (550) and list it, retry it once the mailbox exists, purge
another failed one, read the statistics and the dispatch view, and stop both services with
SIGTERM (exit 0).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from common.db import migrate
from tests.benchmarks.deployment import Deployment, tail, whole_second_after
from tests.calendars import display, event
from tests.processes import BIN, base_env
from tests.services import require_postgres, require_rabbitmq
from tests.smtp_server import recording_smtp_server

WAIT = 45.0  # seconds, at most, for a reminder to be delivered or failed
LEAD = 4  # seconds between enqueuing a reminder and its trigger
GHOST = "ghost@example.com"
T = TypeVar("T")


class Admin:
    """Runs ``alarmctl --config FILE …`` (in a thread, so the SMTP server in this loop keeps answering)."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.env = base_env()

    async def run(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "alarmctl"), "--config", str(self.deployment.config), *args]
        result = await asyncio.to_thread(
            subprocess.run,
            command,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == code, f"alarmctl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        return result

    async def json(self, *args: str) -> Any:
        return json.loads((await self.run(*args, "--json")).stdout)

    async def until(self, what: str, probe: Callable[[], Awaitable[T | None]]) -> T:
        """Run ``probe`` until it returns something; fail after :data:`WAIT` seconds with the services' logs."""
        deadline = time.monotonic() + WAIT
        while True:
            self.deployment.check_running()
            found = await probe()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {s.name}:\n{tail(s.log_text(), 30)}" for s in self.deployment.services)
                raise AssertionError(f"{what}: not within {WAIT:g}s\n{logs}")
            await asyncio.sleep(0.5)

    async def history_with(self, alarm_id: int, event_name: str) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]] | None:
            history: list[dict[str, Any]] = (await self.json("show", str(alarm_id)))["history"]
            return history if any(h["event"] == event_name for h in history) else None

        return await self.until(f"alarm {alarm_id} {event_name}", probe)


def calendar(path: Path, *uids: str) -> tuple[Path, datetime]:
    """A file of one event per uid, each with a DISPLAY alarm :data:`LEAD` seconds from now."""
    trigger = whole_second_after(LEAD)
    objects = [event(uid, trigger + timedelta(minutes=15), display("-PT15M"), summary=f"Meeting {uid}") for uid in uids]
    head, *_ = objects[0].partition("BEGIN:VEVENT")
    body = "".join(
        "BEGIN:VEVENT" + text.partition("BEGIN:VEVENT")[2].replace("END:VCALENDAR\r\n", "") for text in objects
    )
    path.write_text(head + body + "END:VCALENDAR\r\n")
    return path, trigger


async def test_an_admin_session_from_migration_to_shutdown(tmp_path: Path) -> None:
    require_postgres()
    require_rabbitmq()
    refused = {GHOST}

    def reply(address: str) -> str | None:
        return "550 5.1.1 no such user" if address in refused else None

    async with (
        recording_smtp_server(reply_for=reply) as smtp,
        Deployment("standard", tmp_path / "deployment", smtp.url) as deployment,
    ):
        admin = Admin(deployment)
        # Deployment creates the database migrated; alarmctl confirms and would bring it to head.
        upgraded = await admin.run("db", "upgrade")
        assert f"is at revision {migrate.head_revision()}" in upgraded.stdout
        checked = await admin.json("check")
        assert checked["ok"] is True, checked
        assert [c["detail"] for c in checked["checks"] if c["name"] == "smtp"] == [
            "plain text (smtp.allow_plaintext), no AUTH"
        ]
        await deployment.start()

        # A reminder a few seconds ahead, delivered.
        meeting, trigger = calendar(tmp_path / "meeting.ics", "standup")
        [enqueued] = await admin.json("enqueue", str(meeting), "--calid", "jac", "--owner", "ann@example.com")
        assert enqueued["added"] == 1
        [queued] = await admin.json("list", "--calid", "jac")
        assert (queued["state"], queued["trigger"]) == ("pending", trigger.isoformat().replace("+00:00", ".000Z"))
        history = await admin.history_with(queued["id"], "delivered")
        assert [h["event"] for h in history] == ["queued", "published", "delivered"]
        [(message, recipients)] = await smtp.wait_for(1, timeout=5)
        assert recipients == ["ann@example.com"]
        assert message["X-Alarm-Ref"] == queued["ref"]
        assert json.loads((await admin.run("show", str(queued["id"]), "--json")).stdout)["alarm"] is None

        # Two reminders for a mailbox the server refuses (550): acked failed, listed as failed.
        ghosts, _ = calendar(tmp_path / "ghosts.ics", "g1", "g2")
        [enqueued] = await admin.json("enqueue", str(ghosts), "--calid", "ghosts", "--owner", GHOST)
        assert enqueued["added"] == 2

        async def both_failed() -> list[dict[str, Any]] | None:
            failed: list[dict[str, Any]] = await admin.json("list", "--state", "failed", "--calid", "ghosts")
            return failed if len(failed) == 2 else None

        failed = {row["uid"]: row for row in await admin.until("both ghost reminders failed", both_failed)}
        assert all("550 5.1.1 no such user" in row["last_error"] for row in failed.values())
        assert len(smtp.messages) == 1

        # The mailbox exists now: retry one; it is delivered.
        refused.clear()
        requeued = (await admin.json("retry", str(failed["g1"]["id"])))["requeued"]
        assert [(r["id"], r["state"], r["attempts"]) for r in requeued] == [(failed["g1"]["id"], "pending", 0)]
        history = await admin.history_with(failed["g1"]["id"], "delivered")
        assert [h["event"] for h in history] == ["queued", "published", "failed", "requeued", "published", "delivered"]
        [_, (message, recipients)] = await smtp.wait_for(2, timeout=5)
        assert recipients == [GHOST]
        assert message["X-Alarm-Ref"] == failed["g1"]["ref"]

        # The other one is given up: purged, its history kept.
        purged = await admin.json("purge", "--failed", "--older-than", "0s")
        assert purged["purged"] == 1
        shown = await admin.json("show", str(failed["g2"]["id"]))
        assert shown["alarm"] is None
        assert [h["event"] for h in shown["history"]] == ["queued", "published", "failed", "removed"]

        stats = await admin.json("stats")
        assert stats["states"] == {"pending": 0, "inflight": 0, "failed": 0, "expired": 0}
        assert (stats["total"], stats["sources"], stats["failure_reasons"]) == (0, 3, [])
        view = await admin.json("watch", "--once", "--window", "10m")
        assert view["events"]["published"] == 4
        assert (view["events"]["delivered"], view["events"]["failed"], view["events"]["requeued"]) == (2, 2, 1)
        assert view["lateness"]["count"] == 3  # first publications: standup, g1, g2
        # Latest first; g1 and g2 were sent concurrently, so either may have failed first.
        recent = view["recent_failures"]
        assert sorted(f["uid"] for f in recent) == ["g1", "g2"]
        assert [f["at"] for f in recent] == sorted((f["at"] for f in recent), reverse=True)
        assert len(smtp.messages) == 2  # nothing else was mailed

        await deployment.stop()  # SIGTERM to each service
        assert {s.name: s.exit_code for s in deployment.services} == {"notifyd": 0, "alarmd": 0}
        assert datetime.now(UTC) > trigger
