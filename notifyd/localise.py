"""Dates and times as people read them, in their language and time zone (Babel).

Pure functions: every value is passed in. Timed values are aware datetimes; all-day
values are dates. The templates receive the strings these functions return.

Results are cached (a few thousand entries): a burst of reminders mostly shares its
start times (everything at 10:00 reminded at 9:45), and Babel's formatting was a
tenth of notifyd's time per reminder.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo
from functools import lru_cache

from babel import Locale
from babel.dates import format_date, format_interval, format_time, get_timezone_name

CACHE_SIZE = 4096


@lru_cache(maxsize=CACHE_SIZE)
def format_instant(instant: datetime, zone: tzinfo, locale: Locale) -> str:
    """``Monday, November 23, 2026, 10:00 AM`` (in ``locale``'s words and order)."""
    local = instant.astimezone(zone)
    pattern = str(locale.datetime_formats["medium"])  # "{1}, {0}": {1} the date, {0} the time
    return pattern.replace("{1}", format_date(local, "full", locale=locale)).replace(
        "{0}", format_time(local, "short", tzinfo=zone, locale=locale)
    )


@lru_cache(maxsize=CACHE_SIZE)
def format_span(start: datetime, end: datetime | None, zone: tzinfo, locale: Locale) -> str:
    """A timed event: ``Monday, November 23, 2026, 10:00 AM – 11:30 AM``; the end date is
    repeated only when it differs from the start's."""
    shown = format_instant(start, zone, locale)
    if end is None or end <= start:
        return shown
    local_start, local_end = start.astimezone(zone), end.astimezone(zone)
    if local_end.date() == local_start.date():
        return f"{shown} – {format_time(local_end, 'short', tzinfo=zone, locale=locale)}"
    return f"{shown} – {format_instant(end, zone, locale)}"


@lru_cache(maxsize=CACHE_SIZE)
def format_day(day: date, locale: Locale) -> str:
    """``Monday, November 23, 2026``."""
    return format_date(day, "full", locale=locale)


@lru_cache(maxsize=CACHE_SIZE)
def format_days(first: date, last: date, locale: Locale) -> str:
    """All-day span, both days included: ``Mon, Nov 23 – Wed, Nov 25, 2026``; one day in full."""
    if last <= first:
        return format_day(first, locale)
    return format_interval(first, last, "yMMMEd", locale=locale)


def last_day(start: date, end: date | datetime | None, zone: tzinfo) -> date:
    """The last day of an all-day component. DTEND is exclusive; it may also arrive as
    the instant of local midnight after the last day."""
    if isinstance(end, datetime):
        local_end = end.astimezone(zone)
        last = local_end.date() - timedelta(days=1) if local_end.time() == datetime.min.time() else local_end.date()
    elif isinstance(end, date):
        last = end - timedelta(days=1)
    else:
        last = start
    return max(last, start)


@lru_cache(maxsize=CACHE_SIZE)
def zone_label(instant: datetime, zone: tzinfo, locale: Locale) -> str:
    """The zone's name in ``locale`` at ``instant``: ``Central European Standard Time``."""
    try:
        return str(get_timezone_name(instant.astimezone(zone), "long", locale=locale))
    except (LookupError, ValueError):
        return str(getattr(zone, "key", "UTC"))
