"""``alarmctl check`` (configuration, notifyd's files, database, bus and SMTP server: one
line each) and ``alarmctl test-email`` (one real message through notifyd's SMTP sender).

notifyd's modules are imported by the functions that use them, so that the other
commands do not load them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from alarmd.cli.context import (
    EXIT_DATABASE,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Context,
    fail,
    safe_url,
)
from alarmd.cli.output import emit_json
from common.clock import utcnow
from common.db import migrate
from common.ens import BusError, BusUnavailable, create_bus
from common.settings import ConfigError, Settings, load_settings


@dataclass(frozen=True)
class Check:
    """One line of ``alarmctl check``: what was checked, whether it passed, the facts or
    the reason with the fix, and the exit code it stands for when it failed."""

    name: str
    target: str
    ok: bool
    detail: str
    code: int = EXIT_OK

    def line(self) -> str:
        return f"{self.name:<13} {self.target}: " + (f"ok ({self.detail})" if self.ok else f"FAILED: {self.detail}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "ok": self.ok, "detail": self.detail, "code": self.code}


def exit_code(checks: Sequence[Check]) -> int:
    """``check``'s exit status: 0 when every check passed, else the lowest code of a
    failed one (configuration 2, database 3, bus and SMTP 4)."""
    return min((c.code for c in checks if not c.ok), default=EXIT_OK)


@click.command()
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 300), help="Seconds per check.")
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": bool, "checks": [...]}.')
@click.pass_obj
def check(obj: Context, timeout: float, as_json: bool) -> None:
    """Check the configuration, and that the database, the bus and the SMTP server (TLS
    verified, AUTH) can be reached; one line each. Exit 2 (configuration), 3 (database)
    or 4 (bus or SMTP) naming what is wrong."""
    _quiet_library_logs()
    source = obj.config or os.environ.get("CALALARM_CONFIG") or "defaults and CALALARM_* variables"
    try:
        settings = load_settings(obj.config)
    except ConfigError as exc:
        checks = [Check("configuration", source, False, f"{exc}", EXIT_USAGE)]
    else:
        checks = [Check("configuration", source, True, "settings valid"), _check_notifyd_files(settings)]
        checks.append(_check_database(settings.database.url))
        checks.extend(asyncio.run(_check_services(settings, timeout)))
    if as_json:
        emit_json({"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]})
    else:
        for c in checks:
            click.echo(c.line())
    failed = [c.name for c in checks if not c.ok]
    if failed:
        click.echo(f"alarmctl: check failed: {', '.join(failed)}", err=True)
    sys.exit(exit_code(checks))


def _quiet_library_logs() -> None:
    """The checks report failures themselves; aio-pika's and aiosmtplib's own log lines would repeat them."""
    logging.getLogger().addHandler(logging.NullHandler())


def _check_notifyd_files(settings: Settings) -> Check:
    from notifyd.email import sample_context
    from notifyd.recipients import Directory
    from notifyd.templates import Templates

    options = settings.notifyd
    target = f"templates {options.templates or '(shipped)'}" + (
        f", directory {options.directory}" if options.directory else ""
    )
    try:
        templates = Templates(options.templates, options.locale)
        templates.check(sample_context())
        if options.directory:
            Directory.load(options.directory)
    except ConfigError as exc:
        return Check("notifyd files", target, False, str(exc), EXIT_USAGE)
    return Check("notifyd files", target, True, f"locales {', '.join(sorted(templates.locales))}")


def _check_database(url: str) -> Check:
    target = safe_url(url)
    parsed = sa.engine.make_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" and parsed.database != ":memory:" else None
    if file and not Path(file).exists():  # connecting would create an empty file
        return Check(
            "database",
            target,
            False,
            f"{file} does not exist; fix: check database.url, or create it with 'alarmctl db upgrade'",
            EXIT_DATABASE,
        )
    try:
        current, head = migrate.current_revision(url), migrate.head_revision()
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        return Check(
            "database",
            target,
            False,
            f"cannot connect: {reason}; fix: check database.url and that the server is running",
            EXIT_DATABASE,
        )
    if current != head:
        return Check(
            "database",
            target,
            False,
            f"at revision {current or 'none'}, not {head}; fix: run 'alarmctl db upgrade'",
            EXIT_DATABASE,
        )
    return Check("database", target, True, f"revision {current}")


async def _check_services(settings: Settings, seconds: float) -> list[Check]:
    return [await _check_bus(settings.bus.url, seconds), await _check_smtp(settings, seconds)]


async def _check_bus(url: str, seconds: float) -> Check:
    from common.ens.amqp import redacted

    target = redacted(url)
    if url.startswith("memory:"):
        return Check("bus", target, True, "in-process bus: nothing to reach; only alarmd --with-notifier uses it")
    try:
        bus = create_bus(url)
    except BusError as exc:
        return Check("bus", target, False, f"{exc}; fix: bus.url", EXIT_USAGE)
    try:
        async with asyncio.timeout(seconds):
            await bus.start()
    except (BusUnavailable, TimeoutError) as exc:
        reason = str(exc) or f"no answer within {seconds:g} s"
        return Check(
            "bus",
            target,
            False,
            f"{reason}; fix: check bus.url (host, port, user, password, vhost) and that RabbitMQ is running",
            EXIT_UNREACHABLE,
        )
    except BusError as exc:
        return Check("bus", target, False, f"{exc}; fix: bus.url", EXIT_USAGE)
    finally:
        await bus.close()
    return Check("bus", target, True, "connected, exchange declared")


async def _check_smtp(settings: Settings, seconds: float) -> Check:
    """Open one SMTP session exactly as notifyd's sender does (:meth:`SmtpSender.check`:
    TLS mode of the URL, certificate verification, AUTH), then QUIT."""
    from notifyd.smtp import SmtpCheckFailed, SmtpSender

    smtp_settings = settings.smtp
    endpoint = smtp_settings.endpoint
    target = f"{smtp_settings.url.partition('://')[0]}://{endpoint.host}:{endpoint.port}"
    try:
        sender = SmtpSender(smtp_settings)
    except ConfigError as exc:
        return Check("smtp", target, False, str(exc), EXIT_USAGE)
    try:
        session = await sender.check(timeout=seconds)
    except SmtpCheckFailed as exc:
        return Check("smtp", target, False, f"{exc.reason}; fix: {_smtp_fix(exc.reason)}", EXIT_UNREACHABLE)
    finally:
        await sender.close()
    mode = {
        "starttls": "STARTTLS",
        "implicit": "TLS from the first byte (smtps)",
        "plain": "plain text (smtp.allow_plaintext)",
    }[session.tls]
    facts = [mode]
    if session.certificate_verified:
        facts.append("certificate verified")
    facts.append(f"AUTH as {session.auth}" if session.auth else "no AUTH")
    return Check("smtp", target, True, ", ".join(facts))


def _smtp_fix(reason: str) -> str:
    lowered = reason.lower()
    if "certificate" in lowered or "ssl" in lowered or ("tls" in lowered and "starttls" not in lowered):
        return (
            "the server's certificate must be valid for the host in smtp.url and signed by a CA this machine "
            "trusts (system store or SSL_CERT_FILE); calalarm never skips verification"
        )
    if "starttls" in lowered:
        return (
            "the server does not offer STARTTLS: use smtps:// if it speaks TLS from the first byte, or "
            "smtp.allow_plaintext = true for a relay on this host"
        )
    if "auth" in lowered:
        return "check smtp.username and the password (smtp.password_file, CALALARM_SMTP_PASSWORD)"
    return "check smtp.url (host and port) and that the SMTP server is running"


def build_test_message(sender: str, recipient: str, now: datetime, server: str) -> tuple[bytes, str]:
    """The message ``alarmctl test-email`` sends, as SMTP sends it, and its Message-ID:
    written by notifyd's MIME code with the reminders' header rules (cleaned values,
    encoded words, Auto-Submitted)."""
    from notifyd import mime
    from notifyd.email import ADDRESS_MAX, clean_header
    from notifyd.recipients import mailbox

    name, address = getaddresses([clean_header(sender, ADDRESS_MAX)])[0]
    from_address = mime.header_address(mailbox(address) or "") or "calalarm@calalarm.invalid"
    to_address = mime.header_address(recipient)
    domain = from_address.rpartition("@")[2]
    message_id = make_msgid(domain=domain)
    headers = [
        ("From", f"{mime.phrase(clean_header(name, ADDRESS_MAX))} <{from_address}>" if name else from_address),
        ("To", to_address or "undisclosed-recipients:;"),
        ("Subject", mime.unstructured("Subject", "calalarm test message")),
        ("Date", format_datetime(now.astimezone(UTC))),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-generated"),
    ]
    body = (
        "This is a test message from calalarm, sent by 'alarmctl test-email' through the SMTP server\n"
        f"{server} at {now.astimezone(UTC).isoformat(timespec='seconds').replace('+00:00', 'Z')}.\n\n"
        "Calendar reminders sent the same way can reach this address.\n"
    )
    return mime.message_bytes(headers, mime.text_part("plain", body)), message_id


@click.command("test-email")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help='Print {"status", "reason", "server", ...}.')
@click.pass_obj
def test_email(obj: Context, address: str, as_json: bool) -> None:
    """Send one real message ("calalarm test message") to ADDRESS through notifyd's SMTP
    sender and its settings. Exit 1 when the server refuses it, 4 when it cannot be
    handed over (connection, TLS, AUTH, or a 4xx reply)."""
    from common.ens.envelope import AckStatus
    from notifyd.recipients import mailbox
    from notifyd.smtp import SendResult, SmtpSender

    settings = obj.settings
    recipient = mailbox(address)
    if recipient is None:
        fail(f"{address!r} is not one email address", EXIT_USAGE)
    to: str = recipient
    _quiet_library_logs()

    async def send() -> tuple[SendResult, str, str]:
        sender = SmtpSender(settings.smtp)
        try:
            message, message_id = build_test_message(settings.smtp.sender, to, utcnow(), sender.server)
            return await sender.send(message, [to]), message_id, sender.server
        finally:
            await sender.close()

    try:
        result, message_id, server = asyncio.run(send())
    except ConfigError as exc:
        fail(f"configuration: {exc}", EXIT_USAGE)
    sent = result.status is AckStatus.DELIVERED and not result.rejected
    body = {
        "sent": sent,
        "status": result.status.value,
        "reason": result.reason,
        "server": server,
        "recipient": recipient,
        "message_id": message_id,
        "reply": result.reply_line(),
    }
    if as_json:
        emit_json(body)
    elif sent:
        reply = f" ({result.reply_line()})" if result.reply else ""
        click.echo(f"test message {message_id} to {recipient}: accepted by the SMTP server {server}{reply}")
    else:
        click.echo(f"test message to {recipient} not sent: {result.reason}")
    if not sent:
        sys.exit(EXIT_REJECTED if result.status is not AckStatus.RETRY else EXIT_UNREACHABLE)
