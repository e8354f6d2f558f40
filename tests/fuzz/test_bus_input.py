"""Hostile bus messages: the consumers survive them, say why they refused them, and change nothing else.

notifyd's subscription (``Notifier`` over the in-process bus, into a recording SMTP server)
and alarmd's ack consumer (``Dispatcher`` over a SQLite queue) are fed garbage bytes,
messages over ``MAX_MESSAGE_BYTES``, JSON of the wrong shape, envelopes with hostile
payloads (header injection, huge strings, wrong types) and forged acks. The contract:

- the consumer keeps consuming: a valid message sent after the garbage is handled;
- a notification that cannot be used and carries a readable RENL is acked ``failed``
  with a reason (common/ens/poison.py, notifyd/service.py); anything else with a RENL is
  acked exactly once; nothing is acked twice;
- no email gets a header, or a recipient, its payload did not ask for and the recipient
  policy did not allow (the messages are read back as a mail client would);
- a forged ack changes nothing in the queue (an unknown instance is ignored and logged).

Already covered elsewhere, and not repeated here: the poison contract on both buses with
three fixed messages (tests/integration/test_bus_contract.py), invalid payload fields one
by one (tests/integration/test_notifyd.py), header injection per field at rendering
(tests/unit/test_email.py), the envelope's own error messages (tests/unit/test_envelope.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alarmd.dispatcher import Dispatcher
from alarmd.queue import AlarmQueue
from common.db import migrate
from common.ens.envelope import MAX_MESSAGE_BYTES, Ack, AckStatus, EnvelopeError, Notification, Renl, renl_of
from common.ens.memory import MemoryBus
from common.payload import AlarmPayload, PayloadError
from common.settings import AlarmdSettings
from tests.fuzz.strategies import forged_acks, fuzz_settings, notification_bodies, sample_payload
from tests.integration.test_notifyd import Harness, notification, running_notifier
from tests.messages import REMINDER_HEADERS
from tests.payloads import sample_payload as payload_object
from tests.smtp_server import ReceivedMessage
from tests.waiting import eventually

WAIT = 5.0
ACK_WAIT = 2.0  # alarmd applies an ack within milliseconds; a failing example should not wait long
# What notifyd writes at the top of a reminder, once each (a part header may be there too).
HEADERS = REMINDER_HEADERS | {"content-transfer-encoding"}


def encode(index: int, message: bytes | dict[str, Any]) -> bytes:
    """The message's bytes, its RENL (when it has one) made unique: ``fuzz-INDEX:1``."""
    if isinstance(message, bytes):
        return message
    renl = message.get("renl")
    if isinstance(renl, dict) and isinstance(renl.get("renl_id"), str):
        renl["renl_id"] = f"fuzz-{index}:1"
    return json.dumps(message).encode("utf-8", "surrogatepass")


def expected_ack(raw: bytes) -> str | None:
    """The renl_id notifyd must ack to alarmd for ``raw``, if any: valid or not, a readable RENL is answered."""
    try:
        renl: Renl | None = Notification.from_json(raw).renl
    except EnvelopeError:
        renl = renl_of(raw)
    return renl.renl_id if renl is not None and renl.ack_to == "alarmd" else None


def parsed_address(text: str) -> str:
    """The address ``parseaddr`` finds in ``text``; "" where it gives up (its parser recurses once per ':')."""
    try:
        return parseaddr(text)[1]
    except RecursionError:
        return ""


def allowed_recipients(raw: bytes) -> tuple[set[str], str]:
    """Who ``raw`` may have reached: its owner, anyone at example.com; and its X-Alarm-Trigger."""
    try:
        payload = Notification.from_json(raw).payload
    except EnvelopeError:
        return set(), ""
    owner = payload.get("owner") if isinstance(payload, dict) else None
    owners = {owner.strip().lower(), parsed_address(owner).lower()} if isinstance(owner, str) else set()
    return owners - {""}, str(payload.get("trigger", "")) if isinstance(payload, dict) else ""


def check_message(received: ReceivedMessage, owners: set[str]) -> None:
    message = received.message
    names = Counter(name.lower() for name in message)
    assert set(names) <= HEADERS, f"unexpected headers: {set(names) - HEADERS}"
    assert all(count == 1 for count in names.values()), names
    for address in received.recipients:
        assert address.lower() in owners or address.lower().endswith("@example.com"), address
    to = {a.lower() for _name, a in getaddresses([str(message["To"])]) if a}
    assert to <= {r.lower() for r in received.recipients}, (to, received.recipients)
    assert "\n" not in str(message["Subject"])


