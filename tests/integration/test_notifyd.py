"""notifyd's Notifier against a real SMTP server (aiosmtpd) and the in-process bus; the demo's
catcher and the command line. SmtpSender on its own: test_smtp_delivery.py; the delivery log
and duplicates: test_deliveries.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from common.ens.envelope import NOT_BEFORE, Ack, AckStatus, Notification, Renl
from common.ens.memory import MemoryBus
from common.ens.reference import EventReference
from common.payload import AlarmPayload
from common.settings import NotifydSettings, Settings, SmtpSettings
from common.smtp_catcher import CatcherPortInUse, start_catcher
from notifyd.main import main as notifyd_main
from notifyd.recipients import NOT_ALLOWED, Directory, DirectoryEntry
from notifyd.service import Notifier
from notifyd.smtp import SmtpSender
from tests.payloads import sample_payload
from tests.smtp_server import RecordingSmtpServer, message_to, recording_smtp_server

NOW = datetime(2026, 11, 23, 9, 45, tzinfo=UTC)
WAIT = 3.0
SENDER = "Reminders <calalarm@example.com>"
# Outsiders are not the point of most tests: colleagues at example.com may be mailed.
COLLEAGUES = NotifydSettings(allowed_domains=("example.com",))


def refuse(replies: dict[str, str]) -> Callable[[str], str | None]:
    return lambda address: replies.get(address)


# --- Notifier over the in-process bus ------------------------------------------------


def alarm_payload(**changes: Any) -> dict[str, Any]:
    """The sample payload as it travels: a dict, which tests may corrupt at will."""
    payload = sample_payload(description="", location="").to_dict()
    payload.update(changes)
    return payload


def notification(payload: dict[str, Any], renl_id: str, component: str = "event") -> Notification:
    ref = EventReference.alarm(component, "jac", str(payload.get("uid", "u1")), "", "1")
    return Notification(ref=ref, payload=payload, renl=Renl("alarmd", renl_id, 60.0))


class Harness:
    def __init__(self, bus: MemoryBus, notifier: Notifier, server: RecordingSmtpServer) -> None:
        self.bus = bus
        self.notifier = notifier
        self.server = server
        self.acks: asyncio.Queue[Ack] = asyncio.Queue()
        self.delivered: list[tuple[AlarmPayload, str]] = []

    async def next_ack(self) -> Ack:
        return await asyncio.wait_for(self.acks.get(), WAIT)


@contextlib.asynccontextmanager
async def running_notifier(
    *,
    notifyd: NotifydSettings = COLLEAGUES,
    directory: Directory | None = None,
    clock: Callable[[], datetime] = lambda: NOW,
    **server_options: Any,
) -> AsyncIterator[Harness]:
    async with recording_smtp_server(**server_options) as server:
        settings = Settings(
            smtp=SmtpSettings(url=server.url, sender=SENDER, timeout=2.0, allow_plaintext=True), notifyd=notifyd
        )
        bus = MemoryBus()
        await bus.start()
        sender = SmtpSender(settings.smtp)
        notifier = Notifier(bus, sender, settings, clock=clock, directory=directory)
        harness = Harness(bus, notifier, server)
        notifier.on_delivered = lambda payload, ref: harness.delivered.append((payload, ref))

        async def on_ack(ack: Ack) -> None:
            harness.acks.put_nowait(ack)

        acks = await bus.consume_acks("alarmd", on_ack)
        await notifier.start()
        try:
            yield harness
        finally:
            await notifier.stop(grace=WAIT)
            await acks.cancel()
            await sender.close()
            await bus.close()


async def test_notification_is_emailed_and_acked_delivered() -> None:
    async with running_notifier() as h:
        sent = notification(alarm_payload(action="EMAIL", recipients=["bob@example.com"]), "42:1")
        await h.bus.publish(sent)
        ack = await h.next_ack()
        assert (ack.renl_id, ack.status, ack.reason) == ("42:1", AckStatus.DELIVERED, "")
        assert ack.properties["process"] == "notifyd"
        assert ack.properties["timestamp"] == int(NOW.timestamp() * 1000)
        [(message, recipients)] = await h.server.wait_for(1, WAIT)
        assert recipients == ["bob@example.com"]
        assert message["X-Alarm-Ref"] == str(sent.ref)
        assert message["X-Alarm-Trigger"] == "2026-11-23T09:45:00Z"
        assert message["Subject"] == "Reminder: Team meeting"
        assert h.notifier.delivered == 1
        assert [ref for _payload, ref in h.delivered] == [str(sent.ref)]


def held_until(payload: dict[str, Any], renl_id: str, not_before: datetime) -> Notification:
    """As alarmd publishes an instance ahead of its trigger."""
    sent = notification(payload, renl_id)
    return replace(sent, properties={**sent.properties, NOT_BEFORE: math.ceil(not_before.timestamp() * 1000)})


async def test_a_notification_published_ahead_is_prepared_and_sent_at_its_not_before() -> None:
    real_clock = lambda: datetime.now(UTC)  # noqa: E731
    async with running_notifier(clock=real_clock, notifyd=replace(COLLEAGUES, concurrency=2)) as h:
        due = datetime.now(UTC) + timedelta(seconds=0.6)
        for i in range(5):  # more than the concurrency: holding takes no slot
            await h.bus.publish(held_until(alarm_payload(uid=f"held{i}"), f"{i}:1", due))
        await h.bus.publish(notification(alarm_payload(uid="now"), "9:1"))  # no not_before: at once
        [(first, _)] = await h.server.wait_for(1, WAIT)
        assert "uid=now" in first["X-Alarm-Ref"]
        assert datetime.now(UTC) < due
        received = await h.server.wait_for(6, WAIT)
        arrived = datetime.now(UTC)
        assert due <= arrived < due + timedelta(seconds=0.5)
        for message, _ in received[1:]:
            assert parsedate_to_datetime(message["Date"]) >= due.replace(microsecond=0)  # dated when sent
        assert sorted([(await h.next_ack()).status for _ in range(6)]) == [AckStatus.DELIVERED] * 6


async def test_a_not_before_too_far_ahead_is_held_only_so_long(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("notifyd.service.PUBLISH_AHEAD_MAX", 0.3)
    async with running_notifier(clock=lambda: datetime.now(UTC)) as h:
        began = time.monotonic()
        await h.bus.publish(held_until(alarm_payload(), "1:1", datetime.now(UTC) + timedelta(hours=1)))
        await h.server.wait_for(1, WAIT)
        assert 0.3 <= time.monotonic() - began < 2.0
        assert (await h.next_ack()).status is AckStatus.DELIVERED
    assert any("is the publisher's clock ahead?" in r.getMessage() for r in caplog.records)


async def test_owner_gets_the_reminder_when_no_recipients_are_named() -> None:
    async with running_notifier() as h:
        await h.bus.publish(notification(alarm_payload(component="todo", summary="File taxes"), "7:1", "todo"))
        assert (await h.next_ack()).status is AckStatus.DELIVERED
        [(message, recipients)] = await h.server.wait_for(1, WAIT)
        assert recipients == ["jac@example.com"]
        assert message["Subject"] == "To-do reminder: File taxes"


async def test_a_display_alarm_goes_to_the_owner_whatever_its_recipients() -> None:
    async with running_notifier() as h:
        await h.bus.publish(notification(alarm_payload(action="DISPLAY", recipients=["bob@example.com"]), "8:1"))
        assert (await h.next_ack()).status is AckStatus.DELIVERED
        [(_message, recipients)] = await h.server.wait_for(1, WAIT)
        assert recipients == ["jac@example.com"]


async def test_display_alarm_without_owner_goes_to_the_directory_owner_in_their_language() -> None:
    directory = Directory({"jac": DirectoryEntry(owner="jac@example.com", locale="de")})
    async with running_notifier(directory=directory) as h:
        await h.bus.publish(notification(alarm_payload(owner="", locale=""), "10:1"))
        ack = await h.next_ack()
        assert (ack.status, ack.reason) == (AckStatus.DELIVERED, "")
        [(message, recipients)] = await h.server.wait_for(1, WAIT)
        assert recipients == ["jac@example.com"]
        assert message["To"] == "jac@example.com"
        assert message["Subject"] == "Erinnerung: Team meeting"
        assert message["Content-Language"] == "de"
        text = message.get_body(("plain",))
        assert text is not None
        assert "Diese Erinnerung wurde automatisch" in text.get_content()


def without(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != name}


BAD_PAYLOADS = {
    "only calid": ({"v": 1, "calid": "jac"}, "payload lacks 'uid'"),
    "no trigger": (without(alarm_payload(), "trigger"), "payload lacks 'trigger'"),
    "no action": (without(alarm_payload(), "action"), "payload lacks 'action'"),
    "uid a number": (alarm_payload(uid=5), "payload 'uid' must be a string"),
    "summary null": (alarm_payload(summary=None), "payload 'summary' must be a string"),
    "recipients a string": (
        alarm_payload(action="EMAIL", recipients="bob@example.com"),
        "payload 'recipients' must be a list of strings",
    ),
    "recipients with a number": (
        alarm_payload(action="EMAIL", recipients=["bob@example.com", 7]),
        "payload 'recipients' must be a list of strings",
    ),
    "component journal": (alarm_payload(component="journal"), "payload 'component' must be event or todo"),
    "trigger not ISO": (alarm_payload(trigger="tomorrow at 9"), "is not an ISO 8601 UTC instant"),
    "trigger without offset": (alarm_payload(trigger="2026-11-23T09:45:00"), "is not an ISO 8601 UTC instant"),
    "version 2": (alarm_payload(v=2), "payload version 2 is not 1"),
    "no version": (without(alarm_payload(), "v"), "payload version None is not 1"),
}


@pytest.mark.parametrize(("payload", "expected"), list(BAD_PAYLOADS.values()), ids=list(BAD_PAYLOADS))
async def test_invalid_payload_is_acked_failed_and_the_subscription_keeps_working(
    payload: dict[str, Any], expected: str
) -> None:
    async with running_notifier() as h:
        await h.bus.publish(notification(payload, "1:1"))
        bad = await h.next_ack()
        assert (bad.renl_id, bad.status) == ("1:1", AckStatus.FAILED)
        assert bad.reason.startswith("invalid payload: ")
        assert expected in bad.reason
        await h.bus.publish(notification(alarm_payload(), "2:1"))
        good = await h.next_ack()
        assert (good.renl_id, good.status) == ("2:1", AckStatus.DELIVERED)
        assert (h.notifier.failed, h.notifier.delivered) == (1, 1)
        await h.server.wait_for(1, WAIT)
        assert len(h.server.messages) == 1
        assert h.server.mail_commands == 1
        assert h.delivered == [(AlarmPayload.from_dict(alarm_payload()), str(notification(alarm_payload(), "").ref))]


async def test_recipients_outside_the_allowed_domains_only_is_failed_and_nothing_is_sent() -> None:
    outsiders = ["eve@evil.test", "Mallory <mallory@example.com.evil.test>"]
    async with running_notifier() as h:
        await h.bus.publish(notification(alarm_payload(action="EMAIL", recipients=outsiders), "11:1"))
        ack = await h.next_ack()
        assert ack.status is AckStatus.FAILED
        assert ack.reason.startswith("all 2 recipients refused: ")
        assert f"eve@evil.test: {NOT_ALLOWED}" in ack.reason
        assert f"mallory@example.com.evil.test: {NOT_ALLOWED}" in ack.reason
        assert h.server.connections == 0
        assert h.server.messages == []


async def test_mixed_recipients_are_delivered_to_the_allowed_ones_with_the_others_rejected() -> None:
    named = ["bob@example.com", "eve@evil.test", "Carol <carol@example.com>"]
    async with running_notifier() as h:
        await h.bus.publish(notification(alarm_payload(action="EMAIL", recipients=named), "12:1"))
        ack = await h.next_ack()
        assert ack.status is AckStatus.DELIVERED
        assert ack.reason == f"delivered to 2 of 3 recipients; refused: eve@evil.test: {NOT_ALLOWED}"
        [(message, recipients)] = await h.server.wait_for(1, WAIT)
        assert recipients == ["bob@example.com", "carol@example.com"]
        assert "evil.test" not in message.as_string()


async def test_by_default_only_the_owner_may_be_mailed() -> None:
    named = ["jac@example.com", "bob@example.com"]
    async with running_notifier(notifyd=NotifydSettings()) as h:
        await h.bus.publish(notification(alarm_payload(action="EMAIL", recipients=named), "13:1"))
        ack = await h.next_ack()
        assert ack.status is AckStatus.DELIVERED
        assert f"bob@example.com: {NOT_ALLOWED}" in ack.reason
        [(_message, recipients)] = await h.server.wait_for(1, WAIT)
        assert recipients == ["jac@example.com"]


async def test_no_recipient_is_acked_failed() -> None:
    async with running_notifier() as h:
        await h.bus.publish(notification(alarm_payload(owner="", recipients=[]), "3:1"))
        ack = await h.next_ack()
        assert ack.status is AckStatus.FAILED
        assert ack.reason.startswith("no recipient")
        assert h.server.messages == []


async def test_smtp_outcomes_reach_the_ack(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="notifyd")
    replies = {"gone@example.com": "550 5.1.1 no such user", "busy@example.com": "452 4.2.2 mailbox full"}
    async with running_notifier(reply_for=refuse(replies)) as h:
        await h.bus.publish(notification(alarm_payload(action="EMAIL", recipients=["gone@example.com"]), "5:1"))
        failed = await h.next_ack()
        await h.bus.publish(notification(alarm_payload(action="EMAIL", recipients=["busy@example.com"]), "5:2"))
        retry = await h.next_ack()
        assert (failed.status, retry.status) == (AckStatus.FAILED, AckStatus.RETRY)
        assert "550 5.1.1" in failed.reason
        assert "452 4.2.2" in retry.reason
        assert (h.notifier.failed, h.notifier.retried) == (1, 1)
    outcomes = [r.getMessage() for r in caplog.records if r.name == "notifyd.service" and "renl=5:" in r.getMessage()]
    assert len(outcomes) == 2
    assert all("<address>" in line and "example.com" not in line for line in outcomes)


async def test_stop_lets_a_message_in_hand_finish() -> None:
    async with running_notifier(delay=0.3) as h:
        await h.bus.publish(notification(alarm_payload(), "9:1"))
        await asyncio.wait_for(_until(lambda: h.server.connections > 0), WAIT)
        await h.notifier.stop(grace=WAIT)
        ack = await h.next_ack()
        assert ack.status is AckStatus.DELIVERED
        assert len(h.server.messages) == 1


class HeldAcks(MemoryBus):
    """The in-process bus, holding every ack until ``release`` is set (a broker slow to confirm)."""

    def __init__(self) -> None:
        super().__init__(prefetch=1)
        self.release = asyncio.Event()

    async def send_ack(self, ack_to: str, ack: Ack, *, batch: bool = False) -> None:
        await self.release.wait()
        await super().send_ack(ack_to, ack, batch=batch)


async def test_an_ack_waiting_for_its_confirm_holds_neither_a_slot_nor_the_prefetch_window() -> None:
    async with recording_smtp_server() as server:
        settings = Settings(
            smtp=SmtpSettings(url=server.url, sender=SENDER, timeout=2.0, allow_plaintext=True),
            notifyd=NotifydSettings(allowed_domains=("example.com",), concurrency=1),
        )
        bus = HeldAcks()
        await bus.start()
        sender = SmtpSender(settings.smtp)
        notifier = Notifier(bus, sender, settings, clock=lambda: NOW)
        acks: list[Ack] = []

        async def on_ack(ack: Ack) -> None:
            acks.append(ack)

        subscription = await bus.consume_acks("alarmd", on_ack)
        await notifier.start()
        try:
            for n in range(3):
                await bus.publish(notification(alarm_payload(uid=f"u{n}"), f"{n}:1"))
            await server.wait_for(3, WAIT)  # all three mailed while the first ack is still held
            assert acks == []
            stopping = asyncio.create_task(notifier.stop(grace=WAIT))
            await asyncio.sleep(0.05)
            assert not stopping.done()  # stop() waits for the acks in flight too
            bus.release.set()
            await asyncio.wait_for(stopping, WAIT)
            await asyncio.wait_for(_until(lambda: len(acks) == 3), WAIT)
            assert sorted(a.renl_id for a in acks) == ["0:1", "1:1", "2:1"]
        finally:
            await notifier.stop(grace=WAIT)
            await subscription.cancel()
            await sender.close()
            await bus.close()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - polls state the code under test owns
        await asyncio.sleep(0.01)


# --- the demo's SMTP catcher and the command line -----------------------------------


async def test_catcher_files_each_message_and_reports_it(tmp_path: Path) -> None:
    seen: list[tuple[str, Path]] = []
    catcher = await start_catcher(
        "127.0.0.1", 0, tmp_path / "mail", lambda msg, path: seen.append((msg["Subject"], path))
    )
    try:
        sender = SmtpSender(SmtpSettings(url=catcher.url, sender=SENDER, timeout=2.0, allow_plaintext=True))
        try:
            for n in range(2):
                result = await sender.send(message_to("a@example.com", subject=f"n{n}"), ["a@example.com"])
                assert result.status is AckStatus.DELIVERED
        finally:
            await sender.close()
    finally:
        await catcher.close()
    files = sorted((tmp_path / "mail").glob("*.eml"))
    assert [p.name for p in files] == [p.name for _s, p in seen]
    assert [s for s, _p in seen] == ["n0", "n1"]
    assert files[0].name.endswith("-0001.eml")
    text = files[0].read_bytes()
    assert text.startswith(b"Return-Path: <calalarm@example.com>\r\nX-Envelope-To: a@example.com\r\n")


async def test_catcher_on_a_busy_port_says_which_and_what_to_do(tmp_path: Path) -> None:
    async with recording_smtp_server() as server:
        with pytest.raises(CatcherPortInUse) as info:
            await start_catcher("127.0.0.1", server.port, tmp_path)
    assert isinstance(info.value, OSError)
    assert f"127.0.0.1:{server.port} is already in use" in str(info.value)
    assert "ss -ltnp" in str(info.value)


def test_cli_refuses_the_in_process_bus(tmp_path: Path) -> None:
    config = tmp_path / "calalarm.toml"
    config.write_text('[bus]\nurl = "memory://"\n')
    result = CliRunner().invoke(notifyd_main, ["--config", str(config)])
    assert result.exit_code == 2
    assert "alarmd --with-notifier" in result.output


def test_cli_reports_a_bad_configuration(tmp_path: Path) -> None:
    result = CliRunner().invoke(notifyd_main, ["--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
