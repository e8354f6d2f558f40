"""notifyd against a real SMTP server (aiosmtpd) and the in-process bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP
from click.testing import CliRunner

from common.ens.envelope import Ack, AckStatus, Notification, Renl
from common.ens.memory import MemoryBus
from common.ens.reference import EventReference
from common.payload import AlarmPayload
from common.settings import Settings, SmtpSettings
from common.smtp_catcher import CatcherPortInUse, start_catcher
from notifyd.main import main as notifyd_main
from notifyd.service import Notifier
from notifyd.smtp import SendResult, SmtpSender
from tests.payloads import sample_payload
from tests.smtp_server import RecordingSmtpServer, recording_smtp_server

NOW = datetime(2026, 11, 23, 9, 45, tzinfo=UTC)
WAIT = 3.0


def message_to(*recipients: str, subject: str = "Reminder: test") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "calalarm@example.com"
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content("hello\n")
    return message


def sender_for(url: str, **kwargs: Any) -> SmtpSender:
    return SmtpSender(
        SmtpSettings(url=url, sender="Reminders <calalarm@example.com>", timeout=2.0, allow_plaintext=True), **kwargs
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refuse(replies: dict[str, str]) -> Callable[[str], str | None]:
    return lambda address: replies.get(address)


# --- SmtpSender ---------------------------------------------------------------------


async def test_all_recipients_accepted_is_delivered() -> None:
    async with recording_smtp_server() as server:
        sender = sender_for(server.url)
        try:
            result = await sender.send(message_to("a@example.com", "b@example.com"), ["a@example.com", "b@example.com"])
        finally:
            await sender.close()
        assert result == SendResult(AckStatus.DELIVERED, "", {})
        [(received, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["a@example.com", "b@example.com"]
        assert received["Subject"] == "Reminder: test"


async def test_some_recipients_refused_is_delivered_with_the_rejections() -> None:
    replies = {"ghost@example.com": "550 5.1.1 no such user"}
    async with recording_smtp_server(reply_for=refuse(replies)) as server:
        sender = sender_for(server.url)
        try:
            result = await sender.send(message_to("a@example.com"), ["a@example.com", "ghost@example.com"])
        finally:
            await sender.close()
        assert result.status is AckStatus.DELIVERED
        assert result.rejected == {"ghost@example.com": "550 5.1.1 no such user"}
        assert "1 of 2" in result.reason
        assert "550 5.1.1 no such user" in result.reason
        [(_msg, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["a@example.com"]


async def test_every_recipient_refused_permanently_is_failed() -> None:
    replies = {"x@example.com": "550 5.1.1 no such user", "y@example.com": "553 5.1.3 bad mailbox"}
    async with recording_smtp_server(reply_for=refuse(replies)) as server:
        sender = sender_for(server.url)
        try:
            result = await sender.send(message_to("x@example.com"), ["x@example.com", "y@example.com"])
        finally:
            await sender.close()
        assert result.status is AckStatus.FAILED
        assert "550 5.1.1 no such user" in result.reason
        assert "553 5.1.3 bad mailbox" in result.reason
        assert set(result.rejected) == {"x@example.com", "y@example.com"}
        assert server.messages == []


async def test_temporary_refusal_is_retry() -> None:
    async with recording_smtp_server(reply_for=lambda _address: "451 4.3.0 try later") as server:
        sender = sender_for(server.url)
        try:
            result = await sender.send(message_to("a@example.com"), ["a@example.com"])
        finally:
            await sender.close()
        assert result.status is AckStatus.RETRY
        assert "451 4.3.0 try later" in result.reason
        assert server.messages == []


async def test_invalid_address_is_refused_without_asking_the_server() -> None:
    async with recording_smtp_server() as server:
        sender = sender_for(server.url)
        try:
            only_bad = await sender.send(message_to("a@example.com"), ["a@example.com\r\nRSET"])
            mixed = await sender.send(message_to("a@example.com"), ["a@example.com", "no address"])
        finally:
            await sender.close()
        assert only_bad.status is AckStatus.FAILED
        assert mixed.status is AckStatus.DELIVERED
        assert mixed.rejected == {"no address": "not a valid address"}
        [(_msg, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["a@example.com"]


async def test_connection_refused_is_retry() -> None:
    sender = sender_for(f"smtp://127.0.0.1:{free_port()}")
    result = await sender.send(message_to("a@example.com"), ["a@example.com"])
    await sender.close()
    assert result.status is AckStatus.RETRY
    assert "127.0.0.1" in result.reason


async def test_slow_server_hits_the_deadline_and_is_retry() -> None:
    async with recording_smtp_server(delay=1.0) as server:
        sender = sender_for(server.url, deadline=0.3)
        try:
            result = await asyncio.wait_for(sender.send(message_to("a@example.com"), ["a@example.com"]), WAIT)
        finally:
            await sender.close()
        assert result.status is AckStatus.RETRY
        assert "deadline" in result.reason


async def test_connection_is_reused_then_reopened_after_the_server_drops_it() -> None:
    async with recording_smtp_server() as server:
        sender = sender_for(server.url)
        try:
            for _ in range(2):
                assert (await sender.send(message_to("a@example.com"), ["a@example.com"])).status is AckStatus.DELIVERED
            assert server.connections == 1
            await server.drop_connections()
            result = await sender.send(message_to("a@example.com"), ["a@example.com"])
        finally:
            await sender.close()
        assert result.status is AckStatus.DELIVERED
        assert server.connections == 2
        await server.wait_for(3, WAIT)


async def test_dead_connection_is_replaced_within_the_same_send() -> None:
    async with recording_smtp_server() as server:
        sender = sender_for(server.url)
        try:
            assert (await sender.send(message_to("a@example.com"), ["a@example.com"])).status is AckStatus.DELIVERED
            # Close the server side without letting the client notice before it sends.
            for session in list(server._sessions):
                assert isinstance(session.transport, asyncio.Transport)
                session.transport.abort()
            result = await sender.send(message_to("a@example.com"), ["a@example.com"])
        finally:
            await sender.close()
        assert result.status is AckStatus.DELIVERED
        await server.wait_for(2, WAIT)


async def test_a_failure_drops_the_connection() -> None:
    replies = {"later@example.com": "451 4.3.0 try later"}
    async with recording_smtp_server(reply_for=refuse(replies)) as server:
        sender = sender_for(server.url)
        try:
            retry = await sender.send(message_to("later@example.com"), ["later@example.com"])
            delivered = await sender.send(message_to("a@example.com"), ["a@example.com"])
        finally:
            await sender.close()
        assert (retry.status, delivered.status) == (AckStatus.RETRY, AckStatus.DELIVERED)
        assert server.connections == 2


# --- TLS ----------------------------------------------------------------------------


class _Accept:
    def __init__(self) -> None:
        self.received: list[list[str]] = []

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.received.append(list(envelope.rcpt_tos))
        return "250 OK"


@contextlib.asynccontextmanager
async def tls_server(ca: trustme.CA, *, implicit: bool) -> AsyncIterator[tuple[int, _Accept]]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    handler = _Accept()
    loop = asyncio.get_running_loop()
    sessions: list[SMTP] = []

    def factory() -> SMTP:
        if implicit:
            session = SMTP(handler, hostname="tls-test", loop=loop)
        else:
            session = SMTP(handler, hostname="tls-test", tls_context=server_ctx, require_starttls=True, loop=loop)
        sessions.append(session)
        return session

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx if implicit else None)
    try:
        yield int(server.sockets[0].getsockname()[1]), handler
    finally:
        server.close()
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize(("scheme", "implicit"), [("smtp+starttls", False), ("smtps", True)])
async def test_tls_with_a_trusted_certificate_delivers(ca: trustme.CA, scheme: str, implicit: bool) -> None:
    async with tls_server(ca, implicit=implicit) as (port, handler):
        sender = sender_for(f"{scheme}://127.0.0.1:{port}", tls_context=trusting(ca))
        try:
            result = await sender.send(message_to("a@example.com"), ["a@example.com"])
        finally:
            await sender.close()
    assert result.status is AckStatus.DELIVERED, result.reason
    assert handler.received == [["a@example.com"]]


@pytest.mark.parametrize(("scheme", "implicit"), [("smtp+starttls", False), ("smtps", True)])
async def test_tls_with_an_untrusted_certificate_is_retry(ca: trustme.CA, scheme: str, implicit: bool) -> None:
    async with tls_server(ca, implicit=implicit) as (port, handler):
        sender = sender_for(f"{scheme}://127.0.0.1:{port}")  # the system trust store: our CA is unknown
        try:
            result = await sender.send(message_to("a@example.com"), ["a@example.com"])
        finally:
            await sender.close()
    assert result.status is AckStatus.RETRY
    assert "certificate" in result.reason.lower()
    assert handler.received == []


async def test_starttls_required_never_falls_back_to_plain_text() -> None:
    async with recording_smtp_server() as server:  # offers no STARTTLS
        sender = sender_for(f"smtp+starttls://127.0.0.1:{server.port}")
        try:
            result = await sender.send(message_to("a@example.com"), ["a@example.com"])
        finally:
            await sender.close()
        assert result.status is AckStatus.RETRY
        assert "STARTTLS" in result.reason
        assert server.messages == []


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
async def running_notifier(**server_options: Any) -> AsyncIterator[Harness]:
    async with recording_smtp_server(**server_options) as server:
        settings = Settings(
            smtp=SmtpSettings(
                url=server.url, sender="Reminders <calalarm@example.com>", timeout=2.0, allow_plaintext=True
            )
        )
        bus = MemoryBus()
        await bus.start()
        sender = SmtpSender(settings.smtp)
        notifier = Notifier(bus, sender, settings, clock=lambda: NOW)
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
        sent = notification(alarm_payload(recipients=["bob@example.com"]), "42:1")
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


async def test_owner_gets_the_reminder_when_no_recipients_are_named() -> None:
    async with running_notifier() as h:
        await h.bus.publish(notification(alarm_payload(component="todo", summary="File taxes"), "7:1", "todo"))
        assert (await h.next_ack()).status is AckStatus.DELIVERED
        [(message, recipients)] = await h.server.wait_for(1, WAIT)
        assert recipients == ["jac@example.com"]
        assert message["Subject"] == "To-do reminder: File taxes"


async def test_invalid_payload_is_acked_failed_and_the_subscription_keeps_working() -> None:
    async with running_notifier() as h:
        await h.bus.publish(notification({"v": 1, "calid": "jac"}, "1:1"))
        bad = await h.next_ack()
        assert (bad.renl_id, bad.status) == ("1:1", AckStatus.FAILED)
        assert "payload lacks 'uid'" in bad.reason
        await h.bus.publish(notification(alarm_payload(), "2:1"))
        good = await h.next_ack()
        assert (good.renl_id, good.status) == ("2:1", AckStatus.DELIVERED)
        assert (h.notifier.failed, h.notifier.delivered) == (1, 1)
        await h.server.wait_for(1, WAIT)


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
        await h.bus.publish(notification(alarm_payload(recipients=["gone@example.com"]), "5:1"))
        failed = await h.next_ack()
        await h.bus.publish(notification(alarm_payload(recipients=["busy@example.com"]), "5:2"))
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
        sender = sender_for(catcher.url)
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
