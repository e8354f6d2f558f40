"""Rendering a reminder email from an alarm payload.

A pure function of its arguments (no clock, no network): the caller passes ``now``.
Every value that reaches a header is sanitised first, so a summary, location or
address taken from a calendar object can never start a header of its own.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from email import policy
from email.errors import HeaderParseError
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.payload import AlarmPayload, parse_utc

SUBJECT_MAX = 200
ADDRESS_MAX = 320  # 254 for the address itself, plus room for a display name
REF_MAX = 900  # well under the 998 octets RFC 5322 allows on one line
TRIGGER_MAX = 64
DESCRIPTION_MAX = 4000
SUMMARY_BODY_MAX = 1000
LOCATION_MAX = 1000
NO_TITLE = "(no title)"
MSGID_FALLBACK_DOMAIN = "calalarm.invalid"

# C0 controls (CR, LF, NUL, TAB, …), DEL, C1 controls (including NEL) and the
# Unicode line and paragraph separators: none of them may reach a header.
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# In body text, line breaks are fine but other controls are not.
_BODY_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
_BODY_NEWLINES = re.compile("\r\n|\r|\x85|\u2028|\u2029")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def clean_header(value: str, limit: int) -> str:
    """``value`` made safe for a header: controls and line breaks become spaces, runs of
    white space collapse, and the result is at most ``limit`` characters."""
    text = " ".join(_HEADER_UNSAFE.sub(" ", value).split())
    return _cap(text, limit)


def clean_text(value: str, limit: int) -> str:
    """``value`` made safe for the plain-text body: newlines normalised, other controls
    dropped, at most ``limit`` characters."""
    text = _BODY_NEWLINES.sub("\n", value)
    text = _BODY_UNSAFE.sub("", text).strip()
    return _cap(text, limit)


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)].rstrip() + "…"


def render_reminder(payload: AlarmPayload, ref: str, sender: str, recipients: list[str], now: datetime) -> EmailMessage:
    """The plain-text reminder for one alarm instance, addressed to ``recipients``."""
    title = payload.summary or payload.alarm_summary or NO_TITLE
    is_todo = payload.component == "todo"
    heading = ("To-do reminder: " if is_todo else "Reminder: ") + title

    msg = EmailMessage(policy=policy.SMTP)
    _set_address_header(msg, "From", [sender], fallback=f"calalarm@{MSGID_FALLBACK_DOMAIN}")
    _set_address_header(msg, "To", recipients, fallback="undisclosed-recipients:;")
    msg["Subject"] = clean_header(heading, SUBJECT_MAX)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    msg["Message-ID"] = make_msgid(domain=_msgid_domain(sender))
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Alarm-Ref"] = clean_header(ref, REF_MAX)
    msg["X-Alarm-Trigger"] = clean_header(payload.trigger, TRIGGER_MAX)
    msg.set_content(_body(payload, heading))
    return msg


def _set_address_header(msg: EmailMessage, name: str, values: list[str], fallback: str) -> None:
    cleaned = [clean_header(v, ADDRESS_MAX) for v in values]
    text = ", ".join(v for v in cleaned if v)
    try:
        msg[name] = text or fallback
    except (HeaderParseError, ValueError, IndexError, TypeError, AttributeError):
        # The header parser is lenient, but a pathological address must not stop the
        # reminder: the envelope, not this header, decides where the message goes.
        del msg[name]
        msg[name] = fallback


def _msgid_domain(sender: str) -> str:
    _, at, domain = parseaddr(clean_header(sender, ADDRESS_MAX))[1].rpartition("@")
    return domain if at and _DOMAIN.match(domain) else MSGID_FALLBACK_DOMAIN


def _body(payload: AlarmPayload, heading: str) -> str:
    zone, zone_name = _zone(payload.tz)
    lines = [clean_header(heading, SUMMARY_BODY_MAX), ""]
    fields: list[tuple[str, str]] = []
    if payload.component == "todo":
        if payload.start:
            fields.append(("Starts", _show_one(payload.start, zone, zone_name)))
        if payload.end:
            fields.append(("Due", _show_one(payload.end, zone, zone_name)))
    elif payload.start:
        fields.append(("When", _show_span(payload.start, payload.end, zone, zone_name)))
    if payload.location:
        fields.append(("Where", clean_header(payload.location, LOCATION_MAX)))
    width = max((len(label) for label, _ in fields), default=0) + 2
    lines.extend(f"{label + ':':<{width}}{value}" for label, value in fields)
    description = clean_text(payload.description, DESCRIPTION_MAX)
    if description:
        lines.extend(["", description])
    alarm_note = clean_text(payload.alarm_description, DESCRIPTION_MAX)
    if alarm_note and alarm_note not in (description, clean_text(payload.summary, DESCRIPTION_MAX)):
        lines.extend(["", "Alarm note:", alarm_note])
    lines.extend(["", "-- ", "This reminder was sent automatically by calalarm."])
    return "\n".join(lines) + "\n"


def _zone(name: str) -> tuple[tzinfo, str]:
    try:
        return ZoneInfo(name), name
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC, "UTC"


def _parse(value: str) -> date | datetime | None:
    """A payload start/end: a plain date (all-day) or an aware instant; None if neither."""
    try:
        if _DATE_ONLY.match(value):
            return date.fromisoformat(value)
        return parse_utc(value)
    except ValueError:
        return None


def _show_one(value: str, zone: tzinfo, zone_name: str) -> str:
    parsed = _parse(value)
    if parsed is None:
        return clean_header(value, 100)
    if isinstance(parsed, datetime):
        return f"{_local(parsed, zone)} ({zone_name})"
    return parsed.isoformat()


def _show_span(start_text: str, end_text: str, zone: tzinfo, zone_name: str) -> str:
    start = _parse(start_text)
    end = _parse(end_text) if end_text else None
    if start is None:
        return clean_header(start_text, 100)
    if not isinstance(start, datetime):
        # All day. DTEND of an all-day event is exclusive; it may also arrive as the
        # instant of local midnight after the last day.
        last = start
        if isinstance(end, datetime):
            local_end = end.astimezone(zone)
            last = local_end.date() - timedelta(days=1) if local_end.time() == datetime.min.time() else local_end.date()
        elif isinstance(end, date):
            last = end - timedelta(days=1)
        if last > start:
            return f"{start.isoformat()} – {last.isoformat()} (all day)"
        return f"{start.isoformat()} (all day)"
    shown = _local(start, zone)
    if isinstance(end, datetime) and end > start:
        local_start, local_end = start.astimezone(zone), end.astimezone(zone)
        shown += f" – {local_end:%H:%M}" if local_end.date() == local_start.date() else f" – {_local(end, zone)}"
    return f"{shown} ({zone_name})"


def _local(instant: datetime, zone: tzinfo) -> str:
    local = instant.astimezone(zone)
    return f"{_WEEKDAYS[local.weekday()]} {local:%Y-%m-%d %H:%M}"
