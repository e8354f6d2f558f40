"""Reading iCalendar text into calendar objects (one per UID), with clear errors.

Hostile or broken input is bounded before icalendar sees it (icalendar costs about
50 µs and 500 bytes per content line, and some of its paths are worse than linear):

- a file is at most :data:`MAX_ICS_BYTES` bytes of UTF-8 and :data:`MAX_LINES`
  content lines (after unfolding); more is a :class:`CalendarError` for the file;
- one VEVENT or VTODO is at most :data:`MAX_COMPONENT_LINES` content lines, holds at
  most :data:`MAX_DATES` RDATE and EXDATE values, nests components at most
  :data:`MAX_DEPTH` deep (counting VCALENDAR) and has a UID of at most
  :data:`MAX_UID_LENGTH` characters; an object over a limit is rejected on its own,
  named, and the file's other objects are read;
- the structure is checked line by line: a component that is never closed, an END
  that closes nothing, a VEVENT inside a VEVENT reject the object they are in (a
  stray line outside every object is dropped and reported); a file cut short
  before ``END:VCALENDAR`` keeps its complete objects and says it was cut;
- lines folded in the middle of a UTF-8 sequence are unfolded before decoding
  (RFC 5545 §3.1); a file with CR-only line ends is read; control characters,
  which iCalendar does not allow and a database may not store, become U+FFFD;
- icalendar keeps the VTIMEZONEs it reads in a process-wide cache, first definition
  wins: each parse starts and ends with that cache empty, so one file's custom
  zone can never change how another file's times are read.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from icalendar import Calendar, Component, vRecur
from icalendar.timezone import tzp

COMPONENTS = {"VEVENT": "event", "VTODO": "todo"}
MAX_ICS_BYTES = 10_000_000  # one file, in bytes of UTF-8
MAX_LINES = 50_000  # content lines in one file, after unfolding (about 3 s and 50 MB to parse)
MAX_COMPONENT_LINES = 10_000  # content lines in one VEVENT/VTODO, its VALARMs included
MAX_DATES = 10_000  # RDATE and EXDATE values in one VEVENT/VTODO
MAX_DEPTH = 8  # component nesting, VCALENDAR counting as 1 (VCALENDAR > VEVENT > VALARM is 3)
MAX_UID_LENGTH = 255  # the alarms and sources tables' uid column
# Components an object (VEVENT/VTODO) cannot contain: RFC 5545 puts them at the calendar level.
_NOT_NESTED = frozenset({"VCALENDAR", "VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY", "VTIMEZONE"})
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LONE_CR = re.compile("\r(?!\n)")
_LONE_CR_BYTES = re.compile(b"\r(?!\n)")
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


# What icalendar raises on odd input (atheris found the last two): ArithmeticError for
# dates out of range, AttributeError for a parameter given as a list (EXDATE;VALUE=DATE,X:…),
# OSError for a TZID that zoneinfo looks up as a file (TZID=Europe, a directory; a name
# longer than a file name may be).
_PARSE_ERRORS = (ValueError, LookupError, TypeError, ArithmeticError, AttributeError, OSError)


def decoded_value(comp: Component, name: str, uid: str) -> Any:
    """A property's decoded value (None when absent); a value that cannot be read is a CalendarError."""
    if name not in comp:
        return None
    try:
        value = comp.decoded(name)
    except _PARSE_ERRORS as exc:
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


# Re-parses spent naming the property that makes objects unreadable (see _culprit), per file.
CULPRIT_BUDGET = 20_000
# One parse at a time: icalendar's VTIMEZONE cache is process-wide (see the module doc).
_PARSING = threading.Lock()


