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

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, TypeVar

import dateutil.rrule  # type: ignore[import-untyped]
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
# forward (exactly: same instants); for the others, the instances a rule can have
# between DTSTART and the window (an upper bound from FREQ, INTERVAL, COUNT and the
# BY… parts) may be at most this many, or the rule is refused.
_SUBDAILY = {"SECONDLY": 1, "MINUTELY": 60, "HOURLY": 3600}
MAX_INSTANCES_BEHIND = 200_000
# The shortest a period of each FREQ can be, in seconds (for upper bounds on counts).
_PERIOD = {**_SUBDAILY, "DAILY": 86400, "WEEKLY": 7 * 86400, "MONTHLY": 28 * 86400, "YEARLY": 365 * 86400}
# One step of a rule (INTERVAL periods) may be at most this long: dates end in year 9999,
# and dateutil walks a longer step a month at a time.
MAX_STEP = timedelta(days=3_652_425)  # 10,000 years
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
# dateutil looks for a rule's next instance period by period, without limit: a rule that
# never (or almost never) matches, such as FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30, is walked
# to the year 9999, for minutes. One expansion may take at most this many steps: each
# period dateutil builds costs 8 plus the days in it, each year or month it sets up 20
# (1 to 3 s on the development machine, whatever the FREQ).
MAX_RULE_STEPS = 3_000_000
# Queries to the expansion library start this wide and adapt so that each returns
# about QUERY_TARGET occurrences (the library's own after() starts with a day, which
# for FREQ=SECONDLY is 86,400 occurrences in one go).
FIRST_QUERY = timedelta(minutes=1)
QUERY_TARGET = 64


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
    """Occurrences from ``after`` (less :func:`search_slack`) on, in order of start.

    Those of a series' master that start from then (occurrences in progress at
    ``after`` are not searched for: callers reach back by the length themselves, see
    ``triggers._reach``), overrides and RDATE periods that end from then.

    The iterator is lazy and may be infinite; the caller decides when to stop. Each
    step is bounded: a rule that would take too long to expand raises
    :class:`CalendarError` instead (see :data:`MAX_INSTANCES_BEHIND`, :data:`MAX_STEP`,
    :data:`MAX_RULE_STEPS`).
    """
    if not is_recurring(obj):
        for comp in obj.components:
            yield occurrence_of(obj, comp, tz, rid="", is_override=False)
        return
    for comp in obj.components:
        check_rules(comp, obj.uid, tz=tz, after=after)
    calendar = Calendar()
    calendar.subcomponents.extend(obj.timezones)
    # Masters go to the library without their end: its queries find the occurrences
    # that overlap a span, so an hour-long event recurring every minute would bring 60
    # old occurrences back with every query; without an end, each query brings only the
    # occurrences that start in it, and the end is put back on each (see _without_end).
    strip = master(obj) is not None and not any(_this_and_future(c) for c in obj.components)
    strip = strip and sum("RECURRENCE-ID" not in c for c in obj.components) == 1
    length: timedelta | None = None
    for comp in obj.components:
        moved = _fast_forward(comp, after, tz)
        if strip and "RECURRENCE-ID" not in comp:
            moved, length = _without_end(moved, obj.uid)
        calendar.subcomponents.append(moved)
    periods = _period_rids(obj, tz)
    name = "VEVENT" if obj.component == "event" else "VTODO"
    budget = _RuleBudget(MAX_RULE_STEPS)
    try:
        with budget:
            query = recurring_ical_events.of(calendar, components=[name])
        overrides = {rid_of(c, "RECURRENCE-ID", tz) for c in obj.components if "RECURRENCE-ID" in c}
        for rid, comp in _after(query, shifted(after, -search_slack(obj)), tz, budget):
            if length is not None and rid not in overrides and rid not in periods:
                _put_end(comp, length)
            yield occurrence_of(obj, comp, tz, rid=rid, is_override=rid in overrides)
    except CalendarError:
        raise
    except RuleTooSparse:
        raise CalendarError(
            f"expanding the recurrence rule took more than {MAX_RULE_STEPS} steps without reaching its next "
            "occurrence (alarmd.recurrence.MAX_RULE_STEPS): it never, or almost never, occurs",
            uid=obj.uid,
            prop="RRULE",
        ) from None
    except BadRuleStringFormat as exc:
        raise CalendarError(f"the recurrence rule cannot be read: {exc}", uid=obj.uid, prop="RRULE") from None
    except PeriodEndBeforeStart as exc:
        raise CalendarError(f"ends before it starts: {exc}", uid=obj.uid, prop="DTEND") from None
    except (
        ExpansionInvalid,
        IcalendarInvalid,
        ValueError,
        LookupError,
        TypeError,
        AttributeError,
        ArithmeticError,
    ) as exc:
        # The library's own checks are not exhaustive: odd input can fail deep inside it
        # (FREQ=MONTHLY;BYDAY=+53MO is an IndexError in dateutil).
        raise CalendarError(f"the recurrence cannot be expanded: {exc}", uid=obj.uid, prop="RRULE") from None


