"""iCalendar → alarm instants. Pure: no clock, no I/O; the window and zone are passed in.

One *planned alarm* is one trigger of one VALARM of one occurrence. Its key
(calid, uid, rid, aid, trigger) identifies it across re-enqueues.

Rules (RFC 5545 §3.6.6, §3.8.6.3; RFC 9074):

- A relative TRIGGER is an offset from the occurrence's start, or with
  RELATED=END from its end (DTEND; DTSTART + DURATION; a VTODO's DUE). Whole
  days of the offset are nominal (wall clock), hours and less exact.
- An absolute TRIGGER (VALUE=DATE-TIME) fires once, also in a recurring master.
- REPEAT n with DURATION d adds n more triggers, d apart.
- Floating times and all-day dates are read in the calendar's time zone.
- Cancelled components, ACTION:NONE alarms and triggers acknowledged by the
  client (RFC 9074 ACKNOWLEDGED, Thunderbird's X-MOZ-LASTACK) are skipped.
- Snoozes fire at their snooze time: RFC 9074 snooze alarms (RELATED-TO;
  RELTYPE=SNOOZE, an absolute trigger) are ordinary absolute alarms; a
  Thunderbird X-MOZ-SNOOZE-TIME[-<recurrence µs>] re-fires the alarm that was
  snoozed (the latest one triggered before the snooze time).
- A series denser than ``min_interval`` keeps, per alarm, one instant in each
  ``min_interval`` slot (slots aligned to the epoch, so the choice does not
  depend on the window) and reports the rest as dropped.

Why not ``icalendar.alarms``: it reads Google's DTSTAMP as an acknowledgment
(right for a client, wrong for a server that plans ahead), knows no RFC 9074
snooze alarms, adds durations on the wall clock only, and has no notion of
recurrence; trigger arithmetic is small enough to own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from icalendar import Component

from alarmd.ical import CalendarError, CalendarObject, check_object, decoded_value
from alarmd.recurrence import (
    Occurrence,
    add_duration,
    is_recurring,
    master,
    occurrence_of,
    occurrences,
    rid_of,
    search_slack,
    shifted,
)
from common.ens.reference import EventReference
from common.payload import AlarmPayload, format_utc

MAX_REPEAT = 1000
DEFAULT_MIN_INTERVAL = timedelta(minutes=5)
# Occurrences examined for one plan. A series dense enough to exceed it within
# the window (FREQ=SECONDLY, say) is planned only up to where it stopped, and
# that is reported; the horizon job plans the rest later, a slice at a time.
MAX_OCCURRENCES = 5000
# Alarm instants one plan may build before thinning: a series is cut (as for
# MAX_OCCURRENCES) when it reaches this many; an object that does not recur and
# has more is refused. Without it a REPEAT:1000 alarm on a FREQ=MINUTELY series
# built 5 million instants (gigabytes) from 300 bytes of text.
MAX_CANDIDATES = 20_000
# Triggers of one component per occurrence: its VALARMs, each counted 1 + REPEAT.
MAX_ALARM_TRIGGERS = 2000
# What a payload may carry, so that every notification fits the bus's message limit
# (common.ens.envelope.MAX_MESSAGE_BYTES) and every row its columns: each text
# (summary, description, location, the alarm's summary and description, organizer)
# is cut to MAX_TEXT characters (ending in "…"); an EMAIL alarm may name at most
# MAX_RECIPIENTS attendees of at most MAX_ADDRESS characters; an alarm's UID (its aid)
# at most MAX_AID_LENGTH characters and its ACTION at most MAX_ACTION_LENGTH.
MAX_TEXT = 10_000
MAX_RECIPIENTS = 200
MAX_ADDRESS = 320
MAX_AID_LENGTH = 255
MAX_ACTION_LENGTH = 32
# How far next_alarms looks for a series' next instance (leap-day birthdays recur every 4 years).
NEXT_SEARCH_LIMIT = timedelta(days=366 * 10)
MAX_NEXT_OCCURRENCES = 1000
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


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


@dataclass
class AlarmPlan:
    """The instants of one object in a window, and what the planner had to say about them."""

    alarms: list[PlannedAlarm] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    complete_until: datetime | None = None  # every instant before this is in ``alarms``


@dataclass
class QueuePlan:
    """What the queue should hold for one object (see :func:`plan_queue`)."""

    alarms: list[PlannedAlarm]
    planned_until: datetime | None  # the horizon reached; None: the object has no instance after ``alarms``
    covered_until: datetime | None  # every instance before this is in ``alarms`` (None: every instance)
    warnings: list[str]


@dataclass(frozen=True)
class _Context:
    obj: CalendarObject
    calid: str
    tz: tzinfo
    owner: str
    recurring: bool
    locale: str = ""
    # Texts as payloads carry them, made once per value: every instant of a series
    # shares one string instead of a copy each (a 1 MB DESCRIPTION times 5,000).
    texts: dict[Any, str] = field(default_factory=dict, compare=False)

    def text(self, value: Any) -> str:
        if value is None:
            return ""
        try:
            made = self.texts.get(value)
        except TypeError:  # a property given twice is a list
            return _cut(str(value))
        if made is None:
            made = self.texts[value] = _cut(str(value))
        return made


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def plan_alarms(
    obj: CalendarObject,
    *,
    calid: str,
    tz: tzinfo,
    window_start: datetime,
    window_end: datetime,
    owner: str = "",
    locale: str = "",
    min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    max_occurrences: int = MAX_OCCURRENCES,
) -> AlarmPlan:
    """Every instant of ``obj`` in [window_start, window_end), sorted.

    Raises :class:`CalendarError` (naming the UID and property) when the object
    cannot be planned; nothing is planned for it then.
    """
    if window_start.tzinfo is None or window_end.tzinfo is None:
        raise ValueError("the window must be given as aware datetimes")
    check_object(obj)
    check_alarms(obj)
    ctx = _Context(obj, calid, tz, owner, is_recurring(obj), locale)
    plan = AlarmPlan(complete_until=window_end)
    head = master(obj)
    if head is not None and _cancelled(head):
        return plan
    before, after = _reach(obj)
    slack = search_slack(obj)
    # Candidates start one min_interval early so that thinning sees the whole
    # slot the window starts in and keeps the same instant any window would.
    lo = shifted(window_start, -min_interval)
    hi = shifted(window_end, before + slack)
    candidates: list[PlannedAlarm] = []
    for count, occ in enumerate(occurrences(obj, tz, after=shifted(lo, -after)), start=1):
        anchor = occ.start or occ.end
        if anchor is not None and anchor > hi:
            break
        if ctx.recurring and (count > max_occurrences or len(candidates) > MAX_CANDIDATES):
            cut = window_end
            if anchor is not None:
                cut = max(window_start, min(window_end, shifted(anchor, -before - slack)))
            plan.complete_until = cut
            what = f"{max_occurrences} occurrences" if count > max_occurrences else f"{MAX_CANDIDATES} alarm instants"
            plan.warnings.append(
                f"UID {obj.uid}: more than {what} fall in the window; "
                f"planned up to {format_utc(cut)} only, the rest is planned as time goes on"
            )
            break
        candidates.extend(_occurrence_alarms(ctx, occ))
        if not ctx.recurring and len(candidates) > MAX_CANDIDATES:
            raise CalendarError(
                f"has more than {MAX_CANDIDATES} alarm instants (alarmd.triggers.MAX_CANDIDATES)",
                uid=obj.uid,
                prop="VALARM",
            )
    if ctx.recurring and head is not None:
        candidates.extend(_once_alarms(ctx, head))
    end = plan.complete_until or window_end
    candidates = [p for p in _unique(candidates) if lo <= p.trigger < end]
    kept, dropped = thin(candidates, min_interval)
    if dropped:
        plan.warnings.append(
            f"UID {obj.uid}: {dropped} alarm instant(s) closer than the minimum interval of "
            f"{min_interval.total_seconds():g} s to another of the same alarm were dropped"
        )
    plan.alarms = sorted((p for p in kept if p.trigger >= window_start), key=lambda p: (p.trigger, p.rid, p.aid))
    return plan


def plan_queue(
    obj: CalendarObject,
    *,
    calid: str,
    tz: tzinfo,
    now: datetime,
    horizon: timedelta,
    owner: str = "",
    locale: str = "",
    min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    first_live: datetime | None = None,
    last_live: datetime | None = None,
) -> QueuePlan:
    """What the queue holds for ``obj`` at ``now``: the rule ``put`` and ``alarmctl preview`` share.

    A non-recurring object: all its instances. A recurring series: its
    instances up to ``now + horizon``, plus each alarm's next instance beyond
    (so a yearly reminder is queued a year ahead). For a re-put, the window
    also reaches back to the earliest live instance (``first_live``: an overdue
    one still in the calendar is kept, one no longer in it removed) and forward
    to the latest (``last_live``). The caller keeps only instants from ``now`` on
    when it adds rows.
    """
    if not is_recurring(obj):
        plan = plan_alarms(
            obj,
            calid=calid,
            tz=tz,
            window_start=min(now, first_live) if first_live else now,
            window_end=LATEST,
            owner=owner,
            locale=locale,
            min_interval=min_interval,
        )
        return QueuePlan(plan.alarms, None, None, plan.warnings)
    horizon_end = now + horizon
    start = min(now, first_live) if first_live else now
    end = max(horizon_end, last_live + timedelta(microseconds=1)) if last_live else horizon_end
    plan = plan_alarms(
        obj,
        calid=calid,
        tz=tz,
        window_start=start,
        window_end=end,
        owner=owner,
        locale=locale,
        min_interval=min_interval,
    )
    covered = plan.complete_until or end
    reached = min(covered, horizon_end)
    following = next_alarms(obj, calid=calid, tz=tz, after=reached, owner=owner, locale=locale)
    if not following and covered == end:
        return QueuePlan(plan.alarms, None, None, plan.warnings)  # nothing after the window: the series is complete
    beyond = [p for p in following if p.trigger >= covered]  # the others are planned already (or thinned out)
    return QueuePlan(plan.alarms + beyond, reached, covered, plan.warnings)


def next_alarms(
    obj: CalendarObject,
    *,
    calid: str,
    tz: tzinfo,
    after: datetime,
    owner: str = "",
    locale: str = "",
    max_occurrences: int = MAX_NEXT_OCCURRENCES,
) -> list[PlannedAlarm]:
    """The first instant at or after ``after`` of each alarm (aid) of a series.

    What keeps a yearly series armed when its next occurrence lies beyond the
    planning horizon. Stops once no later occurrence can give an earlier instant.
    """
    check_object(obj)
    check_alarms(obj)
    ctx = _Context(obj, calid, tz, owner, is_recurring(obj), locale)
    head = master(obj)
    if head is not None and _cancelled(head):
        return []
    before, reach_after = _reach(obj)
    slack = search_slack(obj)
    # The alarms that recur with the series (absolute and ACTION:NONE ones never do).
    wanted = {
        _aid(v, i)
        for i, v in enumerate(_valarms(head), 1)
        if head is not None and not _is_absolute(v, obj.uid) and _action(v) != "NONE"
    }
    first: dict[str, PlannedAlarm] = {}
    if not wanted:  # only overrides have alarms: they are finite, read them directly
        for comp in obj.components:
            if "RECURRENCE-ID" in comp:
                occ = occurrence_of(obj, comp, tz, rid=rid_of(comp, "RECURRENCE-ID", tz), is_override=True)
                _keep_first(first, _occurrence_alarms(ctx, occ), after)
        return sorted(first.values(), key=lambda p: (p.trigger, p.aid))
    give_up = shifted(after, NEXT_SEARCH_LIMIT)
    built = 0
    for count, occ in enumerate(occurrences(obj, tz, after=shifted(after, -reach_after))):
        anchor = occ.start or occ.end
        if count >= max_occurrences or built > MAX_CANDIDATES or (anchor is not None and anchor > give_up):
            break
        if anchor is not None and wanted <= first.keys():
            latest = max(p.trigger for p in first.values())
            if anchor > shifted(latest, before + slack):
                break
        planned = _occurrence_alarms(ctx, occ)
        built += len(planned)
        _keep_first(first, planned, after)
    return sorted(first.values(), key=lambda p: (p.trigger, p.aid))


def check_alarms(obj: CalendarObject) -> None:
    """Raise :class:`CalendarError` for VALARMs over a limit (see :data:`MAX_ALARM_TRIGGERS` and below)."""
    uid = obj.uid
    for comp in obj.components:
        triggers = 0
        for index, valarm in enumerate(_valarms(comp), start=1):
            aid = _aid(valarm, index)
            if len(aid) > MAX_AID_LENGTH:
                raise CalendarError(
                    f"a VALARM's UID is {len(aid)} characters long, over the limit of {MAX_AID_LENGTH} "
                    "(alarmd.triggers.MAX_AID_LENGTH)",
                    uid=uid,
                    prop="UID",
                )
            action = _action(valarm)
            if len(action) > MAX_ACTION_LENGTH:
                raise CalendarError(
                    f"ACTION is {len(action)} characters long, over the limit of {MAX_ACTION_LENGTH}",
                    uid=uid,
                    prop="ACTION",
                )
            triggers += _repeat(valarm, uid) + 1
            if triggers > MAX_ALARM_TRIGGERS:
                raise CalendarError(
                    f"the VALARMs of one {comp.name} trigger more than {MAX_ALARM_TRIGGERS} times per occurrence, "
                    "each counted 1 + REPEAT (alarmd.triggers.MAX_ALARM_TRIGGERS)",
                    uid=uid,
                    prop="VALARM",
                )
            if action == "EMAIL":
                addresses = _attendees(valarm)
                if len(addresses) > MAX_RECIPIENTS:
                    raise CalendarError(
                        f"an EMAIL alarm names {len(addresses)} attendees, over the limit of {MAX_RECIPIENTS} "
                        "(alarmd.triggers.MAX_RECIPIENTS)",
                        uid=uid,
                        prop="ATTENDEE",
                    )
                longest = max((len(a) for a in addresses), default=0)
                if longest > MAX_ADDRESS:
                    raise CalendarError(
                        f"an attendee's address is {longest} characters long, over the limit of {MAX_ADDRESS}",
                        uid=uid,
                        prop="ATTENDEE",
                    )


def _keep_first(first: dict[str, PlannedAlarm], planned: Iterable[PlannedAlarm], after: datetime) -> None:
    """Record each alarm's earliest instant at or after ``after`` in ``first``."""
    for p in planned:
        if p.trigger >= after and (p.aid not in first or p.trigger < first[p.aid].trigger):
            first[p.aid] = p