def _parse_piecewise(units: list[_Unit], errors: list[CalendarError], whole_error: Exception) -> list[Component]:
    """Parse each component under VCALENDAR on its own: time zones first, then each VEVENT/VTODO.

    What icalendar cannot read is reported and left out, and the rest is read. Each
    component is parsed in a calendar of its own: the VTIMEZONEs are in icalendar's cache
    by then (the objects' TZIDs find them), and re-parsing the whole frame with every
    object would cost objects × frame. The calendar's own properties are not needed.
    """
    if not any(unit.is_object for unit in units):
        raise CalendarError(f"not valid iCalendar data: {whole_error}")
    calendars: list[Component] = []
    budget = CULPRIT_BUDGET
    for unit in sorted(units, key=lambda u: u.is_object):  # stable: time zones first, in order
        block = "\r\n".join(unit.lines) + "\r\n"
        try:
            calendars.append(Calendar.from_ical(f"BEGIN:VCALENDAR\r\n{block}END:VCALENDAR\r\n"))
        except _PARSE_ERRORS as exc:
            if unit.is_object:
                prop, budget = _culprit(block, budget)
                errors.append(CalendarError(f"cannot be read: {exc}", uid=unit.uid, prop=prop))
            else:
                where = f"the {unit.name} that begins at content line {unit.line}"
                errors.append(CalendarError(f"{where} cannot be read: {exc}; it was ignored", prop=unit.name))
    return calendars


def _culprit(block: str, budget: int) -> tuple[str, int]:
    """The property whose line makes ``block`` unreadable: the first one without which it parses.

    Each try re-parses the block, so the search stops when it would spend more than
    ``budget`` line parses; returns the property ("" when not found) and the budget left.
    """
    lines = block.splitlines(keepends=True)
    for index, line in enumerate(lines[:200]):
        name = re.split(r"[;:]", line, maxsplit=1)[0].strip().upper()
        if name in {"BEGIN", "END", "UID", ""}:
            continue
        if budget < len(lines):
            break
        budget -= len(lines)
        try:
            Calendar.from_ical(
                "BEGIN:VCALENDAR\r\n" + "".join(lines[:index] + lines[index + 1 :]) + "END:VCALENDAR\r\n"
            )
        except _PARSE_ERRORS:
            continue
        return name, budget
    return "", budget


@dataclass
class _Unit:
    """A component directly under VCALENDAR (or stray outside it), collected line by line."""

    name: str
    line: int  # its BEGIN, as a content line number of the unfolded text
    depth: int  # len(stack) once its BEGIN is pushed
    outside: bool = False  # not inside any VCALENDAR
    lines: list[str] = field(default_factory=list)
    uid: str = ""
    tzid: str = ""
    dates: int = 0
    problem: str = ""
    prop: str = ""

    def fail(self, problem: str, prop: str = "") -> None:
        if not self.problem:
            self.problem, self.prop = problem, prop

    @property
    def is_object(self) -> bool:
        return self.name in COMPONENTS


