"""Configuration: a TOML file, then environment overrides, then validation.

The file comes from ``--config PATH`` or ``CALALARM_CONFIG``; without either the
embedded defaults apply (SQLite under ``var/``, in-process bus, SMTP on
127.0.0.1:8025). Every setting can be overridden by ``CALALARM_<SECTION>_<NAME>``,
e.g. ``CALALARM_DATABASE_URL``, ``CALALARM_BUS_URL``, ``CALALARM_SMTP_URL``,
``CALALARM_ALARMD_ACK_TIMEOUT``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ENV_PREFIX = "CALALARM_"
# The most alarmd.publish_ahead may be, and so the longest a subscriber holds a notification
# for its trigger (notifyd sends one due later than that after this long, with a warning).
PUBLISH_AHEAD_MAX = 10.0


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the setting and the fix."""


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///var/calalarm.db"


@dataclass(frozen=True)
class BusSettings:
    url: str = "memory://"


@dataclass(frozen=True)
class SmtpSettings:
    url: str = "smtp://127.0.0.1:25"
    sender: str = "Calendar reminders <calalarm@localhost>"
    timeout: float = 20.0  # per SMTP operation while a session opens (connect, TLS, EHLO, AUTH) and for QUIT
    # One message as a whole (its MAIL, RCPT and DATA have no timeout of their own),
    # waiting for a connection and a rate-limit token included.
    deadline: float = 40.0
    allow_plaintext: bool = False  # smtp:// without STARTTLS; only for a relay on this host or a trusted network
    username: str = ""
    password: str = field(default="", repr=False)  # prefer password_file or CALALARM_SMTP_PASSWORD
    password_file: str = ""  # a file holding the password (e.g. a systemd credential)
    # Persistent connections to the server. Each message is four round trips (MAIL, RCPT,
    # DATA, the data), each waiting for a busy event loop to come round: in a burst 12
    # overlap more of them, 2,450-2,640 reminders/s where 8 drained 2,030-2,430
    # (tests/benchmarks/dispatch_burst, embedded, five runs each, alternated). Lower it
    # for a relay that limits connections per client.
    pool_size: int = 12
    rate_limit: float = 0.0  # messages per second at most (token bucket); 0 = no limit
    rate_burst: int = 20  # messages that may go at once after an idle spell

    @property
    def endpoint(self) -> SmtpEndpoint:
        return SmtpEndpoint.parse(self.url, allow_plaintext=self.allow_plaintext)


