"""Rendering reminder emails: headers, wording, times, and header injection."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import pytest

from common.payload import AlarmPayload
from notifyd.email import DESCRIPTION_MAX, SUBJECT_MAX, clean_header, render_reminder
from tests.payloads import sample_payload

NOW = datetime(2026, 11, 23, 9, 45, 0, tzinfo=UTC)
REF = "enp:///ics/eventalarm?calid=jac&uid=u1&rid=&aid=1"
SENDER = "Calendar reminders <calalarm@example.com>"
EXPECTED_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "x-alarm-ref",
    "x-alarm-trigger",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
}


def render(payload: AlarmPayload | None = None, recipients: list[str] | None = None) -> EmailMessage:
    return render_reminder(payload or sample_payload(), REF, SENDER, recipients or ["bob@example.com"], NOW)


def wire(message: EmailMessage) -> tuple[bytes, EmailMessage]:
    """The message as sent (SMTP policy) and as a receiver parses it back."""
    raw = message.as_bytes(policy=policy.SMTP)
    return raw, BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(raw)


def header_names(raw: bytes) -> list[str]:
    """Every header field name in the raw header block (continuation lines skipped)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].decode().lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]


def body_of(message: EmailMessage) -> str:
    return message.get_content()  # type: ignore[no-any-return]


def test_every_header_is_present_and_right() -> None:
    raw, parsed = wire(render(recipients=["bob@example.com", "Al <al@example.com>"]))
    assert sorted(header_names(raw)) == sorted(EXPECTED_HEADERS)
    assert parsed["From"] == SENDER
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@example.com", "al@example.com"]
    assert parsed["Subject"] == "Reminder: Team meeting"
    assert parsedate_to_datetime(parsed["Date"]) == NOW
    assert parsed["Message-ID"].startswith("<")
    assert parsed["Message-ID"].endswith("@example.com>")
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Alarm-Ref"] == REF
    assert parsed["X-Alarm-Trigger"] == "2026-11-23T09:45:00Z"
    assert parsed.get_content_type() == "text/plain"


def test_message_ids_differ_between_renderings() -> None:
    assert render()["Message-ID"] != render()["Message-ID"]


def test_body_shows_the_event_in_its_time_zone() -> None:
    body = body_of(render(sample_payload(alarm_description="Bring the slides")))
    assert body.startswith("Reminder: Team meeting\n")
    assert "When:  Mon 2026-11-23 11:00 – 12:00 (Europe/Paris)" in body
    assert "Where: Room 101" in body
    assert "Agenda:\n1. Budget\n2. Hiring" in body
    assert "Alarm note:\nBring the slides" in body


def test_event_over_midnight_shows_both_dates() -> None:
    body = body_of(render(sample_payload(start="2026-11-23T22:00:00Z", end="2026-11-24T01:00:00Z", tz="UTC")))
    assert "Mon 2026-11-23 22:00 – Tue 2026-11-24 01:00 (UTC)" in body


def test_todo_wording() -> None:
    payload = sample_payload(component="todo", summary="File taxes", start="", end="2026-11-24T17:00:00Z")
    message = render(payload)
    assert message["Subject"] == "To-do reminder: File taxes"
    body = body_of(message)
    assert body.startswith("To-do reminder: File taxes\n")
    assert "Due:" in body
    assert "Tue 2026-11-24 18:00 (Europe/Paris)" in body
    assert "When:" not in body


@pytest.mark.parametrize(
    ("start", "end", "shown"),
    [
        ("2026-11-23", "2026-11-24", "When:  2026-11-23 (all day)"),
        ("2026-11-23", "", "When:  2026-11-23 (all day)"),
        ("2026-11-23", "2026-11-26", "When:  2026-11-23 – 2026-11-25 (all day)"),
        # alarmd sends the computed end as an instant when the event has no DTEND.
        ("2026-11-23", "2026-11-23T23:00:00Z", "When:  2026-11-23 (all day)"),
    ],
)
def test_all_day_events_show_plain_dates(start: str, end: str, shown: str) -> None:
    body = body_of(render(sample_payload(start=start, end=end)))
    assert shown in body
    assert "00:00" not in body


