"""alarmctl's pure helpers: durations, instants, lateness figures, rates, check's exit code, the test message."""

from __future__ import annotations

from datetime import timedelta
from email import policy
from email.parser import BytesParser

import pytest

from alarmd.cli.check import Check, build_test_message, exit_code
from alarmd.cli.context import EXIT_DATABASE, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from alarmd.cli.timeparse import parse_duration, parse_instant
from alarmd.cli.watch import event_rates, lateness_summary
from tests.calendars import utc

NOW = utc("2026-11-23T10:00:00Z")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d 12h", timedelta(days=1, hours=12)),
        ("1.5h", timedelta(minutes=90)),
        ("0s", timedelta(0)),
        ("0", timedelta(0)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "-1d", "7 days", "d7", "1h30", "1y", "1e3s", "h"])
def test_what_is_not_a_duration_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration such as 7d, 12h, 30m"):
        parse_duration(text)


def test_instants_are_iso_8601_now_or_an_offset_from_now() -> None:
    assert parse_instant("2026-11-24T08:00:00Z", NOW) == utc("2026-11-24T08:00:00Z")
    assert parse_instant("2026-11-24T09:00:00+01:00", NOW) == utc("2026-11-24T08:00:00Z")
    assert parse_instant("2026-11-24T08:00:00", NOW) == utc("2026-11-24T08:00:00Z")  # no offset: UTC
    assert parse_instant("now", NOW) == NOW
    assert parse_instant("+2h", NOW) == utc("2026-11-23T12:00:00Z")
    assert parse_instant("-30m", NOW) == utc("2026-11-23T09:30:00Z")
    with pytest.raises(ValueError, match="not an instant"):
        parse_instant("tomorrow", NOW)
    with pytest.raises(ValueError, match="not a duration"):
        parse_instant("+2 hours", NOW)


def test_lateness_summary_is_nearest_rank() -> None:
    assert lateness_summary([]) == {"count": 0, "p50": None, "p95": None, "max": None}
    values = [float(v) for v in range(1, 101)]  # 1..100 s, shuffled order must not matter
    assert lateness_summary(values[::-1]) == {"count": 100, "p50": 50.0, "p95": 95.0, "max": 100.0}
    assert lateness_summary([0.1234567]) == {"count": 1, "p50": 0.123, "p95": 0.123, "max": 0.123}


def test_event_rates_per_second_with_acks_summed() -> None:
    rates = event_rates({"published": 120, "delivered": 100, "retry": 10, "failed": 5, "queued": 500}, 60.0)
    assert rates == {
        "published": 2.0,
        "delivered": 1.667,
        "retry": 0.167,
        "failed": 0.083,
        "expired": 0.0,
        "acked": 1.917,
    }


def test_check_exits_with_the_first_failing_kind() -> None:
    ok = Check("configuration", "f", True, "fine")
    database = Check("database", "d", False, "down", EXIT_DATABASE)
    smtp = Check("smtp", "s", False, "refused", EXIT_UNREACHABLE)
    config = Check("notifyd files", "t", False, "bad template", EXIT_USAGE)
    assert exit_code([ok]) == EXIT_OK
    assert exit_code([ok, smtp]) == EXIT_UNREACHABLE
    assert exit_code([ok, smtp, database]) == EXIT_DATABASE
    assert exit_code([config, database, smtp]) == EXIT_USAGE
    assert smtp.line() == "smtp          s: FAILED: refused"
    assert ok.line() == "configuration f: ok (fine)"


def test_the_test_message_has_the_reminders_headers_and_reads_back() -> None:
    data, message_id = build_test_message(
        "Calendar Reminders <calalarm@example.com>", "ann@example.org", NOW, "mail.example.com:587"
    )
    assert data.isascii()
    assert all(line.endswith(b"\r") or not line for line in data.split(b"\n")[:-1])  # CRLF throughout
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert message["Subject"] == "calalarm test message"
    assert message["From"].addresses[0].display_name == "Calendar Reminders"
    assert message["From"].addresses[0].addr_spec == "calalarm@example.com"
    assert message["To"] == "ann@example.org"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"] == message_id
    assert message_id.endswith("@example.com>")
    assert message["Date"].datetime == NOW
    body = message.get_content()
    assert "mail.example.com:587" in body
    assert "2026-11-23T10:00:00Z" in body


def test_a_sender_header_cannot_be_smuggled_into_the_test_message() -> None:
    data, _ = build_test_message("Evil\r\nBcc: x@example.net <calalarm@example.com>", "ann@example.org", NOW, "s")
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert message["Bcc"] is None