@dataclass(frozen=True)
class SmtpEndpoint:
    """``smtp://host:port`` (STARTTLS required; plain text only with ``smtp.allow_plaintext``),
    ``smtp+starttls://`` (the same, spelled out), ``smtps://`` (TLS from the first byte)."""

    host: str
    port: int
    tls: str  # "plain" | "starttls" | "implicit"
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str, *, allow_plaintext: bool = False) -> SmtpEndpoint:
        parts = urlsplit(url)
        modes = {
            "smtp": ("plain" if allow_plaintext else "starttls", 25),
            "smtp+starttls": ("starttls", 587),
            "smtps": ("implicit", 465),
        }
        if parts.scheme not in modes:
            raise ConfigError(f"smtp.url {url!r}: scheme must be smtp://, smtp+starttls:// or smtps://")
        if allow_plaintext and parts.scheme != "smtp":
            raise ConfigError(f"smtp.allow_plaintext applies to smtp:// only, and smtp.url {url!r} asks for TLS")
        if not parts.hostname:
            raise ConfigError(f"smtp.url {url!r}: name the server, e.g. smtp://mail.example.com:25")
        tls, default_port = modes[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError:
            raise ConfigError(f"smtp.url {url!r}: the port is not a number") from None
        return cls(parts.hostname, port, tls, unquote(parts.username or ""), unquote(parts.password or ""))


@dataclass(frozen=True)
class AlarmdSettings:
    ack_timeout: float = 60.0  # seconds a published instance waits for its ack before it is due again
    # Seconds before its trigger an instance may be claimed and published; subscribers hold
    # it until the trigger (notifyd does), so claiming and the bus are off the critical path.
    # 0 = publish when due. At most PUBLISH_AHEAD_MAX.
    publish_ahead: float = 1.0
    batch_size: int = 100  # instances claimed per database round trip
    safety_poll: float = 30.0  # longest sleep, a backstop for wake-ups that were missed
    ack_to: str = "alarmd"  # the RENL address (queue) acks are sent to
    default_tz: str = "UTC"  # time zone for floating and all-day times when the enqueuer names none
    horizon_days: float = 7.0  # recurring series are materialised this far ahead (and at least the next instance)
    extend_every: float = 3600.0  # seconds between runs of the job that moves the horizon forward
    min_interval: float = 300.0  # seconds; denser alarms of one series are thinned to one per slot and reported
    max_attempts: int = 10  # publishes of one instance (missing acks and retry acks) before it is marked failed
    retry_base: float = 30.0  # seconds of backoff after the first retry ack or missing ack; doubles each time
    retry_cap: float = 3600.0  # longest backoff, seconds (each delay is jittered by ±20%)
    max_lateness: float = 3600.0  # seconds overdue at which a never-sent instance is expired, not sent; 0 = always send
    late_after: float = 60.0  # seconds overdue after which an instance is backlog, sent under alarmd.catchup_rate
    catchup_rate: float = 100.0  # backlog instances published per second (bursts of as many), most recent first
    history_retention: float = 30 * 86400.0  # seconds alarm_history rows are kept; purged hourly
    # Prometheus /metrics endpoint, "HOST:PORT" ("127.0.0.1:9464", ":9464" = every interface); "" = off.
    # ``alarmd --with-notifier`` serves notifyd's metrics here too.
    metrics_listen: str = ""


@dataclass(frozen=True)
class NotifydSettings:
    pool: str = "notifyd"  # notifyd instances with the same pool share the work
    # Notifications handled at once by one notifyd, and taken from the broker at once
    # (more would wait unacked while the publisher's RENL timeout runs). Also the most a
    # notifyd killed mid-send can mail twice. 2.5 per SMTP connection (smtp.pool_size):
    # the others render, wait for a connection or for their delivery record. 20 with 8
    # connections: reminders due in the same second reach the server p99 76-91 ms late
    # where 10 with 4 took 109-133 (tests/benchmarks/dispatch_timeliness, 20 a second);
    # 30 with 12 for bursts (see smtp.pool_size).
    concurrency: int = 30
    locale: str = "en"  # the language of a reminder when neither the enqueuer nor the directory names one
    templates: str = ""  # a directory of templates that override or add to the shipped ones
    directory: str = ""  # a TOML file mapping calendars to owner address, locale and time zone
    allowed_domains: tuple[str, ...] = ()  # recipients allowed besides the owner; "*.example.com", "*" = any
    attach_ics: bool = False  # add the occurrence as a text/calendar part
    description_max: int = 4000  # characters of the event description shown in a reminder
    dedup_retention: float = 14 * 86400.0  # seconds a sent reminder is remembered, to suppress resends
    metrics_listen: str = ""  # Prometheus /metrics endpoint of a separate notifyd, "HOST:PORT"; "" = off


LOG_FORMATS = ("text", "keyvalue", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class LoggingSettings:
    format: str = "text"  # "text" (for people), "keyvalue" (logfmt: key=value ...) or "json" (one object a line)
    level: str = "INFO"  # DEBUG, INFO, WARNING, ERROR; ``alarmd --log-level`` overrides it


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    alarmd: AlarmdSettings = field(default_factory=AlarmdSettings)
    notifyd: NotifydSettings = field(default_factory=NotifydSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def replace(self, **sections: Any) -> Settings:
        return dataclasses.replace(self, **sections)


_TOML_ALIASES = {("smtp", "from"): "sender"}
_SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "bus": BusSettings,
    "smtp": SmtpSettings,
    "alarmd": AlarmdSettings,
    "notifyd": NotifydSettings,
    "logging": LoggingSettings,
}


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or ``$CALALARM_CONFIG``), apply environment overrides, validate."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        given = raw.pop(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}] must be a table in {path}")
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in given.items():
            name = _TOML_ALIASES.get((section, key), key)
            if name not in names:
                raise ConfigError(f"unknown setting {section}.{key} in {path}")
            values[name] = value
        for name in names:
            env_name = f"{ENV_PREFIX}{section}_{name}".upper()
            if env_name in env:
                values[name] = env[env_name]
        sections[section] = _build(cls, section, values)
    if raw:
        raise ConfigError(f"unknown section(s) {sorted(raw)} in {path}")
    settings = Settings(**sections)
    _validate(settings)
    return settings


