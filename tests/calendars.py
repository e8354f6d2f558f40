"""Small iCalendar builders for tests."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def ics_stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def event(uid: str, start: datetime, *alarms: str, summary: str = "Meeting", extra: str = "") -> str:
    """A one-event calendar; each alarm is the text between BEGIN:VALARM and END:VALARM."""
    body = "".join(f"BEGIN:VALARM\r\n{a.strip()}\r\nEND:VALARM\r\n" for a in alarms)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calalarm//tests//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{ics_stamp(start)}\r\n"
        f"DURATION:PT1H\r\nSUMMARY:{summary}\r\n{extra}{body}END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def display(trigger: str) -> str:
    return f"ACTION:DISPLAY\r\nDESCRIPTION:Reminder\r\nTRIGGER:{trigger}"
