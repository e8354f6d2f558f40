"""MIME assembly: a reminder's headers and parts written straight to the bytes SMTP sends.

The standard library's ``EmailMessage`` builds an object tree and flattens it again,
about 2 ms per reminder on the development machine: more than everything else notifyd
does per reminder together (``tests.benchmarks.notify_throughput --profile``). A
reminder always has the same shape, so this module writes it directly.

It encodes and never cleans: every value given to it must have been through
:func:`notifyd.email.clean_header` (no controls, no line breaks). Then:

- a header value of printable ASCII is folded at spaces to keep lines near 78
  characters; anything else (non-ASCII, or text that looks like an RFC 2047 encoded
  word) becomes encoded words, base64 of UTF-8, never splitting a character, so a
  reader decodes exactly the text given;
- an address goes into a header only as a plain addr-spec, its domain in IDNA form;
  one whose local part is not ASCII cannot be written in a 7-bit header and is left
  out of it (the SMTP envelope, not the header, decides where a message goes);
- text parts are UTF-8 in quoted-printable, attachments base64; every line ends in CRLF
  and the message is 7-bit clean.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

LINE = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters
CRLF = "\r\n"
_WORD_OCTETS = 45  # 60 base64 characters: "=?utf-8?b?" + 60 + "?=" is 72, under the 75 of RFC 2047
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*$")  # atext and spaces: a phrase without quoting
_PARAM_UNSAFE = re.compile(r'[\\"\x00-\x1f\x7f-\uffff]')


@dataclass(frozen=True)
class Part:
    """One leaf of the message: its headers and its encoded body, both ready to write."""

    headers: tuple[tuple[str, str], ...]
    body: str  # already transfer-encoded, lines ending in CRLF

    def write(self, out: list[str]) -> None:
        for name, value in self.headers:
            out.append(f"{name}: {value}{CRLF}")
        out.append(CRLF)
        out.append(self.body)


@dataclass(frozen=True)
class Multipart:
    subtype: str
    parts: tuple[Part | Multipart, ...]
    boundary: str

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("Content-Type", f'multipart/{self.subtype}; boundary="{self.boundary}"'),)

    def write(self, out: list[str]) -> None:
        for name, value in self.headers:
            out.append(f"{name}: {value}{CRLF}")
        out.append(CRLF)
        # The CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1): a
        # part's own last line end is kept.
        delimiter = f"--{self.boundary}{CRLF}"
        for part in self.parts:
            out.append(delimiter)
            part.write(out)
            delimiter = f"{CRLF}--{self.boundary}{CRLF}"
        out.append(f"{CRLF}--{self.boundary}--{CRLF}")


def new_boundary() -> str:
    """A boundary that cannot occur in a quoted-printable or base64 body ("=_" never does)."""
    return "=_" + secrets.token_hex(13)  # 104 random bits; the header line stays under 78


def text_part(subtype: str, text: str) -> Part:
    """A UTF-8 text part in quoted-printable; ``text``'s line ends may be LF or CRLF."""
    encoded = binascii.b2a_qp(text.replace(CRLF, "\n").encode("utf-8"), istext=True).decode("ascii")
    if not encoded.endswith("\n"):
        encoded += "\n"
    return Part(
        (
            ("Content-Type", f'text/{subtype}; charset="utf-8"'),
            ("Content-Transfer-Encoding", "quoted-printable"),
        ),
        encoded.replace("\n", CRLF),
    )


def attachment(content_type: str, data: bytes, filename: str, params: Iterable[tuple[str, str]] = ()) -> Part:
    """An attachment in base64; ``params`` are added to the Content-Type (quoted)."""
    type_value = content_type + "".join(f"; {name}={quote_param(value)}" for name, value in params)
    body = base64.encodebytes(data).decode("ascii").replace("\n", CRLF)
    return Part(
        (
            ("Content-Type", type_value),
            ("Content-Transfer-Encoding", "base64"),
            ("Content-Disposition", f"attachment; filename={quote_param(filename)}"),
        ),
        body,
    )


def quote_param(value: str) -> str:
    """A MIME parameter value as a quoted string; only plain ASCII is accepted."""
    if _PARAM_UNSAFE.search(value):
        raise ValueError(f"MIME parameter value {value!r} must be printable ASCII without quotes")
    return f'"{value}"'


def message_bytes(headers: Iterable[tuple[str, str]], body: Part | Multipart) -> bytes:
    """The whole message: ``headers`` (values as :func:`unstructured` or the address
    functions made them), MIME-Version, then the body's own headers and content."""
    out = [f"{name}: {value}{CRLF}" for name, value in headers]
    out.append(f"MIME-Version: 1.0{CRLF}")
    body.write(out)
    return "".join(out).encode("ascii")


def unstructured(name: str, text: str) -> str:
    """The value of header ``name`` for the cleaned ``text`` (see the module doc)."""
    if text.isascii() and text.isprintable() and "=?" not in text:
        return _fold(text.split(" "), len(name) + 2, " ")
    return encoded_words(text)


def encoded_words(text: str) -> str:
    """``text`` as RFC 2047 encoded words, one per folded line."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in text:
        octets = len(char.encode("utf-8", "surrogatepass"))
        if size + octets > _WORD_OCTETS:
            words.append(_b_word("".join(chunk)))
            chunk, size = [], 0
        chunk.append(char)
        size += octets
    if chunk or not words:
        words.append(_b_word("".join(chunk)))
    return (CRLF + " ").join(words)


def _b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii") + "?="


def header_address(address: str) -> str | None:
    """A bare mailbox (``local@domain``) as a header can carry it, else None (see the module doc)."""
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return f"{local}@{domain}"


def phrase(display_name: str) -> str:
    """A display name: as is when it is plain words, quoted with specials, encoded when not ASCII."""
    if not display_name.isascii() or "=?" in display_name:
        return encoded_words(display_name)
    if _ATEXT.match(display_name):
        return display_name
    return '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def address_list(name: str, entries: list[str]) -> str:
    """Header ``name``'s value for already formatted ``entries``, folded between them."""
    return _fold(entries, len(name) + 2, ", ")


def _fold(words: list[str], used: int, separator: str) -> str:
    """``words`` joined by ``separator``, a line break taking its place where a line would
    pass :data:`LINE` (a single longer word keeps its own line: caps keep it under 998)."""
    lines: list[str] = []
    current = ""
    for word in words:
        if not current:
            current = word
        elif used + len(current) + len(separator) + len(word) + len(separator.rstrip()) > LINE:
            # (room kept for the separator's comma, should the next word fold)
            lines.append(current + separator.rstrip())
            used, current = 1, word
        else:
            current += separator + word
    lines.append(current)
    return (CRLF + " ").join(lines)


__all__ = [
    "Multipart",
    "Part",
    "address_list",
    "attachment",
    "encoded_words",
    "header_address",
    "message_bytes",
    "new_boundary",
    "phrase",
    "quote_param",
    "text_part",
    "unstructured",
]
