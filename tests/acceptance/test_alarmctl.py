"""alarmctl as a real process: exit codes, messages and --json outputs.

Most tests use a SQLite file; ``check`` and ``test-email`` run against the real
PostgreSQL and RabbitMQ and an aiosmtpd server with STARTTLS (a trustme CA the
process trusts through ``SSL_CERT_FILE``). Setting up states an operator meets
(failed, expired, published instances) goes through ``AlarmQueue`` directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from alarmd.queue import AlarmQueue, ClaimPolicy
from common.ens.envelope import AckStatus
from tests.buses import delete_from_broker
from tests.calendars import display, event
from tests.services import RABBITMQ_URL, require_rabbitmq, unique_exchange
from tests.smtp_server import recording_smtp_server, server_tls_context

BIN = Path(sys.executable).parent


def alarmctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "alarmctl"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def json_of(*args: str, env: dict[str, str], code: int = 0) -> Any:
    """``alarmctl ARGS --json``'s output, after checking its exit status."""
    result = alarmctl(*args, "--json", env=env)
    assert result.returncode == code, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CALALARM_")}
    e["CALALARM_DATABASE_URL"] = f"sqlite:///{tmp_path / 'q.db'}"
    return e


@pytest.fixture
def queue(env: dict[str, str]) -> Iterator[AlarmQueue]:
    """The queue of ``env``'s database, migrated by ``alarmctl db upgrade``."""
    assert alarmctl("db", "upgrade", env=env).returncode == 0
    q = AlarmQueue.from_url(env["CALALARM_DATABASE_URL"])
    yield q
    q.close()


def test_unmigrated_database_is_refused_with_the_fix(env: dict[str, str]) -> None:
    result = alarmctl("list", "--json", env=env)
    assert result.returncode == 3
    assert "alarmctl db upgrade" in result.stderr


