"""Reading iCalendar text into calendar objects (one per UID), with clear errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from icalendar import Calendar, Component

COMPONENTS = {"VEVENT": "event", "VTODO": "todo"}
MAX_ICS_BYTES = 10_000_000
# Properties alarm planning reads. A broken value in one of them rejects the
# object; a broken value anywhere else (GEO, ATTENDEE of the event, X-...) does not.
USED_PROPERTIES = frozenset(
    {"DTSTART", "DTEND", "DUE", "DURATION", "RRULE", "RDATE", "EXDATE", "RECURRENCE-ID", "STATUS"}
)
USED_ALARM_PROPERTIES = frozenset({"TRIGGER", "REPEAT", "DURATION", "ACKNOWLEDGED", "ACTION"})
_DATE_PROPERTIES = ("DTSTART", "DTEND", "DUE", "RECURRENCE-ID", "RDATE", "EXDATE")
# RFC 5545 allows these at most once per component.
_SINGLE = ("DTSTART", "DTEND", "DUE", "DURATION", "RECURRENCE-ID", "STATUS")
_SINGLE_IN_ALARM = ("TRIGGER", "REPEAT", "DURATION", "ACTION", "ACKNOWLEDGED")


class CalendarError(ValueError):
    """A calendar object that cannot be used. ``uid`` and ``prop`` say where, when known."""

    def __init__(self, message: str, *, uid: str = "", prop: str = "") -> None:
        where = ", ".join(p for p in (f"UID {uid}" if uid else "", f"property {prop}" if prop else "") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.uid = uid
        self.prop = prop


@dataclass(frozen=True)
class CalendarObject:
    """All components of one UID (a master and its overrides) with the file's time zones."""

    uid: str
    component: str  # "event" | "todo"
    components: tuple[Component, ...]
    timezones: tuple[Component, ...]

    def to_ical(self) -> str:
        cal = Calendar()
        cal.add("PRODID", "-//calalarm//alarmd//EN")
        cal.add("VERSION", "2.0")
        for tz in self.timezones:
            cal.add_component(tz)
        for comp in self.components:
            cal.add_component(comp)
        return str(cal.to_ical().decode("utf-8"))


def decoded_value(comp: Component, name: str, uid: str) -> Any:
    """A property's decoded value (None when absent); a value that cannot be read is a CalendarError."""
    if name not in comp:
        return None
    try:
        value = comp.decoded(name)
    except (ValueError, KeyError, TypeError) as exc:
        raise CalendarError(f"cannot read the value: {exc}", uid=uid, prop=name) from None
    if isinstance(value, list | tuple):
        raise CalendarError("appears more than once", uid=uid, prop=name)
    return value


def check_object(obj: CalendarObject) -> None:
    """Raise :class:`CalendarError` for what would make the object's alarms wrong.

    icalendar parses leniently: a value it cannot read is kept as "broken" and
    listed in ``component.errors``, and a TZID that is neither an IANA (or
    Windows) zone nor defined by a VTIMEZONE silently becomes a floating time.
    Both would move or drop reminders without a word, so both are errors here.
    """
    for comp in obj.components:
        _check_single(comp, _SINGLE, obj.uid)
        for prop, message in getattr(comp, "errors", ()):
            if prop in USED_PROPERTIES:
                raise CalendarError(f"cannot read the value: {message}", uid=obj.uid, prop=prop)
        for name in ("DTSTART", "DTEND", "DUE", "RECURRENCE-ID"):
            _check_date(comp, name, obj.uid)
        for name in _DATE_PROPERTIES:
            _check_zone(comp, name, obj.uid)
        for valarm in comp.subcomponents:
            if valarm.name != "VALARM":
                continue
            _check_single(valarm, _SINGLE_IN_ALARM, obj.uid)
            for prop, message in getattr(valarm, "errors", ()):
                if prop in USED_ALARM_PROPERTIES:
                    raise CalendarError(f"cannot read the VALARM's value: {message}", uid=obj.uid, prop=prop)


def _check_single(comp: Component, names: tuple[str, ...], uid: str) -> None:
    for name in names:
        if isinstance(comp.get(name), list):
            where = "a VALARM" if comp.name == "VALARM" else f"the {comp.name}"
            raise CalendarError(f"appears more than once in {where}", uid=uid, prop=name)


def _check_date(comp: Component, name: str, uid: str) -> None:
    # icalendar reads "DTSTART:-PT" as a duration rather than refusing it.
    value = getattr(comp.get(name), "dt", None)
    if name in comp and not isinstance(value, date):
        raise CalendarError("must be a DATE or DATE-TIME value", uid=uid, prop=name)