_ZONE_RULE_PARTS = frozenset({"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYMONTH", "BYDAY", "BYMONTHDAY", "WKST"})
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _zone_rule_problem(text: str) -> str:
    """Why a VTIMEZONE's RRULE cannot be used, or "".

    dateutil walks a time zone's rules on every UTC offset it looks up, from the rule's
    DTSTART, without a bound: INTERVAL=0 is an endless loop there, and a rule that never
    occurs is walked to the year 9999 each time. Real zones change once a year per rule:
    FREQ=YEARLY, INTERVAL=1, one BYMONTH, a BYDAY (such as -1SU) or a few BYMONTHDAY.
    """
    try:
        rule = vRecur.from_ical(text.strip())
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        return f"it cannot be read ({exc})"
    parts = {str(key).upper(): list(values) for key, values in rule.items()}
    freq = str((parts.get("FREQ") or [""])[0]).upper()
    if freq != "YEARLY":
        return "a time zone rule must be FREQ=YEARLY"
    if set(parts) - _ZONE_RULE_PARTS:
        return f"a time zone rule has no use for {', '.join(sorted(set(parts) - _ZONE_RULE_PARTS))}"
    try:
        interval = int(str((parts.get("INTERVAL") or [1])[0]))
        count = int(str((parts.get("COUNT") or [1])[0]))
        months = [int(str(m)) for m in parts.get("BYMONTH", [])]
        monthdays = [int(str(d)) for d in parts.get("BYMONTHDAY", [])]
    except ValueError as exc:
        return f"it cannot be read ({exc})"
    days = [str(d) for d in parts.get("BYDAY", [])]
    if interval != 1:
        return "a time zone rule must have INTERVAL=1"
    if not 1 <= count <= 1000:
        return "COUNT must be 1 to 1000"
    if len(months) > 1 or not all(1 <= m <= 12 for m in months):
        return "a time zone rule names one month, 1 to 12"
    if len(monthdays) > 7 or not all(1 <= abs(d) <= 31 for d in monthdays):
        return "BYMONTHDAY must be at most 7 days, 1 to 31 or -31 to -1"
    if months and monthdays and all(abs(d) > _MONTH_DAYS[months[0] - 1] for d in monthdays):
        return "it never occurs: the month has no such day"
    if len(days) > 7 or not all(re.fullmatch(r"[+-]?[1-5]?(MO|TU|WE|TH|FR|SA|SU)", d.upper()) for d in days):
        return "BYDAY must be at most 7 weekdays, each with an optional 1 to 5 or -5 to -1"
    if days and not months and any(d[-2:].upper() == d.upper() for d in days):
        return "a weekday without a number needs a BYMONTH"
    return ""


def _name_and_value(line: str) -> tuple[str, str]:
    """A content line's property name (upper case, without parameters) and its value, roughly."""
    head, _, value = line.partition(":")
    return head.split(";", 1)[0].strip().upper(), value


