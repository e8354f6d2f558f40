"""SMTP delivery over a pool of persistent aiosmtplib connections.

``smtp.pool_size`` connections are opened on first use, reused while they last and
each dropped after any failure (the next message on that slot opens a new one). One
message uses one connection at a time; ``smtp.deadline`` bounds a message as a whole
(waiting for a rate-limit token and a free connection included), because aiosmtplib's
``timeout`` bounds each socket operation only and a slow server could otherwise hold
a message for ever. ``smtp.rate_limit`` (messages per second, bursts of
``smtp.rate_burst``) is a token bucket shared by the pool.

TLS follows the URL scheme (see :class:`common.settings.SmtpEndpoint`): ``smtp://``
requires STARTTLS and never falls back to plain text (plain text only with
``smtp.allow_plaintext``, for a local relay), ``smtps://`` is TLS from the first byte.
Server certificates are always verified. The AUTH password (``smtp.password``,
``smtp.password_file`` or the systemd credential) is never logged.

:meth:`SmtpSender.send` never raises for an SMTP problem; it says what the publisher
should do with the alarm:

- every recipient accepted → ``delivered``;
- some refused → ``delivered``, with the refused ones and their replies in ``rejected``
  (sending again would duplicate the reminder for those who got it);
- all refused, every refusal permanent (5xx, or an address that cannot be sent) →
  ``failed``; a 5xx reply to MAIL FROM or to the message data → ``failed``;
- a 4xx reply, a timeout, a refused or dropped connection, a failed TLS handshake or
  AUTH → ``retry``.

:meth:`SmtpSender.check` opens one session as :meth:`~SmtpSender.send` would (TLS mode,
certificate verification, AUTH), says QUIT and reports what it found (:class:`SmtpCheck`),
or raises :class:`SmtpCheckFailed` saying what failed: ``alarmctl check`` uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib
from aiolimiter import AsyncLimiter
from aiosmtplib.email import parse_address

from common.ens.envelope import AckStatus
from common.metrics import NotifydMetrics
from common.settings import ConfigError, SmtpEndpoint, SmtpSettings, smtp_password
from notifyd.recipients import mailbox

log = logging.getLogger(__name__)

QUIT_TIMEOUT = 5.0
_NEEDS_SMTPUTF8 = "5.6.7 this address is not ASCII and the server does not offer SMTPUTF8"
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class SendResult:
    """What became of one message: the ack status, why, and the refused recipients.

    ``reply`` is the server's reply to the end of the message data when it took the
    message (``250 2.0.0 Ok: queued as 4XyZ``), as the server wrote it: show it with
    :meth:`reply_line`. It is empty otherwise (a refusal's reply is in ``reason``), and
    it is not compared: two results with the same outcome are equal.
    """

    status: AckStatus
    reason: str = ""
    rejected: dict[str, str] = field(default_factory=dict)
    reply: str = field(default="", compare=False)

    def reply_line(self) -> str:
        """:attr:`reply` on one line without control characters: safe to print or log."""
        return _one_line(self.reply)


@dataclass(frozen=True)
class SmtpCheck:
    """What :meth:`SmtpSender.check` found in the session it opened."""

    server: str  # host:port
    tls: str  # the URL's TLS mode: "starttls", "implicit" (smtps://) or "plain" (smtp.allow_plaintext)
    tls_version: str | None  # the protocol negotiated ("TLSv1.3"); None in plain text
    certificate_verified: bool  # the server's certificate chain and host name were verified
    auth: str  # the login the session authenticated as; "" without AUTH
    server_name: str  # the first line of the server's EHLO (or HELO) reply: the name it gives itself


class SmtpCheckFailed(Exception):
    """:meth:`SmtpSender.check` could not open a session; ``reason`` says what failed (the
    connection, the TLS handshake or the certificate, STARTTLS, AUTH, or no answer in time)."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"SMTP {server}: {reason}")
        self.server = server
        self.reason = reason


class _ConnectFailed(Exception):
    """Opening, securing or authenticating the session failed; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SmtpSender:
    """Sends reminder emails through the configured SMTP server (see the module doc).

    ``tls_context`` replaces the default verifying context (tests pass one that trusts
    their own CA). ``deadline`` overrides ``settings.deadline``; keep it below
    ``alarmd.ack_timeout`` so an answer reaches the publisher before it resends.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        tls_context: ssl.SSLContext | None = None,
        deadline: float | None = None,
        local_hostname: str | None = None,
        metrics: NotifydMetrics | None = None,
    ) -> None:
        endpoint = settings.endpoint
        self._metrics = metrics if metrics is not None else NotifydMetrics()
        self._deadline = deadline if deadline is not None else settings.deadline
        try:
            envelope_from = parse_address(settings.sender)
        except ValueError as exc:
            raise ConfigError(f"smtp.sender {settings.sender!r}: {exc}") from None
        if "@" not in envelope_from:
            raise ConfigError(f"smtp.sender {settings.sender!r}: write an address, e.g. Reminders <cal@example.com>")
        username = settings.username or endpoint.username
        session = _Session(
            endpoint=endpoint,
            timeout=settings.timeout,
            username=username,
            password=smtp_password(settings) if username else "",
            tls_context=tls_context,
            local_hostname=local_hostname,
            envelope_from=envelope_from,
        )
        self.server = f"{endpoint.host}:{endpoint.port}"
        self._session = session
        self._connections = [_Connection(session, self.server, self._metrics) for _ in range(settings.pool_size)]
        # Last in, first out: under light load one warm connection does the work and the
        # others stay closed, instead of every slot being opened in turn.
        self._idle: asyncio.LifoQueue[_Connection] = asyncio.LifoQueue()
        for connection in self._connections:
            self._idle.put_nowait(connection)
        self._limiter = (
            AsyncLimiter(settings.rate_burst, settings.rate_burst / settings.rate_limit)
            if settings.rate_limit
            else None
        )

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self._connections if c.is_open)

    async def send(self, message: bytes, recipients: list[str]) -> SendResult:
        """Send ``message`` (the whole message, as :func:`notifyd.email.render_reminder`
        writes it) to ``recipients``, the envelope: headers are not read."""
        valid, invalid = _split_recipients(recipients)
        if not valid:
            return _all_refused({}, invalid, total=len(invalid))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._deadline):
                if self._limiter is not None:
                    await self._limiter.acquire()
                connection = await self._idle.get()
                try:
                    return await connection.send(message, valid, invalid)
                finally:
                    self._idle.put_nowait(connection)
        except TimeoutError:
            # Raised by the deadline; a connection in use was dropped by _Connection.send.
            self._metrics.smtp_replies["timeout"].inc()
            return SendResult(AckStatus.RETRY, f"SMTP {self.server}: no answer within the {self._deadline:g}s deadline")
        finally:
            self._metrics.smtp_send_seconds.observe(time.perf_counter() - started)

    async def check(self, *, timeout: float | None = None) -> SmtpCheck:  # noqa: ASYNC109 - reported as SmtpCheckFailed
        """Open one SMTP session exactly as :meth:`send` does (the URL's TLS mode, the
        certificate verified, AUTH, EHLO), say QUIT, and report what it found.

        The session is one of its own: the pool is neither used nor disturbed. ``timeout``
        (seconds) bounds it as a whole; ``smtp.timeout`` bounds each operation in any case.
        Raises :class:`SmtpCheckFailed` when the session cannot be opened.
        """
        connection = _Connection(self._session, self.server, self._metrics)
        try:
            try:
                async with asyncio.timeout(timeout):
                    smtp = await connection._connection()
            except _ConnectFailed as exc:
                raise SmtpCheckFailed(self.server, exc.reason) from None
            except TimeoutError:
                raise SmtpCheckFailed(self.server, f"no answer within {timeout:g} s") from None
            tls = smtp.get_transport_info("ssl_object")
            encrypted = isinstance(tls, ssl.SSLObject)
            verified = encrypted and tls.context.verify_mode == ssl.CERT_REQUIRED and tls.context.check_hostname
            greeting = smtp.last_ehlo_response or smtp.last_helo_response
            return SmtpCheck(
                server=self.server,
                tls=self._session.endpoint.tls,
                tls_version=tls.version() if encrypted else None,
                certificate_verified=verified,
                auth=self._session.username,
                server_name=_one_line(greeting.message.partition("\n")[0]) if greeting is not None else "",
            )
        finally:
            await connection.close()

    async def close(self) -> None:
        """Say QUIT on every open connection and close it."""
        await asyncio.gather(*(connection.close() for connection in self._connections))


