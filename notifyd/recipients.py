"""Who gets a reminder: addresses from the payload and the directory, checked against policy.

Pure: :func:`address_reminder` takes the payload, the calendar's directory entry and the
policy and returns the recipients, the refused addresses with the reason, and the
locale and zone to write in.

Rules:
- An EMAIL alarm goes to its ATTENDEE ``mailto:`` addresses (alarmd puts them in
  ``payload.recipients``); any other action (DISPLAY, AUDIO) goes to the calendar owner:
  ``payload.owner`` given at enqueue, else the directory's ``owner`` for the calendar.
- An address that is not one mailbox (controls, several addresses, no domain) is refused.
- Policy (``notifyd.allowed_domains``): the owner's own address is always allowed; others
  only when their domain is listed (``example.com`` exactly, ``*.example.com`` its
  subdomains, ``*`` anything). The default list is empty: only the owner. So the alarm
  queue cannot be used to mail arbitrary outsiders.
- Locale: ``payload.locale``, else the directory's; time zone: the directory's, else
  ``payload.tz`` (the calendar's zone at enqueue).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from email.utils import getaddresses
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiosmtplib.email import parse_address

from common.payload import AlarmPayload
from common.settings import ConfigError

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NOT_AN_ADDRESS = "not a valid address"
NOT_ALLOWED = "not an allowed recipient: its domain is not in notifyd.allowed_domains"


@dataclass(frozen=True)
class DirectoryEntry:
    owner: str = ""
    locale: str = ""
    tz: str = ""


class Directory:
    """Calendar id → owner address, locale and time zone, from a TOML file::

    [calendars."jac"]
    owner = "jac@example.com"
    locale = "fr"
    tz = "Europe/Paris"
    """

    def __init__(self, entries: dict[str, DirectoryEntry] | None = None) -> None:
        self._entries = entries or {}

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, calid: str) -> DirectoryEntry:
        return self._entries.get(calid, DirectoryEntry())

    @classmethod
    def load(cls, path: str | Path) -> Directory:
        """Read the file; :class:`ConfigError` names the entry that is wrong."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"notifyd.directory {path}: cannot read it ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"notifyd.directory {path} is not valid TOML: {exc}") from None
        calendars = data.get("calendars", {})
        if not isinstance(calendars, dict) or set(data) - {"calendars"}:
            raise ConfigError(f'notifyd.directory {path}: write one [calendars."CALID"] table per calendar')
        entries: dict[str, DirectoryEntry] = {}
        for calid, values in calendars.items():
            if not isinstance(values, dict) or set(values) - {"owner", "locale", "tz"}:
                raise ConfigError(f"notifyd.directory {path}: calendars.{calid} takes owner, locale and tz")
            if not all(isinstance(v, str) for v in values.values()):
                raise ConfigError(f"notifyd.directory {path}: calendars.{calid}: values must be strings")
            entry = DirectoryEntry(**values)
            if entry.owner and mailbox(entry.owner) is None:
                raise ConfigError(
                    f"notifyd.directory {path}: calendars.{calid}.owner {entry.owner!r} is not an address"
                )
            if entry.tz:
                try:
                    ZoneInfo(entry.tz)
                except (ZoneInfoNotFoundError, ValueError, OSError):
                    raise ConfigError(
                        f"notifyd.directory {path}: calendars.{calid}.tz {entry.tz!r} is not an IANA time zone"
                    ) from None
            entries[calid] = entry
        return cls(entries)


@dataclass(frozen=True)
class RecipientPolicy:
    """Which recipients besides the owner may be mailed (see the module doc)."""

    allowed_domains: tuple[str, ...] = ()

    def allows(self, address: str, owner: str) -> bool:
        if owner and address.lower() == owner.lower():
            return True
        domain = address.rpartition("@")[2].lower().rstrip(".")
        for pattern in self.allowed_domains:
            pattern = pattern.lower().strip()
            if pattern == "*" or domain == pattern:
                return True
            if pattern.startswith("*.") and domain.endswith(pattern[1:]):
                return True
        return False


@dataclass(frozen=True)
class Addressing:
    recipients: list[str]  # bare mailboxes, in order, no repeats
    refused: dict[str, str] = field(default_factory=dict)  # address as given → reason
    locale: str = ""
    tz: str = ""

    @property
    def total(self) -> int:
        return len(self.recipients) + len(self.refused)


def address_reminder(payload: AlarmPayload, entry: DirectoryEntry, policy: RecipientPolicy) -> Addressing:
    """Recipients of one reminder, and what to write it in (see the module doc)."""
    owner_given = payload.owner.strip() or entry.owner.strip()
    owner = mailbox(owner_given) or ""
    if payload.action.upper() == "EMAIL" and payload.recipients:
        candidates = list(payload.recipients)
    else:
        candidates = [owner_given] if owner_given else []
    recipients: list[str] = []
    refused: dict[str, str] = {}
    for candidate in candidates:
        if not candidate.strip():
            continue
        address = mailbox(candidate)
        if address is None:
            refused[candidate] = NOT_AN_ADDRESS
        elif not policy.allows(address, owner):
            refused[address] = NOT_ALLOWED
        elif address.lower() not in (r.lower() for r in recipients):
            recipients.append(address)
    return Addressing(recipients, refused, payload.locale or entry.locale, entry.tz or payload.tz)


def mailbox(recipient: str) -> str | None:
    """The mailbox of ``recipient`` (``bob@x`` or ``Bob <bob@x>``), or None if it is not one.

    Stricter than aiosmtplib's own check, which takes the first of several addresses
    and lets control characters through.
    """
    if _UNSAFE.search(recipient) or len(recipient) > 998:
        return None
    if _PLAIN_ADDRESS.fullmatch(recipient):
        # The common case, a bare dot-atom address, without the parsers (they are slow):
        # the same answer as _parsed_mailbox (a property test checks).
        domain = recipient.rpartition("@")[2]
        return recipient if len(recipient) <= 254 and _valid_domain(domain) else None
    return _parsed_mailbox(recipient)


def _parsed_mailbox(recipient: str) -> str | None:
    try:
        parsed = getaddresses([recipient])
    except RecursionError:  # the parser recurses once per ':' (group syntax): a thousand of them is no mailbox
        return None
    if len(parsed) != 1:
        return None
    try:
        address = parse_address(parsed[0][1])
    except ValueError:
        return None
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or len(address) > 254 or ("@" in local and not local.startswith('"')):
        return None
    return address if _valid_domain(domain) else None


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_ADDRESS_LITERAL = re.compile(r"^\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]$")


@lru_cache(maxsize=1024)
def _valid_domain(domain: str) -> bool:
    """A host name (internationalised names allowed) or an address literal such as [192.0.2.1]."""
    if _ADDRESS_LITERAL.match(domain):
        return True
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return len(ascii_domain) <= 253 and all(_LABEL.match(label) for label in ascii_domain.split("."))
