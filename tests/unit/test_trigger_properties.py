"""Property-based tests: generated and mutated calendars never break the planner.

For any input the planner either returns instants, each UTC-aware, inside the
requested window, sorted and unique, or raises the documented
:class:`CalendarError`; nothing else escapes. Under CI the examples are
derandomised so that a run is repeatable; locally hypothesis explores freely
(``CALALARM_PROPERTY_EXAMPLES=2000`` for a longer search).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarmd.ical import CalendarError, parse_calendar
from alarmd.triggers import plan_alarms, plan_queue

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("CALALARM_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow],
)

moments = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S")


@st.composite
def start_property(draw: st.DrawFn) -> tuple[str, datetime]:
    moment = draw(moments)
    kind = draw(st.sampled_from(["utc", "tzid", "floating", "date"]))
    if kind == "utc":
        return f"DTSTART:{stamp(moment)}Z", moment
    if kind == "tzid":
        return f"DTSTART;TZID={draw(st.sampled_from(ZONES[1:]))}:{stamp(moment)}", moment
    if kind == "floating":
        return f"DTSTART:{stamp(moment)}", moment
    return f"DTSTART;VALUE=DATE:{moment:%Y%m%d}", moment


durations = st.builds(
    lambda sign, weeks, days, hours, minutes: f"{sign}P{f'{weeks}W' if weeks else ''}{days}DT{hours}H{minutes}M",
    st.sampled_from(["", "-"]),
    st.integers(0, 2),
    st.integers(0, 6),
    st.integers(0, 23),
    st.integers(0, 59),
)


@st.composite
def valarm(draw: st.DrawFn) -> str:
    lines = [f"ACTION:{draw(st.sampled_from(['DISPLAY', 'EMAIL', 'AUDIO', 'NONE']))}"]
    if draw(st.booleans()):
        related = draw(st.sampled_from(["", ";RELATED=START", ";RELATED=END"]))
        lines.append(f"TRIGGER{related}:{draw(durations)}")
    else:
        lines.append(f"TRIGGER;VALUE=DATE-TIME:{stamp(draw(moments))}Z")
    if draw(st.booleans()):
        lines.append(f"REPEAT:{draw(st.integers(1, 4))}")
        lines.append(f"DURATION:PT{draw(st.integers(1, 120))}M")
    if draw(st.booleans()):
        lines.append(f"ACKNOWLEDGED:{stamp(draw(moments))}Z")
    if draw(st.booleans()):
        lines.append(f"UID:alarm-{draw(st.integers(0, 3))}")
    return "BEGIN:VALARM\n" + "\n".join(lines) + "\nEND:VALARM\n"


@st.composite
def rrule(draw: st.DrawFn) -> str:
    freq = draw(st.sampled_from(["HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    # Hourly steps of at least 6 h keep an example's expansion small; dense series have their own tests.
    low = 6 if freq == "HOURLY" else 1
    parts = [f"FREQ={freq}", f"INTERVAL={draw(st.integers(low, low + 4))}"]
    end = draw(st.sampled_from(["none", "count", "until"]))
    if end == "count":
        parts.append(f"COUNT={draw(st.integers(1, 60))}")
    elif end == "until":
        parts.append(f"UNTIL={stamp(draw(moments))}Z")
    if freq == "WEEKLY" and draw(st.booleans()):
        days = draw(st.lists(st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU"]), min_size=1, unique=True))
        parts.append("BYDAY=" + ",".join(days))
    if freq == "MONTHLY" and draw(st.booleans()):
        parts.append(f"BYMONTHDAY={draw(st.sampled_from([1, 15, 29, 30, 31, -1]))}")
    return "RRULE:" + ";".join(parts)


@st.composite
def calendar_text(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["VEVENT", "VTODO"]))
    start, moment = draw(start_property())
    lines = [f"BEGIN:{name}", "UID:generated", start]
    end_kind = draw(st.sampled_from(["none", "duration", "end"]))
    if end_kind == "duration":
        lines.append(f"DURATION:PT{draw(st.integers(0, 600))}M")
    elif end_kind == "end" and "VALUE=DATE" not in start:
        field = "DTEND" if name == "VEVENT" else "DUE"
        later = moment + timedelta(minutes=draw(st.integers(0, 3000)))
        lines.append(start.replace("DTSTART", field).replace(stamp(moment), stamp(later)))
    if draw(st.booleans()):
        lines.append(draw(rrule()))
        if draw(st.booleans()):
            lines.append(start.replace("DTSTART", "EXDATE"))
    if draw(st.booleans()):
        lines.append("STATUS:CANCELLED")
    body = "\n".join(lines) + "\n" + "".join(draw(st.lists(valarm(), max_size=3))) + f"END:{name}\n"
    return f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:hypothesis\n{body}END:VCALENDAR\n"


windows = st.tuples(moments, st.integers(60, 60 * 24 * 10)).map(
    lambda w: (w[0].replace(tzinfo=UTC), w[0].replace(tzinfo=UTC) + timedelta(minutes=w[1]))
)


def check_plan(text: str, zone: str, window: tuple[datetime, datetime]) -> None:
    try:
        parsed = parse_calendar(text)
    except CalendarError:
        return
    for obj in parsed.objects:
        try:
            plan = plan_alarms(obj, calid="c", tz=ZoneInfo(zone), window_start=window[0], window_end=window[1])
        except CalendarError as exc:
            rejected = exc.uid
        else:
            rejected = ""
        if rejected:
            assert rejected == obj.uid  # the error names the object
            continue
        triggers = [p.trigger for p in plan.alarms]
        assert triggers == sorted(triggers)
        assert len({p.key for p in plan.alarms}) == len(plan.alarms)
        for p in plan.alarms:
            assert p.trigger.utcoffset() == timedelta(0)
            assert window[0] <= p.trigger < window[1]
            assert p.payload.trigger.endswith("Z")


@PROPERTY_SETTINGS
@given(text=calendar_text(), zone=st.sampled_from(ZONES), window=windows)
def test_generated_calendars_plan_inside_the_window_or_fail_clearly(
    text: str, zone: str, window: tuple[datetime, datetime]
) -> None:
    check_plan(text, zone, window)


@PROPERTY_SETTINGS
@given(text=calendar_text(), zone=st.sampled_from(ZONES), now=moments)
def test_queue_plans_hold_no_instant_before_now(text: str, zone: str, now: datetime) -> None:
    at = now.replace(tzinfo=UTC)
    for obj in parse_calendar(text).objects:
        try:
            plan = plan_queue(obj, calid="c", tz=ZoneInfo(zone), now=at, horizon=timedelta(days=7))
        except CalendarError:
            continue
        assert all(p.trigger >= at for p in plan.alarms)
        if plan.planned_until is not None:
            assert plan.planned_until <= at + timedelta(days=7)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A generated calendar with lines dropped, duplicated, truncated or garbled."""
    lines = draw(calendar_text()).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "cut", "garble", "insert", "swap-value"]))
        line = lines[index]
        if action == "drop":
            del lines[index]
        elif action == "dup":
            lines.insert(index, line)
        elif action == "cut":
            lines[index] = line[: draw(st.integers(0, max(len(line) - 1, 0)))]
        elif action == "garble":
            junk = draw(st.text(min_size=1, max_size=12))
            at = draw(st.integers(0, len(line)))
            lines[index] = line[:at] + junk + line[at:]
        elif action == "insert":
            lines.insert(index, draw(st.sampled_from(["BEGIN:VALARM", "END:VEVENT", "TRIGGER:x", "RRULE:FREQ=", ":"])))
        elif ":" in line:
            name = line.split(":", 1)[0]
            lines[index] = (
                f"{name}:{draw(st.sampled_from(['', '0', '-PT', '20261301T250000Z', 'FREQ=DAILY;COUNT=-1']))}"
            )
    return "\n".join(lines)


@PROPERTY_SETTINGS
@given(text=mutated(), zone=st.sampled_from(ZONES), window=windows)
def test_mutated_calendars_never_crash_the_planner(text: str, zone: str, window: tuple[datetime, datetime]) -> None:
    check_plan(text, zone, window)