def thin(planned: Iterable[PlannedAlarm], min_interval: timedelta) -> tuple[list[PlannedAlarm], int]:
    """Keep the earliest instant per (uid, aid) in each epoch-aligned ``min_interval`` slot."""
    items = sorted(planned, key=lambda p: (p.trigger, p.rid, p.aid))
    step = min_interval.total_seconds()
    if step <= 0:
        return items, 0
    seen: set[tuple[str, str, int]] = set()
    kept: list[PlannedAlarm] = []
    for p in items:
        slot = (p.uid, p.aid, int(p.trigger.timestamp() // step))
        if slot not in seen:
            seen.add(slot)
            kept.append(p)
    return kept, len(items) - len(kept)


# ---------------------------------------------------------------- per occurrence


def _occurrence_alarms(ctx: _Context, occ: Occurrence) -> list[PlannedAlarm]:
    if occ.cancelled:
        return []
    comp = occ.component
    uid = ctx.obj.uid
    last_ack = _utc_value(comp, "X-MOZ-LASTACK", uid)
    fired: list[tuple[datetime, str, Component]] = []  # every trigger, acknowledged or not (for snoozes)
    out: list[PlannedAlarm] = []
    for index, valarm in enumerate(_valarms(comp), start=1):
        aid = _aid(valarm, index)
        if _action(valarm) == "NONE":
            continue
        if _is_absolute(valarm, uid) and ctx.recurring and not occ.is_override:
            continue  # an absolute trigger in a recurring master fires once: see _once_alarms
        acknowledged = _latest(_utc_value(valarm, "ACKNOWLEDGED", uid), last_ack)
        for trigger in _triggers(valarm, occ, uid):
            fired.append((trigger, aid, valarm))
            if acknowledged is None or trigger > acknowledged:
                out.append(_planned(ctx, occ, valarm, aid, trigger))
    snooze = _thunderbird_snooze(comp, occ.rid if ctx.recurring else "", uid)
    if snooze is not None and (last_ack is None or snooze > last_ack):
        snoozed = [f for f in fired if f[0] <= snooze]
        if snoozed:
            _, aid, valarm = max(snoozed, key=lambda f: f[0])
            out.append(_planned(ctx, occ, valarm, aid, snooze))
    return out


def _once_alarms(ctx: _Context, head: Component) -> list[PlannedAlarm]:
    """Absolute-trigger alarms of a recurring master: once, with rid ""."""
    uid = ctx.obj.uid
    if not any(_is_absolute(v, uid) for v in _valarms(head)):
        return []
    occ = occurrence_of(ctx.obj, head, ctx.tz, rid="", is_override=False)
    out: list[PlannedAlarm] = []
    for index, valarm in enumerate(_valarms(head), start=1):
        if not _is_absolute(valarm, uid) or _action(valarm) == "NONE":
            continue
        acknowledged = _utc_value(valarm, "ACKNOWLEDGED", uid)
        out.extend(
            _planned(ctx, occ, valarm, _aid(valarm, index), t)
            for t in _triggers(valarm, occ, uid)
            if acknowledged is None or t > acknowledged
        )
    return out


def _triggers(valarm: Component, occ: Occurrence, uid: str) -> list[datetime]:
    prop = valarm.get("TRIGGER")
    if prop is None:
        raise CalendarError("a VALARM has no TRIGGER", uid=uid, prop="TRIGGER")
    value = decoded_value(valarm, "TRIGGER", uid)
    if isinstance(value, timedelta):
        related = str(prop.params.get("RELATED", "START")).upper()
        base = occ.end if related == "END" else occ.start
        if base is None:
            missing = "DTEND, DUE or DURATION" if related == "END" else "DTSTART"
            raise CalendarError(f"a relative TRIGGER needs {missing}", uid=uid, prop="TRIGGER")
        first = add_duration(base, value)
        zone_base = base
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise CalendarError("an absolute TRIGGER must be in UTC (end it with Z)", uid=uid, prop="TRIGGER")
        first = zone_base = value.astimezone(UTC)
    else:
        raise CalendarError(f"TRIGGER {value!r} is neither a duration nor a date-time", uid=uid, prop="TRIGGER")
    repeat = _repeat(valarm, uid)
    if repeat == 0:
        return [first]
    step = decoded_value(valarm, "DURATION", uid) if "DURATION" in valarm else None
    if not isinstance(step, timedelta) or step <= timedelta(0):
        raise CalendarError("REPEAT needs a positive DURATION in the same VALARM", uid=uid, prop="DURATION")
    local_first = first.astimezone(zone_base.tzinfo)
    return [first, *(add_duration(local_first, k * step) for k in range(1, repeat + 1))]


def _planned(ctx: _Context, occ: Occurrence, valarm: Component, aid: str, trigger: datetime) -> PlannedAlarm:
    comp = occ.component
    action = _action(valarm)
    payload = AlarmPayload(
        calid=ctx.calid,
        uid=ctx.obj.uid,
        rid=occ.rid,
        aid=aid,
        component=ctx.obj.component,
        action=action,
        trigger=format_utc(trigger),
        summary=ctx.text(comp.get("SUMMARY")),
        description=ctx.text(comp.get("DESCRIPTION")),
        location=ctx.text(comp.get("LOCATION")),
        start=_show(occ.start, occ.all_day, ctx.tz),
        end=_show(occ.end, occ.all_day, ctx.tz) if any(p in comp for p in ("DTEND", "DUE", "DURATION")) else "",
        tz=str(getattr(ctx.tz, "key", "UTC")),
        alarm_summary=ctx.text(valarm.get("SUMMARY")),
        alarm_description=ctx.text(valarm.get("DESCRIPTION")),
        owner=ctx.owner,
        recipients=_recipients(valarm, action, ctx.owner),
        organizer=_cut(_organizer(comp)),
        locale=ctx.locale,
    )
    return PlannedAlarm(ctx.calid, ctx.obj.uid, occ.rid, aid, ctx.obj.component, action, trigger, payload)


# ---------------------------------------------------------------- helpers


def _reach(obj: CalendarObject) -> tuple[timedelta, timedelta]:
    """How far before and after its occurrence's start a relative trigger can fall."""
    before = after = timedelta(0)
    for comp in obj.components:
        length = _length(comp, obj.uid)
        for valarm in _valarms(comp):
            value = decoded_value(valarm, "TRIGGER", obj.uid) if "TRIGGER" in valarm else None
            if not isinstance(value, timedelta):
                continue
            related_end = str(valarm["TRIGGER"].params.get("RELATED", "START")).upper() == "END"
            offset = value + (length if related_end else timedelta(0))
            step = valarm.decoded("DURATION") if "DURATION" in valarm else timedelta(0)
            span = _repeat(valarm, obj.uid) * step if isinstance(step, timedelta) else timedelta(0)
            before = max(before, -offset)
            after = max(after, offset + span)
    return before, after


def _length(comp: Component, uid: str) -> timedelta:
    try:
        if "DURATION" in comp:
            value = comp.decoded("DURATION")
            return value if isinstance(value, timedelta) else timedelta(0)
        if "DTSTART" in comp:
            start = comp.decoded("DTSTART")
            for name in ("DTEND", "DUE"):
                if name in comp:
                    end = comp.decoded(name)
                    if type(end) is type(start):
                        length: timedelta = end - start if not isinstance(start, datetime) else _diff(start, end)
                        return max(length, timedelta(0))
            return timedelta(days=1) if not isinstance(start, datetime) else timedelta(0)
    except (ValueError, TypeError, KeyError) as exc:
        raise CalendarError(f"cannot read the start or end: {exc}", uid=uid, prop="DTSTART") from None
    return timedelta(0)


def _diff(start: datetime, end: datetime) -> timedelta:
    if (start.tzinfo is None) != (end.tzinfo is None):
        return timedelta(days=1)  # a mix of floating and zoned values: bound it generously
    return end - start


def _unique(planned: Iterable[PlannedAlarm]) -> list[PlannedAlarm]:
    return list({p.key: p for p in planned}.values())


def _valarms(comp: Component | None) -> list[Component]:
    return [] if comp is None else [c for c in comp.subcomponents if c.name == "VALARM"]


def _aid(valarm: Component, index: int) -> str:
    return str(valarm.get("UID") or valarm.get("X-WR-ALARMUID") or index)


def _action(valarm: Component) -> str:
    return str(valarm.get("ACTION", "DISPLAY")).upper()


def _cancelled(comp: Component) -> bool:
    return str(comp.get("STATUS", "")).upper() == "CANCELLED"


def _is_absolute(valarm: Component, uid: str) -> bool:
    return "TRIGGER" in valarm and isinstance(decoded_value(valarm, "TRIGGER", uid), datetime)


def _repeat(valarm: Component, uid: str) -> int:
    try:
        repeat = int(valarm.get("REPEAT", 0) or 0)
    except (TypeError, ValueError):
        raise CalendarError("REPEAT must be a whole number", uid=uid, prop="REPEAT") from None
    if repeat > MAX_REPEAT:
        raise CalendarError(f"REPEAT {repeat} is over the limit of {MAX_REPEAT}", uid=uid, prop="REPEAT")
    return max(repeat, 0)


def _thunderbird_snooze(comp: Component, rid: str, uid: str) -> datetime | None:
    """Thunderbird's snooze time for this occurrence (``X-MOZ-SNOOZE-TIME-<µs of rid>`` when recurring)."""
    if not rid:
        return _utc_value(comp, "X-MOZ-SNOOZE-TIME", uid)
    if len(rid) != 16:  # an all-day rid: Thunderbird's per-occurrence key is not defined for it here
        return None
    moment = datetime.strptime(rid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return _utc_value(comp, f"X-MOZ-SNOOZE-TIME-{int(moment.timestamp()) * 1_000_000}", uid)


def _utc_value(comp: Component, name: str, uid: str) -> datetime | None:
    """A UTC date-time property such as ACKNOWLEDGED (X- properties arrive as text)."""
    if name not in comp:
        return None
    raw = comp[name]
    value: Any = raw.dt if hasattr(raw, "dt") else str(raw)
    if isinstance(value, str):
        try:
            value = datetime.strptime(value.strip(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise CalendarError(
                f"{value!r} is not a UTC date-time such as 20261123T090000Z", uid=uid, prop=name
            ) from None
    if not isinstance(value, datetime):
        raise CalendarError(f"{value!r} is not a date-time", uid=uid, prop=name)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max(a, b) if a is not None and b is not None else a or b


def _show(instant: datetime | None, all_day: bool, tz: tzinfo) -> str:
    """How start/end travel in the payload: a date for all-day values, else UTC ISO; "" when absent."""
    if instant is None:
        return ""
    return instant.astimezone(tz).date().isoformat() if all_day else format_utc(instant)


def _organizer(comp: Component) -> str:
    """``Name <address>`` (or the address alone) of the ORGANIZER; "" without one."""
    organizer = comp.get("ORGANIZER")
    if organizer is None or isinstance(organizer, list):
        return ""
    value = str(organizer)
    address = value[7:] if value.lower().startswith("mailto:") else ""
    name = str(getattr(organizer, "params", {}).get("CN", "")).strip()
    if name and address:
        return f"{name} <{address}>"
    return address or name


def _recipients(valarm: Component, action: str, owner: str) -> list[str]:
    if action != "EMAIL":
        return [owner] if owner else []
    return _attendees(valarm) or ([owner] if owner else [])


def _attendees(valarm: Component) -> list[str]:
    """The ``mailto:`` addresses of a VALARM's ATTENDEEs."""
    attendees = valarm.get("ATTENDEE", [])
    if not isinstance(attendees, list):
        attendees = [attendees]
    out = []
    for attendee in attendees:
        address = str(attendee)
        if address.lower().startswith("mailto:"):
            out.append(address[7:])
    return out


__all__ = ["AlarmPlan", "PlannedAlarm", "check_alarms", "next_alarms", "plan_alarms", "thin"]
