"""SmtpSender against real aiosmtpd servers: outcomes, TLS, AUTH, the pool, the deadline, the rate limit,
and ``check`` (one session opened as a send opens it)."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme

from common.ens.envelope import AckStatus
from common.settings import SmtpSettings
from notifyd.smtp import SendResult, SmtpCheck, SmtpCheckFailed, SmtpSender
from tests.smtp_server import (
    RecordingSmtpServer,
    client_tls_context,
    message_to,
    recording_smtp_server,
    server_tls_context,
)

WAIT = 3.0
TIMEOUT = 2.0  # per SMTP operation
LOGIN = "user"
PASSWORD = "pa55-Wörd-7f3c9e"  # distinctive, so that any leak is found by a substring search
SENDER = "Reminders <calalarm@example.com>"


def smtp_settings(url: str, **changes: Any) -> SmtpSettings:
    """Test settings: plain text allowed for ``smtp://`` (the recording server has no TLS) and only there."""
    changes.setdefault("allow_plaintext", url.startswith("smtp://"))
    changes.setdefault("timeout", TIMEOUT)
    return SmtpSettings(url=url, sender=SENDER, **changes)


def sender_for(
    url: str, *, tls_context: ssl.SSLContext | None = None, deadline: float | None = None, **changes: Any
) -> SmtpSender:
    return SmtpSender(smtp_settings(url, **changes), tls_context=tls_context, deadline=deadline)


@asynccontextmanager
async def open_sender(url: str, **options: Any) -> AsyncIterator[SmtpSender]:
    """:func:`sender_for`, closed on the way out."""
    sender = sender_for(url, **options)
    try:
        yield sender
    finally:
        await sender.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refuse(replies: dict[str, str]) -> Callable[[str], str | None]:
    return lambda address: replies.get(address)


async def send_one(sender: SmtpSender, *recipients: str) -> SendResult:
    recipients = recipients or ("a@example.com",)
    return await sender.send(message_to(*recipients), list(recipients))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    return server_tls_context(ca)


@pytest.fixture(scope="module")
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    return client_tls_context(ca)


# --- what the server answers ---------------------------------------------------------


