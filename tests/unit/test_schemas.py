"""docs/schemas/*.v1.schema.json against what the code really puts on the wire.

Envelopes come from the real classes: payloads planned from iCalendar by alarmd's planner,
notifications built as the dispatcher builds them, acks sent by notifyd's Notifier, and
each captured as the AMQP message ``AmqpBus`` would publish (body and properties), with
no broker: :class:`RecordingAmqpBus` stops at the last step before the network.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from alarmd.dispatcher import Dispatcher
from alarmd.ical import parse_calendar
from alarmd.queue import AlarmQueue, ClaimedAlarm
from alarmd.triggers import PlannedAlarm, plan_alarms
from common.ens import Ack, AckStatus, EnvelopeError, EventReference, Notification, Renl, standard_properties
from common.ens.envelope import NOT_BEFORE, VERSION, acks_from_json, acks_to_json
from common.payload import PAYLOAD_VERSION, AlarmPayload, PayloadError, format_utc
from common.settings import AlarmdSettings, NotifydSettings, Settings
from notifyd.service import Notifier
from notifyd.smtp import SendResult
from tests.buses import RecordingAmqpBus

SCHEMAS = Path(__file__).parents[2] / "docs" / "schemas"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.v{VERSION}.schema.json").read_text())
    return schema


NOTIFICATION_SCHEMA = load("notification")
ACK_SCHEMA = load("ack")
ACKS_SCHEMA = load("acks")
NOTIFICATION = Draft202012Validator(NOTIFICATION_SCHEMA)
ACK = Draft202012Validator(ACK_SCHEMA)
ACKS = Draft202012Validator(ACKS_SCHEMA)


def errors(validator: Any, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


# --- real envelopes ----------------------------------------------------------------

CALENDAR = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//calalarm//tests//EN\r
BEGIN:VEVENT\r
UID:standup@example.com\r
DTSTAMP:20260101T000000Z\r
DTSTART;TZID=Europe/Berlin:20261124T093000\r
DURATION:PT15M\r
RRULE:FREQ=DAILY;COUNT=3\r
SUMMARY:Stand-up — Raum «Süd» & Co\r
LOCATION:Room 4\r
ORGANIZER;CN=Jac Ott:mailto:jac@example.com\r
BEGIN:VALARM\r
UID:alarm-a\r
ACTION:EMAIL\r
SUMMARY:Stand-up soon\r
DESCRIPTION:In ten minutes\r
ATTENDEE:mailto:bob@example.com\r
ATTENDEE:mailto:eve@example.org\r
TRIGGER:-PT10M\r
END:VALARM\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:holiday\r
DTSTAMP:20260101T000000Z\r
DTSTART;VALUE=DATE:20261125\r
SUMMARY:Day off\r
BEGIN:VALARM\r
ACTION:DISPLAY\r
DESCRIPTION:Tomorrow\r
TRIGGER:-PT12H\r
END:VALARM\r
END:VEVENT\r
BEGIN:VTODO\r
UID:taxes\r
DTSTAMP:20260101T000000Z\r
DUE:20261126T170000Z\r
SUMMARY:File taxes\r
BEGIN:VALARM\r
ACTION:DISPLAY\r
DESCRIPTION:Due soon\r
TRIGGER;RELATED=END:-PT1H\r
END:VALARM\r
END:VTODO\r
END:VCALENDAR\r
"""


def planned() -> list[PlannedAlarm]:
    """Every alarm instance of CALENDAR, as alarmd's planner materialises them."""
    parsed = parse_calendar(CALENDAR)
    assert not parsed.errors
    out: list[PlannedAlarm] = []
    for obj in parsed.objects:
        plan = plan_alarms(
            obj,
            calid="jac",
            tz=ZoneInfo("Europe/Berlin"),
            window_start=NOW,
            window_end=NOW + timedelta(days=7),
            owner="jac@example.com",
            locale="de",
        )
        out.extend(plan.alarms)
    return out