@dataclass(frozen=True)
class _Session:
    """How to open one SMTP session: the same for every connection of the pool."""

    endpoint: SmtpEndpoint
    timeout: float
    username: str
    password: str = field(repr=False)
    tls_context: ssl.SSLContext | None
    local_hostname: str | None
    envelope_from: str


class _Connection:
    """One slot of the pool: a connection opened on demand and dropped after a failure."""

    def __init__(self, session: _Session, server: str, metrics: NotifydMetrics) -> None:
        self._session = session
        self._server = server
        self._metrics = metrics
        self._replies = metrics.smtp_replies  # by class: one count per message
        self._smtp: aiosmtplib.SMTP | None = None

    @property
    def is_open(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def send(self, message: bytes, valid: list[str], invalid: dict[str, str]) -> SendResult:
        done = False
        server = self._server
        try:
            reused = self.is_open
            while True:
                try:
                    smtp = await self._connection()
                except _ConnectFailed as exc:
                    self._replies["connection"].inc()
                    log.warning("SMTP %s: %s", server, exc.reason)
                    return SendResult(AckStatus.RETRY, f"SMTP {server}: {exc.reason}")
                try:
                    errors, data_reply = await _transaction(smtp, self._session.envelope_from, valid, message)
                except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                    self._drop()
                    if reused:
                        # The server closed an idle connection under us: open a fresh one once.
                        reused = False
                        log.debug("SMTP %s: the reused connection was dead; opening a new one", server)
                        continue
                    self._replies["connection"].inc()
                    return SendResult(AckStatus.RETRY, f"SMTP {server}: connection lost: {_describe(exc)}")
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    refused = {err.recipient: _reply_text(err.code, err.message) for err in exc.recipients}
                    codes = [err.code for err in exc.recipients]
                    self._metrics.smtp_reply(min(codes))
                    if all(code >= 500 for code in codes):
                        return _all_refused(refused, invalid, total=len(valid) + len(invalid))
                    return SendResult(
                        AckStatus.RETRY,
                        "every recipient refused, some temporarily: " + list_refusals({**refused, **invalid}),
                        {**refused, **invalid},
                    )
                except (aiosmtplib.SMTPHeloError, aiosmtplib.SMTPAuthenticationError) as exc:
                    self._metrics.smtp_reply(exc.code)
                    return SendResult(AckStatus.RETRY, f"SMTP {server}: session refused: {_describe(exc)}")
                except aiosmtplib.SMTPResponseException as exc:
                    what = "sender refused" if isinstance(exc, aiosmtplib.SMTPSenderRefused) else "message refused"
                    self._metrics.smtp_reply(exc.code)
                    status = AckStatus.FAILED if exc.code >= 500 else AckStatus.RETRY
                    return SendResult(status, f"{what}: {_reply_text(exc.code, exc.message)}")
                except aiosmtplib.SMTPNotSupported as exc:
                    self._replies["other"].inc()
                    return SendResult(AckStatus.FAILED, f"SMTP {server} cannot take this message: {exc.message}")
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    self._replies["timeout" if isinstance(exc, TimeoutError) else "connection"].inc()
                    return SendResult(AckStatus.RETRY, f"SMTP {server}: {_describe(exc)}")
                except ValueError as exc:
                    self._replies["other"].inc()
                    # aiosmtplib checks addresses; ours were checked already, so this is unexpected.
                    return SendResult(AckStatus.FAILED, f"message cannot be sent: {exc}")
                done = True
                self._replies["2xx"].inc()
                rejected = {addr: _reply_text(resp.code, resp.message) for addr, resp in errors.items()}
                rejected.update(invalid)
                reply = f"{data_reply.code} {data_reply.message}"
                if not rejected:
                    return SendResult(AckStatus.DELIVERED, "", reply=reply)
                accepted = len(valid) - len(errors)
                return SendResult(
                    AckStatus.DELIVERED,
                    f"delivered to {accepted} of {accepted + len(rejected)} recipients; refused: "
                    + list_refusals(rejected),
                    rejected,
                    reply,
                )
        finally:
            if not done:
                # After any failure (a cancellation by the deadline included) the session
                # state is unknown: the next message on this slot starts on a fresh connection.
                self._drop()

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit(timeout=min(self._session.timeout, QUIT_TIMEOUT))
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            smtp.close()

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        self._drop()
        session = self._session
        smtp = aiosmtplib.SMTP(
            hostname=session.endpoint.host,
            port=session.endpoint.port,
            username=session.username or None,
            password=session.password if session.username else None,
            local_hostname=session.local_hostname,
            timeout=session.timeout,
            use_tls=session.endpoint.tls == "implicit",
            start_tls=session.endpoint.tls == "starttls",
            validate_certs=True,
            tls_context=session.tls_context,
        )
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                # connect() greets only when it needs STARTTLS or AUTH; _transaction needs
                # the server's extensions, so greet here (EHLO, else HELO, as sendmail would).
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    if not smtp.is_connected:
                        raise
                    await smtp.helo()
        except aiosmtplib.SMTPAuthenticationError as exc:
            smtp.close()
            raise _ConnectFailed(f"AUTH refused: {_reply_text(exc.code, exc.message)}") from None
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise _ConnectFailed(f"connection refused by the server: {_reply_text(exc.code, exc.message)}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Connection refused, DNS, timeouts, TLS handshake and certificate errors, a
            # server without STARTTLS when it is required, AUTH not offered.
            smtp.close()
            raise _ConnectFailed(f"cannot open a session: {_describe(exc)}") from None
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()


async def _transaction(
    smtp: aiosmtplib.SMTP, sender: str, recipients: list[str], message: bytes
) -> tuple[dict[str, aiosmtplib.SMTPResponse], aiosmtplib.SMTPResponse]:
    """MAIL, RCPT for each recipient and DATA; the refused recipients and their replies,
    and the server's reply to the data.

    aiosmtplib's ``sendmail``, leaner: it parses every address again (ours were checked
    by :func:`~notifyd.recipients.mailbox`), normalises the message twice and wraps each
    reply in a timeout task (the message's deadline bounds the whole transaction). That
    was a fifth of notifyd's CPU per reminder (``tests/benchmarks/notify_throughput``).
    It raises what ``sendmail`` raises, and resets the envelope after a refusal as it does.
    """
    options: list[bytes] = []
    if smtp.supports_extension("size"):
        options.append(b"SIZE=%d" % len(message))
    encoding = "ascii"
    refused: dict[str, aiosmtplib.SMTPResponse] = {}
    if not (sender.isascii() and all(recipient.isascii() for recipient in recipients)):
        if smtp.supports_extension("smtputf8"):
            options.append(b"SMTPUTF8")
            encoding = "utf-8"
        elif not sender.isascii():
            raise aiosmtplib.SMTPNotSupported(
                "smtp.sender is not ASCII and the server does not offer SMTPUTF8; configure an ASCII sender"
            )
        else:
            # Refused as the server itself would (RFC 6531): the others still get theirs.
            refused = {r: aiosmtplib.SMTPResponse(553, _NEEDS_SMTPUTF8) for r in recipients if not r.isascii()}
    try:
        reply = await smtp.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(encoding), *options, timeout=None)
        if reply.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        for recipient in recipients:
            if recipient in refused:
                continue
            reply = await smtp.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode(encoding), timeout=None)
            if reply.code not in (aiosmtplib.SMTPStatus.completed, aiosmtplib.SMTPStatus.will_forward):
                refused[recipient] = reply
        if len(refused) == len(recipients):
            raise aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(r.code, r.message, address) for address, r in refused.items()]
            )
        data_reply = await _data(smtp, message)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException, TimeoutError):
            await smtp.rset()
        raise
    return refused, data_reply