def test_enqueue_list_stats_round_trip(env: dict[str, str], tmp_path: Path) -> None:
    assert alarmctl("db", "upgrade", env=env).returncode == 0
    start = datetime.now(UTC) + timedelta(days=1)
    ics = tmp_path / "meeting.ics"
    ics.write_text(event("m1", start, display("-PT15M"), display("-PT5M")))
    result = alarmctl("enqueue", str(ics), "--calid", "jac", "--owner", "jac@example.com", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["added"] == 2

    listed = json.loads(alarmctl("list", "--json", env=env).stdout)
    assert [(r["uid"], r["state"], r["aid"]) for r in listed] == [("m1", "pending", "1"), ("m1", "pending", "2")]
    assert listed[0]["ref"] == "enp:///ics/eventalarm?calid=jac&uid=m1&rid=&aid=1"

    stats = json.loads(alarmctl("stats", "--json", env=env).stdout)
    assert stats["states"]["pending"] == 2
    assert stats["total"] == 2


def test_a_file_that_is_not_icalendar_fails_naming_the_file_and_enqueues_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert alarmctl("db", "upgrade", env=env).returncode == 0
    good = tmp_path / "good.ics"
    good.write_text(event("g1", datetime.now(UTC) + timedelta(days=1), display("-PT15M")))
    bad = tmp_path / "notes.txt"
    bad.write_text("Meeting at ten, bring snacks\n")
    result = alarmctl("enqueue", str(bad), str(good), "--calid", "jac", env=env)
    assert result.returncode == 1
    assert str(bad) in result.stderr
    assert "not iCalendar" in result.stderr
    # The summary closes stdout: what was enqueued, what was skipped and why.
    assert result.stdout.splitlines()[-3:] == [
        "enqueued: 1 alarm(s) added, 0 kept, 0 removed, from 1 object(s) in 1 file(s)",
        "skipped: 1 file(s), 0 object(s):",
        f"  {bad}: not iCalendar data (it must start with BEGIN:VCALENDAR)",
    ]
    assert "\x1b" not in result.stderr  # no progress bar: stderr is not a terminal
    assert [r["uid"] for r in json.loads(alarmctl("list", "--json", env=env).stdout)] == ["g1"]

    only_bad = alarmctl("enqueue", str(bad), "--calid", "jac", env=env)
    assert only_bad.returncode == 1
    assert len(json.loads(alarmctl("list", "--json", env=env).stdout)) == 1


def test_preview_json_schema(env: dict[str, str], tmp_path: Path) -> None:
    ics = tmp_path / "todo.ics"
    ics.write_text(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\nBEGIN:VTODO\r\nUID:t1\r\nDUE:20261124T170000\r\n"
        "BEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:x\r\nTRIGGER;RELATED=END:-PT1H\r\nEND:VALARM\r\n"
        "END:VTODO\r\nEND:VCALENDAR\r\n"
    )
    result = alarmctl(
        "preview",
        str(ics),
        "--tz",
        "Europe/Berlin",
        "--from",
        "2026-11-01T00:00:00Z",
        "--until",
        "2026-12-01T00:00:00Z",
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    # Floating 17:00 in Berlin (UTC+1) = 16:00Z; one hour before = 15:00Z.
    assert json.loads(result.stdout) == [
        {
            "ref": "enp:///ics/todoalarm?calid=preview&uid=t1&rid=&aid=1",
            "component": "todo",
            "uid": "t1",
            "rid": "",
            "aid": "1",
            "action": "DISPLAY",
            "trigger": "2026-11-24T15:00:00Z",
            "recipients": [],
        }
    ]
    outside = alarmctl("preview", str(ics), "--from", "2027-01-01T00:00:00Z", "--json", env=env)
    assert json.loads(outside.stdout) == []


def test_bad_configuration_exits_2(env: dict[str, str]) -> None:
    env["CALALARM_SMTP_URL"] = "http://nope"
    result = alarmctl("stats", env=env)
    assert result.returncode == 2
    assert "smtp.url" in result.stderr


SERIES = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\n"
    "BEGIN:VEVENT\r\nUID:standup\r\nDTSTART;TZID=Europe/Berlin:20261102T090000\r\nDURATION:PT15M\r\n"
    "RRULE:FREQ=WEEKLY;BYDAY=MO\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT10M\r\nEND:VALARM\r\nEND:VEVENT\r\n"
    "BEGIN:VEVENT\r\nUID:broken\r\nDTSTART:20261102T090000Z\r\nRRULE:FREQ=SOMETIMES\r\n"
    "BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT10M\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_preview_of_a_series_shows_what_would_be_queued_or_the_window(env: dict[str, str], tmp_path: Path) -> None:
    ics = tmp_path / "series.ics"
    ics.write_text(SERIES)
    # Mondays 09:00 Berlin (08:00Z in winter), alarm 10 minutes before.
    queued = alarmctl("preview", str(ics), "--from", "2026-11-23T12:00:00Z", "--json", env=env)
    assert queued.returncode == 1  # the broken object is reported...
    assert "UID broken, property RRULE" in queued.stderr
    # ...and the series shows its horizon (7 days: Nov 30) plus its next instance (Dec 7).
    assert [(r["rid"], r["trigger"]) for r in json.loads(queued.stdout)] == [
        ("20261130T080000Z", "2026-11-30T07:50:00Z"),
        ("20261207T080000Z", "2026-12-07T07:50:00Z"),
    ]
    window = alarmctl("preview", str(ics), "--from", "2026-11-23T12:00:00Z", "--until", "2026-12-31T00:00:00Z", env=env)
    assert [line.split()[0] for line in window.stdout.splitlines()[1:]] == [
        "2026-11-30T07:50:00Z",
        "2026-12-07T07:50:00Z",
        "2026-12-14T07:50:00Z",
        "2026-12-21T07:50:00Z",
        "2026-12-28T07:50:00Z",
    ]
    backwards = alarmctl(
        "preview", str(ics), "--from", "2026-12-01T00:00:00Z", "--until", "2026-11-01T00:00:00Z", env=env
    )
    assert backwards.returncode == 2


def test_enqueue_reports_the_bad_object_and_queues_the_rest(env: dict[str, str], tmp_path: Path) -> None:
    assert alarmctl("db", "upgrade", env=env).returncode == 0
    ics = tmp_path / "series.ics"
    ics.write_text(SERIES)
    result = alarmctl("enqueue", str(ics), "--calid", "jac", "--json", env=env)
    assert result.returncode == 1
    assert "UID broken, property RRULE" in result.stderr
    (report,) = json.loads(result.stdout)
    assert report["objects"] == 1
    assert report["added"] >= 2  # the horizon and the next Monday at least
    listed = json.loads(alarmctl("list", "--uid", "standup", "--json", env=env).stdout)
    assert {r["uid"] for r in listed} == {"standup"}
    assert all(r["rid"].endswith("T080000Z") for r in listed)


def test_enqueue_with_a_locale_carries_it_to_the_payload(env: dict[str, str], tmp_path: Path) -> None:
    assert alarmctl("db", "upgrade", env=env).returncode == 0
    ics = tmp_path / "meeting.ics"
    ics.write_text(event("m1", datetime.now(UTC) + timedelta(days=1), display("-PT15M")))
    result = alarmctl("enqueue", str(ics), "--calid", "jac", "--owner", "jac@example.com", "--locale", "fr_CA", env=env)
    assert result.returncode == 0, result.stderr
    [listed] = json_of("list", env=env)
    payload = json_of("show", str(listed["id"]), env=env)["alarm"]["payload"]
    assert (payload["locale"], payload["owner"]) == ("fr_CA", "jac@example.com")

    bad = alarmctl("enqueue", str(ics), "--calid", "jac", "--locale", "fr; DROP", env=env)
    assert bad.returncode == 2
    assert "not a language tag" in bad.stderr


# --------------------------------------------------------------------------- list, show, stats, retry, delete, purge


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def put_event(queue: AlarmQueue, calid: str, uid: str, trigger: datetime, now: datetime) -> None:
    """An event whose one DISPLAY alarm fires at ``trigger`` (whole seconds), enqueued at ``now``."""
    result = queue.put(calid, event(uid, trigger + timedelta(minutes=15), display("-PT15M")), now=now)
    assert (result.added, result.errors) == (1, []), result.to_json()


def test_list_filters_by_calendar_and_due_window_sorts_and_pages(env: dict[str, str], queue: AlarmQueue) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    first = now + timedelta(days=1)
    for hour, (calid, uid) in enumerate([("jac", "e0"), ("ops", "e1"), ("jac", "e2"), ("jac", "e3")]):
        put_event(queue, calid, uid, first + timedelta(hours=hour), now)

    page = json_of("list", "--calid", "jac", "--sort", "trigger", "--desc", "--limit", "2", "--offset", "1", env=env)
    assert [r["uid"] for r in page] == ["e2", "e0"]
    window = json_of(
        "list",
        "--due-after",
        iso(first + timedelta(minutes=30)),
        "--due-before",
        iso(first + timedelta(hours=2)),
        env=env,
    )
    assert [r["uid"] for r in window] == ["e1"]  # e2 is due exactly at --due-before: excluded
    human = alarmctl("list", "--due-before", "+1d90m", env=env)
    assert human.returncode == 0, human.stderr
    header, *rows = human.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "NEXT_AT"]
    assert [row.split()[7] for row in rows] == ["e0", "e1"]  # the UID column
    bad = alarmctl("list", "--due-before", "tomorrow", env=env)
    assert (bad.returncode, "is not an instant" in bad.stderr) == (2, True)


def test_an_operator_inspects_retries_purges_and_deletes(env: dict[str, str], queue: AlarmQueue) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=2)
    for uid in ("a", "b", "c"):
        put_event(queue, "jac", uid, start + timedelta(minutes=5), start)
    put_event(queue, "jac", "d", start + timedelta(minutes=1), start)
    put_event(queue, "ops", "e", now + timedelta(days=1), now)
    claimed = queue.claim(
        now=start + timedelta(minutes=5),
        limit=10,
        owner="test",
        policy=ClaimPolicy(lease=timedelta(seconds=60), max_lateness=timedelta(minutes=2)),
    )
    assert claimed.expired == 1  # d: never sent, too late
    ids = {c.uid: c.id for c in claimed.claimed}
    refused = "all 1 recipients refused: {}: 550 5.1.1 no such user"
    for uid, reason in (("a", refused.format("ann@example.com")), ("b", refused.format("bob@example.com"))):
        queue.ack(ids[uid], 1, AckStatus.FAILED, reason, now=start + timedelta(minutes=5), retry_delay=timedelta(0))
    queue.ack(ids["c"], 1, AckStatus.FAILED, "554 5.6.0 message refused", now=start, retry_delay=timedelta(0))

    stats = json_of("stats", "--top", "2", "--hours", "2", env=env)
    assert stats["states"] == {"pending": 1, "inflight": 0, "failed": 3, "expired": 1}
    assert stats["failure_reasons"] == [
        {"reason": "all 1 recipients refused: <address>: 550 5.1.1 no such user", "count": 2},
        {"reason": "554 5.6.0 message refused", "count": 1},
    ]
    assert ([h["pending"] for h in stats["due_by_hour"]], stats["due_later"]) == ([0, 0], 1)

    shown = json_of("show", str(ids["a"]), env=env)
    assert (shown["alarm"]["state"], shown["alarm"]["payload"]["uid"]) == ("failed", "a")
    assert [h["event"] for h in shown["history"]] == ["queued", "published", "failed"]

    retried = alarmctl("retry", str(ids["a"]), "--json", env=env)
    assert retried.returncode == 0, retried.stderr
    [requeued] = json.loads(retried.stdout)["requeued"]
    assert (requeued["id"], requeued["state"], requeued["attempts"]) == (ids["a"], "pending", 0)
    # due now, though its trigger was 2 h ago: alarmd sends it (max_lateness counts from the retry)
    [sent] = queue.claim(
        now=datetime.now(UTC),
        limit=10,
        owner="test",
        policy=ClaimPolicy(lease=timedelta(seconds=60), max_lateness=timedelta(minutes=2)),
    ).claimed
    assert sent.id == ids["a"]
    queue.release([sent], now=datetime.now(UTC), delay=timedelta(0), reason="test: handed back")
    again = alarmctl("retry", str(ids["a"]), env=env)
    assert (again.returncode, "is pending, not failed or expired" in again.stderr) == (1, True)

    assert json_of("purge", "--failed", "--older-than", "3h", env=env)["purged"] == 0  # failed 1 h 55 min ago
    purged = json_of("purge", "--failed", "--expired", "--older-than", "1h", env=env)
    assert (purged["purged"], purged["states"], purged["older_than_seconds"]) == (3, ["failed", "expired"], 3600.0)
    gone = json_of("show", str(ids["c"]), env=env)
    assert gone["alarm"] is None
    assert gone["history"][-1]["event"] == "removed"
    assert gone["history"][-1]["detail"] == "purged by an operator; was failed: 554 5.6.0 message refused"
    assert json_of("retry", "--failed", env=env) == {"requeued": []}  # nothing failed left: not an error

    assert json_of("delete", str(ids["a"]), env=env) == {"deleted": 1, "objects": 0}
    assert alarmctl("delete", str(ids["a"]), env=env).returncode == 1
    unconfirmed = alarmctl("delete", "--calid", "ops", env=env)
    assert (unconfirmed.returncode, "--yes" in unconfirmed.stderr) == (2, True)
    assert json_of("delete", "--calid", "ops", "--yes", env=env) == {"deleted": 1, "objects": 1}
    assert json_of("list", env=env) == []

    for usage in (["retry"], ["purge", "--failed", "--older-than", "soon"]):
        result = alarmctl(*usage, env=env)
        assert result.returncode == 2, (usage, result.stderr)