class NoQueue:
    """Stands in for the AlarmQueue: before it runs, a Dispatcher only registers callbacks with it
    (add_listener and the like), and publishing touches no queue."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


async def published(
    alarm: PlannedAlarm, attempt: int = 1, bus: RecordingAmqpBus | None = None, ahead: float = 0.0
) -> Notification:
    """The notification alarmd's dispatcher publishes for attempt ``attempt`` of ``alarm``
    (instance 7) ``ahead`` seconds before its trigger, as a subscriber reads it back from the wire."""
    bus = bus or RecordingAmqpBus()
    now = alarm.trigger - timedelta(seconds=ahead)
    dispatcher = Dispatcher(cast(AlarmQueue, NoQueue()), bus, AlarmdSettings(), clock=lambda: now)
    claimed = ClaimedAlarm(
        id=7,
        attempt=attempt,
        publication=attempt,
        component=alarm.component,
        calid=alarm.calid,
        uid=alarm.uid,
        rid=alarm.rid,
        aid=alarm.aid,
        trigger=alarm.trigger,
        payload=alarm.payload.to_dict(),
    )
    await dispatcher._publish(claimed)
    return Notification.from_json(bus.sent[-1][1].body)


def test_the_schemas_are_valid_draft_2020_12() -> None:
    for schema in (NOTIFICATION_SCHEMA, ACK_SCHEMA):
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)


def test_the_planned_calendar_covers_events_todos_recurrences_and_all_day() -> None:
    alarms = planned()
    assert {a.component for a in alarms} == {"event", "todo"}
    assert any(a.rid for a in alarms)
    assert any(not a.rid for a in alarms)
    assert any(a.payload.recipients == ["bob@example.com", "eve@example.org"] for a in alarms)
    assert any(len(a.payload.start) == 10 for a in alarms)  # all day: YYYY-MM-DD


async def test_notifications_the_dispatcher_publishes_validate() -> None:
    bus = RecordingAmqpBus()
    alarms = planned()
    for alarm in alarms:
        await published(alarm, bus=bus)
    assert len(bus.sent) == len(alarms)
    for body in bus.bodies():
        assert errors(NOTIFICATION, body) == [], body


async def test_a_notification_published_ahead_says_when_to_act_and_validates() -> None:
    alarm = planned()[0]
    early = await published(alarm, ahead=0.75)
    assert early.properties[NOT_BEFORE] == int(alarm.trigger.timestamp() * 1000)
    assert early.not_before() == alarm.trigger
    assert errors(NOTIFICATION, json.loads(early.to_json())) == []
    assert early.renl is not None
    assert early.renl.timeout == AlarmdSettings().ack_timeout + AlarmdSettings().publish_ahead
    on_time = await published(alarm)
    assert NOT_BEFORE not in on_time.properties
    assert on_time.not_before() is None


async def test_notifications_without_optional_parts_validate() -> None:
    """No RENL, no properties, a payload with only its required fields."""
    payload = AlarmPayload("c", "u", "", "1", "todo", "AUDIO", "2026-11-23T10:00:00Z")
    bus = RecordingAmqpBus()
    await bus.publish(Notification(EventReference.alarm("todo", "c", "u", "", "1"), payload.to_dict()))
    minimal = {
        k: v for k, v in payload.to_dict().items() if k in NOTIFICATION_SCHEMA["$defs"]["alarmPayload"]["required"]
    }
    await bus.publish(Notification(EventReference.alarm("event", "c", "u", "", "1"), minimal))
    for body in bus.bodies():
        assert "renl" not in body
        assert errors(NOTIFICATION, body) == []
        del body["properties"]  # a reader takes absent properties for {}
        assert errors(NOTIFICATION, body) == []
        assert Notification.from_json(json.dumps(body)).properties == {}


class ScriptedSender:
    """notifyd's mail sender, answering with the results given, in order."""

    def __init__(self, *results: SendResult) -> None:
        self.results = list(results)

    async def send(self, message: bytes, recipients: list[str]) -> SendResult:
        return self.results.pop(0)


