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
envelope recipients that were accepted; ``envelopes`` has, in the same order, how each
arrived (:class:`EnvelopeFacts`: sender, over TLS or not, the AUTH login).

More behaviour, for the SMTP client's tests:

- ``tls``: a server-side :class:`ssl.SSLContext` (:func:`server_tls_context` makes one
  from a trustme CA). The server offers STARTTLS, or with ``implicit_tls=True`` speaks
  TLS from the first byte (``smtps://``). ``require_starttls`` refuses mail before it.
- ``credentials``: ``{login: password}``; AUTH is then required before MAIL, offered
  only over TLS (as real servers do), and only those pairs are accepted.
  ``auth_attempts`` records ``(login, accepted)`` for each try (never the password).
- ``mail_reply`` / ``data_reply``: a reply to MAIL FROM / to the end of DATA instead of
  accepting (``"451 4.3.0 queue full"``, ``"554 5.6.0 rejected"``); the message is then
  not recorded.
- ``drop_next_data``: an attribute; while positive, the end of DATA is answered by
  dropping the connection (and it is decreased), as a server that crashes mid-session.
- ``mail_commands`` counts MAIL FROM commands accepted; ``in_data`` and
  ``peak_in_data`` count sessions inside the end-of-DATA handling (now, and at most
  at once): how many connections were used concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, NamedTuple

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

ReplyFor = Callable[[str], str | None]
DROP_WAIT = 5.0


def message_to(*recipients: str, subject: str = "Reminder: test") -> bytes:
    """A small message for the client side of a test, as :meth:`SmtpSender.send` takes it."""
    message = EmailMessage()
    message["From"] = "calalarm@example.com"
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content("hello\n")
    return message.as_bytes(policy=policy.SMTP)


class ReceivedMessage(NamedTuple):
    message: EmailMessage
    recipients: list[str]


class EnvelopeFacts(NamedTuple):
    """How a recorded message arrived."""

    mail_from: str
    tls: bool  # the session was encrypted (STARTTLS or implicit TLS) when the data came
    login: str  # the AUTH login of the session; "" without AUTH
    mail_options: tuple[str, ...] = ()  # the options of MAIL FROM (SIZE=…, SMTPUTF8)
    content: bytes = b""  # the message data as received, dot-stuffing undone


def server_tls_context(ca: trustme.CA, host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server context with a certificate for ``host`` issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    return context


def client_tls_context(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts ``ca`` (and nothing else)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class RecordingSmtpServer:
    """What :func:`recording_smtp_server` yields."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.messages: list[ReceivedMessage] = []
        self.envelopes: list[EnvelopeFacts] = []
        self.connections = 0  # sessions accepted so far
        self.mail_commands = 0  # MAIL FROM commands accepted
        self.auth_attempts: list[tuple[str, bool]] = []
        self.drop_next_data = 0
        self.in_data = 0
        self.peak_in_data = 0
        self._changed = asyncio.Condition()
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def url_with(self, scheme: str, userinfo: str = "") -> str:
        """``scheme://[userinfo@]host:port``, e.g. ``url_with("smtps")``."""
        at = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{at}{self.host}:{self.port}"

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

    async def _record(self, received: ReceivedMessage, facts: EnvelopeFacts) -> None:
        async with self._changed:
            self.messages.append(received)
            self.envelopes.append(facts)
            self._changed.notify_all()


class _Handler:
    def __init__(
        self,
        server: RecordingSmtpServer,
        reply_for: ReplyFor | None,
        delay: float,
        mail_reply: str | None,
        data_reply: str | None,
    ) -> None:
        self._server = server
        self._reply_for = reply_for
        self._delay = delay
        self._mail_reply = mail_reply
        self._data_reply = data_reply

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self._mail_reply is not None:
            return self._mail_reply
        self._server.mail_commands += 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

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
        recorder = self._server
        recorder.in_data += 1
        recorder.peak_in_data = max(recorder.peak_in_data, recorder.in_data)
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            if recorder.drop_next_data > 0:
                recorder.drop_next_data -= 1
                if isinstance(server.transport, asyncio.Transport):
                    server.transport.abort()
                # connection_lost cancels this handler; the reply below is never read.
                await asyncio.sleep(DROP_WAIT)
                return "421 4.3.0 dropped"
            if self._data_reply is not None:
                return self._data_reply
        finally:
            recorder.in_data -= 1
        message = BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(envelope.original_content or b"")
        transport = server.transport
        facts = EnvelopeFacts(
            mail_from=str(envelope.mail_from or ""),
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
            login=str(session.auth_data or "") if session.authenticated else "",
            mail_options=tuple(envelope.mail_options),
            content=envelope.original_content or b"",
        )
        await recorder._record(ReceivedMessage(message, list(envelope.rcpt_tos)), facts)
        return "250 2.0.0 OK: recorded"


def _authenticator(recorder: RecordingSmtpServer, credentials: Mapping[str, str]) -> Callable[..., AuthResult]:
    def authenticate(server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            recorder.auth_attempts.append(("", False))
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        accepted = login in credentials and auth_data.password == credentials[login].encode("utf-8")
        recorder.auth_attempts.append((login, accepted))
        # auth_data is what aiosmtpd keeps (and logs): the login only, never the password.
        return AuthResult(success=accepted, handled=False, auth_data=login if accepted else None)

    return authenticate


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
    *,
    reply_for: ReplyFor | None = None,
    delay: float = 0.0,
    tls: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    require_starttls: bool = False,
    credentials: Mapping[str, str] | None = None,
    mail_reply: str | None = None,
    data_reply: str | None = None,
    smtputf8: bool = True,
) -> AsyncIterator[RecordingSmtpServer]:
    """Run a recording SMTP server on 127.0.0.1 (a free port) for the ``async with`` block."""
    if implicit_tls and tls is None:
        raise ValueError("implicit_tls needs a server tls context")
    loop = asyncio.get_running_loop()
    recorder = RecordingSmtpServer("127.0.0.1", 0)
    handler = _Handler(recorder, reply_for, delay, mail_reply, data_reply)
    options: dict[str, Any] = {}
    if tls is not None and not implicit_tls:
        options.update(tls_context=tls, require_starttls=require_starttls)
    if credentials is not None:
        options.update(
            authenticator=_authenticator(recorder, credentials),
            auth_required=True,
            # aiosmtpd knows of STARTTLS only; a session that is TLS from the first byte is encrypted too.
            auth_require_tls=not implicit_tls,
        )

    def factory() -> SMTP:
        with warnings.catch_warnings():
            # "Requiring AUTH while not requiring TLS": with implicit TLS it is required, by the socket.
            warnings.simplefilter("ignore", UserWarning)
            session = SMTP(handler, hostname="calalarm-test-smtp", enable_SMTPUTF8=smtputf8, loop=loop, **options)
        recorder._sessions.add(session)
        recorder.connections += 1
        return session

    server = await loop.create_server(factory, recorder.host, 0, ssl=tls if implicit_tls else None)
    recorder.port = int(server.sockets[0].getsockname()[1])
    try:
        yield recorder
    finally:
        server.close()
        await _close_sessions(recorder._sessions)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)