def test_watch_once_reports_rates_lateness_and_recent_failures(env: dict[str, str], queue: AlarmQueue) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for uid in ("x", "y"):
        put_event(queue, "jac", uid, now - timedelta(seconds=90), now - timedelta(minutes=10))
    published = now - timedelta(seconds=30)
    x, y = queue.claim_due(now=published, limit=10, lease=timedelta(seconds=60), owner="test")
    queue.ack(x.id, 1, AckStatus.DELIVERED, "", now=published, retry_delay=timedelta(0))
    queue.ack(y.id, 1, AckStatus.FAILED, "550 5.1.1 no such user", now=published, retry_delay=timedelta(0))

    frame = json_of("watch", "--once", "--window", "2m", env=env)
    assert frame["window_seconds"] == 120.0
    assert frame["states"] == {"pending": 0, "inflight": 0, "failed": 1, "expired": 0}
    assert (frame["events"]["published"], frame["events"]["delivered"], frame["events"]["failed"]) == (2, 1, 1)
    assert (frame["rates"]["published"], frame["rates"]["acked"]) == (0.017, 0.017)
    assert frame["lateness"] == {"count": 2, "p50": 60.0, "p95": 60.0, "max": 60.0}
    [failure] = frame["recent_failures"]
    assert (failure["uid"], failure["event"], failure["detail"]) == ("y", "failed", "550 5.1.1 no such user")
    human = alarmctl("watch", "--once", "--window", "2m", env=env)
    assert human.returncode == 0, human.stderr
    assert "p50 60.000 s" in human.stdout
    assert "550 5.1.1 no such user" in human.stdout


