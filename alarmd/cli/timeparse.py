"""Durations (``7d``, ``1h30m``) and instants (ISO 8601, ``now``, ``+2h``) as ``alarmctl``
options take them: the parsers, and the option helpers that turn a bad value into a usage error."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from alarmd.cli.context import EXIT_USAGE, fail

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|w|d|h|m|s))+")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``45s``, ``500ms``, ``2w``, or several together (``1h30m``);
    ``0`` alone is zero. Raises ValueError with the accepted forms."""
    compact = text.strip().lower().replace(" ", "")
    if compact == "0":
        return timedelta(0)
    if not _DURATION.fullmatch(compact):
        raise ValueError(f"{text!r} is not a duration such as 7d, 12h, 30m, 45s or 1h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(compact))
    return timedelta(seconds=seconds)


def parse_instant(text: str, now: datetime) -> datetime:
    """An ISO 8601 date-time (UTC when it has no offset), ``now``, or ``+DURATION`` /
    ``-DURATION`` from ``now``. Raises ValueError with the accepted forms."""
    value = text.strip()
    if value.lower() == "now":
        return now
    if value[:1] in "+-" and value[1:2].isdigit():
        offset = parse_duration(value[1:])
        return now + offset if value[0] == "+" else now - offset
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an instant: write ISO 8601 (2026-11-23T10:00:00Z), now, or +2h / -30m from now"
        ) from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def instant_option(name: str, text: str, now: datetime) -> datetime:
    """The value of option ``name`` as an instant; exit 2 naming the option when it is not one."""
    try:
        return parse_instant(text, now)
    except ValueError as exc:
        fail(f"{name}: {exc}", EXIT_USAGE)


def duration_option(name: str, text: str) -> timedelta:
    """The value of option ``name`` as a duration; exit 2 naming the option when it is not one."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{name}: {exc}", EXIT_USAGE)
