"""iCalendar → alarm instants. Pure: no clock, no I/O; ``now``/window and zone passed in.

One *planned alarm* is one trigger of one VALARM of one occurrence. Its key
(calid, uid, rid, aid, trigger) identifies it across re-enqueues.

Rules (RFC 5545 §3.6.6, §3.8.6.3):
- A relative TRIGGER is an offset from DTSTART, or with RELATED=END from the end
  (DTEND, DTSTART + DURATION, for a VTODO its DUE).
- An absolute TRIGGER (VALUE=DATE-TIME) is a UTC instant and fires once.
- REPEAT n with DURATION d adds n more triggers, d apart.
- Floating times and all-day dates are read in the calendar's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from icalendar import Component

from alarmd.ical import CalendarError, CalendarObject
from common.ens.reference import EventReference
from common.payload import AlarmPayload, format_utc

MAX_REPEAT = 1000


@dataclass(frozen=True)
class PlannedAlarm:
    calid: str
    uid: str
    rid: str
    aid: str
    component: str
    action: str
    trigger: datetime  # aware, UTC
    payload: AlarmPayload

    @property
    def key(self) -> tuple[str, str, str, str, datetime]:
        return (self.calid, self.uid, self.rid, self.aid, self.trigger)

    @property
    def ref(self) -> EventReference:
        return EventReference.alarm(self.component, self.calid, self.uid, self.rid, self.aid)


def plan_alarms(
    obj: CalendarObject,
    *,
    calid: str,
    tz: tzinfo,
    window_start: datetime,
    window_end: datetime,
    owner: str = "",
) -> list[PlannedAlarm]:
    """Every trigger of ``obj`` in [window_start, window_end), sorted by instant."""
    if window_start.tzinfo is None or window_end.tzinfo is None:
        raise ValueError("the window must be given as aware datetimes")
    planned: list[PlannedAlarm] = []
    for comp in obj.components:
        if str(comp.get("STATUS", "")).upper() == "CANCELLED":
            continue
        for prop in ("RRULE", "RDATE", "RECURRENCE-ID"):
            if prop in comp:
                raise CalendarError("recurring components are not supported yet", uid=obj.uid, prop=prop)
        planned.extend(_component_alarms(obj, comp, calid=calid, tz=tz, owner=owner))
    planned = [p for p in planned if window_start <= p.trigger < window_end]
    planned.sort(key=lambda p: (p.trigger, p.aid))
    return planned


def _component_alarms(
    obj: CalendarObject, comp: Component, *, calid: str, tz: tzinfo, owner: str
) -> list[PlannedAlarm]:
    uid = obj.uid
    start = _instant(comp, "DTSTART", tz, uid)
    end = _end(comp, start, tz, uid)
    out: list[PlannedAlarm] = []
    valarms = [c for c in comp.subcomponents if c.name == "VALARM"]
    for index, valarm in enumerate(valarms, start=1):
        aid = str(valarm.get("UID") or valarm.get("X-WR-ALARMUID") or index)
        action = str(valarm.get("ACTION", "DISPLAY")).upper()
        for trigger in _triggers(valarm, start, end, uid):
            payload = AlarmPayload(
                calid=calid,
                uid=uid,
                rid="",
                aid=aid,
                component=obj.component,
                action=action,
                trigger=format_utc(trigger),
                summary=str(comp.get("SUMMARY", "")),
                description=str(comp.get("DESCRIPTION", "")),
                location=str(comp.get("LOCATION", "")),
                start=_show(comp, "DTSTART", start),
                end=_show(comp, "DTEND" if "DTEND" in comp else "DUE", end),
                tz=str(getattr(tz, "key", "UTC")),
                alarm_summary=str(valarm.get("SUMMARY", "")),
                alarm_description=str(valarm.get("DESCRIPTION", "")),
                owner=owner,
                recipients=_recipients(valarm, action, owner),
            )
            out.append(PlannedAlarm(calid, uid, "", aid, obj.component, action, trigger, payload))
    return out


def _triggers(valarm: Component, start: datetime | None, end: datetime | None, uid: str) -> list[datetime]:
    prop = valarm.get("TRIGGER")
    if prop is None:
        raise CalendarError("a VALARM has no TRIGGER", uid=uid, prop="TRIGGER")
    value = _decoded(valarm, "TRIGGER", uid)
    if isinstance(value, timedelta):
        related = str(prop.params.get("RELATED", "START")).upper()
        base = end if related == "END" else start
        if base is None:
            missing = "DTEND/DUE/DURATION" if related == "END" else "DTSTART"
            raise CalendarError(f"a relative TRIGGER needs {missing}", uid=uid, prop="TRIGGER")
        first = base + value
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise CalendarError("an absolute TRIGGER must be in UTC (end it with Z)", uid=uid, prop="TRIGGER")
        first = value
    else:
        raise CalendarError(f"TRIGGER {value!r} is neither a duration nor a date-time", uid=uid, prop="TRIGGER")
    first = first.astimezone(UTC)
    repeat = int(valarm.get("REPEAT", 0) or 0)
    if repeat <= 0:
        return [first]
    if repeat > MAX_REPEAT:
        raise CalendarError(f"REPEAT {repeat} is over the limit of {MAX_REPEAT}", uid=uid, prop="REPEAT")
    step = _decoded(valarm, "DURATION", uid) if "DURATION" in valarm else None
    if not isinstance(step, timedelta) or step <= timedelta(0):
        raise CalendarError("REPEAT needs a positive DURATION in the same VALARM", uid=uid, prop="DURATION")
    return [first + k * step for k in range(repeat + 1)]


def _instant(comp: Component, name: str, tz: tzinfo, uid: str) -> datetime | None:
    if name not in comp:
        return None
    return to_instant(_decoded(comp, name, uid), tz)


def _end(comp: Component, start: datetime | None, tz: tzinfo, uid: str) -> datetime | None:
    for name in ("DTEND", "DUE"):
        if name in comp:
            return _instant(comp, name, tz, uid)
    if "DURATION" in comp and start is not None:
        duration = _decoded(comp, "DURATION", uid)
        if not isinstance(duration, timedelta):
            raise CalendarError("DURATION is not a duration", uid=uid, prop="DURATION")
        return start + duration
    if start is not None and comp.name == "VEVENT":
        value = _decoded(comp, "DTSTART", uid)
        # RFC 5545: an all-day event without DTEND lasts one day; a timed one ends when it starts.
        return start + timedelta(days=1) if not isinstance(value, datetime) else start
    return None


def to_instant(value: Any, tz: tzinfo) -> datetime:
    """A DATE or DATE-TIME value as an aware instant; floating and dates read in ``tz``."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=tz)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=tz)
    raise TypeError(f"{value!r} is not a date or date-time")