async def test_the_acks_notifyd_sends_validate_for_every_status() -> None:
    bus = RecordingAmqpBus()
    sender = ScriptedSender(
        SendResult(AckStatus.DELIVERED, "250 2.0.0 queued as 4F2A"),
        SendResult(AckStatus.RETRY, "451 4.3.0 try again later"),
        SendResult(AckStatus.FAILED, "550 5.1.1 no such user"),
    )
    settings = Settings(notifyd=NotifydSettings(allowed_domains=("example.com", "example.org")))
    notifier = Notifier(bus, sender, settings, clock=lambda: NOW)
    alarms = planned()  # one instance each: a second delivery of one would be acked as a duplicate
    for attempt in (1, 2, 3):
        await notifier.handle(await published(alarms[attempt], attempt))
    broken = await published(alarms[4], 4)
    await notifier.handle(Notification(broken.ref, {**broken.payload, "trigger": "soon"}, renl=broken.renl))
    await notifier.stop(grace=5.0)  # the acks go out in tasks of their own: let them finish
    sent = [body for body in bus.bodies() if body["type"] in ("ack", "acks")]
    for body in sent:
        assert errors(ACK if body["type"] == "ack" else ACKS, body) == [], body
    singles = [body for body in sent if body["type"] == "ack"]
    batched = [ack for body in sent if body["type"] == "acks" for ack in body["acks"]]
    acks = sorted(singles + batched, key=lambda ack: ack["renl_id"])
    assert [(a["renl_id"], a["status"]) for a in acks] == [
        ("7:1", "delivered"),
        ("7:2", "retry"),
        ("7:3", "failed"),
        ("7:4", "failed"),
    ]
    assert acks[3]["reason"].startswith("invalid payload")
    for ack in acks:
        assert ack["properties"]["process"] == "notifyd"


@pytest.mark.parametrize("status", list(AckStatus))
async def test_acks_without_reason_or_properties_validate(status: AckStatus) -> None:
    bus = RecordingAmqpBus()
    await bus.ack(await published(planned()[0]), status)
    [body] = bus.bodies()
    assert errors(ACK, body) == []
    del body["reason"], body["properties"]  # optional for a sender: alarmd reads them as "" and {}
    assert errors(ACK, body) == []
    assert Ack.from_json(json.dumps(body)) == Ack("7:1", status)


# --- invalid envelopes are rejected ----------------------------------------------------


async def notification_body() -> dict[str, Any]:
    body: dict[str, Any] = json.loads((await published(planned()[0])).to_json())
    return body


def reader_rejects(body: dict[str, Any]) -> bool:
    """Whether calalarm itself refuses the notification (envelope or payload)."""
    try:
        AlarmPayload.from_dict(Notification.from_json(json.dumps(body)).payload)
    except (EnvelopeError, PayloadError):
        return True
    return False


NOTIFICATION_BREAKAGES: list[tuple[str, Any]] = [
    ("missing ref", lambda b: b.pop("ref")),
    ("missing payload", lambda b: b.pop("payload")),
    ("missing id", lambda b: b.pop("id")),
    ("version 2", lambda b: b.update(v=2)),
    ("an ack's type", lambda b: b.update(type="ack")),
    ("a pool in the ref", lambda b: b.update(ref=b["ref"].replace("enp:", "enp+pool.x:"))),
    ("not an enp ref", lambda b: b.update(ref="http://example.com/")),
    ("ref number", lambda b: b.update(ref=42)),
    ("payload list", lambda b: b.update(payload=[])),
    ("payload version 2", lambda b: b["payload"].update(v=2)),
    ("payload without trigger", lambda b: b["payload"].pop("trigger")),
    ("payload without aid", lambda b: b["payload"].pop("aid")),
    ("component meeting", lambda b: b["payload"].update(component="meeting")),
    ("trigger not an instant", lambda b: b["payload"].update(trigger="tomorrow")),
    ("recipients string", lambda b: b["payload"].update(recipients="bob@example.com")),
    ("recipient number", lambda b: b["payload"].update(recipients=[1])),
    ("summary number", lambda b: b["payload"].update(summary=3)),
    ("renl without renl_id", lambda b: b["renl"].pop("renl_id")),
    ("renl timeout string", lambda b: b["renl"].update(timeout="60")),
    ("renl timeout zero", lambda b: b["renl"].update(timeout=0)),
    ("renl timeout true", lambda b: b["renl"].update(timeout=True)),
]