async def _data(smtp: aiosmtplib.SMTP, message: bytes) -> aiosmtplib.SMTPResponse:
    """DATA, then ``message`` and the end-of-data line: what ``SMTP.data`` does.

    A message already in SMTP form (as :func:`notifyd.mime.message_bytes` writes every
    reminder: each line ends in CRLF, no bare CR or LF) is only dot-stuffed, by one
    ``bytes.replace``. ``SMTP.data`` runs two regular expressions over every line of it,
    an eighth of the SMTP client's CPU per reminder (``tests/benchmarks/notify_throughput``).
    Any other message goes through ``SMTP.data``. It raises what ``SMTP.data`` raises.
    """
    protocol = smtp.protocol
    if protocol is None or not in_smtp_form(message):
        return await smtp.data(message, timeout=None)
    reply = await smtp.execute_command(b"DATA", timeout=None)
    if reply.code != aiosmtplib.SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    # Nothing runs between the write and read_response's start (no await), so the reply
    # cannot arrive before aiosmtplib expects one.
    protocol.write(dot_stuffed(message) + b".\r\n")
    reply = await protocol.read_response(timeout=None)
    if reply.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return reply


def in_smtp_form(message: bytes) -> bool:
    """Every line of ``message`` ends in CRLF, and there is no other CR or LF."""
    crlf = message.count(b"\r\n")
    return message.endswith(b"\r\n") and message.count(b"\r") == crlf and message.count(b"\n") == crlf


