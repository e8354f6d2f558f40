"""The SMTP client's DATA fast path prepares a message exactly as aiosmtplib's ``SMTP.data`` would."""

from __future__ import annotations

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from notifyd.smtp import dot_stuffed, in_smtp_form

# Lines built from the characters that matter here: dots, CR, LF, and some text.
_pieces = st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b" ", b"=2E", b"\xc3\xa9"]), max_size=30)


def as_aiosmtplib_sends(message: bytes) -> bytes:
    """What ``SMTPProtocol.execute_data_command`` writes before the end-of-data line."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))


@given(_pieces)
def test_in_smtp_form_is_exactly_what_normalising_would_leave_as_it_is(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    assert in_smtp_form(message) == (message != b"" and normalize_message_line_endings(message) == message)


@given(_pieces)
def test_dot_stuffing_a_message_in_smtp_form_matches_aiosmtplib(pieces: list[bytes]) -> None:
    message = normalize_message_line_endings(b"".join(pieces))
    assert in_smtp_form(message)
    assert dot_stuffed(message) == as_aiosmtplib_sends(message)


def test_examples() -> None:
    assert dot_stuffed(b".\r\n") == b"..\r\n"
    assert dot_stuffed(b"a\r\n.b\r\n..\r\n") == b"a\r\n..b\r\n...\r\n"
    assert not in_smtp_form(b"a\nb\r\n")  # a bare LF
    assert not in_smtp_form(b"a\rb\r\n")  # a bare CR
    assert not in_smtp_form(b"a\r\nb")  # no line end at the end
