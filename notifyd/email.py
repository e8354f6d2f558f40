"""Rendering a reminder email from an alarm payload.

A pure function of its arguments (no clock, no network): the caller passes ``now``.
The words come from the locale's templates (:mod:`notifyd.templates`); this module
builds their context and the message around them.

Sanitising (the documented rule): every value that reaches a header is cleaned by
:func:`clean_header` first: encoded words (``=?utf-8?q?…?=``) are decoded, then
control characters, line breaks (CR, LF, NEL, U+2028, U+2029) and NUL become spaces,
and the text is capped. So a summary, location or address taken from a calendar
object can never start a header or add a recipient; it stays inside its own field.
Body text keeps its line breaks but loses other controls, and the description is
capped at ``notifyd.description_max`` characters (marked with "…").
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, tzinfo
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
from babel import Locale, UnknownLocaleError

from common.payload import AlarmPayload, parse_utc
from notifyd import localise
from notifyd.recipients import mailbox
from notifyd.templates import Templates

SUBJECT_MAX = 200
ADDRESS_MAX = 320  # 254 for the address itself, plus room for a display name
REF_MAX = 900  # well under the 998 octets RFC 5322 allows on one line
TRIGGER_MAX = 64
DESCRIPTION_MAX = 4000
SUMMARY_BODY_MAX = 1000
LOCATION_MAX = 1000
MSGID_FALLBACK_DOMAIN = "calalarm.invalid"
PRODID = "-//calalarm//reminder//EN"

# C0 controls (CR, LF, NUL, TAB, …), DEL, C1 controls (including NEL) and the
# Unicode line and paragraph separators: none of them may reach a header.
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# In body text, line breaks are fine but other controls are not.
_BODY_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
_BODY_NEWLINES = re.compile("\r\n|\r|\x85|\u2028|\u2029")
_BLANK_RUNS = re.compile(r"\n{3,}")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard registry, except that each header class is made once, not per header
    (the stdlib builds a new class for every header set: a tenth of notifyd's CPU time)."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


_POLICY = policy.SMTP.clone(header_factory=_CachedHeaderRegistry())


def clean_header(value: str, limit: int) -> str:
    """``value`` made safe for a header: encoded words decoded, controls and line breaks
    turned into spaces, runs of white space collapsed, at most ``limit`` characters."""
    text = _decode_encoded_words(value)
    text = " ".join(_HEADER_UNSAFE.sub(" ", text).split())
    return _cap(text, limit)


def clean_text(value: str, limit: int) -> str:
    """``value`` made safe for the body: newlines normalised, other controls dropped, at
    most ``limit`` characters."""
    text = _BODY_NEWLINES.sub("\n", value)
    text = _BODY_UNSAFE.sub("", text).strip()
    return _cap(text, limit)


def _decode_encoded_words(value: str) -> str:
    # An RFC 2047 word such as =?utf-8?q?a=0D=0AB?= would be decoded by the receiver
    # into a line break; decode it here so the cleaning below sees what a reader sees.
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return value.replace("=?", "= ?")


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)].rstrip() + "…"


@cache
def shipped_templates() -> Templates:
    """The templates that come with notifyd (no overrides, English by default)."""
    return Templates()


def render_reminder(
    payload: AlarmPayload,
    ref: str,
    sender: str,
    recipients: list[str],
    now: datetime,
    *,
    templates: Templates | None = None,
    locale: str = "",
    tz: str = "",
    description_max: int = DESCRIPTION_MAX,
    attach_ics: bool = False,
) -> EmailMessage:
    """The reminder for one alarm instance, addressed to ``recipients``.

    ``locale`` (else ``payload.locale``) picks the templates, resolved as
    :meth:`Templates.resolve` documents; ``tz`` (else ``payload.tz``, else UTC) is the
    zone times are shown in. The message is text plus an HTML alternative and, with
    ``attach_ics``, the occurrence as a text/calendar part.
    """
    templates = templates or shipped_templates()
    chosen = templates.resolve(locale or payload.locale)
    zone = _zone(tz) or _zone(payload.tz) or UTC
    context = reminder_context(payload, ref, zone, _babel_locale(chosen), description_max)
    rendered = templates.render(payload.component, chosen, context)

    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    msg = EmailMessage(policy=_POLICY)
    _set_address_header(msg, "From", [sender], fallback=f"calalarm@{MSGID_FALLBACK_DOMAIN}")
    _set_address_header(msg, "To", recipients, fallback="undisclosed-recipients:;")
    msg["Subject"] = clean_header(rendered.subject, SUBJECT_MAX)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    msg["Message-ID"] = make_msgid(domain=_msgid_domain(sender))
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Alarm-Ref"] = clean_header(ref, REF_MAX)
    msg["X-Alarm-Trigger"] = clean_header(payload.trigger, TRIGGER_MAX)
    msg.set_content(_tidy(rendered.text))
    msg.add_alternative(rendered.html, subtype="html")
    if attach_ics:
        msg.add_attachment(
            occurrence_ics(payload, now, description_max),
            maintype="text",
            subtype="calendar",
            filename="reminder.ics",
            params={"method": "PUBLISH", "charset": "utf-8"},
        )
    msg["Content-Language"] = chosen.replace("_", "-")  # after the parts: making them moves Content-* down
    return msg


def reminder_context(
    payload: AlarmPayload, ref: str, zone: tzinfo, locale: Locale, description_max: int = DESCRIPTION_MAX
) -> dict[str, Any]:
    """The names a template can use; every value is a cleaned string (or a bool).

    ``kind`` (event, todo), ``action``, ``title`` (the summary, else the alarm's; may be
    empty), ``when`` (an event's localised date and time or span), ``start`` and
    ``due`` (a to-do's), ``all_day``, ``zone`` (the zone's localised name; empty for
    all-day), ``location``, ``organizer``, ``description`` (capped), ``alarm_note``
    (the alarm's own SUMMARY/DESCRIPTION when they add something), ``trigger``
    (localised), ``calid``, ``uid``, ``ref``.
    """
    start = _parse(payload.start)
    end = _parse(payload.end) if payload.end else None
    all_day = start is not None and not isinstance(start, datetime)
    when = start_text = due_text = label = ""
    if payload.component == "todo":
        start_text = _show_one(payload.start, start, zone, locale)
        due_text = _show_one(payload.end, end, zone, locale)
        timed = next((v for v in (start, end) if isinstance(v, datetime)), None)
        label = localise.zone_label(timed, zone, locale) if timed else ""
        all_day = timed is None and (start is not None or end is not None)
    elif isinstance(start, datetime):
        when = localise.format_span(start, end if isinstance(end, datetime) else None, zone, locale)
        label = localise.zone_label(start, zone, locale)
    elif isinstance(start, date):
        when = localise.format_days(start, localise.last_day(start, end, zone), locale)
    elif payload.start:
        when = clean_header(payload.start, 100)
    description = clean_text(payload.description, description_max)
    return {
        "kind": payload.component,
        "action": payload.action,
        "title": clean_header(payload.summary or payload.alarm_summary, SUMMARY_BODY_MAX),
        "when": when,
        "start": start_text,
        "due": due_text,
        "all_day": all_day,
        "zone": label,
        "location": clean_header(payload.location, LOCATION_MAX),
        "organizer": clean_header(payload.organizer, ADDRESS_MAX),
        "description": description,
        "alarm_note": _alarm_note(payload, description, description_max),
        "trigger": _show_one(payload.trigger, _parse(payload.trigger), zone, locale),
        "calid": clean_header(payload.calid, 255),
        "uid": clean_header(payload.uid, 255),
        "ref": clean_header(ref, REF_MAX),
    }


def sample_context() -> dict[str, Any]:
    """A context with every field set, to check templates at start-up."""
    sample = AlarmPayload(
        calid="sample",
        uid="sample-uid",
        rid="",
        aid="1",
        component="event",
        action="EMAIL",
        trigger="2026-01-01T09:45:00Z",
        summary="Sample",
        description="Description",
        location="Room 1",
        start="2026-01-01T10:00:00Z",
        end="2026-01-01T11:00:00Z",
        alarm_summary="Alarm summary",
        alarm_description="Alarm description",
        organizer="Organizer <organizer@example.com>",
    )
    context = reminder_context(sample, "enp:///ics/eventalarm?calid=sample", UTC, Locale("en"))
    return {**context, "start": context["when"], "due": context["when"]}


def occurrence_ics(payload: AlarmPayload, now: datetime, description_max: int = DESCRIPTION_MAX) -> bytes:
    """The occurrence as a METHOD:PUBLISH iCalendar object (values escaped by icalendar)."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    comp: icalendar.Component = icalendar.Todo() if payload.component == "todo" else icalendar.Event()
    comp.add("uid", clean_header(payload.uid, 255))
    comp.add("dtstamp", now.astimezone(UTC))
    rid = _parse_rid(payload.rid)
    if rid is not None:
        comp.add("recurrence-id", rid)
    start = _parse(payload.start)
    end = _parse(payload.end) if payload.end else None
    if start is not None:
        comp.add("dtstart", start)
    if end is not None and (start is None or type(end) is type(start)):
        comp.add("due" if payload.component == "todo" else "dtend", end)
    for name, value, limit in (
        ("summary", payload.summary, SUMMARY_BODY_MAX),
        ("location", payload.location, LOCATION_MAX),
    ):
        if value:
            comp.add(name, clean_header(value, limit))
    if payload.description:
        comp.add("description", clean_text(payload.description, description_max))
    address = mailbox(payload.organizer)
    if address is not None:
        comp.add("organizer", icalendar.vCalAddress(f"mailto:{address}"))
    cal.add_component(comp)
    return bytes(cal.to_ical())


def _alarm_note(payload: AlarmPayload, description: str, limit: int) -> str:
    summary = clean_text(payload.summary, limit)
    parts: list[str] = []
    if payload.action == "EMAIL":
        alarm_summary = clean_text(payload.alarm_summary, SUMMARY_BODY_MAX)
        if alarm_summary and alarm_summary not in (summary, description):
            parts.append(alarm_summary)
    note = clean_text(payload.alarm_description, limit)
    if note and note not in (description, summary, *parts):
        parts.append(note)
    return "\n".join(parts)


def _tidy(text: str) -> str:
    return _BLANK_RUNS.sub("\n\n", text.strip("\n")) + "\n"


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


@cache
def _babel_locale(name: str) -> Locale:
    try:
        return Locale.parse(name)
    except (UnknownLocaleError, ValueError, TypeError):
        # A template directory for a locale Babel does not know: its words, English dates.
        return Locale("en")


def _zone(name: str) -> tzinfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _parse(value: str) -> date | datetime | None:
    """A payload start/end: a plain date (all-day) or an aware instant; None if neither."""
    try:
        if _DATE_ONLY.match(value):
            return date.fromisoformat(value)
        return parse_utc(value)
    except ValueError:
        return None


def _parse_rid(rid: str) -> date | datetime | None:
    for pattern, is_date in (("%Y%m%dT%H%M%SZ", False), ("%Y%m%d", True)):
        try:
            parsed = datetime.strptime(rid, pattern)
        except ValueError:
            continue
        return parsed.date() if is_date else parsed.replace(tzinfo=UTC)
    return None


def _show_one(text: str, value: date | datetime | None, zone: tzinfo, locale: Locale) -> str:
    if isinstance(value, datetime):
        return localise.format_instant(value, zone, locale)
    if isinstance(value, date):
        return localise.format_day(value, locale)
    return clean_header(text, 100)


__all__ = ["clean_header", "clean_text", "occurrence_ics", "reminder_context", "render_reminder", "sample_context"]
