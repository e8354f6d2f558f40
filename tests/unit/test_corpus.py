"""The calendar corpus: every file's planned instants equal its independently worked-out expectation.

Each ``tests/corpus/NAME.ics`` has a ``NAME.toml`` with the calendar's zone, a
window and the expected ``[uid, rid, aid, trigger]`` instances (see
``tests/corpus/README.md``). The expectations were derived by hand and with
``zoneinfo``/GNU ``date``, never with this code.
"""

from __future__ import annotations

import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from alarmd.ical import CalendarError, parse_calendar
from alarmd.triggers import plan_alarms

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = sorted(CORPUS.glob("*.toml"))


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    clients = [c for c in CASES if c.name.startswith("client_")]
    assert len(clients) >= 8, "real client output (Thunderbird, Google, Etar) belongs in the corpus"


def _utc(value: Any) -> datetime:
    assert isinstance(value, datetime), f"{value!r} must be a TOML offset date-time"
    assert value.tzinfo is not None
    return value


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_corpus_case(case: Path) -> None:
    spec = tomllib.loads(case.read_text(encoding="utf-8"))
    parsed = parse_calendar(case.with_suffix(".ics").read_bytes())
    errors: list[CalendarError] = list(parsed.errors)
    warnings: list[str] = []
    got: set[tuple[str, str, str, str]] = set()
    for obj in parsed.objects:
        try:
            plan = plan_alarms(
                obj,
                calid="corpus",
                tz=ZoneInfo(spec["tz"]),
                window_start=_utc(spec["window_start"]),
                window_end=_utc(spec["window_end"]),
                min_interval=timedelta(seconds=spec.get("min_interval_seconds", 300)),
            )
        except CalendarError as exc:
            errors.append(exc)
            continue
        warnings.extend(plan.warnings)
        got |= {(p.uid, p.rid, p.aid, p.payload.trigger) for p in plan.alarms}
    expected = {tuple(e) for e in spec.get("expected", [])}
    assert sorted(got) == sorted(expected)
    assert sorted((e.uid, e.prop) for e in errors) == sorted(tuple(e) for e in spec.get("errors", []))
    if "warning_contains" in spec:
        assert any(spec["warning_contains"] in w for w in warnings), warnings
