"""``alarmd --demo``: the sample calendar moved so that its alarms fire within 30 seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from icalendar import Calendar

from alarmd.ical import CalendarError, parse_calendar
from alarmd.triggers import EARLIEST, LATEST, plan_alarms

DEMO_CALENDAR = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "demo.ics"
FIRST_ALARM_AFTER = (5, 10, 18)  # seconds from start-up to each object's first alarm
_MOVED = ("DTSTART", "DTEND", "DUE")


def schedule_demo_calendar(text: str, now: datetime) -> str:
    """Shift each object of ``text`` so its first alarm fires at ``now`` + 5 s, 10 s, 18 s, …

    Relative triggers move with their component; the shift keeps durations. Pure.
    """
    now = now.astimezone(UTC).replace(microsecond=0)
    parsed = parse_calendar(text)
    if parsed.errors:
        raise parsed.errors[0]
    out = Calendar()
    out.add("PRODID", "-//calalarm//demo//EN")
    out.add("VERSION", "2.0")
    for index, obj in enumerate(parsed.objects):
        planned = plan_alarms(obj, calid="demo", tz=UTC, window_start=EARLIEST, window_end=LATEST).alarms
        if not planned:
            raise CalendarError("the demo calendar needs an alarm in every object", uid=obj.uid)
        offset = FIRST_ALARM_AFTER[index % len(FIRST_ALARM_AFTER)] + 30 * (index // len(FIRST_ALARM_AFTER))
        shift = now + timedelta(seconds=offset) - planned[0].trigger
        for comp in obj.components:
            for name in _MOVED:
                if name in comp:
                    value = comp.decoded(name)
                    if not isinstance(value, datetime):
                        raise CalendarError("the demo calendar must use date-times", uid=obj.uid, prop=name)
                    comp.pop(name)
                    comp.add(name, (value + shift).astimezone(UTC))
            out.add_component(comp)
    return str(out.to_ical().decode("utf-8"))