@pytest.mark.parametrize(("what", "breakage"), NOTIFICATION_BREAKAGES, ids=[w for w, _ in NOTIFICATION_BREAKAGES])
async def test_broken_notifications_are_rejected_by_the_schema_and_by_calalarm(what: str, breakage: Any) -> None:
    body = await notification_body()
    assert errors(NOTIFICATION, body) == []
    breakage(body)
    assert errors(NOTIFICATION, body), f"schema accepts a notification with {what}"
    assert reader_rejects(body), f"calalarm accepts a notification with {what}"


@pytest.mark.parametrize(
    ("what", "breakage"),
    [
        ("a nested property", lambda b: b["properties"].update(extra={"a": 1})),
        ("a null property", lambda b: b["properties"].update(extra=None)),
        ("pid as text", lambda b: b["properties"].update(pid="12")),
    ],
)
async def test_properties_must_be_scalars_of_the_standard_types(what: str, breakage: Any) -> None:
    """calalarm's reader drops what is not a scalar; the schema says what a writer may send."""
    body = await notification_body()
    breakage(body)
    assert errors(NOTIFICATION, body), what


ACK_BREAKAGES: list[tuple[str, Any]] = [
    ("missing renl_id", lambda b: b.pop("renl_id")),
    ("missing status", lambda b: b.pop("status")),
    ("unknown status", lambda b: b.update(status="maybe")),
    ("status in capitals", lambda b: b.update(status="DELIVERED")),
    ("renl_id number", lambda b: b.update(renl_id=7)),
    ("version 2", lambda b: b.update(v=2)),
    ("a notification's type", lambda b: b.update(type="notification")),
]


@pytest.mark.parametrize(("what", "breakage"), ACK_BREAKAGES, ids=[w for w, _ in ACK_BREAKAGES])
def test_broken_acks_are_rejected_by_the_schema_and_by_calalarm(what: str, breakage: Any) -> None:
    body = json.loads(Ack("7:1", AckStatus.RETRY, "451 later", standard_properties("webhook", NOW)).to_json())
    assert errors(ACK, body) == []
    breakage(body)
    assert errors(ACK, body), f"schema accepts an ack with {what}"
    with pytest.raises(EnvelopeError):
        Ack.from_json(json.dumps(body))


@pytest.mark.parametrize("reason", [None, 451, ["x"]])
def test_an_ack_reason_must_be_text(reason: Any) -> None:
    body = json.loads(Ack("7:1", AckStatus.FAILED).to_json()) | {"reason": reason}
    assert errors(ACK, body)


# --- anything the code can serialise validates -----------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)  # lone surrogates cannot be encoded
SCALARS = st.one_of(TEXT, st.integers(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False))
# Properties of any name and scalar, beside the standard ones, whose types the schema fixes.
STANDARD = ("hostname", "pid", "process", "timestamp", "publication")
EXTRA = st.dictionaries(TEXT.filter(lambda k: k not in STANDARD), SCALARS, max_size=4)
PROPERTIES = EXTRA | st.builds(
    lambda extra, process, publication: {**extra, **standard_properties(process, NOW), "publication": publication},
    EXTRA,
    TEXT,
    st.integers(1, 10_000),
)
INSTANTS = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
OFFSETS = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-14 * 60, 14 * 60))
TRIGGERS = st.one_of(
    INSTANTS.map(format_utc),
    st.builds(lambda instant, tz: instant.astimezone(tz).isoformat(), INSTANTS, OFFSETS),
)
RIDS = st.one_of(
    st.just(""),
    INSTANTS.map(lambda i: i.strftime("%Y%m%dT%H%M%SZ")),
    INSTANTS.map(lambda i: i.strftime("%Y%m%d")),
    TEXT,
)