async def next_acks(h: Harness, wanted: set[str]) -> list[Ack]:
    """Acks until every one of ``wanted`` came (and a moment more, to catch a second ack of any)."""
    acks: list[Ack] = []
    got: set[str] = set()
    while not wanted <= got:
        ack = await h.next_ack()
        acks.append(ack)
        got.add(ack.renl_id)
    await asyncio.sleep(0.05)
    while not h.acks.empty():
        acks.append(h.acks.get_nowait())
    return acks


async def notifyd_scenario(messages: list[bytes]) -> None:
    async with running_notifier() as h:
        for raw in messages:
            await h.bus.publish_raw("ics.eventalarm", raw)
        sentinel = notification(payload_object(uid="sentinel", description="", location="").to_dict(), "sentinel:1")
        await h.bus.publish(sentinel)
        wanted = {r for r in map(expected_ack, messages) if r is not None}
        acks = await next_acks(h, wanted | {"sentinel:1"})
        by_id = Counter(a.renl_id for a in acks)
        assert all(n == 1 for n in by_id.values()), f"acked more than once: {by_id}"
        assert set(by_id) == wanted | {"sentinel:1"}
        for ack in acks:
            if ack.status is AckStatus.FAILED:
                assert ack.reason.strip(), f"{ack.renl_id} failed without a reason"
            if ack.renl_id == "sentinel:1":
                assert ack.status is AckStatus.DELIVERED
        # At least those delivered to every recipient were mailed; one delivered to some of
        # its recipients (its reason names the refused) was mailed too: check every message.
        await h.server.wait_for(sum(a.status is AckStatus.DELIVERED and a.reason == "" for a in acks), WAIT)
        received = list(h.server.messages)
        owners = set().union(*(allowed_recipients(raw)[0] for raw in messages)) | {"jac@example.com"}
        for one in received:
            check_message(one, owners)
        assert any(one.message["X-Alarm-Ref"] == str(sentinel.ref) for one in received)


@fuzz_settings(25)
@given(data=st.lists(notification_bodies(), min_size=1, max_size=6))
def test_notifyd_survives_hostile_notifications(data: list[bytes | dict[str, Any]]) -> None:
    asyncio.run(notifyd_scenario([encode(i, m) for i, m in enumerate(data)]))


def valid_notification(renl_id: str, **changes: Any) -> dict[str, Any]:
    """A notification that notifyd would mail, as JSON, with ``changes`` (``payload`` merged)."""
    body: dict[str, Any] = {
        "v": 1,
        "type": "notification",
        "id": renl_id,
        "ref": "enp:///ics/eventalarm?calid=jac&uid=u1&rid=&aid=1",
        "properties": {},
        "payload": sample_payload() | {"uid": renl_id},
        "renl": {"ack_to": "alarmd", "renl_id": renl_id, "timeout": 60},
    }
    body["payload"] |= changes.pop("payload", {})
    return body | changes


POISON = {
    "garbage bytes": b"\x00\xff\xfe garbage",
    "deep JSON": b'{"v":1,"type":"notification","x":' + b"[" * 200_000,
    "over the size limit, with a RENL": json.dumps(valid_notification("big:1", pad="p" * MAX_MESSAGE_BYTES)).encode(),
    "version true": json.dumps(valid_notification("v:1", v=True)).encode(),
    "RENL timeout NaN": json.dumps(
        valid_notification("nan:1", renl={"ack_to": "alarmd", "renl_id": "nan:1", "timeout": float("nan")})
    ).encode(),
    "lone surrogate": json.dumps(valid_notification("sur:1", payload={"summary": "\ud800"})).encode(),
    "payload trigger past year 9999": json.dumps(
        valid_notification("y9999:1", payload={"trigger": "9999-12-31T23:59:59-10:00"})
    ).encode(),
    "payload version true": json.dumps(valid_notification("pv:1", payload={"v": True})).encode(),
}


