"""Occurrences of a calendar object: RRULE, RDATE, EXDATE and RECURRENCE-ID overrides.

Expansion is done by ``recurring-ical-events`` (which follows RFC 5545: wall-clock
recurrence in the start's zone, overrides replacing their occurrence, custom
VTIMEZONEs). This module adapts it to what alarm planning needs and covers its
gaps:

- floating and all-day values are placed in the calendar's time zone here, so
  every occurrence has an aware start and end (the library keeps them floating);
- each occurrence gets its ``rid`` as the design fixes it: the UTC instant of its
  original start (``YYYYMMDDTHHMMSSZ``), or ``YYYYMMDD`` for an all-day one, and
  ``""`` for an object that does not recur;
- the library's errors become :class:`CalendarError` naming the object and property.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import recurring_ical_events
from icalendar import Calendar, Component, vRecur
from icalendar.error import InvalidCalendar as IcalendarInvalid
from recurring_ical_events.errors import BadRuleStringFormat, PeriodEndBeforeStart
from recurring_ical_events.errors import InvalidCalendar as ExpansionInvalid

from alarmd.ical import CalendarError, CalendarObject, decoded_value

RECURRENCE_PROPS = ("RRULE", "RDATE")
# Floating times may sit up to 14 h on either side of UTC; the library compares
# them as if they were UTC, so queries are widened by this much and the exact
# instants are filtered by the caller.
FLOATING_SLACK = timedelta(days=1)
# dateutil walks a rule from DTSTART on every query, so a dense rule that started
# long ago costs its whole past each time. Simple sub-daily rules are moved
# forward (exactly: same instants); others may lie at most this many periods
# behind the window, or they are refused.
_SUBDAILY = {"SECONDLY": 1, "MINUTELY": 60, "HOURLY": 3600}
MAX_PERIODS_BEHIND = 200_000


@dataclass(frozen=True)
class Occurrence:
    """One occurrence: the component as it applies then, with aware start and end."""

    rid: str
    component: Component
    start: datetime | None  # aware, in the zone of its DTSTART (the calendar's for floating/all-day)
    end: datetime | None
    all_day: bool
    is_override: bool  # the component is a RECURRENCE-ID override written in the file

    @property
    def cancelled(self) -> bool:
        return str(self.component.get("STATUS", "")).upper() == "CANCELLED"


def is_recurring(obj: CalendarObject) -> bool:
    return any(p in c for c in obj.components for p in (*RECURRENCE_PROPS, "RECURRENCE-ID"))


def master(obj: CalendarObject) -> Component | None:
    """The component without RECURRENCE-ID (None for a set of orphan overrides)."""
    return next((c for c in obj.components if "RECURRENCE-ID" not in c), None)


def search_slack(obj: CalendarObject) -> timedelta:
    """How much wider than the exact bounds a search must be: a day with floating or all-day values, else an hour.

    The hour covers nominal days in trigger offsets, which are an hour longer or
    shorter across a DST change.
    """
    for comp in obj.components:
        for name in ("DTSTART", "DTEND", "DUE", "RECURRENCE-ID"):
            value = comp.get(name)
            dt = getattr(value, "dt", None)
            if isinstance(dt, date) and getattr(dt, "tzinfo", None) is None:
                return FLOATING_SLACK
    return timedelta(hours=1)


def occurrences(obj: CalendarObject, tz: tzinfo, *, after: datetime) -> Iterator[Occurrence]:
    """Occurrences that end at or after ``after`` (less :func:`search_slack`), in order of start.

    The iterator is lazy and may be infinite; the caller decides when to stop.
    """
    if not is_recurring(obj):
        for comp in obj.components:
            yield occurrence_of(obj, comp, tz, rid="", is_override=False)
        return
    calendar = Calendar()
    calendar.subcomponents.extend(obj.timezones)
    calendar.subcomponents.extend(_fast_forward(c, after, tz, obj.uid) for c in obj.components)
    name = "VEVENT" if obj.component == "event" else "VTODO"
    try:
        query = recurring_ical_events.of(calendar, components=[name])
        overrides = {rid_of(c, "RECURRENCE-ID", tz) for c in obj.components if "RECURRENCE-ID" in c}
        for comp in query.after(shifted(after, -search_slack(obj))):
            rid = rid_of(comp, "RECURRENCE-ID", tz) if "RECURRENCE-ID" in comp else rid_of(comp, "DTSTART", tz)
            yield occurrence_of(obj, comp, tz, rid=rid, is_override=rid in overrides)
    except CalendarError:
        raise
    except BadRuleStringFormat as exc:
        raise CalendarError(f"the recurrence rule cannot be read: {exc}", uid=obj.uid, prop="RRULE") from None
    except PeriodEndBeforeStart as exc:
        raise CalendarError(f"ends before it starts: {exc}", uid=obj.uid, prop="DTEND") from None
    except (ExpansionInvalid, IcalendarInvalid, ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        # The library's own checks are not exhaustive: odd input can fail deep inside it.
        raise CalendarError(f"the recurrence cannot be expanded: {exc}", uid=obj.uid, prop="RRULE") from None


def _fast_forward(comp: Component, after: datetime, tz: tzinfo, uid: str) -> Component:
    """``comp`` with a dense sub-daily rule's DTSTART moved to just before ``after``.

    Only for rules without COUNT and BY… parts, whose occurrences are exactly
    DTSTART + k × period: moving DTSTART by whole periods keeps every instant
    from ``after`` on. A dense rule with COUNT or BY… parts that lies too far
    behind is refused rather than walked for minutes.
    """
    if "RRULE" not in comp or "RECURRENCE-ID" in comp or "DTSTART" not in comp:
        return comp
    rule: Any = comp["RRULE"]
    rules = rule if isinstance(rule, list) else [rule]
    if len(rules) != 1 or not isinstance(rules[0], vRecur):
        return comp
    freq = str((rules[0].get("FREQ") or [""])[0]).upper()
    if freq not in _SUBDAILY:
        return comp
    interval = int((rules[0].get("INTERVAL") or [1])[0] or 1)
    period = timedelta(seconds=_SUBDAILY[freq] * max(interval, 1))
    start_value = comp.decoded("DTSTART")
    if not isinstance(start_value, datetime):
        return comp
    start = to_local(start_value, tz)
    behind = int((after - start) / period) - 1
    if behind <= 0:
        return comp
    plain = set(rules[0].keys()) <= {"FREQ", "INTERVAL", "UNTIL", "WKST"}
    if not plain:
        if behind > MAX_PERIODS_BEHIND:
            raise CalendarError(
                f"FREQ={freq} with COUNT or BY… parts starting {behind} periods before the window is too dense "
                "to expand; start the series later or make it less frequent",
                uid=uid,
                prop="RRULE",
            )
        return comp
    moved = comp.copy()
    moved.subcomponents = list(comp.subcomponents)
    shift = behind * period
    for name in ("DTSTART", "DTEND", "DUE"):
        if name in comp:
            value = comp.decoded(name)
            if isinstance(value, datetime):
                new = (to_local(value, tz).astimezone(UTC) + shift).astimezone(to_local(value, tz).tzinfo)
                moved.pop(name)
                moved.add(name, new if value.tzinfo is not None else new.replace(tzinfo=None))
    return moved


def occurrence_of(obj: CalendarObject, comp: Component, tz: tzinfo, *, rid: str, is_override: bool) -> Occurrence:
    """``comp`` read as one occurrence (its own DTSTART/DTEND), e.g. a master's first."""
    raw_start = decoded_value(comp, "DTSTART", obj.uid)
    start = to_local(raw_start, tz) if raw_start is not None else None
    all_day = raw_start is not None and not isinstance(raw_start, datetime)
    return Occurrence(rid, comp, start, _end(comp, start, all_day, tz, obj.uid), all_day, is_override)


