"""alarmctl as a real process: exit codes, messages and --json outputs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.calendars import display, event

BIN = Path(sys.executable).parent


def alarmctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "alarmctl"), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CALALARM_")}
    e["CALALARM_DATABASE_URL"] = f"sqlite:///{tmp_path / 'q.db'}"
    return e


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
    with sqlite3.connect(tmp_path / "q.db") as db:  # `alarmctl show` gains the payload with issue 6
        [(stored,)] = db.execute("SELECT payload FROM alarms").fetchall()
    payload = json.loads(stored)
    assert (payload["locale"], payload["owner"]) == ("fr_CA", "jac@example.com")

    bad = alarmctl("enqueue", str(ics), "--calid", "jac", "--locale", "fr; DROP", env=env)
    assert bad.returncode == 2
    assert "not a language tag" in bad.stderr
