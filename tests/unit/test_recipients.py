"""Who gets a reminder: payload and directory addresses, the domain policy, mailbox parsing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.settings import ConfigError
from notifyd.recipients import (
    NOT_ALLOWED,
    NOT_AN_ADDRESS,
    Addressing,
    Directory,
    DirectoryEntry,
    RecipientPolicy,
    _parsed_mailbox,
    address_reminder,
    mailbox,
)
from tests.payloads import sample_payload

NO_ENTRY = DirectoryEntry()
EXAMPLE_ONLY = RecipientPolicy(("example.com",))


def test_reasons_are_the_documented_words() -> None:
    assert NOT_AN_ADDRESS == "not a valid address"
    assert NOT_ALLOWED == "not an allowed recipient: its domain is not in notifyd.allowed_domains"


# --- address_reminder ------------------------------------------------------------------------


def test_display_alarm_goes_to_the_owner() -> None:
    result = address_reminder(sample_payload(), NO_ENTRY, RecipientPolicy())
    assert result == Addressing(["jac@example.com"], {}, "", "Europe/Paris")
    assert result.total == 1


@pytest.mark.parametrize("action", ["DISPLAY", "AUDIO", "PROCEDURE"])
def test_non_email_alarm_ignores_its_recipients(action: str) -> None:
    payload = sample_payload(action=action, recipients=["bob@example.com"])
    assert address_reminder(payload, NO_ENTRY, EXAMPLE_ONLY).recipients == ["jac@example.com"]


@pytest.mark.parametrize("action", ["EMAIL", "email", "Email"])
def test_email_alarm_goes_to_its_recipients(action: str) -> None:
    payload = sample_payload(action=action, recipients=["bob@example.com", "Al <al@example.com>"])
    result = address_reminder(payload, NO_ENTRY, EXAMPLE_ONLY)
    assert result.recipients == ["bob@example.com", "al@example.com"]
    assert result.refused == {}
    assert result.total == 2


def test_email_alarm_without_recipients_goes_to_the_owner() -> None:
    payload = sample_payload(action="EMAIL", recipients=[])
    assert address_reminder(payload, NO_ENTRY, RecipientPolicy()).recipients == ["jac@example.com"]


def test_owner_comes_from_the_directory_when_the_payload_has_none() -> None:
    entry = DirectoryEntry(owner="Jac <jac@example.org>")
    result = address_reminder(sample_payload(owner=""), entry, RecipientPolicy())
    assert result.recipients == ["jac@example.org"]
    assert result.refused == {}


def test_payload_owner_wins_over_the_directory() -> None:
    entry = DirectoryEntry(owner="other@example.org")
    assert address_reminder(sample_payload(), entry, RecipientPolicy()).recipients == ["jac@example.com"]


def test_directory_owner_is_allowed_like_any_owner() -> None:
    entry = DirectoryEntry(owner="jac@example.org")
    payload = sample_payload(owner="", action="EMAIL", recipients=["JAC@example.org", "bob@example.org"])
    result = address_reminder(payload, entry, RecipientPolicy())
    assert result.recipients == ["JAC@example.org"]
    assert result.refused == {"bob@example.org": NOT_ALLOWED}


def test_no_owner_anywhere_means_nobody() -> None:
    result = address_reminder(sample_payload(owner="  "), NO_ENTRY, RecipientPolicy(("*",)))
    assert result == Addressing([], {}, "", "Europe/Paris")
    assert result.total == 0


@pytest.mark.parametrize(
    "bad",
    [
        "not an address",
        "bob@",
        "@example.com",
        "a@example.com, b@example.com",
        "x@example.com\r\nBcc: victim@example.com",
        "x@example.com\u2028",
        "x\x00@example.com",
    ],
)
def test_invalid_addresses_are_refused(bad: str) -> None:
    payload = sample_payload(action="EMAIL", recipients=[bad, "bob@example.com"])
    result = address_reminder(payload, NO_ENTRY, RecipientPolicy(("*",)))
    assert result.recipients == ["bob@example.com"]
    assert result.refused == {bad: "not a valid address"}
    assert result.total == 2


def test_invalid_owner_is_refused() -> None:
    result = address_reminder(sample_payload(owner="jac at example"), NO_ENTRY, RecipientPolicy(("*",)))
    assert result.recipients == []
    assert result.refused == {"jac at example": NOT_AN_ADDRESS}


def test_addresses_outside_the_allowed_domains_are_refused() -> None:
    payload = sample_payload(
        action="EMAIL", recipients=["bob@example.com", "Eve <eve@evil.test>", "mallory@sub.example.com"]
    )
    result = address_reminder(payload, NO_ENTRY, EXAMPLE_ONLY)
    assert result.recipients == ["bob@example.com"]
    assert result.refused == {"eve@evil.test": NOT_ALLOWED, "mallory@sub.example.com": NOT_ALLOWED}
    assert result.total == 3


def test_default_policy_allows_only_the_owner() -> None:
    payload = sample_payload(action="EMAIL", recipients=["bob@example.com", "jac@example.com"])
    result = address_reminder(payload, NO_ENTRY, RecipientPolicy())
    assert result.recipients == ["jac@example.com"]
    assert result.refused == {"bob@example.com": NOT_ALLOWED}


def test_owner_is_allowed_whatever_the_domains() -> None:
    payload = sample_payload(owner="Jac <jac@private.test>")
    result = address_reminder(payload, NO_ENTRY, RecipientPolicy(("example.com",)))
    assert result.recipients == ["jac@private.test"]
    assert result.refused == {}


def test_owner_match_is_case_insensitive() -> None:
    payload = sample_payload(action="EMAIL", recipients=["JAC@Example.COM"])
    result = address_reminder(payload, NO_ENTRY, RecipientPolicy())
    assert result.recipients == ["JAC@Example.COM"]
    assert result.refused == {}


def test_duplicates_are_dropped_keeping_the_first() -> None:
    payload = sample_payload(
        action="EMAIL",
        recipients=["bob@example.com", "Bob <BOB@example.com>", "al@example.com", "bob@EXAMPLE.com", "al@example.com"],
    )
    result = address_reminder(payload, NO_ENTRY, EXAMPLE_ONLY)
    assert result.recipients == ["bob@example.com", "al@example.com"]
    assert result.refused == {}


def test_blank_recipients_are_skipped() -> None:
    payload = sample_payload(action="EMAIL", recipients=["", "  ", "bob@example.com"])
    result = address_reminder(payload, NO_ENTRY, EXAMPLE_ONLY)
    assert result.recipients == ["bob@example.com"]
    assert result.refused == {}


@pytest.mark.parametrize(
    ("payload_locale", "entry_locale", "locale"),
    [("fr", "de", "fr"), ("", "de", "de"), ("fr", "", "fr"), ("", "", "")],
)
def test_locale_prefers_the_payload(payload_locale: str, entry_locale: str, locale: str) -> None:
    result = address_reminder(sample_payload(locale=payload_locale), DirectoryEntry(locale=entry_locale), EXAMPLE_ONLY)
    assert result.locale == locale


@pytest.mark.parametrize(
    ("payload_tz", "entry_tz", "tz"),
    [
        ("Europe/Paris", "America/New_York", "America/New_York"),
        ("Europe/Paris", "", "Europe/Paris"),
        ("", "Asia/Tokyo", "Asia/Tokyo"),
        ("", "", ""),
    ],
)
def test_time_zone_prefers_the_directory(payload_tz: str, entry_tz: str, tz: str) -> None:
    result = address_reminder(sample_payload(tz=payload_tz), DirectoryEntry(tz=entry_tz), EXAMPLE_ONLY)
    assert result.tz == tz


# --- RecipientPolicy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domains", "address", "allowed"),
    [
        (("example.com",), "a@example.com", True),
        (("example.com",), "a@EXAMPLE.COM", True),
        (("Example.COM",), "a@example.com", True),
        ((" example.com ",), "a@example.com", True),
        (("example.com",), "a@example.com.", True),
        (("example.com",), "a@sub.example.com", False),
        (("example.com",), "a@notexample.com", False),
        (("example.com",), "a@example.org", False),
        (("*.example.com",), "a@sub.example.com", True),
        (("*.example.com",), "a@a.b.example.com", True),
        (("*.example.com",), "a@SUB.Example.Com", True),
        (("*.example.com",), "a@example.com", False),
        (("*.example.com",), "a@evilexample.com", False),
        (("*.example.com",), "a@example.com.evil.test", False),
        (("*",), "a@anything.test", True),
        (("*",), "a@example.com", True),
        (("example.org", "*.example.com"), "a@x.example.com", True),
        (("example.org", "*.example.com"), "a@example.org", True),
        (("example.org", "*.example.com"), "a@example.net", False),
        ((), "a@example.com", False),
    ],
)
def test_policy_domains(domains: tuple[str, ...], address: str, allowed: bool) -> None:
    assert RecipientPolicy(domains).allows(address, owner="") is allowed


@pytest.mark.parametrize(
    ("address", "owner", "allowed"),
    [
        ("jac@example.com", "jac@example.com", True),
        ("JAC@EXAMPLE.COM", "jac@example.com", True),
        ("jac@example.com", "JAC@Example.com", True),
        ("bob@example.com", "jac@example.com", False),
        ("jac@example.com.evil.test", "jac@example.com", False),
        ("jac@example.com", "", False),
    ],
)
def test_policy_owner(address: str, owner: str, allowed: bool) -> None:
    assert RecipientPolicy().allows(address, owner) is allowed


def test_policy_default_is_empty() -> None:
    assert RecipientPolicy().allowed_domains == ()


# --- mailbox -----------------------------------------------------------------------------------


LONG_DOMAIN = ".".join(["b" * 61] * 3) + ".com"  # labels of at most 63 characters


@pytest.mark.parametrize(
    ("recipient", "address"),
    [
        ("bob@example.com", "bob@example.com"),
        ("  bob@example.com  ", "bob@example.com"),
        ("Bob <bob@example.com>", "bob@example.com"),
        ('"Bob, the builder" <bob@example.com>', "bob@example.com"),
        ("<bob@example.com>", "bob@example.com"),
        ('"john doe"@example.com', '"john doe"@example.com'),
        ('"a@b"@example.com', '"a@b"@example.com'),
        ("a" * 64 + "@" + LONG_DOMAIN, "a" * 64 + "@" + LONG_DOMAIN),  # 254 characters
    ],
)
def test_mailbox_accepts_one_address(recipient: str, address: str) -> None:
    assert mailbox(recipient) == address


@pytest.mark.parametrize(
    "recipient",
    [
        "",
        "bob",
        "bob@",
        "@example.com",
        "Bob <>",
        "a@example.com, b@example.com",
        "Bob <bob@example.com>, Al <al@example.com>",
        "a@b@example.com",
        "bob@example.com\r\nBcc: victim@example.com",
        "bob@example.com\n",
        "bob\x00@example.com",
        "bob@example.com\x7f",
        "bob@example.com\x85",
        "bob@example.com\u2028",
        "bob@example.com\u2029",
        "bob\t@example.com",
        "a" * 64 + "@" + "b" * 186 + ".com",  # 255 characters
        "x" * 999,
    ],
)
def test_mailbox_refuses_anything_else(recipient: str) -> None:
    assert mailbox(recipient) is None


@pytest.mark.parametrize(
    "recipient",
    ["=?utf-8?q?Lunch=0D=0ABcc:_victim@example.com?=", "bob@example.com?=", "bob@example..com"],
)
def test_mailbox_refuses_a_malformed_domain(recipient: str) -> None:
    assert mailbox(recipient) is None


# --- Directory ---------------------------------------------------------------------------------

VALID = """
[calendars."jac"]
owner = "Jac <jac@example.com>"
locale = "fr"
tz = "Europe/Paris"