def _end(comp: Component, start: datetime | None, all_day: bool, tz: tzinfo, uid: str) -> datetime | None:
    for name in ("DTEND", "DUE"):
        value = decoded_value(comp, name, uid)
        if value is not None:
            return to_local(value, tz)
    duration = decoded_value(comp, "DURATION", uid)
    if duration is not None:
        if not isinstance(duration, timedelta):
            raise CalendarError("DURATION is not a duration", uid=uid, prop="DURATION")
        return add_duration(start, duration) if start is not None else None
    if start is not None and comp.name == "VEVENT":
        # RFC 5545 §3.6.1: an all-day event without an end lasts one day; a timed one ends when it starts.
        return add_duration(start, timedelta(days=1)) if all_day else start
    return None


def shifted(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, clamped to the representable range instead of overflowing."""
    try:
        return moment + delta
    except OverflowError:
        return (datetime.max if delta > timedelta(0) else datetime.min).replace(tzinfo=moment.tzinfo)


def to_local(value: date | datetime, tz: tzinfo) -> datetime:
    """A DATE or DATE-TIME value as an aware datetime; floating times and dates are read in ``tz``."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=tz)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=tz)
    raise TypeError(f"{value!r} is not a date or date-time")


def add_duration(base: datetime, duration: timedelta) -> datetime:
    """``base`` + ``duration`` as RFC 5545 §3.3.6 defines it, returned in UTC.

    Whole days (and weeks) are nominal: the same wall-clock time N days later in
    ``base``'s zone, whatever DST did in between. Hours, minutes and seconds are
    exact. A wall-clock time in a DST gap takes the offset from before the gap
    (RFC 5545 §3.3.5), which is what ``fold=0`` means to ``zoneinfo``.
    """
    sign = -1 if duration < timedelta(0) else 1
    magnitude = abs(duration)
    days = timedelta(days=magnitude.days)
    exact = magnitude - days
    wall = base + sign * days if days else base
    return wall.astimezone(UTC) + sign * exact


def rid_of(comp: Component, name: str, tz: tzinfo) -> str:
    value = comp.decoded(name)
    if isinstance(value, datetime):
        return to_local(value, tz).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return str(value.strftime("%Y%m%d"))