def _check_zone(comp: Component, name: str, uid: str) -> None:
    values = comp.get(name)
    if values is None:
        return
    for value in values if isinstance(values, list) else [values]:
        tzid = value.params.get("TZID") if hasattr(value, "params") else None
        if not tzid:
            continue
        dts = [value.dt] if hasattr(value, "dt") else [d.dt for d in getattr(value, "dts", [])]
        for dt in dts:
            moment = dt[0] if isinstance(dt, tuple) else dt  # an RDATE PERIOD is (start, end)
            if getattr(moment, "tzinfo", "n/a") is None:
                raise CalendarError(
                    f"TZID {tzid!r} is neither an IANA time zone nor defined by a VTIMEZONE in the file",
                    uid=uid,
                    prop=name,
                )


@dataclass(frozen=True)
class ParsedFile:
    objects: list[CalendarObject]
    errors: list[CalendarError]


_PARSE_ERRORS = (ValueError, KeyError, IndexError, TypeError)
_BLOCK = re.compile(r"^BEGIN:(VEVENT|VTODO)\r?\n.*?^END:\1\r?$\n?", re.MULTILINE | re.DOTALL | re.IGNORECASE)
_UID_LINE = re.compile(r"^UID(?:;[^:\r\n]*)?:(.*?)\r?$", re.MULTILINE | re.IGNORECASE)


def _parse_piecewise(text: str, errors: list[CalendarError], whole_error: Exception) -> list[Component]:
    """Parse the calendar's frame (time zones, properties) and each VEVENT/VTODO separately."""
    unfolded = re.sub(r"\r?\n[ \t]", "", text)
    blocks = [m.group(0) for m in _BLOCK.finditer(unfolded)]
    frame = _BLOCK.sub("", unfolded)
    try:
        frames = Calendar.from_ical(frame, multiple=True)
    except _PARSE_ERRORS:
        frames = []
    if not frames or not blocks:
        raise CalendarError(f"not valid iCalendar data: {whole_error}") from None
    calendars: list[Component] = [frames[0]]
    head, _, tail = frame.rpartition("END:VCALENDAR")
    for block in blocks:
        try:
            calendars.append(Calendar.from_ical(f"{head}{block}END:VCALENDAR{tail}"))
        except _PARSE_ERRORS as exc:
            match = _UID_LINE.search(block)
            uid = match.group(1).strip() if match else ""
            prop = _culprit(head, block, f"END:VCALENDAR{tail}")
            errors.append(CalendarError(f"cannot be read: {exc}", uid=uid, prop=prop))
    # the frame's own VTIMEZONEs are in base; drop the copies parsed with each block
    for cal in calendars[1:]:
        cal.subcomponents[:] = [c for c in cal.subcomponents if c.name != "VTIMEZONE"]
    return calendars


def _culprit(head: str, block: str, tail: str) -> str:
    """The property whose line makes ``block`` unreadable: the first one without which it parses."""
    lines = block.splitlines(keepends=True)
    for index, line in enumerate(lines[:200]):
        name = re.split(r"[;:]", line, maxsplit=1)[0].strip().upper()
        if name in {"BEGIN", "END", "UID", ""}:
            continue
        try:
            Calendar.from_ical(head + "".join(lines[:index] + lines[index + 1 :]) + tail)
        except _PARSE_ERRORS:
            continue
        return name
    return ""


def parse_calendar(text: str | bytes) -> ParsedFile:
    """Split iCalendar text into one object per UID.

    Raises :class:`CalendarError` when the text is not iCalendar at all; an object
    with its own problem (no UID, two kinds of component under one UID) lands in
    ``errors`` and the others are still returned.
    """
    if len(text) > MAX_ICS_BYTES:
        raise CalendarError(f"{len(text)} bytes is over the {MAX_ICS_BYTES} byte limit for one file")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CalendarError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped.upper().startswith("BEGIN:VCALENDAR"):
        raise CalendarError("not iCalendar data (it must start with BEGIN:VCALENDAR)")
    errors: list[CalendarError] = []
    try:
        calendars: Sequence[Component] = Calendar.from_ical(stripped, multiple=True)
    except _PARSE_ERRORS as exc:
        # icalendar rejects the whole file for one bad value; parse each component on
        # its own so that one broken object does not take the others down with it.
        calendars = _parse_piecewise(stripped, errors, exc)
    timezones: list[Component] = []
    by_uid: dict[str, list[Component]] = {}
    for cal in calendars:
        for comp in cal.subcomponents:
            if comp.name == "VTIMEZONE":
                timezones.append(comp)
            elif comp.name in COMPONENTS:
                uid = str(comp.get("UID", "")).strip()
                if not uid:
                    errors.append(CalendarError(f"a {comp.name} has no UID", prop="UID"))
                    continue
                by_uid.setdefault(uid, []).append(comp)
    objects: list[CalendarObject] = []
    for uid, comps in by_uid.items():
        kinds = {COMPONENTS[str(c.name)] for c in comps}
        if len(kinds) > 1:
            errors.append(CalendarError("a VEVENT and a VTODO share this UID", uid=uid, prop="UID"))
            continue
        objects.append(CalendarObject(uid, kinds.pop(), tuple(comps), tuple(timezones)))
    return ParsedFile(objects, errors)