async def test_all_recipients_accepted_is_delivered() -> None:
    async with recording_smtp_server() as server:
        async with open_sender(server.url) as sender:
            result = await sender.send(message_to("a@example.com", "b@example.com"), ["a@example.com", "b@example.com"])
        assert result == SendResult(AckStatus.DELIVERED, "", {})
        [(received, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["a@example.com", "b@example.com"]
        assert received["Subject"] == "Reminder: test"
        assert server.envelopes[0].mail_from == "calalarm@example.com"  # the envelope sender: the bare address


async def test_the_servers_reply_to_the_message_data_is_kept() -> None:
    replies = {"ghost@example.com": "550 5.1.1 no such user"}
    async with recording_smtp_server(reply_for=refuse(replies)) as server:
        async with open_sender(server.url) as sender:
            delivered = await send_one(sender)
            partly = await send_one(sender, "a@example.com", "ghost@example.com")
            refused = await send_one(sender, "ghost@example.com")
        assert delivered.reply == partly.reply == "250 2.0.0 OK: recorded"
        assert delivered.reply_line() == "250 2.0.0 OK: recorded"
        assert refused.reply == ""  # no data was sent: the refusals are in reason and rejected
    # as the server wrote it; reply_line() makes it safe to print
    assert SendResult(AckStatus.DELIVERED, reply="250 2.0.0 queued\r\n\x07as 4XyZ").reply_line() == (
        "250 2.0.0 queued as 4XyZ"
    )


async def test_some_recipients_refused_is_delivered_with_only_the_refused_ones_listed() -> None:
    replies = {"ghost@example.com": "550 5.1.1 no such user"}
    async with recording_smtp_server(reply_for=refuse(replies)) as server:
        async with open_sender(server.url) as sender:
            result = await send_one(sender, "a@example.com", "ghost@example.com", "b@example.com")
        assert result.status is AckStatus.DELIVERED
        assert result.rejected == {"ghost@example.com": "550 5.1.1 no such user"}
        assert "2 of 3" in result.reason
        assert "ghost@example.com: 550 5.1.1 no such user" in result.reason
        assert "a@example.com" not in result.reason.replace("ghost@", "")
        assert "b@example.com" not in result.reason
        [(_msg, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["a@example.com", "b@example.com"]


async def test_every_recipient_refused_permanently_is_failed_with_the_replies() -> None:
    replies = {"x@example.com": "550 5.1.1 no such user", "y@example.com": "553 5.1.3 bad mailbox"}
    async with recording_smtp_server(reply_for=refuse(replies)) as server:
        async with open_sender(server.url) as sender:
            result = await send_one(sender, "x@example.com", "y@example.com")
        assert result.status is AckStatus.FAILED
        assert "550 5.1.1 no such user" in result.reason
        assert "553 5.1.3 bad mailbox" in result.reason
        assert set(result.rejected) == {"x@example.com", "y@example.com"}
        assert server.messages == []


async def test_temporary_refusal_of_rcpt_is_retry() -> None:
    async with recording_smtp_server(reply_for=lambda _address: "451 4.3.0 try later") as server:
        async with open_sender(server.url) as sender:
            result = await send_one(sender)
        assert result.status is AckStatus.RETRY
        assert "451 4.3.0 try later" in result.reason
        assert server.messages == []


async def test_every_recipient_refused_some_temporarily_is_retry() -> None:
    replies = {"x@example.com": "550 5.1.1 no such user", "y@example.com": "452 4.2.2 mailbox full"}
    async with recording_smtp_server(reply_for=refuse(replies)) as server:
        async with open_sender(server.url) as sender:
            result = await send_one(sender, "x@example.com", "y@example.com")
        assert result.status is AckStatus.RETRY
        assert "452 4.2.2 mailbox full" in result.reason
        assert server.messages == []


@pytest.mark.parametrize(
    ("reply", "status"), [("451 4.3.0 queue full", AckStatus.RETRY), ("554 5.6.0 content rejected", AckStatus.FAILED)]
)
async def test_a_refusal_of_the_message_data_is_retry_or_failed(reply: str, status: AckStatus) -> None:
    async with recording_smtp_server(data_reply=reply) as server:
        async with open_sender(server.url) as sender:
            result = await send_one(sender)
        assert result.status is status
        assert result.reason == f"message refused: {reply}"
        assert server.messages == []


@pytest.mark.parametrize(
    ("reply", "status"), [("451 4.3.0 try again later", AckStatus.RETRY), ("553 5.7.1 sender denied", AckStatus.FAILED)]
)
async def test_a_refusal_of_the_sender_is_retry_or_failed(reply: str, status: AckStatus) -> None:
    async with recording_smtp_server(mail_reply=reply) as server:
        async with open_sender(server.url) as sender:
            result = await send_one(sender)
        assert result.status is status
        assert reply.split()[0] in result.reason
        assert server.messages == []


async def test_invalid_address_is_refused_without_asking_the_server() -> None:
    async with recording_smtp_server() as server:
        async with open_sender(server.url) as sender:
            only_bad = await sender.send(message_to("a@example.com"), ["a@example.com\r\nRSET"])
            mixed = await sender.send(message_to("a@example.com"), ["a@example.com", "no address"])
        assert only_bad.status is AckStatus.FAILED
        assert mixed.status is AckStatus.DELIVERED
        assert mixed.rejected == {"no address": "not a valid address"}
        [(_msg, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["a@example.com"]
        assert server.mail_commands == 1  # the bad-only message never reached the server


async def test_the_envelope_declares_the_message_size() -> None:
    message = message_to("a@example.com")
    async with recording_smtp_server() as server:
        async with open_sender(server.url) as sender:
            result = await sender.send(message, ["a@example.com"])
        assert result.status is AckStatus.DELIVERED
        await server.wait_for(1, WAIT)
        assert f"SIZE={len(message)}" in server.envelopes[0].mail_options


async def test_the_message_arrives_as_given_with_its_dot_lines_whatever_its_line_ends() -> None:
    body = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n.\r\n"
    as_given = [
        body,  # in SMTP form: written as is, only dot-stuffed
        body.replace(b"\r\n", b"\n"),  # bare LF line ends: aiosmtplib's path makes them CRLF
        b"Subject: no end\r\n\r\n.last line without its end",
    ]
    async with recording_smtp_server() as server:
        async with open_sender(server.url) as sender:
            for message in as_given:
                assert (await sender.send(message, ["a@example.com"])).status is AckStatus.DELIVERED
        await server.wait_for(len(as_given), WAIT)
    assert [facts.content for facts in server.envelopes] == [
        body,
        body,
        b"Subject: no end\r\n\r\n.last line without its end\r\n",
    ]


async def test_a_non_ascii_mailbox_goes_with_smtputf8_when_the_server_offers_it() -> None:
    async with recording_smtp_server() as server:
        async with open_sender(server.url) as sender:
            result = await send_one(sender, "jürgen@example.com", "a@example.com")
        assert result == SendResult(AckStatus.DELIVERED, "", {})
        [(_msg, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["jürgen@example.com", "a@example.com"]
        assert "SMTPUTF8" in server.envelopes[0].mail_options


async def test_without_smtputf8_a_non_ascii_mailbox_is_refused_and_the_others_still_get_theirs() -> None:
    async with recording_smtp_server(smtputf8=False) as server:
        async with open_sender(server.url) as sender:
            mixed = await send_one(sender, "jürgen@example.com", "a@example.com")
            only = await send_one(sender, "jürgen@example.com")
        assert mixed.status is AckStatus.DELIVERED
        assert list(mixed.rejected) == ["jürgen@example.com"]
        assert "SMTPUTF8" in mixed.rejected["jürgen@example.com"]
        assert only.status is AckStatus.FAILED
        assert "SMTPUTF8" in only.reason
        [(_msg, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["a@example.com"]
        assert "SMTPUTF8" not in server.envelopes[0].mail_options


async def test_connection_refused_is_retry() -> None:
    sender = sender_for(f"smtp://127.0.0.1:{free_port()}")
    result = await send_one(sender)
    await sender.close()
    assert result.status is AckStatus.RETRY
    assert "127.0.0.1" in result.reason


# --- the deadline and dropped connections --------------------------------------------


async def test_slow_server_hits_the_deadline_and_is_retry_on_time() -> None:
    deadline = 0.3
    async with recording_smtp_server(delay=2.0) as server:
        async with open_sender(server.url, deadline=deadline) as sender:
            started = time.monotonic()
            result = await asyncio.wait_for(send_one(sender), WAIT)
            elapsed = time.monotonic() - started
        assert result.status is AckStatus.RETRY
        assert "deadline" in result.reason
        assert deadline - 0.05 <= elapsed < deadline + 0.5
        assert server.messages == []
        assert sender.open_connections == 0  # the session cut off mid-DATA is not reused


@pytest.mark.parametrize("via", ["argument", "settings"])
async def test_deadline_counts_the_wait_for_a_free_connection(via: str) -> None:
    # One connection, 0.5 s per message, 0.7 s per message at most: the second message would
    # be in time if only its own session counted, but it waits ~0.5 s for the connection first.
    async with recording_smtp_server(delay=0.5) as server:
        if via == "argument":
            sender = sender_for(server.url, deadline=0.7, pool_size=1)
        else:
            sender = SmtpSender(smtp_settings(server.url, deadline=0.7, timeout=0.7, pool_size=1))
        try:
            started = time.monotonic()
            results = await asyncio.gather(send_one(sender), send_one(sender))
            elapsed = time.monotonic() - started
        finally:
            await sender.close()
        statuses = sorted(result.status for result in results)
        assert statuses == [AckStatus.DELIVERED, AckStatus.RETRY], results
        [retry] = [result for result in results if result.status is AckStatus.RETRY]
        assert "deadline" in retry.reason
        assert "0.7s" in retry.reason
        assert elapsed < 0.7 + 0.5
        assert len(server.messages) == 1


async def test_connection_dropped_mid_session_is_retry_and_the_next_send_reconnects() -> None:
    async with recording_smtp_server() as server:
        server.drop_next_data = 1
        async with open_sender(server.url) as sender:
            lost = await send_one(sender)
            assert sender.open_connections == 0
            delivered = await send_one(sender)
        assert lost.status is AckStatus.RETRY
        assert "connection lost" in lost.reason
        assert delivered.status is AckStatus.DELIVERED
        assert server.connections == 2
        assert len(server.messages) == 1


async def test_connection_is_reused_then_reopened_after_the_server_drops_it() -> None:
    async with recording_smtp_server() as server:
        async with open_sender(server.url) as sender:
            for _ in range(2):
                assert (await send_one(sender)).status is AckStatus.DELIVERED
            assert server.connections == 1
            await server.drop_connections()
            result = await send_one(sender)
        assert result.status is AckStatus.DELIVERED
        assert server.connections == 2
        await server.wait_for(3, WAIT)


async def test_dead_connection_is_replaced_within_the_same_send() -> None:
    async with recording_smtp_server() as server:
        async with open_sender(server.url) as sender:
            assert (await send_one(sender)).status is AckStatus.DELIVERED
            # Close the server side without letting the client notice before it sends.
            for session in list(server._sessions):
                assert isinstance(session.transport, asyncio.Transport)
                session.transport.abort()
            result = await send_one(sender)
        assert result.status is AckStatus.DELIVERED
        assert server.connections == 2
        await server.wait_for(2, WAIT)


async def test_a_failure_drops_the_connection() -> None:
    replies = {"later@example.com": "451 4.3.0 try later"}
    async with recording_smtp_server(reply_for=refuse(replies)) as server:
        async with open_sender(server.url) as sender:
            retry = await send_one(sender, "later@example.com")
            delivered = await send_one(sender)
        assert (retry.status, delivered.status) == (AckStatus.RETRY, AckStatus.DELIVERED)
        assert server.connections == 2


# --- the pool and the rate limit -----------------------------------------------------


async def test_sequential_sends_reuse_one_warm_connection() -> None:
    async with recording_smtp_server() as server:
        async with open_sender(server.url, pool_size=4) as sender:
            for _ in range(5):
                assert (await send_one(sender)).status is AckStatus.DELIVERED
            assert sender.open_connections == 1
        assert server.connections == 1
        assert len(server.messages) == 5
        assert sender.open_connections == 0  # closed by close()


async def test_pool_sends_concurrently_on_at_most_pool_size_connections() -> None:
    delay, count = 0.2, 10
    async with recording_smtp_server(delay=delay) as server:
        async with open_sender(server.url, pool_size=3) as sender:
            started = time.monotonic()
            results = await asyncio.gather(*(send_one(sender, f"u{n}@example.com") for n in range(count)))
            elapsed = time.monotonic() - started
            assert sender.open_connections <= 3
        assert [r.status for r in results] == [AckStatus.DELIVERED] * count, results
        assert len(server.messages) == count
        assert server.connections <= 3
        assert server.peak_in_data >= 2
        assert elapsed < count * delay


async def test_rate_limit_spaces_messages_after_the_burst() -> None:
    count = 25
    async with recording_smtp_server() as server:
        limited = sender_for(server.url, rate_limit=20.0, rate_burst=5)
        free = sender_for(server.url)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(send_one(limited) for _ in range(count)))
            limited_elapsed = time.monotonic() - started
            started = time.monotonic()
            results += await asyncio.gather(*(send_one(free) for _ in range(count)))
            free_elapsed = time.monotonic() - started
        finally:
            await limited.close()
            await free.close()
        assert all(r.status is AckStatus.DELIVERED for r in results), results
        assert len(server.messages) == 2 * count
    # 5 at once, then 20 more at 20 a second: 1.0 s, give or take the bucket's rounding;
    # well under 2 s, which half the rate would take.
    assert 0.9 <= limited_elapsed < 1.6, limited_elapsed
    # without the limit the same 25 go as fast as the server takes them (~0.1 s; more on a busy machine)
    assert free_elapsed < limited_elapsed - 0.3, (free_elapsed, limited_elapsed)


async def test_rate_limit_lets_a_burst_through_at_once() -> None:
    async with recording_smtp_server() as server:
        async with open_sender(server.url, rate_limit=1.0, rate_burst=5) as sender:
            started = time.monotonic()
            results = await asyncio.gather(*(send_one(sender) for _ in range(5)))
            elapsed = time.monotonic() - started
        assert all(r.status is AckStatus.DELIVERED for r in results), results
        assert elapsed < 0.9  # at 1/s without a burst, five would take four seconds


# --- TLS -----------------------------------------------------------------------------


@pytest.mark.parametrize(("scheme", "implicit"), [("smtp", False), ("smtp+starttls", False), ("smtps", True)])
async def test_tls_with_a_trusted_certificate_delivers_encrypted(
    server_context: ssl.SSLContext, trusting: ssl.SSLContext, scheme: str, implicit: bool
) -> None:
    async with recording_smtp_server(
        tls=server_context, implicit_tls=implicit, require_starttls=not implicit
    ) as server:
        # smtp:// means STARTTLS required, as smtp+starttls://
        async with open_sender(server.url_with(scheme), tls_context=trusting, allow_plaintext=False) as sender:
            result = await send_one(sender)
        assert result.status is AckStatus.DELIVERED, result.reason
        [(_msg, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["a@example.com"]
        assert server.envelopes[0].tls


@pytest.mark.parametrize(("scheme", "implicit"), [("smtp+starttls", False), ("smtps", True)])
async def test_tls_with_an_untrusted_certificate_is_retry(
    server_context: ssl.SSLContext, scheme: str, implicit: bool
) -> None:
    async with recording_smtp_server(tls=server_context, implicit_tls=implicit) as server:
        sender = sender_for(server.url_with(scheme))  # the system trust store: our CA is unknown
        try:
            result = await send_one(sender)
        finally:
            await sender.close()
        assert result.status is AckStatus.RETRY
        assert "certificate" in result.reason.lower()
        assert server.mail_commands == 0
        assert server.messages == []


async def test_certificate_for_another_host_is_retry(ca: trustme.CA, trusting: ssl.SSLContext) -> None:
    async with recording_smtp_server(tls=server_tls_context(ca, "mail.example.org")) as server:
        async with open_sender(server.url_with("smtp+starttls"), tls_context=trusting) as sender:
            result = await send_one(sender)
        assert result.status is AckStatus.RETRY
        assert server.mail_commands == 0


@pytest.mark.parametrize("scheme", ["smtp", "smtp+starttls"])
async def test_starttls_required_never_falls_back_to_plain_text(scheme: str) -> None:
    async with recording_smtp_server() as server:  # offers no STARTTLS
        async with open_sender(server.url_with(scheme), allow_plaintext=False) as sender:
            result = await send_one(sender)
        assert result.status is AckStatus.RETRY
        assert "STARTTLS" in result.reason
        assert server.mail_commands == 0
        assert server.messages == []


# --- AUTH ----------------------------------------------------------------------------


def auth_server(
    server_context: ssl.SSLContext, *, implicit: bool = False
) -> AbstractAsyncContextManager[RecordingSmtpServer]:
    return recording_smtp_server(tls=server_context, implicit_tls=implicit, credentials={LOGIN: PASSWORD})


@pytest.mark.parametrize("source", ["setting", "password_file", "credentials_directory", "url"])
async def test_auth_over_starttls_delivers_with_the_password_from_each_source(
    server_context: ssl.SSLContext,
    trusting: ssl.SSLContext,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    async with auth_server(server_context) as server:
        url, changes = server.url_with("smtp+starttls"), dict[str, Any](username=LOGIN)
        if source == "setting":
            changes["password"] = PASSWORD
        elif source == "password_file":
            (tmp_path / "pw").write_text(PASSWORD + "\n", encoding="utf-8")
            changes["password_file"] = str(tmp_path / "pw")
        elif source == "credentials_directory":
            (tmp_path / "smtp-password").write_text(PASSWORD + "\n", encoding="utf-8")
            monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        else:
            url, changes = server.url_with("smtp+starttls", f"{LOGIN}:{quote(PASSWORD, safe='')}"), {}
        async with open_sender(url, tls_context=trusting, **changes) as sender:
            result = await send_one(sender)
        assert result.status is AckStatus.DELIVERED, result.reason
        assert server.auth_attempts == [(LOGIN, True)]
        [facts] = server.envelopes
        assert (facts.tls, facts.login) == (True, LOGIN)


async def test_auth_over_implicit_tls_delivers(server_context: ssl.SSLContext, trusting: ssl.SSLContext) -> None:
    async with auth_server(server_context, implicit=True) as server:
        async with open_sender(
            server.url_with("smtps"), tls_context=trusting, username=LOGIN, password=PASSWORD
        ) as sender:
            result = await send_one(sender)
        assert result.status is AckStatus.DELIVERED, result.reason
        assert server.envelopes[0].login == LOGIN


async def test_wrong_password_is_retry_with_auth_refused(
    server_context: ssl.SSLContext, trusting: ssl.SSLContext
) -> None:
    async with auth_server(server_context) as server:
        sender = sender_for(
            server.url_with("smtp+starttls"), tls_context=trusting, username=LOGIN, password="not-" + PASSWORD
        )
        try:
            result = await send_one(sender)
        finally:
            await sender.close()
        assert result.status is AckStatus.RETRY
        assert "AUTH refused" in result.reason
        assert "535" in result.reason
        # aiosmtplib tries each mechanism both sides know (PLAIN, LOGIN) before it gives up
        assert server.auth_attempts
        assert all(attempt == (LOGIN, False) for attempt in server.auth_attempts)
        assert server.mail_commands == 0


def leaks(text: str, password: str) -> list[str]:
    """The forms of ``password`` found in ``text``: as is, and as AUTH PLAIN/LOGIN would encode it."""
    forms = {
        "plain": password,
        "login-b64": base64.b64encode(password.encode()).decode(),
        "plain-b64": base64.b64encode(f"\0{LOGIN}\0{password}".encode()).decode(),
    }
    return [name for name, form in forms.items() if form in text]


@pytest.mark.parametrize("right", [True, False], ids=["auth-accepted", "auth-refused"])
async def test_the_password_is_never_logged_nor_in_the_result(
    server_context: ssl.SSLContext, trusting: ssl.SSLContext, caplog: pytest.LogCaptureFixture, right: bool
) -> None:
    password = PASSWORD if right else PASSWORD + "-wrong"
    caplog.set_level(logging.DEBUG)
    for name in ("aiosmtplib", "notifyd", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    async with (
        auth_server(server_context) as server,
        open_sender(
            server.url_with("smtp+starttls"), tls_context=trusting, username=LOGIN, password=password
        ) as sender,
    ):
        result = await send_one(sender)
        # a second message on the same (or, after a refusal, a new) session
        result2 = await send_one(sender)
    assert result.status is (AckStatus.DELIVERED if right else AckStatus.RETRY), result.reason
    assert result2.status is result.status
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    for record in caplog.records:
        # aiosmtpd (the test server, logger mail.log) logs the AUTH LOGIN lines it reads, base64-encoded
        text = f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        found = leaks(text, password)
        if record.name.startswith("mail.log"):
            found = [form for form in found if form == "plain"]
        assert not found, (record.name, record.levelname, found)
    assert password not in caplog.text
    for outcome in (result, result2):
        assert not leaks(repr(outcome), password)


# --- check: one session opened as a send opens it -----------------------------------


@pytest.mark.parametrize(("scheme", "implicit", "mode"), [("smtp", False, "starttls"), ("smtps", True, "implicit")])
async def test_check_reports_the_session_it_opened(
    server_context: ssl.SSLContext, trusting: ssl.SSLContext, scheme: str, implicit: bool, mode: str
) -> None:
    async with auth_server(server_context, implicit=implicit) as server:
        async with open_sender(
            server.url_with(scheme), tls_context=trusting, allow_plaintext=False, username=LOGIN, password=PASSWORD
        ) as sender:
            facts = await sender.check(timeout=WAIT)
            assert sender.open_connections == 0  # a session of its own, closed: the pool is untouched
        assert facts == SmtpCheck(
            server=f"127.0.0.1:{server.port}",
            tls=mode,
            tls_version=facts.tls_version,
            certificate_verified=True,
            auth=LOGIN,
            server_name="calalarm-test-smtp",
        )
        assert facts.tls_version is not None
        assert facts.tls_version.startswith("TLSv1.")
        assert server.auth_attempts == [(LOGIN, True)]
        assert (server.connections, server.mail_commands) == (1, 0)
        assert PASSWORD not in repr(facts)


async def test_check_of_a_plain_text_relay_says_so() -> None:
    async with recording_smtp_server() as server, open_sender(server.url) as sender:
        facts = await sender.check()
    assert (facts.tls, facts.tls_version, facts.certificate_verified, facts.auth) == ("plain", None, False, "")
    assert facts.server_name == "calalarm-test-smtp"


async def test_check_of_an_unreachable_port_fails_naming_the_server() -> None:
    port = free_port()
    async with open_sender(f"smtp://127.0.0.1:{port}") as sender:
        with pytest.raises(SmtpCheckFailed) as failed:
            await sender.check(timeout=WAIT)
    assert failed.value.server == f"127.0.0.1:{port}"
    assert failed.value.reason.startswith("cannot open a session: ")
    assert str(failed.value).startswith(f"SMTP 127.0.0.1:{port}: cannot open a session")


async def test_check_of_a_server_that_never_answers_fails_within_the_timeout() -> None:
    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(WAIT)  # no greeting
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = int(listener.sockets[0].getsockname()[1])
    try:
        async with open_sender(f"smtp://127.0.0.1:{port}") as sender:
            started = time.monotonic()
            with pytest.raises(SmtpCheckFailed, match=r"no answer within 0\.3 s"):
                await sender.check(timeout=0.3)
            assert time.monotonic() - started < 0.3 + 0.5
    finally:
        listener.close()


@pytest.mark.parametrize(("scheme", "implicit"), [("smtp+starttls", False), ("smtps", True)])
async def test_check_of_an_untrusted_certificate_fails(
    server_context: ssl.SSLContext, scheme: str, implicit: bool
) -> None:
    async with recording_smtp_server(tls=server_context, implicit_tls=implicit) as server:
        async with open_sender(server.url_with(scheme)) as sender:  # the system trust store: our CA is unknown
            with pytest.raises(SmtpCheckFailed) as failed:
                await sender.check(timeout=WAIT)
        assert "certificate" in failed.value.reason.lower()
        assert server.mail_commands == 0


async def test_check_with_a_wrong_password_fails_with_the_servers_refusal(
    server_context: ssl.SSLContext, trusting: ssl.SSLContext
) -> None:
    wrong = "not-" + PASSWORD
    async with auth_server(server_context) as server:
        async with open_sender(
            server.url_with("smtp+starttls"), tls_context=trusting, username=LOGIN, password=wrong
        ) as sender:
            with pytest.raises(SmtpCheckFailed) as failed:
                await sender.check(timeout=WAIT)
        assert failed.value.reason.startswith("AUTH refused: 535")
        assert server.auth_attempts
        assert all(attempt == (LOGIN, False) for attempt in server.auth_attempts)
        assert not leaks(f"{failed.value} {failed.value!r}", wrong)