@pytest.mark.parametrize("raw", list(POISON.values()), ids=list(POISON))
async def test_poison_notifications_are_acked_failed_with_a_reason(raw: bytes) -> None:
    """The messages that once escaped the envelope's or the payload's checks.

    A nested-too-deep document raised RecursionError, a trigger past year 9999 OverflowError
    (the handler failed: no ack, so alarmd would resend it until max_attempts); version
    ``true`` and a NaN timeout were accepted; a lone surrogate went on to fail the database
    and the email."""
    async with running_notifier() as h:
        await h.bus.publish_raw("ics.eventalarm", raw)
        await h.bus.publish(notification(payload_object(uid="after", description="", location="").to_dict(), "after:1"))
        wanted = expected_ack(raw)
        acks = await next_acks(h, {"after:1"} | ({wanted} if wanted else set()))
        by_id = {a.renl_id: a for a in acks}
        assert by_id["after:1"].status is AckStatus.DELIVERED
        if wanted:
            assert by_id[wanted].status is AckStatus.FAILED
            assert by_id[wanted].reason.startswith(("invalid notification: ", "invalid payload: "))
        assert len(acks) == len(by_id)
        await h.server.wait_for(1, WAIT)
        assert len(h.server.messages) == 1


@pytest.mark.parametrize("raw", list(POISON.values()), ids=list(POISON))
def test_reading_a_poison_message_raises_only_envelope_or_payload_errors(raw: bytes) -> None:
    for kind in (Notification, Ack):
        try:
            message = kind.from_json(raw)
        except EnvelopeError:
            continue
        assert isinstance(message, Notification), "a notification was read as an ack"
        with pytest.raises(PayloadError):
            AlarmPayload.from_dict(message.payload)  # only the payload is wrong in these


async def test_acks_to_made_up_addresses_do_not_pile_up_in_the_in_process_bus() -> None:
    async with running_notifier() as h:
        for i in range(200):
            poison = {"v": 1, "type": "notification", "renl": {"ack_to": f"nobody-{i}", "renl_id": "x", "timeout": 1}}
            await h.bus.publish_raw("ics.eventalarm", json.dumps(poison).encode())
        await h.bus.publish(notification(payload_object(uid="after", description="", location="").to_dict(), "a:1"))
        await next_acks(h, {"a:1"})
        queues = getattr(h.bus, "_queues", {})
        assert not [name for name in queues if name.startswith("renl.nobody")]


# ---------------------------------------------------------------- alarmd's ack consumer

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


class FixedClock:
    def __call__(self) -> datetime:
        return NOW


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("acks") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def single(uid: str, trigger: datetime) -> AlarmPayload:
    return payload_object(uid=uid, trigger=trigger.strftime("%Y-%m-%dT%H:%M:%SZ"))


def rows(queue: AlarmQueue) -> dict[str, tuple[Any, ...]]:
    return {
        r.uid: (r.id, r.state, r.attempts, r.next_at, r.last_error)
        for r in queue.list_alarms(limit=1000, sort="trigger")
    }


async def ack_scenario(db: Path, forged: list[bytes]) -> None:
    """Three instances in flight (published, attempt 1), two pending (never published), one failed;
    the forged acks; then a genuine ``delivered`` ack for one in flight. Only that one may change."""
    queue = AlarmQueue.from_url(f"sqlite:///{db}")
    bus = MemoryBus()
    await bus.start()
    dispatcher = Dispatcher(queue, bus, replace(AlarmdSettings(), safety_poll=0.2), clock=FixedClock(), node="fuzz")
    queue.enqueue([single(f"inflight{i}", NOW) for i in range(3)], now=NOW - timedelta(minutes=1))
    queue.enqueue([single(f"pending{i}", NOW + timedelta(days=1)) for i in range(2)], now=NOW)
    queue.enqueue([single("failed0", NOW + timedelta(days=2))], now=NOW)
    run = asyncio.create_task(dispatcher.run())
    try:
        await eventually(lambda: dispatcher.published == 3, WAIT, "the first publications")
        ids = {uid: row[0] for uid, row in rows(queue).items()}
        with queue.engine.begin() as conn:  # one failed instance, as a failed ack leaves it
            conn.exec_driver_sql("UPDATE alarms SET state = 'failed', last_error = 'x' WHERE id = ?", (ids["failed0"],))
        before = rows(queue)
        for raw in forged:
            for name, uid in (("inflight", "inflight1"), ("pending", "pending0"), ("failed", "failed0")):
                raw = raw.replace(b"{" + name.encode() + b"}", str(ids[uid]).encode())
            await bus.publish_raw("renl.alarmd", raw)
        await bus.send_ack("alarmd", Ack(f"{ids['inflight0']}:1", AckStatus.DELIVERED))
        await eventually(lambda: "inflight0" not in rows(queue), ACK_WAIT, "the genuine ack's effect")
        after = rows(queue)
        del before["inflight0"]
        assert after == before
        assert not run.done()
    finally:
        await dispatcher.close(grace=0.1)
        await run
        await bus.close()
        queue.close()