def _decoded(comp: Component, name: str, uid: str) -> Any:
    try:
        value = comp.decoded(name)
    except (ValueError, KeyError, TypeError) as exc:
        raise CalendarError(f"cannot read the value: {exc}", uid=uid, prop=name) from None
    if isinstance(value, list | tuple):
        raise CalendarError("appears more than once", uid=uid, prop=name)
    return value


def _show(comp: Component, name: str, instant: datetime | None) -> str:
    """How start/end travel in the payload: a date for all-day values, else UTC ISO; "" when absent."""
    if instant is None:
        return ""
    if name in comp:
        raw = comp.decoded(name)
    elif "DURATION" in comp:  # an end computed from DTSTART + DURATION
        raw = comp.decoded("DTSTART") + comp.decoded("DURATION")
    else:
        return ""
    if isinstance(raw, date) and not isinstance(raw, datetime):
        return raw.isoformat()
    return format_utc(instant)


def _recipients(valarm: Component, action: str, owner: str) -> list[str]:
    if action != "EMAIL":
        return [owner] if owner else []
    attendees = valarm.get("ATTENDEE", [])
    if not isinstance(attendees, list):
        attendees = [attendees]
    out = []
    for attendee in attendees:
        address = str(attendee)
        if address.lower().startswith("mailto:"):
            out.append(address[7:])
    return out or ([owner] if owner else [])