def _after(query: Any, start: datetime, tz: tzinfo, budget: _RuleBudget) -> Iterator[tuple[str, Component]]:
    """``(rid, component)`` of each occurrence that ends at or after ``start``, in order of start.

    What the library's ``after()`` does, with query spans that adapt to the series'
    density from the first query on.
    """
    span = FIRST_QUERY
    seen: set[str] = set()
    while start < LATEST:
        stop = min(shifted(start, span), LATEST)
        with budget:
            found = query.between(start, stop)
        batch: list[tuple[datetime, str, Component]] = []
        for comp in found:
            rid = rid_of(comp, "RECURRENCE-ID", tz) if "RECURRENCE-ID" in comp else rid_of(comp, "DTSTART", tz)
            if rid not in seen:
                seen.add(rid)
                batch.append((_sort_key(comp, tz), rid, comp))
        batch.sort(key=lambda item: (item[0], item[1]))
        for _key, rid, comp in batch:
            yield rid, comp
        span = span * 4 if not batch else span * max(0.25, min(2.0, QUERY_TARGET / len(batch)))
        span = max(span, timedelta(seconds=1))
        start = stop


def _this_and_future(comp: Component) -> bool:
    value = comp.get("RECURRENCE-ID")
    return str(getattr(value, "params", {}).get("RANGE", "")).upper() == "THISANDFUTURE"


def _without_end(comp: Component, uid: str) -> tuple[Component, timedelta | None]:
    """A master ``comp`` without DTEND/DUE/DURATION, and its length as the library reckons it.

    ``(comp, None)`` when there is nothing to take away, or the length is not the
    plain difference the library would use (mixed value types).
    """
    end_name = "DTEND" if comp.name == "VEVENT" else "DUE"
    if "RECURRENCE-ID" in comp or "DTSTART" not in comp or (end_name not in comp and "DURATION" not in comp):
        return comp, None
    try:
        start = comp.decoded("DTSTART")
        if end_name in comp:
            end = comp.decoded(end_name)
            aware = [getattr(value, "tzinfo", None) is not None for value in (start, end)]
            if type(end) is not type(start) or aware[0] != aware[1]:
                return comp, None
            length = end - start
        else:
            length = comp.decoded("DURATION")
            if not isinstance(length, timedelta) or (not isinstance(start, datetime) and length.seconds):
                return comp, None
    except (ValueError, KeyError, TypeError):
        return comp, None
    if not isinstance(length, timedelta):
        return comp, None
    if length < timedelta(0):
        raise CalendarError(
            f"ends {-length} before it starts", uid=uid, prop=end_name if end_name in comp else "DURATION"
        )
    stripped = comp.copy()
    stripped.subcomponents = list(comp.subcomponents)
    for prop in (end_name, "DURATION"):
        stripped.pop(prop, None)
    return stripped, length


def _put_end(comp: Component, length: timedelta) -> None:
    """Give an occurrence of a master taken apart by :func:`_without_end` its end back."""
    end_name = "DTEND" if comp.name == "VEVENT" else "DUE"
    comp.pop(end_name, None)
    comp.add(end_name, comp.decoded("DTSTART") + length)