def _structure(lines: list[str]) -> tuple[list[str], list[_Unit], list[CalendarError]]:
    """The content lines icalendar may read, the components under VCALENDAR among them,
    and the errors for what was left out.

    icalendar trusts BEGIN/END: a component never closed takes every later one in
    with it (a file cut short before END:VCALENDAR yields nothing at all, silently), and
    an END that closes nothing rejects the whole file. Here an object with such a
    problem, or over a per-object limit, is dropped and named; the others are kept.
    """
    out: list[str] = []
    kept: list[_Unit] = []
    errors: list[CalendarError] = []
    stack: list[str] = []
    unit: _Unit | None = None
    outside = 0  # property lines outside every VCALENDAR, dropped

    def finish(done: _Unit) -> None:
        if done.dates > MAX_DATES:
            done.fail(f"has {done.dates} RDATE/EXDATE values, over the limit of {MAX_DATES} (alarmd.ical.MAX_DATES)")
        if done.outside and not done.is_object:
            done.fail("is outside BEGIN:VCALENDAR … END:VCALENDAR")
        if done.problem and done.is_object:
            errors.append(CalendarError(f"{done.problem}; the {done.name} was not read", uid=done.uid, prop=done.prop))
        elif done.problem:
            where = f"the {done.name} {done.tzid!r}" if done.tzid else f"the {done.name}"
            where += f" that begins at content line {done.line}"
            errors.append(CalendarError(f"{where} {done.problem}; it was ignored", prop=done.prop))
        elif done.outside:  # an object after END:VCALENDAR: read it as if inside one
            out.extend(["BEGIN:VCALENDAR", *done.lines, "END:VCALENDAR"])
            kept.append(done)
        else:
            out.extend(done.lines)
            kept.append(done)

    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, value = _name_and_value(line)
        if name == "BEGIN":
            comp = value.strip().upper()
            line = f"BEGIN:{comp}"  # icalendar would take "VEVENT " for a component of its own
            if comp == "VCALENDAR" and stack:
                # Files run together, the first cut short: close what is open, read the next.
                if unit is not None:
                    unit.fail(f"BEGIN:{stack[-1]} is never closed (a VCALENDAR begins inside it)", stack[-1])
                    finish(unit)
                    del stack[unit.depth - 1 :]
                    unit = None
                errors.append(CalendarError(f"BEGIN:VCALENDAR at content line {number} is inside another VCALENDAR"))
                out.extend(f"END:{open_comp}" for open_comp in reversed(stack))
                stack.clear()
            elif unit is not None and comp in COMPONENTS:
                # Objects do not nest: the one open was cut short (more likely than nested).
                unit.fail(f"BEGIN:{stack[-1]} is never closed (a {comp} begins inside it)", stack[-1])
                finish(unit)
                del stack[unit.depth - 1 :]
                unit = None
            if unit is None and (stack or comp != "VCALENDAR"):
                unit = _Unit(comp, number, len(stack) + 1, outside=not stack)
            stack.append(comp)
            if unit is None:
                out.append(line)
                continue
            unit.lines.append(line)
            if len(stack) > MAX_DEPTH:
                unit.fail(f"nests components more than {MAX_DEPTH} deep (alarmd.ical.MAX_DEPTH)", comp)
            if unit.is_object and len(stack) > unit.depth and comp in _NOT_NESTED:
                unit.fail(f"contains a {comp}, which belongs at the calendar level", comp)
        elif name == "END":
            comp = value.strip().upper()
            line = f"END:{comp}"
            if comp not in stack:
                if unit is None:
                    errors.append(CalendarError(f"END:{comp} at content line {number} closes nothing; it was ignored"))
                elif unit.is_object and comp in COMPONENTS and len(stack) == unit.depth:
                    # BEGIN:VEVENT … END:VTODO: the object ends here, mismatched.
                    unit.fail(f"END:{comp} closes BEGIN:{unit.name}", comp)
                    stack.pop()
                    finish(unit)
                    unit = None
                else:
                    unit.fail(f"END:{comp} closes nothing", comp)
                continue
            at = len(stack) - 1 - stack[::-1].index(comp)  # the innermost open component of that name
            if at + 1 < len(stack) and unit is not None:
                unit.fail(f"BEGIN:{stack[-1]} is never closed", stack[-1])
            if unit is not None and at < unit.depth - 1:
                finish(unit)  # END:VCALENDAR with the object still open
                unit = None
            del stack[at:]
            if unit is None:
                out.append(line)
            else:
                unit.lines.append(line)
                if len(stack) < unit.depth:
                    finish(unit)
                    unit = None
        elif unit is not None:
            unit.lines.append(line)
            if name in ("RDATE", "EXDATE"):
                unit.dates += value.count(",") + 1
            elif len(stack) == unit.depth and name == "UID" and not unit.uid:
                unit.uid = value.strip()
            elif len(stack) == unit.depth and name == "TZID" and not unit.tzid:
                unit.tzid = value.strip()[:100]
            elif name == "RRULE" and unit.name == "VTIMEZONE":
                problem = _zone_rule_problem(value)
                if problem:
                    unit.fail(f"has a {stack[-1]} with the RRULE {value.strip()[:100]!r}: {problem}", "RRULE")
            if len(unit.lines) > MAX_COMPONENT_LINES:
                unit.fail(
                    f"has more than {MAX_COMPONENT_LINES} content lines (alarmd.ical.MAX_COMPONENT_LINES)", unit.name
                )
                del unit.lines[1:]  # its lines are not needed any more
        elif stack:
            out.append(line)
        else:
            outside += 1
    if unit is not None:
        unit.fail(f"BEGIN:{stack[-1]} is never closed (the file ends inside it)", stack[-1])
        finish(unit)
        del stack[unit.depth - 1 :]
    if stack:
        errors.append(CalendarError("the file ends without END:VCALENDAR: it may have been cut short"))
        out.extend(f"END:{comp}" for comp in reversed(stack))
    if outside:
        errors.append(CalendarError(f"{outside} line(s) outside BEGIN:VCALENDAR … END:VCALENDAR were ignored"))
    return out, kept, errors


