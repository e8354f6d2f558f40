"""Reading back the bytes notifyd sends, as a receiving mail client would."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

_PARSER = BytesParser(_class=EmailMessage, policy=policy.default)
# The headers notifyd writes at the top of a reminder (notifyd/email.py, notifyd/mime.py), once each.
REMINDER_HEADERS = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "auto-submitted",
        "x-alarm-ref",
        "x-alarm-trigger",
        "content-language",
        "mime-version",
        "content-type",
    }
)


def parse_message(raw: bytes) -> EmailMessage:
    """``raw`` (a whole message, CRLF line ends) parsed with the standard library."""
    message = _PARSER.parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message
