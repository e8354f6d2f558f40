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
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import format_datetime, getaddresses, make_msgid
from functools import cache, lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar
from babel import Locale, UnknownLocaleError

from common.payload import AlarmPayload, parse_utc
from notifyd import localise, mime
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


def clean_header(value: str, limit: int) -> str:
    """``value`` made safe for a header: encoded words decoded, controls and line breaks
    turned into spaces, runs of white space collapsed, at most ``limit`` characters."""
    if value.isascii() and value.isprintable() and "=?" not in value and "  " not in value:
        # Most values: printable ASCII holds no control and no white space but the space.
        return _cap(value.strip(" "), limit)
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
) -> bytes:
    """The reminder for one alarm instance, addressed to ``recipients``, as SMTP sends it.

    ``locale`` (else ``payload.locale``) picks the templates, resolved as
    :meth:`Templates.resolve` documents; ``tz`` (else ``payload.tz``, else UTC) is the
    zone times are shown in. The message is text plus an HTML alternative and, with
    ``attach_ics``, the occurrence as a text/calendar part. :mod:`notifyd.mime` writes
    it; every value that reaches a header is cleaned here first.
    """
    templates = templates or shipped_templates()
    chosen = templates.resolve(locale or payload.locale)
    zone = _zone(tz) or _zone(payload.tz) or UTC
    context = reminder_context(payload, ref, zone, _babel_locale(chosen), description_max)
    rendered = templates.render(payload.component, chosen, context)

    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    from_name, from_address, msgid_domain = _sender(sender)
    to = [a for a in (_header_mailbox(r) for r in recipients) if a]
    headers = [
        ("From", f"{mime.phrase(from_name)} <{from_address}>" if from_name else from_address),
        ("To", mime.address_list("To", to) if to else "undisclosed-recipients:;"),
        ("Subject", mime.unstructured("Subject", clean_header(rendered.subject, SUBJECT_MAX))),
        ("Date", format_datetime(now.astimezone(UTC))),
        ("Message-ID", make_msgid(domain=msgid_domain)),
        ("Auto-Submitted", "auto-generated"),
        ("X-Alarm-Ref", mime.unstructured("X-Alarm-Ref", clean_header(ref, REF_MAX))),
        ("X-Alarm-Trigger", mime.unstructured("X-Alarm-Trigger", clean_header(payload.trigger, TRIGGER_MAX))),
        ("Content-Language", mime.unstructured("Content-Language", clean_header(chosen.replace("_", "-"), 35))),
    ]
    body: mime.Part | mime.Multipart = mime.Multipart(
        "alternative",
        (mime.text_part("plain", _tidy(rendered.text)), mime.text_part("html", rendered.html)),
        mime.new_boundary(),
    )
    if attach_ics:
        ics = mime.attachment(
            "text/calendar",
            occurrence_ics(payload, now, description_max),
            "reminder.ics",
            (("charset", "utf-8"), ("method", "PUBLISH")),
        )
        body = mime.Multipart("mixed", (body, ics), mime.new_boundary())
    return mime.message_bytes(headers, body)


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


@lru_cache(maxsize=64)
def _sender(sender: str) -> tuple[str, str, str]:
    """The From display name and address for ``smtp.sender``, and the Message-ID domain
    (the sender is validated at start-up; the fallback is for other callers)."""
    cleaned = clean_header(sender, ADDRESS_MAX)
    address = mailbox(cleaned)
    header = mime.header_address(address) if address else None
    if header is None:
        return "", f"calalarm@{MSGID_FALLBACK_DOMAIN}", MSGID_FALLBACK_DOMAIN
    domain = header.rpartition("@")[2]
    name = clean_header(getaddresses([cleaned])[0][0], ADDRESS_MAX)
    return name, header, domain if _DOMAIN.match(domain) else MSGID_FALLBACK_DOMAIN


def _header_mailbox(recipient: str) -> str | None:
    address = mailbox(clean_header(recipient, ADDRESS_MAX))
    return mime.header_address(address) if address else None


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