def _period_rids(obj: CalendarObject, tz: tzinfo) -> set[str]:
    """The rids of RDATE periods (``start/end``): their occurrences have a length of their own."""
    rids: set[str] = set()
    for comp in obj.components:
        value: Any = comp.get("RDATE")
        for rdate in value if isinstance(value, list) else [value] if value is not None else []:
            for dt in getattr(rdate, "dts", []):
                period = dt.dt
                if isinstance(period, tuple) and isinstance(period[0], date):
                    rids.add(to_local(period[0], tz).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"))
    return rids


def _sort_key(comp: Component, tz: tzinfo) -> datetime:
    for name in ("DTSTART", "DUE"):
        if name in comp:
            value = comp.decoded(name)
            if isinstance(value, date):
                return to_local(value, tz)
    return LATEST


def check_rules(comp: Component, uid: str, *, tz: tzinfo, after: datetime) -> None:
    """Raise :class:`CalendarError` for an RRULE that cannot be expanded in bounded time.

    Checked before any expansion: INTERVAL (at least 1, one step at most
    :data:`MAX_STEP`), BYDAY ordinals, what dateutil refuses, and how many instances
    the rules can have between DTSTART and ``after`` (at most :data:`MAX_INSTANCES_BEHIND`
    unless the rule can be moved forward exactly, see :func:`_fast_forward`).
    """
    if "RRULE" not in comp:
        return
    value: Any = comp["RRULE"]
    rules = [r for r in (value if isinstance(value, list) else [value]) if isinstance(r, vRecur)]
    start_value = comp.decoded("DTSTART") if "DTSTART" in comp and "RECURRENCE-ID" not in comp else None
    start = to_local(start_value, tz) if isinstance(start_value, date) else None
    behind = 0.0
    for rule in rules:
        freq = str((rule.get("FREQ") or [""])[0]).upper()
        if freq not in _PERIOD:
            continue  # the library names what is wrong with it
        interval = _whole(rule, "INTERVAL", 1)
        if interval < 1:
            raise CalendarError(f"INTERVAL={interval} must be a positive whole number", uid=uid, prop="RRULE")
        if _PERIOD[freq] * interval > MAX_STEP.total_seconds():
            raise CalendarError(
                f"FREQ={freq};INTERVAL={interval} makes one step longer than {MAX_STEP.days // 365} years",
                uid=uid,
                prop="RRULE",
            )
        for day in rule.get("BYDAY") or []:
            ordinal = str(day)[:-2].lstrip("+")
            limit = 5 if freq == "MONTHLY" else 53
            if ordinal not in ("", "-") and (not ordinal.lstrip("-").isdigit() or not 1 <= abs(int(ordinal)) <= limit):
                raise CalendarError(
                    f"BYDAY={day}: the number before the weekday must be 1 to {limit} or -{limit} to -1 "
                    f"with FREQ={freq}",
                    uid=uid,
                    prop="RRULE",
                )
        _check_with_dateutil(rule, start, uid)
        if start is not None:
            behind += _instances_behind(rule, freq, interval, start, after, movable=len(rules) == 1)
    if behind > MAX_INSTANCES_BEHIND:
        raise CalendarError(
            f"the recurrence rule can have about {int(behind)} instances between DTSTART and the planning window, "
            f"over the limit of {MAX_INSTANCES_BEHIND} (alarmd.recurrence.MAX_INSTANCES_BEHIND): expanding it would "
            "walk its whole past; start the series later or make it less frequent",
            uid=uid,
            prop="RRULE",
        )


def _whole(rule: vRecur, key: str, default: int) -> int:
    values = rule.get(key) or [default]
    try:
        return int(values[0])
    except (TypeError, ValueError):
        return default


def _check_with_dateutil(rule: vRecur, start: datetime | None, uid: str) -> None:
    """dateutil's own verdict on the rule (the library hides it behind "UNTIL parameter is missing")."""
    parts = {k: v for k, v in rule.items() if k not in ("UNTIL", "COUNT")}
    text = vRecur(parts).to_ical().decode("utf-8", "replace")  # type: ignore[no-untyped-call]
    try:
        dateutil.rrule.rrulestr(text, dtstart=(start or datetime(2000, 1, 1)).replace(tzinfo=None))
    except (ValueError, TypeError, LookupError, ArithmeticError) as exc:
        raise CalendarError(f"the recurrence rule cannot be read: {exc}", uid=uid, prop="RRULE") from None


def _instances_behind(
    rule: vRecur, freq: str, interval: int, start: datetime, after: datetime, *, movable: bool
) -> float:
    """An upper bound on the instances ``rule`` can have from ``start`` to ``after``.

    0 for a rule that :func:`_fast_forward` moves forward exactly (``movable``: the
    only rule of its component).
    """
    if after <= start or (movable and _movable(rule, freq)):
        return 0.0
    steps = (after - start).total_seconds() / (_PERIOD[freq] * interval) + 1
    bound = min(steps * _per_period(rule, freq), float(MAX_INSTANCES_BEHIND) * 1000)
    count = _whole(rule, "COUNT", 0)
    return min(bound, float(count)) if count > 0 else bound


def _per_period(rule: vRecur, freq: str) -> int:
    """An upper bound on the instances one period of ``rule`` yields (dateutil's expansion)."""

    def size(key: str) -> int:
        return len(rule.get(key) or [])

    months = size("BYMONTH") or 12
    bounds: list[int] = []
    if size("BYYEARDAY"):
        bounds.append(size("BYYEARDAY"))
    if size("BYMONTHDAY"):
        bounds.append(size("BYMONTHDAY") * (months if freq == "YEARLY" else 1))
    if size("BYWEEKNO"):
        bounds.append(size("BYWEEKNO") * 7)
    if size("BYDAY"):
        ordinals = sum(1 for d in rule["BYDAY"] if str(d)[:-2].strip("+-"))
        plain = size("BYDAY") - ordinals
        per_plain = {"YEARLY": 5 * months if size("BYMONTH") else 53, "MONTHLY": 5}.get(freq, 1)
        per_ordinal = months if freq == "YEARLY" and size("BYMONTH") else 1
        bounds.append(plain * per_plain + ordinals * per_ordinal)
    if freq == "YEARLY":
        days = min(bounds) if bounds else size("BYMONTH") or 1
        days = min(days, 366)
    elif freq == "MONTHLY":
        days = min(min(bounds) if bounds else 1, 31)
    elif freq == "WEEKLY":
        days = min(size("BYDAY") or 1, 7)
    else:
        days = 1
    finer = {"YEARLY": 3, "MONTHLY": 3, "WEEKLY": 3, "DAILY": 3, "HOURLY": 2, "MINUTELY": 1, "SECONDLY": 0}[freq]
    times = 1
    for key in ("BYSECOND", "BYMINUTE", "BYHOUR")[:finer]:
        times *= size(key) or 1
    per_period = days * times
    return min(per_period, size("BYSETPOS")) if size("BYSETPOS") else per_period


def _movable(rule: vRecur, freq: str) -> bool:
    """A sub-daily rule whose instances are exactly DTSTART + k × period (see :func:`_fast_forward`)."""
    return freq in _SUBDAILY and set(rule.keys()) <= {"FREQ", "INTERVAL", "UNTIL", "WKST"}


def _fast_forward(comp: Component, after: datetime, tz: tzinfo) -> Component:
    """``comp`` with a dense sub-daily rule's DTSTART moved to just before ``after``.

    Only for a single rule without COUNT and BY… parts, whose occurrences are
    exactly DTSTART + k × period: moving DTSTART by whole periods keeps every
    instant from ``after`` on.
    """
    if "RRULE" not in comp or "RECURRENCE-ID" in comp or "DTSTART" not in comp:
        return comp
    rule: Any = comp["RRULE"]
    rules = rule if isinstance(rule, list) else [rule]
    if len(rules) != 1 or not isinstance(rules[0], vRecur):
        return comp
    freq = str((rules[0].get("FREQ") or [""])[0]).upper()
    if not _movable(rules[0], freq):
        return comp
    interval = _whole(rules[0], "INTERVAL", 1)
    period = timedelta(seconds=_SUBDAILY[freq] * max(interval, 1))
    start_value = comp.decoded("DTSTART")
    if not isinstance(start_value, datetime):
        return comp
    start = to_local(start_value, tz)
    behind = int((after - start) / period) - 1
    if behind <= 0:
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


# ---------------------------------------------------------------- dateutil's walk, metered


class RuleTooSparse(Exception):
    """An expansion took :data:`MAX_RULE_STEPS` steps (see :class:`_RuleBudget`)."""


class _Meter(threading.local):
    left: int | None = None  # steps this thread's expansion may still take; None: no limit


_meter = _Meter()


class _RuleBudget:
    """Steps an expansion may take, charged while the ``with`` block runs in this thread."""

    def __init__(self, steps: int) -> None:
        self.left = steps
        self._outer: list[int | None] = []

    def __enter__(self) -> None:
        self._outer.append(_meter.left)
        _meter.left = self.left

    def __exit__(self, *_exc: object) -> None:
        self.left = _meter.left if _meter.left is not None else self.left
        _meter.left = self._outer.pop()


def _charge(steps: int) -> None:
    left = _meter.left
    if left is not None:
        if left < steps:
            _meter.left = 0
            raise RuleTooSparse
        _meter.left = left - steps


_F = TypeVar("_F", bound=Callable[..., Any])


def _install_meter() -> None:
    """Make dateutil charge each period it builds to the budget of this thread's expansion.

    dateutil has no hook for it: its rule iterator asks a private helper class for
    each period's days; that class is replaced by a subclass that charges each period
    (and each year or month set up) when a :class:`_RuleBudget` is active, and does
    exactly what it did otherwise. Without that class (another dateutil), rules are
    bounded by the static checks of :func:`check_rules` only.
    """
    module = vars(dateutil.rrule)
    base: Any = module.get("_iterinfo")
    methods = ("rebuild", "ydayset", "mdayset", "wdayset", "ddayset")
    if not all(callable(getattr(base, m, None)) for m in methods):
        return
    if getattr(base, "metered", False):
        return

    def dayset(method: _F) -> _F:
        def charged(self: Any, year: int, month: int, day: int) -> Any:
            result = method(self, year, month, day)
            _charge(8 + result[2] - result[1])
            return result

        return charged  # type: ignore[return-value]

    def rebuild(self: Any, year: int, month: int) -> None:
        _charge(20)
        base.rebuild(self, year, month)

    module["_iterinfo"] = type(
        "_MeteredIterinfo",
        (base,),
        {
            "metered": True,  # no __slots__ of its own: the base's __init__ iterates self.__slots__
            "rebuild": rebuild,
            **{name: dayset(getattr(base, name)) for name in methods[1:]},
        },
    )


_install_meter()


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