def fresh_db(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("ack") / "alarms.db"
    shutil.copy(template, db)
    return db


def well_formed(raw: bytes | dict[str, Any]) -> bytes:
    return raw if isinstance(raw, bytes) else json.dumps(raw).encode("utf-8", "surrogatepass")


# Forged acks known to change the queue or the fate of acks around them (each has an expected
# failure below): left out of the generated ones, so that the search looks for new ones.
KNOWN_DELIVERED = {"{inflight}:7", "{inflight}:0", "{pending}:1", "{failed}:1"}
KNOWN_ANY = {"٣:1"}
HUGE_ID = "99999999999999999999999"


def not_known(message: bytes | dict[str, Any]) -> bool:
    if isinstance(message, bytes):
        return HUGE_ID.encode() not in message
    renl_id = message.get("renl_id")
    if not isinstance(renl_id, str):
        return True
    if HUGE_ID in renl_id or renl_id in KNOWN_ANY:
        return False
    return not (renl_id in KNOWN_DELIVERED and message.get("status") == "delivered")


@fuzz_settings(25)
@given(data=st.lists(forged_acks().filter(not_known), min_size=1, max_size=8))
def test_forged_and_garbage_acks_change_nothing(
    data: list[bytes | dict[str, Any]], template_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    forged = [well_formed(m) for m in data if not_known(m)]
    asyncio.run(ack_scenario(fresh_db(template_db, tmp_path_factory), forged))


def ack(renl_id: str, status: str = "delivered", reason: str = "") -> bytes:
    return json.dumps({"v": 1, "type": "ack", "renl_id": renl_id, "status": status, "reason": reason}).encode()


FORGED = {
    "unknown instance": [ack("999999:1"), ack("999999:1", "failed"), ack("999999:1", "retry")],
    "an earlier attempt's failed and retry": [ack("{inflight}:0", "failed"), ack("{inflight}:0", "retry")],
    "unicode digits": [ack("²:1"), ack("٣٣٣٣٣٣:1", "failed")],
    "garbage and deep JSON": [
        b"\xff",
        b"{}",
        b'{"v":1,"type":"ack","renl_id":"1:1","status":"failed","x":' + b"[" * 99_999,
    ],
    "lone surrogate in the reason": [
        b'{"v":1,"type":"ack","renl_id":"{inflight}:1","status":"failed","reason":"\\udc80"}'
    ],
    "over the size limit": [ack("{inflight}:1", "failed", "r" * MAX_MESSAGE_BYTES)],
}


@pytest.mark.parametrize("forged", list(FORGED.values()), ids=list(FORGED))
def test_forged_acks_change_nothing(
    forged: list[bytes], template_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    asyncio.run(ack_scenario(fresh_db(template_db, tmp_path_factory), forged))


def test_an_ack_for_an_unknown_instance_is_ignored_and_logged(
    template_db: Path, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alarmd.dispatcher")
    asyncio.run(ack_scenario(fresh_db(template_db, tmp_path_factory), [ack("999999:1", "failed"), ack("not-ours")]))
    outcomes = {(getattr(r, "alarm", None), getattr(r, "outcome", None), r.levelname) for r in caplog.records}
    assert (999999, "unknown", "WARNING") in outcomes
    assert any("not ours" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


@pytest.mark.parametrize("renl_id", ["{inflight}:7", "{inflight}:0", "{pending}:1", "{failed}:1"])
def test_a_delivered_ack_for_an_attempt_never_published_changes_nothing(
    renl_id: str, template_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    asyncio.run(ack_scenario(fresh_db(template_db, tmp_path_factory), [ack(renl_id)]))


def test_an_instance_id_over_any_column_does_not_fail_the_acks_beside_it(
    template_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    asyncio.run(ack_scenario(fresh_db(template_db, tmp_path_factory), [ack("99999999999999999999999:1")]))


@pytest.mark.parametrize("status", ["delivered", "failed"])
def test_a_renl_id_in_other_digits_is_not_ours(
    status: str, template_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    asyncio.run(ack_scenario(fresh_db(template_db, tmp_path_factory), [ack("٣:1", status)]))  # 3 is in flight
