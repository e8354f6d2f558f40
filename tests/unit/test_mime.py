"""notifyd.mime: what it writes must read back, with the standard library, as exactly what was given."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifyd import mime
from notifyd.email import clean_header, clean_text
from tests.messages import parse_message

# Text as it reaches the header writer: anything, cleaned as notifyd cleans it.
header_text = st.text(max_size=300).map(lambda value: clean_header(value, 1000))
body_text = st.text(max_size=2000).map(lambda value: clean_text(value, 5000))


def one_header(name: str, value: str) -> bytes:
    return mime.message_bytes([(name, value)], mime.text_part("plain", "body\n"))


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


@given(header_text)
def test_unstructured_reads_back_as_given(text: str) -> None:
    raw = one_header("Subject", mime.unstructured("Subject", text))
    assert raw.isascii()
    parsed = parse_message(raw)
    assert parsed["Subject"] == text
    assert [k for k in parsed] == ["Subject", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"]


@given(st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=12), min_size=1, max_size=40))
def test_ascii_words_are_folded_under_78(words: list[str]) -> None:
    text = " ".join(words)
    raw = one_header("Subject", mime.unstructured("Subject", text))
    assert all(len(line) <= mime.LINE for line in header_lines(raw))
    assert parse_message(raw)["Subject"] == text


@given(header_text)
def test_encoded_words_keep_lines_short(text: str) -> None:
    value = mime.encoded_words(text)
    assert all(len(line) <= 76 for line in value.split("\r\n"))
    assert parse_message(one_header("Subject", value))["Subject"] == text


def test_a_long_word_keeps_its_own_line() -> None:
    ref = "enp:///ics/eventalarm?calid=" + "c" * 300
    raw = one_header("X-Alarm-Ref", mime.unstructured("X-Alarm-Ref", ref))
    assert b"X-Alarm-Ref: " + ref.encode() + b"\r\n" in raw


@pytest.mark.parametrize(
    "text",
    ["=?utf-8?q?a=0Ab?=", "plain =?x?= text", "Réunion", "会議", "emoji 📅 here", ""],
)
def test_text_a_reader_would_decode_is_encoded(text: str) -> None:
    value = mime.unstructured("Subject", text)
    if text and ("=?" in text or not text.isascii()):
        assert value.startswith("=?utf-8?b?")
    assert parse_message(one_header("Subject", value))["Subject"] == text


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("bob@example.com", "bob@example.com"),
        ("bob@exämple.com", "bob@xn--exmple-cua.com"),
        ("bob@[192.0.2.1]", "bob@[192.0.2.1]"),
        ("jörg@example.com", None),
        ("no-at-sign", None),
    ],
)
def test_header_address(address: str, expected: str | None) -> None:
    assert mime.header_address(address) == expected


@pytest.mark.parametrize(
    "name",
    ["Calendar reminders", 'Team "A" \\ B', "Smith, John", "Zoë Réminder", "=?utf-8?q?x?=", "a.b (c)"],
)
def test_phrase_reads_back_as_the_display_name(name: str) -> None:
    value = mime.address_list("From", [f"{mime.phrase(name)} <cal@example.com>"])
    parsed = parse_message(one_header("From", value))
    (address,) = parsed["From"].addresses
    assert address.display_name == name
    assert address.addr_spec == "cal@example.com"


@given(st.lists(st.from_regex(r"[a-z]{1,20}@[a-z]{1,20}\.example", fullmatch=True), min_size=1, max_size=30))
def test_address_lists_fold_between_addresses(addresses: list[str]) -> None:
    raw = one_header("To", mime.address_list("To", addresses))
    assert all(len(line) <= mime.LINE for line in header_lines(raw))
    assert [a.addr_spec for a in parse_message(raw)["To"].addresses] == addresses


@given(body_text)
def test_text_part_reads_back_as_given(text: str) -> None:
    raw = mime.message_bytes([("Subject", "x")], mime.text_part("plain", text))
    assert raw.isascii()
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    content = parse_message(raw).get_content()
    expected = text if text.endswith("\n") else text + "\n"
    assert content.replace("\r\n", "\n") == expected


def test_lines_that_matter_to_smtp_survive() -> None:
    text = ".\n.hidden\nFrom here\ntrailing   \n-- \n"
    raw = mime.message_bytes([], mime.text_part("plain", text))
    assert parse_message(raw).get_content().replace("\r\n", "\n") == text


@given(st.binary(max_size=3000))
def test_attachment_reads_back_as_given(data: bytes) -> None:
    part = mime.attachment("application/octet-stream", data, "x.bin", (("name", "x.bin"),))
    raw = mime.message_bytes([], mime.Multipart("mixed", (mime.text_part("plain", "hi"), part), mime.new_boundary()))
    (attached,) = list(parse_message(raw).iter_attachments())
    assert attached.get_filename() == "x.bin"
    assert attached.get_content() == data


def test_boundaries_are_unique_and_cannot_occur_in_bodies() -> None:
    boundaries = {mime.new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    assert all(b.startswith("=_") for b in boundaries)
    # "=_" never appears in quoted-printable ("=" is written =3D) or base64 output.
    assert b"=_" not in mime.text_part("plain", "=_calalarm_ x = _ =_").body.encode()


@pytest.mark.parametrize("value", ['a"b', "a\\b", "é", "a\r\nb"])
def test_quote_param_refuses_what_it_cannot_quote(value: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        mime.quote_param(value)