@st.composite
def payloads(draw: st.DrawFn) -> AlarmPayload:
    return AlarmPayload(
        calid=draw(TEXT),
        uid=draw(TEXT),
        rid=draw(RIDS),
        aid=draw(TEXT),
        component=draw(st.sampled_from(["event", "todo"])),
        action=draw(st.sampled_from(["DISPLAY", "EMAIL", "AUDIO", "X-PUSH"])),
        trigger=draw(TRIGGERS),
        summary=draw(TEXT),
        description=draw(TEXT),
        location=draw(TEXT),
        start=draw(TEXT),
        end=draw(TEXT),
        tz=draw(TEXT),
        alarm_summary=draw(TEXT),
        alarm_description=draw(TEXT),
        owner=draw(TEXT),
        recipients=draw(st.lists(TEXT, max_size=3)),
        organizer=draw(TEXT),
        locale=draw(TEXT),
    )


RENLS = st.builds(
    Renl,
    ack_to=TEXT.filter(bool),
    renl_id=TEXT,
    timeout=st.floats(min_value=0, max_value=1e9, exclude_min=True, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(payload=payloads(), properties=PROPERTIES, renl=st.none() | RENLS, id=TEXT)
def test_any_notification_the_code_serialises_validates(
    payload: AlarmPayload, properties: dict[str, Any], renl: Renl | None, id: str
) -> None:
    AlarmPayload.from_dict(payload.to_dict())  # a payload alarmd would queue
    ref = EventReference.alarm(payload.component, payload.calid, payload.uid, payload.rid, payload.aid)
    notification = Notification(ref, payload.to_dict(), properties, renl, id)
    body = json.loads(notification.to_json())
    assert errors(NOTIFICATION, body) == []
    assert Notification.from_json(notification.to_json()) == notification


@settings(max_examples=200, deadline=None)
@given(status=st.sampled_from(AckStatus), renl_id=TEXT, reason=TEXT, properties=PROPERTIES)
def test_any_ack_the_code_serialises_validates(
    status: AckStatus, renl_id: str, reason: str, properties: dict[str, Any]
) -> None:
    ack = Ack(renl_id, status, reason, properties)
    assert errors(ACK, json.loads(ack.to_json())) == []
    assert Ack.from_json(ack.to_json()) == ack
    several = [ack, Ack("1:1", AckStatus.DELIVERED)]
    assert errors(ACKS, json.loads(acks_to_json(several))) == []
    assert acks_from_json(acks_to_json(several)) == (several, [])


# --- the version and the AMQP message are what the schemas say --------------------------


async def test_the_schema_ids_and_versions_are_those_on_the_wire() -> None:
    assert NOTIFICATION_SCHEMA["$id"] == f"urn:calalarm:schema:notification.v{VERSION}"
    assert ACK_SCHEMA["$id"] == f"urn:calalarm:schema:ack.v{VERSION}"
    assert ACKS_SCHEMA["$id"] == f"urn:calalarm:schema:acks.v{VERSION}"
    assert ACKS_SCHEMA["properties"]["v"]["const"] == VERSION
    assert ACKS_SCHEMA["properties"]["type"]["const"] == "acks"
    item = ACKS_SCHEMA["properties"]["acks"]["items"]["properties"]
    assert item["status"]["enum"] == ACK_SCHEMA["properties"]["status"]["enum"]
    assert item["properties"]["properties"] == ACK_SCHEMA["properties"]["properties"]["properties"]
    assert NOTIFICATION_SCHEMA["properties"]["v"]["const"] == VERSION
    assert ACK_SCHEMA["properties"]["v"]["const"] == VERSION
    assert NOTIFICATION_SCHEMA["properties"]["type"]["const"] == "notification"
    assert ACK_SCHEMA["properties"]["type"]["const"] == "ack"
    assert NOTIFICATION_SCHEMA["$defs"]["alarmPayload"]["properties"]["v"]["const"] == PAYLOAD_VERSION
    body = json.loads((await published(planned()[0])).to_json())
    assert (body["v"], body["type"], body["payload"]["v"]) == (VERSION, "notification", PAYLOAD_VERSION)
    assert json.loads(Ack("1:1", AckStatus.DELIVERED).to_json())["v"] == VERSION
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == [
        f"ack.v{VERSION}.schema.json",
        f"acks.v{VERSION}.schema.json",
        f"notification.v{VERSION}.schema.json",
    ]


def test_the_payload_schema_names_every_payload_field() -> None:
    fields = set(AlarmPayload("c", "u", "", "1", "event", "DISPLAY", "2026-11-23T10:00:00Z").to_dict())
    assert set(NOTIFICATION_SCHEMA["$defs"]["alarmPayload"]["properties"]) == fields


async def test_the_amqp_notification_message_is_as_the_schema_describes() -> None:
    wire = NOTIFICATION_SCHEMA["x-amqp"]
    bus = RecordingAmqpBus()
    for alarm in planned():
        await published(alarm, bus=bus)
    for (routing_key, message), body in zip(bus.sent, bus.bodies(), strict=True):
        base = body["ref"].split("?")[0]
        assert routing_key == wire["routing_keys"][base]
        assert message.content_type == wire["properties"]["content_type"]
        assert int(message.delivery_mode) == wire["properties"]["delivery_mode"]
        assert message.type == wire["properties"]["type"] == body["type"]
        assert message.message_id == body["id"]
        assert message.headers == wire["headers"]
        assert (message.reply_to, message.correlation_id, message.content_encoding) == (None, None, None)
        assert message.body.decode("utf-8") == json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert bus.exchange_name == wire["default_exchange"]


async def test_the_amqp_ack_message_is_as_the_schema_describes() -> None:
    wire = ACK_SCHEMA["x-amqp"]
    bus = RecordingAmqpBus()
    notification = await published(planned()[0], attempt=3, bus=bus)
    bus.sent.clear()
    assert notification.renl is not None
    await bus.ack(notification, AckStatus.RETRY, "HTTP 503")
    [(routing_key, message)] = bus.sent
    [body] = bus.bodies()
    ack_to = notification.renl.ack_to
    assert routing_key == wire["routing_key"].format(ack_to=ack_to) == "renl.alarmd"
    assert bus._ack_queue_name(ack_to) == wire["queue"].format(exchange=bus.exchange_name, ack_to=ack_to)
    assert message.correlation_id == body["renl_id"] == "7:3"
    assert message.content_type == wire["properties"]["content_type"]
    assert int(message.delivery_mode) == wire["properties"]["delivery_mode"]
    assert message.type == wire["properties"]["type"] == body["type"]
    assert message.headers == wire["headers"]
    assert errors(ACK, body) == []


async def test_the_amqp_message_of_several_acks_is_as_the_schema_describes() -> None:
    """alarmd's RENL request says it takes acks in batches; acks sent together share a message."""
    wire = ACKS_SCHEMA["x-amqp"]
    bus = RecordingAmqpBus()
    notifications = [await published(alarm, bus=bus) for alarm in planned()[:3]]
    bus.sent.clear()
    assert all(n.renl is not None and n.renl.batch_acks for n in notifications)
    statuses = [AckStatus.DELIVERED, AckStatus.RETRY, AckStatus.FAILED]
    await asyncio.gather(*(bus.ack(n, s, f"reason {s}") for n, s in zip(notifications, statuses, strict=True)))
    [(routing_key, batch)] = bus.sent  # sent together: one message
    body = json.loads(batch.body)
    assert errors(ACKS, body) == []
    assert [(a["renl_id"], a["status"], a["reason"]) for a in body["acks"]] == [
        ("7:1", "delivered", "reason delivered"),
        ("7:1", "retry", "reason retry"),
        ("7:1", "failed", "reason failed"),
    ]
    assert routing_key == wire["routing_key"].format(ack_to="alarmd")
    assert batch.content_type == wire["properties"]["content_type"]
    assert int(batch.delivery_mode) == wire["properties"]["delivery_mode"]
    assert batch.type == wire["properties"]["type"] == body["type"]
    assert batch.headers == wire["headers"]
    assert batch.body.decode("utf-8") == json.dumps(body, separators=(",", ":"), ensure_ascii=False)