def dot_stuffed(message: bytes) -> bytes:
    """``message`` (in SMTP form) with a second dot before each line that starts with one
    (RFC 5321 4.5.2), so no line of it reads as the end of the data."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def _split_recipients(recipients: list[str]) -> tuple[list[str], dict[str, str]]:
    """Addresses that can go on an SMTP command line, and the others with the reason."""
    valid: list[str] = []
    invalid: dict[str, str] = {}
    for recipient in recipients:
        address = mailbox(recipient)
        if address is None:
            invalid[recipient] = "not a valid address"
        elif address not in valid:
            valid.append(address)
    return valid, invalid


def _all_refused(refused: dict[str, str], invalid: dict[str, str], total: int) -> SendResult:
    rejected = {**refused, **invalid}
    return SendResult(AckStatus.FAILED, f"all {total} recipients refused: " + list_refusals(rejected), rejected)


def _one_line(text: str) -> str:
    """``text`` safe for a reason string (and so for logs and ``alarmctl``): one line, no controls."""
    return " ".join(_UNSAFE.sub(" ", text).split())


def _reply_text(code: int, message: str) -> str:
    return _one_line(f"{code} {message}")


def list_refusals(rejected: dict[str, str]) -> str:
    """``address: reply; …`` on one line."""
    return "; ".join(f"{_one_line(address)}: {_one_line(reply)}" for address, reply in rejected.items())


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