[calendars."team/shared"]
owner = "team@example.org"

[calendars.empty]
"""


def test_directory_loads_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text(VALID, encoding="utf-8")
    directory = Directory.load(path)
    assert len(directory) == 3
    assert directory.entry("jac") == DirectoryEntry("Jac <jac@example.com>", "fr", "Europe/Paris")
    assert directory.entry("team/shared") == DirectoryEntry(owner="team@example.org")
    assert directory.entry("empty") == DirectoryEntry()
    assert directory.entry("unknown") == DirectoryEntry()
    assert Directory.load(str(path)).entry("jac").tz == "Europe/Paris"


def test_directory_entry_feeds_address_reminder(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text(VALID, encoding="utf-8")
    entry = Directory.load(path).entry("jac")
    result = address_reminder(sample_payload(owner="", tz="UTC"), entry, RecipientPolicy())
    assert result == Addressing(["jac@example.com"], {}, "fr", "Europe/Paris")


def test_empty_directory(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text("", encoding="utf-8")
    assert len(Directory.load(path)) == 0
    assert len(Directory()) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[calendars."jac"\nowner = "x"\n', "is not valid TOML: "),
        ('owner = "jac@example.com"\n', 'write one [calendars."CALID"] table per calendar'),
        ('calendars = "jac"\n', 'write one [calendars."CALID"] table per calendar'),
        ('[calendars]\njac = "jac@example.com"\n', "calendars.jac takes owner, locale and tz"),
        (
            '[calendars."jac"]\nowner = "jac@example.com"\nemail = "jac@example.com"\n',
            "calendars.jac takes owner, locale and tz",
        ),
        ('[calendars."jac"]\nowner = 42\n', "calendars.jac: values must be strings"),
        ('[calendars."jac"]\nowner = "not an address"\n', "calendars.jac.owner 'not an address' is not an address"),
        (
            '[calendars."jac"]\nowner = "a@example.com, b@example.com"\n',
            "calendars.jac.owner 'a@example.com, b@example.com' is not an address",
        ),
        (
            '[calendars."jac"]\ntz = "Mars/Olympus_Mons"\n',
            "calendars.jac.tz 'Mars/Olympus_Mons' is not an IANA time zone",
        ),
        ('[calendars."jac"]\ntz = "../etc/passwd"\n', "calendars.jac.tz '../etc/passwd' is not an IANA time zone"),
        ('[calendars."jac"]\ntz = "/etc/localtime"\n', "calendars.jac.tz '/etc/localtime' is not an IANA time zone"),
        ('[calendars.ok]\ntz = "UTC"\n[calendars.bad]\ntz = "europe/nowhere"\n', "calendars.bad.tz 'europe/nowhere'"),
    ],
)
def test_directory_errors_name_the_entry(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "directory.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        Directory.load(path)
    assert str(excinfo.value).startswith(f"notifyd.directory {path}")
    assert message in str(excinfo.value)


def test_missing_directory_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=re.escape(f"notifyd.directory {path}: cannot read it (")):
        Directory.load(path)


def test_directory_tz_naming_a_zone_directory_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text('[calendars."jac"]\ntz = "Europe"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape("calendars.jac.tz 'Europe' is not an IANA time zone")):
        Directory.load(path)


_ATEXT = "abcxyzABZ019!#$%&'*+/=?^_`{|}~-"


@given(
    st.from_regex(
        rf"[{re.escape(_ATEXT)}]{{1,8}}(\.[{re.escape(_ATEXT)}]{{1,8}}){{0,2}}@[a-z0-9-]{{1,10}}(\.[a-z0-9-]{{1,10}}){{0,3}}",
        fullmatch=True,
    )
)
def test_the_plain_address_shortcut_agrees_with_the_parsers(address: str) -> None:
    assert mailbox(address) == _parsed_mailbox(address)


def test_an_address_that_overflows_the_parser_is_refused_not_raised() -> None:
    # The standard library's parser recurses once per ':' (group syntax); under 998 characters
    # that still overflows a stack as deep as a notifier's handler.
    owner = ":" * 980 + "jac@example.com"

    def at_depth(frames: int) -> Addressing:
        if frames:
            return at_depth(frames - 1)
        return address_reminder(sample_payload(owner=owner), NO_ENTRY, RecipientPolicy(("*",)))

    result = at_depth(100)
    assert result.recipients == []
    assert result.refused == {owner: NOT_AN_ADDRESS}