def test_all_day_todo_shows_plain_due_date() -> None:
    body = body_of(render(sample_payload(component="todo", start="2026-11-23", end="2026-11-25")))
    assert "Starts: 2026-11-23" in body
    assert "Due:    2026-11-25" in body


def test_unknown_time_zone_falls_back_to_utc() -> None:
    body = body_of(render(sample_payload(tz="Mars/Olympus_Mons")))
    assert "Mon 2026-11-23 10:00 – 11:00 (UTC)" in body


def test_missing_summary_has_a_placeholder() -> None:
    assert render(sample_payload(summary=""))["Subject"] == "Reminder: (no title)"


def test_subject_is_capped() -> None:
    _raw, parsed = wire(render(sample_payload(summary="word " * 200)))
    assert len(parsed["Subject"]) <= SUBJECT_MAX
    assert parsed["Subject"].endswith("…")


def test_description_is_capped() -> None:
    body = body_of(render(sample_payload(description="x" * 10_000)))
    assert "x" * (DESCRIPTION_MAX - 1) + "…" in body
    assert "x" * DESCRIPTION_MAX not in body


def test_body_drops_control_characters() -> None:
    body = body_of(render(sample_payload(description="bell\x07 and\x00 nul\r\nnext\u2028line")))
    assert "bell and nul\nnext\nline" in body


INJECTIONS = ["\r\n", "\n", "\r", "\x00", "\u2028", "\u2029", "\x85", "\r\n\r\n"]


@pytest.mark.parametrize("separator", INJECTIONS, ids=repr)
@pytest.mark.parametrize("field", ["summary", "owner", "location"])
def test_header_injection_never_adds_a_header(field: str, separator: str) -> None:
    evil = f"x@example.com{separator}Bcc: victim@example.com{separator}X-Evil: 1"
    if field == "owner":
        # notifyd mails the owner when the alarm names no recipients.
        message = render(sample_payload(owner=evil), recipients=[evil])
    else:
        message = render(sample_payload(**{field: evil}))
    raw, parsed = wire(message)
    names = header_names(raw)
    assert sorted(names) == sorted(EXPECTED_HEADERS)
    assert "bcc" not in {k.lower() for k in parsed}
    assert parsed["X-Evil"] is None
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\x00" not in head
    assert "\u2028".encode() not in head
    assert "\u2029".encode() not in head
    for name in ("Subject", "To", "From", "X-Alarm-Ref"):
        value = str(parsed[name])
        assert "\r" not in value
        assert "\n" not in value


def test_injection_in_summary_stays_inside_the_subject() -> None:
    _raw, parsed = wire(render(sample_payload(summary="Lunch\r\nBcc: victim@example.com")))
    assert parsed["Subject"] == "Reminder: Lunch Bcc: victim@example.com"


def test_injection_in_ref_and_trigger_is_neutralised() -> None:
    message = render_reminder(sample_payload(), REF + "\r\nX-Evil: 1", SENDER, ["bob@example.com"], NOW)
    raw, parsed = wire(message)
    assert sorted(header_names(raw)) == sorted(EXPECTED_HEADERS)
    assert parsed["X-Alarm-Ref"] == REF + " X-Evil: 1"


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [
        ("a\r\nb", "a b"),
        ("a\x00b", "a b"),
        ("a\u2028b\u2029c", "a b c"),
        ("a\x9bb", "a b"),  # C1 control
        ("a\x7fb", "a b"),
        ("  spaced   out  ", "spaced out"),
        ("tab\there", "tab here"),
    ],
)
def test_clean_header(value: str, cleaned: str) -> None:
    assert clean_header(value, 100) == cleaned


def test_clean_header_caps_length() -> None:
    assert clean_header("abcdef", 4) == "abc…"
    assert len(clean_header("y" * 500, 200)) == 200


def test_rendering_is_pure() -> None:
    first, second = render(), render()
    del first["Message-ID"], second["Message-ID"]
    assert first.as_bytes() == second.as_bytes()