def test_enqueue_shows_a_progress_bar_on_stderr_when_it_is_a_terminal(env: dict[str, str], tmp_path: Path) -> None:
    assert alarmctl("db", "upgrade", env=env).returncode == 0
    files = []
    for i in range(3):
        path = tmp_path / f"m{i}.ics"
        path.write_text(event(f"m{i}", datetime.now(UTC) + timedelta(days=1), display("-PT15M")))
        files.append(str(path))
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the other end is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        process = subprocess.run(
            [str(BIN / "alarmctl"), "enqueue", *files, "--calid", "jac"],
            env={**env, "TERM": "xterm", "COLUMNS": "100"},
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    assert process.returncode == 0
    terminal = b"".join(chunks).decode(errors="replace")
    assert "enqueue" in terminal
    assert "100%" in terminal
    assert "3/3 file(s)" in terminal
    assert (
        process.stdout.splitlines()[-1]
        == "enqueued: 3 alarm(s) added, 0 kept, 0 removed, from 3 object(s) in 3 file(s)"
    )


# --------------------------------------------------------------------------- check and test-email


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``alarmctl check``'s lines by check name."""
    return {line[:13].strip(): line[14:] for line in result.stdout.splitlines()}


async def test_check_passes_on_a_sound_deployment_and_names_each_broken_dependency(
    postgres_url: str, ca: trustme.CA, ca_file: str
) -> None:
    require_rabbitmq()
    exchange = unique_exchange()
    try:
        async with recording_smtp_server(
            tls=server_tls_context(ca), require_starttls=True, credentials={"reminders": "s3cret-pw"}
        ) as smtp:
            sound = {
                **{k: v for k, v in os.environ.items() if not k.startswith("CALALARM_")},
                "CALALARM_DATABASE_URL": postgres_url,
                "CALALARM_BUS_URL": f"{RABBITMQ_URL}?exchange={exchange}",
                "CALALARM_SMTP_URL": smtp.url,  # smtp://: STARTTLS required, the certificate verified
                "CALALARM_SMTP_USERNAME": "reminders",
                "CALALARM_SMTP_PASSWORD": "s3cret-pw",
                "SSL_CERT_FILE": ca_file,
            }

            async def check(**changes: str) -> subprocess.CompletedProcess[str]:
                environment = {**sound, **changes}
                return await asyncio.to_thread(alarmctl, "check", "--timeout", "5", env=environment)

            ok = await asyncio.to_thread(alarmctl, "check", "--json", env=sound)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            report = json.loads(ok.stdout)
            assert report["ok"] is True
            assert [c["name"] for c in report["checks"]] == [
                "configuration",
                "notifyd files",
                "database",
                "bus",
                "smtp",
            ]
            assert report["checks"][4]["detail"] == "STARTTLS, certificate verified, AUTH as reminders"
            assert smtp.auth_attempts == [("reminders", True)]
            assert "s3cret-pw" not in ok.stdout + ok.stderr

            port = closed_port()
            database = await check(CALALARM_DATABASE_URL=postgres_url.replace(":5432/", f":{port}/"))
            lines = check_lines(database)
            assert database.returncode == 3
            assert lines["database"].startswith(f"postgresql+psycopg://postgres@127.0.0.1:{port}/")
            assert "FAILED: cannot connect" in lines["database"]
            assert lines["bus"].endswith("ok (connected, exchange declared)")
            assert "alarmctl: check failed: database" in database.stderr

            untrusted = {k: v for k, v in sound.items() if k != "SSL_CERT_FILE"}
            untrusted["CALALARM_BUS_URL"] = f"amqp://guest:guest@127.0.0.1:{port}/"
            both = await asyncio.to_thread(alarmctl, "check", "--timeout", "5", env=untrusted)
            lines = check_lines(both)
            assert both.returncode == 4
            assert "FAILED: cannot reach RabbitMQ" in lines["bus"]
            assert f"127.0.0.1:{port}" in lines["bus"]
            assert "FAILED" in lines["smtp"]
            assert "certificate" in lines["smtp"].lower()
            assert "fix: the server's certificate must be valid" in lines["smtp"]

            smtp_down = await check(CALALARM_SMTP_URL=f"smtp://127.0.0.1:{port}", CALALARM_NOTIFYD_TEMPLATES="/nowhere")
            lines = check_lines(smtp_down)
            assert smtp_down.returncode == 2  # a configuration fault (the templates) outranks an unreachable server
            assert "FAILED: notifyd.templates /nowhere: not a directory" in lines["notifyd files"]
            assert lines["smtp"].startswith(f"smtp://127.0.0.1:{port}: FAILED: cannot open a session")
            assert "fix: check smtp.url (host and port)" in lines["smtp"]

            broken = await check(CALALARM_SMTP_URL="http://mail")
            assert broken.returncode == 2
            assert "configuration" in check_lines(broken)
            assert "smtp.url" in broken.stdout
    finally:
        await delete_from_broker(exchange, set())


async def test_test_email_sends_one_real_message_through_the_configured_server(
    env: dict[str, str], ca: trustme.CA, ca_file: str
) -> None:
    refuse = {"ghost@example.com": "550 5.1.1 no such user"}
    async with recording_smtp_server(tls=server_tls_context(ca), reply_for=refuse.get) as smtp:
        env.update(
            CALALARM_SMTP_URL=smtp.url, CALALARM_SMTP_SENDER="Reminders <calalarm@example.com>", SSL_CERT_FILE=ca_file
        )
        sent = await asyncio.to_thread(alarmctl, "test-email", "ann@example.org", "--json", env=env)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        body = json.loads(sent.stdout)
        assert (body["sent"], body["status"], body["recipient"]) == (True, "delivered", "ann@example.org")
        assert body["server"] == f"127.0.0.1:{smtp.port}"
        assert body["reply"] == "250 2.0.0 OK: recorded"  # the server's reply to the message
        [(message, recipients)] = await smtp.wait_for(1, timeout=5)
        assert recipients == ["ann@example.org"]
        assert message["Subject"] == "calalarm test message"
        assert message["From"] == "Reminders <calalarm@example.com>"
        assert message["Message-ID"] == body["message_id"]
        assert smtp.envelopes[0].tls  # STARTTLS, as notifyd's sender requires

        again = await asyncio.to_thread(alarmctl, "test-email", "ann@example.org", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.rstrip().endswith(
            f"to ann@example.org: accepted by the SMTP server 127.0.0.1:{smtp.port} (250 2.0.0 OK: recorded)"
        )

        refused = await asyncio.to_thread(alarmctl, "test-email", "ghost@example.com", env=env)
        assert refused.returncode == 1
        assert "550 5.1.1 no such user" in refused.stdout

        env["CALALARM_SMTP_URL"] = f"smtp://127.0.0.1:{closed_port()}"
        down = await asyncio.to_thread(alarmctl, "test-email", "ann@example.org", env=env)
        assert down.returncode == 4
        assert "cannot open a session" in down.stdout

        not_an_address = await asyncio.to_thread(alarmctl, "test-email", "ann@example.org, bob@example.org", env=env)
        assert not_an_address.returncode == 2
        assert len(smtp.messages) == 2
