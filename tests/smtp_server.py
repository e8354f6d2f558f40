"""A real SMTP server for tests: aiosmtpd, in the test's own event loop, on a free port.

    async with recording_smtp_server() as smtp:
        ...  # point smtp.url at the code under test
        [(message, recipients)] = await smtp.wait_for(1, timeout=2)
        assert message["X-Alarm-Ref"] == ref

``reply_for(address)`` may return a reply for RCPT TO (``"550 5.1.1 no such user"``,
``"451 4.3.0 try later"``); ``None`` accepts the recipient. ``delay`` is how long the
server waits before answering the end of DATA (a slow server). Every message accepted
is recorded in ``messages`` as a :class:`ReceivedMessage`: the parsed
:class:`EmailMessage` (``email.policy.default``, so headers come back decoded) and the
envelope recipients that were accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, NamedTuple

from aiosmtpd.smtp import SMTP

ReplyFor = Callable[[str], str | None]


class ReceivedMessage(NamedTuple):
    message: EmailMessage
    recipients: list[str]


class RecordingSmtpServer:
    """What :func:`recording_smtp_server` yields."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.messages: list[ReceivedMessage] = []
        self.connections = 0  # sessions accepted so far
        self._changed = asyncio.Condition()
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[ReceivedMessage]:  # noqa: ASYNC109 - the API
        """Wait until at least ``n`` messages arrived; return the first ``n``."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self.messages) >= n)
        except TimeoutError:
            raise TimeoutError(f"expected {n} message(s) within {timeout}s, got {len(self.messages)}") from None
        return self.messages[:n]

    async def drop_connections(self) -> None:
        """Close every open client connection from the server side (a restart, an idle timeout)."""
        await _close_sessions(self._sessions)

    async def _record(self, received: ReceivedMessage) -> None:
        async with self._changed:
            self.messages.append(received)
            self._changed.notify_all()


class _Handler:
    def __init__(self, server: RecordingSmtpServer, reply_for: ReplyFor | None, delay: float) -> None:
        self._server = server
        self._reply_for = reply_for
        self._delay = delay

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self._reply_for(address) if self._reply_for is not None else None
        if reply is None or reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return reply or "250 2.1.5 OK"
        return reply

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self._delay:
            await asyncio.sleep(self._delay)
        message = BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(envelope.original_content or b"")
        await self._server._record(ReceivedMessage(message, list(envelope.rcpt_tos)))
        return "250 2.0.0 OK: recorded"


async def _close_sessions(sessions: weakref.WeakSet[SMTP]) -> None:
    handlers: list[asyncio.Task[Any]] = []
    for session in list(sessions):
        if session.transport is not None:
            session.transport.close()
        task = getattr(session, "_handler_coroutine", None)
        if isinstance(task, asyncio.Task) and not task.done():
            handlers.append(task)
    if handlers:
        await asyncio.wait(handlers, timeout=2.0)


@asynccontextmanager
async def recording_smtp_server(
    *, reply_for: ReplyFor | None = None, delay: float = 0.0
) -> AsyncIterator[RecordingSmtpServer]:
    """Run a recording SMTP server on 127.0.0.1 (a free port) for the ``async with`` block."""
    loop = asyncio.get_running_loop()
    recorder = RecordingSmtpServer("127.0.0.1", 0)
    handler = _Handler(recorder, reply_for, delay)

    def factory() -> SMTP:
        session = SMTP(handler, hostname="calalarm-test-smtp", enable_SMTPUTF8=True, loop=loop)
        recorder._sessions.add(session)
        recorder.connections += 1
        return session

    server = await loop.create_server(factory, recorder.host, 0)
    recorder.port = int(server.sockets[0].getsockname()[1])
    try:
        yield recorder
    finally:
        server.close()
        await _close_sessions(recorder._sessions)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)