def _content_lines(text: str | bytes) -> list[str]:
    """``text`` decoded, unfolded and split into content lines, within the file limits."""
    if isinstance(text, bytes):
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise CalendarError(f"not valid Unicode text ({exc.reason} at character {exc.start})") from None
    if size > MAX_ICS_BYTES:
        raise CalendarError(
            f"{size} bytes is over the {MAX_ICS_BYTES} byte limit for one file (alarmd.ical.MAX_ICS_BYTES)"
        )
    if isinstance(text, bytes):
        raw = text.removeprefix(b"\xef\xbb\xbf")
        if raw.count(b"\r") - raw.count(b"\r\n") > raw.count(b"\n"):
            raw = _LONE_CR_BYTES.sub(b"\n", raw)  # CR-only line ends (an old Mac's)
        # Unfold before decoding: a fold may split a UTF-8 sequence (RFC 5545 §3.1).
        raw = re.sub(rb"\r?\n[ \t]", b"", raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CalendarError(f"not UTF-8 text ({exc.reason} at byte {exc.start} after unfolding)") from None
    else:
        if text.count("\r") - text.count("\r\n") > text.count("\n"):
            text = _LONE_CR.sub("\n", text)
        text = re.sub(r"\r?\n[ \t]", "", text)
    lines = text.count("\n") + 1
    if lines > MAX_LINES:
        raise CalendarError(f"{lines} lines is over the limit of {MAX_LINES} for one file (alarmd.ical.MAX_LINES)")
    text = _CONTROLS.sub("\ufffd", text.lstrip("\ufeff \t\r\n"))
    return [line.removesuffix("\r") for line in text.split("\n")]


def parse_calendar(text: str | bytes) -> ParsedFile:
    """Split iCalendar text into one object per UID.

    Raises :class:`CalendarError` when the text is not iCalendar at all or is over a
    file limit (see the module doc); an object with its own problem (no UID, two kinds
    of component under one UID, broken structure, over an object limit) lands in
    ``errors`` and the others are still returned.
    """
    lines = _content_lines(text)
    if not lines[0].upper().startswith("BEGIN:VCALENDAR"):
        raise CalendarError("not iCalendar data (it must start with BEGIN:VCALENDAR)")
    kept, units, errors = _structure(lines)
    with _PARSING:
        _forget_timezones()
        try:
            return _objects("\r\n".join(kept) + "\r\n", units, errors)
        finally:
            _forget_timezones()


def _forget_timezones() -> None:
    """Empty icalendar's process-wide VTIMEZONE cache (switching to the provider in use does)."""
    tzp.use(tzp.name)


def _objects(text: str, units: list[_Unit], errors: list[CalendarError]) -> ParsedFile:
    try:
        calendars: Sequence[Component] = Calendar.from_ical(text, multiple=True)
    except _PARSE_ERRORS as exc:
        # icalendar rejects the whole file for one bad value; parse each component on
        # its own so that one broken object does not take the others down with it.
        calendars = _parse_piecewise(units, errors, exc)
    timezones: list[Component] = []
    by_uid: dict[str, list[Component]] = {}
    for comp in _top_level(calendars):
        if comp.name == "VTIMEZONE":
            timezones.append(comp)
        elif comp.name in COMPONENTS:
            uid = str(comp.get("UID", "")).strip()
            if not uid:
                errors.append(CalendarError(f"a {comp.name} has no UID", prop="UID"))
                continue
            if len(uid) > MAX_UID_LENGTH:
                errors.append(
                    CalendarError(
                        f"the UID is {len(uid)} characters long, over the limit of {MAX_UID_LENGTH} "
                        "(alarmd.ical.MAX_UID_LENGTH)",
                        uid=uid[:40] + "…",
                        prop="UID",
                    )
                )
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


def _top_level(calendars: Sequence[Component]) -> Iterator[Component]:
    for cal in calendars:
        yield from cal.subcomponents