def _build(cls: type, section: str, values: dict[str, Any]) -> Any:
    defaults = cls()
    converted: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, kind = values[f.name], type(getattr(defaults, f.name))
        try:
            if kind is bool:
                converted[f.name] = value if isinstance(value, bool) else _boolean(value)
            elif kind is tuple:
                items = value if isinstance(value, list | tuple) else str(value).split(",")
                converted[f.name] = tuple(str(item).strip() for item in items if str(item).strip())
            else:
                converted[f.name] = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{section}.{f.name} must be a {kind.__name__}, got {value!r}") from None
    return cls(**converted)


def _boolean(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(text)


def _validate(settings: Settings) -> None:
    if settings.alarmd.ack_timeout <= 0:
        raise ConfigError("alarmd.ack_timeout must be a positive number of seconds")
    _validate_smtp(settings.smtp)
    if settings.alarmd.ack_timeout <= settings.smtp.deadline:
        raise ConfigError(
            f"alarmd.ack_timeout ({settings.alarmd.ack_timeout:g}s) must exceed smtp.deadline "
            f"({settings.smtp.deadline:g}s), the longest one reminder may take to send; otherwise slow sends "
            "are republished while still in progress and mailed twice"
        )
    if not 0 <= settings.alarmd.publish_ahead <= PUBLISH_AHEAD_MAX:
        raise ConfigError(
            f"alarmd.publish_ahead must be 0 to {PUBLISH_AHEAD_MAX:g} seconds (default 1): how early an "
            "instance may be published for its subscribers to hold until its trigger"
        )
    if settings.alarmd.batch_size < 1:
        raise ConfigError("alarmd.batch_size must be at least 1")
    if settings.alarmd.safety_poll <= 0:
        raise ConfigError("alarmd.safety_poll must be a positive number of seconds")
    if settings.alarmd.horizon_days <= 0:
        raise ConfigError("alarmd.horizon_days must be a positive number of days (default 7)")
    if settings.alarmd.extend_every <= 0:
        raise ConfigError("alarmd.extend_every must be a positive number of seconds (default 3600)")
    if settings.alarmd.extend_every >= settings.alarmd.horizon_days * 86400 / 2:
        raise ConfigError(
            "alarmd.extend_every must be well under the horizon (less than half of alarmd.horizon_days), "
            "or series run out of queued instances between two runs"
        )
    if settings.alarmd.min_interval < 0:
        raise ConfigError("alarmd.min_interval must be 0 (no limit) or a positive number of seconds")
    if settings.alarmd.max_attempts < 1:
        raise ConfigError("alarmd.max_attempts must be at least 1 (default 10)")
    if not 0 < settings.alarmd.retry_base <= settings.alarmd.retry_cap:
        raise ConfigError("alarmd.retry_base must be positive and at most alarmd.retry_cap (defaults 30 and 3600)")
    if settings.alarmd.max_lateness < 0:
        raise ConfigError("alarmd.max_lateness must be 0 (always send) or a positive number of seconds")
    if settings.alarmd.late_after < 0:
        raise ConfigError("alarmd.late_after must be 0 or a positive number of seconds (default 60)")
    if settings.alarmd.catchup_rate <= 0:
        raise ConfigError("alarmd.catchup_rate must be a positive number of instances per second (default 100)")
    if settings.alarmd.history_retention <= 0:
        raise ConfigError("alarmd.history_retention must be a positive number of seconds (default 30 days)")
    if settings.notifyd.concurrency < 1:
        raise ConfigError("notifyd.concurrency must be at least 1")
    if settings.notifyd.description_max < 100:
        raise ConfigError("notifyd.description_max must be at least 100 characters")
    if settings.notifyd.dedup_retention <= settings.alarmd.ack_timeout:
        raise ConfigError(
            "notifyd.dedup_retention must be longer than alarmd.ack_timeout (and should outlast every retry "
            "of an alarm; default 14 days), or a resent notification is mailed twice"
        )
    try:
        ZoneInfo(settings.alarmd.default_tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"alarmd.default_tz {settings.alarmd.default_tz!r} is not an IANA time zone") from None
    if not settings.database.url.startswith(("sqlite", "postgresql")):
        raise ConfigError(f"database.url {settings.database.url!r}: use sqlite:///PATH or postgresql+psycopg://…")
    if settings.alarmd.metrics_listen:
        parse_listen(settings.alarmd.metrics_listen, "alarmd.metrics_listen")
    if settings.notifyd.metrics_listen:
        parse_listen(settings.notifyd.metrics_listen, "notifyd.metrics_listen")
    if settings.logging.format.lower() not in LOG_FORMATS:
        raise ConfigError(f'logging.format {settings.logging.format!r}: use "text", "keyvalue" or "json"')
    if settings.logging.level.upper() not in LOG_LEVELS:
        raise ConfigError(f"logging.level {settings.logging.level!r}: use DEBUG, INFO, WARNING or ERROR")


def parse_listen(value: str, setting: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port): ``:PORT`` is every IPv4 interface, ``[::]:PORT`` every IPv6 one,
    port 0 a free port. ``setting`` names the setting in the :class:`ConfigError`."""
    host, colon, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        colon = ""  # an IPv6 address without brackets: the port cannot be told apart
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{setting} {value!r}: write HOST:PORT, e.g. 127.0.0.1:9464 (:9464 listens on every interface, "
            "[::1]:9464 on IPv6); leave it empty for no metrics endpoint"
        )
    return host or "0.0.0.0", int(port)


def _validate_smtp(smtp: SmtpSettings) -> None:
    endpoint = smtp.endpoint  # parses, raising ConfigError on a bad URL
    if smtp.timeout <= 0:
        raise ConfigError("smtp.timeout must be a positive number of seconds")
    if smtp.deadline < smtp.timeout:
        raise ConfigError(
            f"smtp.deadline ({smtp.deadline:g}s) bounds a whole message and must be at least smtp.timeout "
            f"({smtp.timeout:g}s), which bounds one SMTP command"
        )
    if smtp.pool_size < 1:
        raise ConfigError("smtp.pool_size must be at least 1")
    if smtp.rate_limit < 0:
        raise ConfigError("smtp.rate_limit must be 0 (no limit) or a positive number of messages per second")
    if smtp.rate_burst < 1:
        raise ConfigError("smtp.rate_burst must be at least 1")
    if smtp.password and smtp.password_file:
        raise ConfigError("set smtp.password or smtp.password_file, not both")
    if smtp.allow_plaintext and (smtp.username or endpoint.username) and not _loopback(endpoint.host):
        raise ConfigError(
            f"smtp.allow_plaintext with AUTH would send the SMTP password in clear text to {endpoint.host}; "
            "use TLS (drop allow_plaintext) or a relay on this host"
        )


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def smtp_password(smtp: SmtpSettings, env: Mapping[str, str] | None = None) -> str:
    """The SMTP password: ``smtp.password`` (or ``CALALARM_SMTP_PASSWORD``), else the content of
    ``smtp.password_file``, else the systemd credential ``smtp-password`` (``LoadCredential=``),
    else the password in the URL. Never log the result."""
    env = os.environ if env is None else env
    if smtp.password:
        return smtp.password
    candidates = [smtp.password_file] if smtp.password_file else []
    if not candidates and env.get("CREDENTIALS_DIRECTORY"):
        credential = Path(env["CREDENTIALS_DIRECTORY"]) / "smtp-password"
        if credential.exists():
            candidates.append(str(credential))
    for path in candidates:
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"smtp.password_file {path}: cannot read it ({exc.strerror})") from None
    return smtp.endpoint.password
