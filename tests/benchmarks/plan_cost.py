"""Planning cost per calendar object: what one put or one horizon top-up spends in Python.

    .venv/bin/python -m tests.benchmarks.plan_cost

Prints JSON: milliseconds per ``plan_queue`` call (7-day horizon) for a one-off
event (the baseline) and for series that started in 2020, with the ratio to the
baseline measured in the same run. Not part of ``make test``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from alarmd.ical import parse_calendar
from alarmd.triggers import plan_queue

TEMPLATE = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:bench\r\nBEGIN:VEVENT\r\nUID:x\r\n"
    "DTSTART;TZID=Europe/Berlin:{start}T090000\r\nDURATION:PT1H\r\n{rule}"
    "BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)
CASES = {
    "one-off (baseline)": ("20270106", "", 500),
    "daily since 2020": ("20200106", "RRULE:FREQ=DAILY\r\n", 100),
    "weekly MO,WE,FR since 2020": ("20200106", "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR\r\n", 100),
    "every 15 min since 2020": ("20200106", "RRULE:FREQ=MINUTELY;INTERVAL=15\r\n", 10),
}


def main() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    results = {}
    for label, (start, rule, rounds) in CASES.items():
        obj = parse_calendar(TEMPLATE.format(start=start, rule=rule)).objects[0]
        began = time.perf_counter()
        for _ in range(rounds):
            plan = plan_queue(obj, calid="c", tz=ZoneInfo("UTC"), now=now, horizon=timedelta(days=7))
        results[label] = {"instances": len(plan.alarms), "ms_per_plan": (time.perf_counter() - began) / rounds * 1000}
    baseline = results["one-off (baseline)"]["ms_per_plan"]
    for value in results.values():
        value["ratio_to_baseline"] = round(value["ms_per_plan"] / baseline, 1)
        value["ms_per_plan"] = round(value["ms_per_plan"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
