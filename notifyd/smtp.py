"""SMTP delivery over one persistent aiosmtplib connection.

The connection is opened on first use, reused while it lasts and dropped after any
failure (the next message opens a new one). An :class:`asyncio.Lock` lets one message
use it at a time.

TLS follows the URL scheme (see :class:`common.settings.SmtpEndpoint`): ``smtp://`` is
plain text (no opportunistic upgrade), ``smtp+starttls://`` requires STARTTLS and never
falls back to plain text, ``smtps://`` is TLS from the first byte. Server certificates
are always verified.

:meth:`SmtpSender.send` never raises for an SMTP problem; it says what the publisher
should do with the alarm:

- every recipient accepted → ``delivered``;
- some refused → ``delivered``, with the refused ones and their replies in ``rejected``
  (sending again would duplicate the reminder for those who got it);
- all refused, every refusal permanent (5xx, or an address that cannot be sent) →
  ``failed``; a 5xx reply to MAIL FROM or to the message data → ``failed``;
- a 4xx reply, a timeout, a refused or dropped connection, a failed TLS handshake or
  AUTH → ``retry``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses

import aiosmtplib
from aiosmtplib.email import parse_address

from common.ens.envelope import AckStatus
from common.settings import ConfigError, SmtpSettings

log = logging.getLogger(__name__)

QUIT_TIMEOUT = 5.0
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class SendResult:
    """What became of one message: the ack status, why, and the refused recipients."""

    status: AckStatus
    reason: str = ""
    rejected: dict[str, str] = field(default_factory=dict)


class _ConnectFailed(Exception):
    """Opening, securing or authenticating the session failed; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SmtpSender:
    """Sends reminder emails through the configured SMTP server (see the module doc).

    ``tls_context`` replaces the default verifying context (tests pass one that trusts
    their own CA). ``deadline`` bounds one :meth:`send` as a whole, waiting for the
    connection included; it defaults to twice ``settings.timeout`` and should stay below
    ``alarmd.ack_timeout`` so an answer reaches the publisher before it resends.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        tls_context: ssl.SSLContext | None = None,
        deadline: float | None = None,
        local_hostname: str | None = None,
    ) -> None:
        self._endpoint = settings.endpoint
        self._timeout = settings.timeout
        self._deadline = deadline if deadline is not None else 2 * settings.timeout
        self._username = settings.username or self._endpoint.username
        self._password = settings.password or self._endpoint.password
        self._tls_context = tls_context
        self._local_hostname = local_hostname
        try:
            self._envelope_from = parse_address(settings.sender)
        except ValueError as exc:
            raise ConfigError(f"smtp.sender {settings.sender!r}: {exc}") from None
        if "@" not in self._envelope_from:
            raise ConfigError(f"smtp.sender {settings.sender!r}: write an address, e.g. Reminders <cal@example.com>")
        self._lock = asyncio.Lock()
        self._smtp: aiosmtplib.SMTP | None = None
        if self._username and self._endpoint.tls == "plain":
            log.warning(
                "SMTP AUTH over a plain-text connection to %s:%d exposes the password; use smtp+starttls:// or smtps://",
                self._endpoint.host,
                self._endpoint.port,
            )

    @property
    def server(self) -> str:
        return f"{self._endpoint.host}:{self._endpoint.port}"

    async def send(self, message: EmailMessage, recipients: list[str]) -> SendResult:
        """Send ``message`` to ``recipients`` (the envelope; headers are not read)."""
        valid, invalid = _split_recipients(recipients)
        if not valid:
            return _all_refused({}, invalid, total=len(invalid))
        try:
            async with asyncio.timeout(self._deadline):
                async with self._lock:
                    return await self._send_locked(message, valid, invalid)
        except TimeoutError:
            # Raised by the deadline; the connection was dropped in _send_locked if in use.
            return SendResult(AckStatus.RETRY, f"SMTP {self.server}: no answer within the {self._deadline:g}s deadline")

    async def close(self) -> None:
        """Say QUIT and close the connection, if one is open."""
        async with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is None:
                return
            try:
                if smtp.is_connected:
                    await smtp.quit(timeout=min(self._timeout, QUIT_TIMEOUT))
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
            finally:
                smtp.close()

    async def _send_locked(self, message: EmailMessage, valid: list[str], invalid: dict[str, str]) -> SendResult:
        done = False
        try:
            reused = self._smtp is not None and self._smtp.is_connected
            while True:
                try:
                    smtp = await self._connection()
                except _ConnectFailed as exc:
                    log.warning("SMTP %s: %s", self.server, exc.reason)
                    return SendResult(AckStatus.RETRY, f"SMTP {self.server}: {exc.reason}")
                try:
                    errors, _reply = await smtp.send_message(message, sender=self._envelope_from, recipients=valid)
                except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                    self._drop()
                    if reused:
                        # The server closed an idle connection under us: open a fresh one once.
                        reused = False
                        log.debug("SMTP %s: the reused connection was dead; opening a new one", self.server)
                        continue
                    return SendResult(AckStatus.RETRY, f"SMTP {self.server}: connection lost: {_describe(exc)}")
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    refused = {err.recipient: _reply_text(err.code, err.message) for err in exc.recipients}
                    codes = [err.code for err in exc.recipients]
                    if all(code >= 500 for code in codes):
                        return _all_refused(refused, invalid, total=len(valid) + len(invalid))
                    return SendResult(
                        AckStatus.RETRY,
                        "every recipient refused, some temporarily: " + _list_refusals({**refused, **invalid}),
                        {**refused, **invalid},
                    )
                except (aiosmtplib.SMTPHeloError, aiosmtplib.SMTPAuthenticationError) as exc:
                    return SendResult(AckStatus.RETRY, f"SMTP {self.server}: session refused: {_describe(exc)}")
                except aiosmtplib.SMTPResponseException as exc:
                    what = "sender refused" if isinstance(exc, aiosmtplib.SMTPSenderRefused) else "message refused"
                    status = AckStatus.FAILED if exc.code >= 500 else AckStatus.RETRY
                    return SendResult(status, f"{what}: {_reply_text(exc.code, exc.message)}")
                except aiosmtplib.SMTPNotSupported as exc:
                    return SendResult(AckStatus.FAILED, f"SMTP {self.server} cannot take this message: {exc.message}")
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    return SendResult(AckStatus.RETRY, f"SMTP {self.server}: {_describe(exc)}")
                except ValueError as exc:
                    # aiosmtplib checks addresses; ours were checked already, so this is unexpected.
                    return SendResult(AckStatus.FAILED, f"message cannot be sent: {exc}")
                done = True
                rejected = {addr: _reply_text(resp.code, resp.message) for addr, resp in errors.items()}
                rejected.update(invalid)
                if not rejected:
                    return SendResult(AckStatus.DELIVERED, "")
                accepted = len(valid) - len(errors)
                return SendResult(
                    AckStatus.DELIVERED,
                    f"delivered to {accepted} of {accepted + len(rejected)} recipients; refused: "
                    + _list_refusals(rejected),
                    rejected,
                )
        finally:
            if not done:
                # After any failure (a cancellation by the deadline included) the session
                # state is unknown: the next message starts on a fresh connection.
                self._drop()

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        self._drop()
        smtp = aiosmtplib.SMTP(
            hostname=self._endpoint.host,
            port=self._endpoint.port,
            username=self._username or None,
            password=self._password if self._username else None,
            local_hostname=self._local_hostname,
            timeout=self._timeout,
            use_tls=self._endpoint.tls == "implicit",
            start_tls=self._endpoint.tls == "starttls",
            validate_certs=True,
            tls_context=self._tls_context,
        )
        try:
            await smtp.connect()
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


def _split_recipients(recipients: list[str]) -> tuple[list[str], dict[str, str]]:
    """Addresses that can go on an SMTP command line, and the others with the reason."""
    valid: list[str] = []
    invalid: dict[str, str] = {}
    for recipient in recipients:
        address = _envelope_address(recipient)
        if address is None:
            invalid[recipient] = "not a valid address"
        elif address not in valid:
            valid.append(address)
    return valid, invalid


def _envelope_address(recipient: str) -> str | None:
    """The mailbox of ``recipient`` (``bob@x`` or ``Bob <bob@x>``), or None if it is not one.

    Stricter than aiosmtplib's own check, which takes the first of several addresses
    and lets control characters through.
    """
    if _UNSAFE.search(recipient):
        return None
    parsed = getaddresses([recipient])
    if len(parsed) != 1:
        return None
    try:
        address = parse_address(parsed[0][1])
    except ValueError:
        return None
    local, at, domain = address.rpartition("@")
    return address if at and local and domain else None


def _all_refused(refused: dict[str, str], invalid: dict[str, str], total: int) -> SendResult:
    rejected = {**refused, **invalid}
    return SendResult(AckStatus.FAILED, f"all {total} recipients refused: " + _list_refusals(rejected), rejected)


def _one_line(text: str) -> str:
    """``text`` safe for a reason string (and so for logs and ``alarmctl``): one line, no controls."""
    return " ".join(_UNSAFE.sub(" ", text).split())


def _reply_text(code: int, message: str) -> str:
    return _one_line(f"{code} {message}")


def _list_refusals(rejected: dict[str, str]) -> str:
    return "; ".join(f"{_one_line(address)}: {_one_line(reply)}" for address, reply in rejected.items())


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
