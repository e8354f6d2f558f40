"""Rendering reminder emails: MIME structure, headers, wording, localised times, and injection."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import icalendar
import pytest

from common.payload import AlarmPayload
from notifyd.email import DESCRIPTION_MAX, SUBJECT_MAX, clean_header, clean_text, occurrence_ics, render_reminder
from notifyd.templates import Templates
from tests.messages import REMINDER_HEADERS, parse_message
from tests.payloads import sample_payload

NOW = datetime(2026, 11, 23, 9, 45, 0, tzinfo=UTC)
REF = "enp:///ics/eventalarm?calid=jac&uid=u1&rid=&aid=1"
SENDER = "Calendar reminders <calalarm@example.com>"
NNBSP = "\u202f"  # CLDR puts a narrow no-break space before AM/PM
THIN = "\u2009"  # … and thin spaces around the dash of a date interval
CET_EN = "Central European Standard Time"
EXPECTED_HEADERS = REMINDER_HEADERS
# The parts, depth first, of a reminder with and without the calendar attachment.
ALTERNATIVE_PARTS = ["multipart/alternative", "text/plain", "text/html"]
MIXED_PARTS = ["multipart/mixed", "multipart/alternative", "text/plain", "text/html", "text/calendar"]
PART_HEADERS = {"content-type", "content-transfer-encoding", "mime-version", "content-disposition"}


def render_raw(
    payload: AlarmPayload | None = None,
    recipients: list[str] | None = None,
    *,
    ref: str = REF,
    sender: str = SENDER,
    locale: str = "",
    tz: str = "",
    attach_ics: bool = False,
    templates: Templates | None = None,
) -> bytes:
    return render_reminder(
        payload or sample_payload(),
        ref,
        sender,
        ["bob@example.com"] if recipients is None else recipients,
        NOW,
        locale=locale,
        tz=tz,
        attach_ics=attach_ics,
        templates=templates,
    )


def render(payload: AlarmPayload | None = None, recipients: list[str] | None = None, **options: Any) -> EmailMessage:
    """The reminder as a receiver parses it."""
    return parse_message(render_raw(payload, recipients, **options))


def wire(raw: bytes) -> tuple[bytes, EmailMessage]:
    """The message as sent and as a receiver parses it back."""
    return raw, parse_message(raw)


def head_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def header_names(raw: bytes) -> list[str]:
    """Every header field name in the raw top-level header block (continuation lines skipped)."""
    return [
        line.split(b":", 1)[0].decode().lower() for line in head_of(raw).split(b"\r\n") if line[:1] not in (b" ", b"\t")
    ]


def body_of(message: EmailMessage, subtype: str) -> str:
    """The text of the ``subtype`` part, with line ends as a reader sees them (a message parsed
    back from the wire has CRLF)."""
    part = message.get_body((subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def text_of(message: EmailMessage) -> str:
    return body_of(message, "plain")


def html_of(message: EmailMessage) -> str:
    return body_of(message, "html")


def ics_of(message: EmailMessage) -> icalendar.Calendar:
    attachments = [p for p in message.iter_attachments() if p.get_content_type() == "text/calendar"]
    assert len(attachments) == 1
    content = attachments[0].get_content()
    return icalendar.Calendar.from_ical(content.encode() if isinstance(content, str) else content)


def only_component(cal: icalendar.Calendar, name: str) -> icalendar.Component:
    """The calendar's one subcomponent, which must be ``name``."""
    assert [c.name for c in cal.subcomponents] == [name]
    return cal.subcomponents[0]


def content_types(message: EmailMessage) -> list[str]:
    return [part.get_content_type() for part in message.walk()]


# --- structure and headers -------------------------------------------------------------------


def test_every_header_is_present_and_right() -> None:
    raw, parsed = wire(render_raw(recipients=["bob@example.com", "Al <al@example.com>"]))
    assert sorted(header_names(raw)) == sorted(EXPECTED_HEADERS)
    assert {k.lower() for k in parsed} == EXPECTED_HEADERS
    assert parsed["From"] == SENDER
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@example.com", "al@example.com"]
    assert parsed["Subject"] == "Reminder: Team meeting"
    assert parsedate_to_datetime(parsed["Date"]) == NOW
    assert parsed["Message-ID"].startswith("<")
    assert parsed["Message-ID"].endswith("@example.com>")
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Alarm-Ref"] == REF
    assert parsed["X-Alarm-Trigger"] == "2026-11-23T09:45:00Z"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Content-Language"] == "en"
    assert parsed.get_content_type() == "multipart/alternative"
    assert content_types(parsed) == ALTERNATIVE_PARTS


def test_parts_are_utf8_text_and_html() -> None:
    _raw, parsed = wire(render_raw())
    plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content_charset() == "utf-8"
    assert html.get_content_charset() == "utf-8"
    assert html_of(parsed).startswith('<!DOCTYPE html>\n<html lang="en">\n')
    assert "<title>Reminder: Team meeting</title>" in html_of(parsed)
    assert '<h1 style="font-size: 20px; margin: 0 0 12px 0;">Reminder: Team meeting</h1>' in html_of(parsed)


def test_without_ics_there_is_no_attachment() -> None:
    message = render()
    assert list(message.iter_attachments()) == []
    assert "text/calendar" not in content_types(message)


def test_ics_attachment_is_a_published_event() -> None:
    raw, parsed = wire(render_raw(attach_ics=True))
    assert sorted(header_names(raw)) == sorted(EXPECTED_HEADERS)
    assert parsed.get_content_type() == "multipart/mixed"
    assert content_types(parsed) == MIXED_PARTS
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "reminder.ics"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_param("method") == "PUBLISH"
    assert attachment.get_content_charset() == "utf-8"
    cal = ics_of(parsed)
    assert str(cal["METHOD"]) == "PUBLISH"
    assert str(cal["VERSION"]) == "2.0"
    assert str(cal["PRODID"]) == "-//calalarm//reminder//EN"
    event = only_component(cal, "VEVENT")
    assert str(event["UID"]) == "u1"
    assert str(event["SUMMARY"]) == "Team meeting"
    assert str(event["LOCATION"]) == "Room 101"
    assert str(event["DESCRIPTION"]) == "Agenda:\n1. Budget\n2. Hiring"
    assert event.decoded("DTSTART") == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert event.decoded("DTEND") == datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    assert event.decoded("DTSTAMP") == NOW
    assert "RECURRENCE-ID" not in event
    assert "ORGANIZER" not in event


def test_ics_carries_recurrence_id_and_organizer() -> None:
    payload = sample_payload(rid="20261123T100000Z", organizer="Org <org@example.com>")
    event = only_component(ics_of(render(payload, attach_ics=True)), "VEVENT")
    assert event.decoded("RECURRENCE-ID") == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert str(event["ORGANIZER"]) == "mailto:org@example.com"


def test_ics_of_an_all_day_todo_is_a_vtodo_with_dates() -> None:
    payload = sample_payload(component="todo", start="2026-11-23", end="2026-11-25")
    raw = occurrence_ics(payload, NOW)
    assert b"DTSTART;VALUE=DATE:20261123\r\n" in raw
    assert b"DUE;VALUE=DATE:20261125\r\n" in raw
    todo = only_component(icalendar.Calendar.from_ical(raw), "VTODO")
    assert "DTEND" not in todo


def test_message_ids_differ_between_renderings() -> None:
    assert render()["Message-ID"] != render()["Message-ID"]


def test_message_id_domain_falls_back_when_the_sender_has_none() -> None:
    message = render(sender="calalarm")
    assert message["Message-ID"].endswith("@calalarm.invalid>")


def test_empty_sender_and_recipients_use_fallbacks() -> None:
    _raw, parsed = wire(render_raw(sender="", recipients=[]))
    assert [a.addr_spec for a in parsed["From"].addresses] == ["calalarm@calalarm.invalid"]
    assert parsed["To"].addresses == ()
    assert [g.display_name for g in parsed["To"].groups] == ["undisclosed-recipients"]


def test_naive_now_is_taken_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    message = parse_message(render_reminder(sample_payload(), REF, SENDER, ["bob@example.com"], naive))
    assert parsedate_to_datetime(message["Date"]) == NOW


def canonical(message: EmailMessage) -> bytes:
    """The message without its Message-ID and with fixed MIME boundaries (both are random)."""
    del message["Message-ID"]
    for index, part in enumerate(message.walk()):
        if part.is_multipart():
            part.set_boundary(f"boundary-{index}")
    return message.as_bytes(policy=policy.SMTP)


@pytest.mark.parametrize("attach_ics", [False, True])
def test_rendering_is_pure(attach_ics: bool) -> None:
    first, second = render(attach_ics=attach_ics), render(attach_ics=attach_ics)
    assert canonical(first) == canonical(second)
    assert b"Message-ID" not in canonical(render(attach_ics=attach_ics))


# --- the words and the times -------------------------------------------------------------------


def test_body_shows_the_event_in_its_time_zone() -> None:
    message = render(sample_payload(alarm_description="Bring the slides"))
    assert text_of(message) == (
        "Reminder: Team meeting\n"
        "\n"
        f"When:       Monday, November 23, 2026, 11:00{NNBSP}AM – 12:00{NNBSP}PM ({CET_EN})\n"
        "Where:      Room 101\n"
        "\n"
        "Agenda:\n1. Budget\n2. Hiring\n"
        "\n"
        "Note: Bring the slides\n"
        "\n"
        "-- \n"
        "This reminder was sent automatically by calalarm.\n"
    )
    html = html_of(message)
    assert f"Monday, November 23, 2026, 11:00{NNBSP}AM – 12:00{NNBSP}PM ({CET_EN})</td>" in html
    assert ">Room 101</td>" in html
    assert "Agenda:\n1. Budget\n2. Hiring</div>" in html
    assert "<strong>Note:</strong> Bring the slides</div>" in html


def test_organizer_is_shown() -> None:
    message = render(sample_payload(organizer="Org <org@example.com>"))
    assert "Organizer:  Org <org@example.com>\n" in text_of(message)
    assert ">Organizer</th><td" in html_of(message)
    assert "Org &lt;org@example.com&gt;</td>" in html_of(message)


def test_email_alarm_summary_is_a_note_but_a_repeated_description_is_not() -> None:
    payload = sample_payload(
        action="EMAIL", alarm_summary="Leave now", alarm_description="Agenda:\n1. Budget\n2. Hiring"
    )
    text = text_of(render(payload))
    assert "Note: Leave now\n" in text
    assert text.count("1. Budget") == 1


def test_event_over_midnight_shows_both_dates() -> None:
    text = text_of(render(sample_payload(start="2026-11-23T22:00:00Z", end="2026-11-24T01:00:00Z", tz="UTC")))
    assert (
        f"When:       Monday, November 23, 2026, 10:00{NNBSP}PM – Tuesday, November 24, 2026, 1:00{NNBSP}AM"
        " (Coordinated Universal Time)\n"
    ) in text


def test_event_without_end_shows_the_start_only() -> None:
    text = text_of(render(sample_payload(end="")))
    assert f"When:       Monday, November 23, 2026, 11:00{NNBSP}AM ({CET_EN})\n" in text


def test_todo_wording() -> None:
    payload = sample_payload(component="todo", summary="File taxes", start="", end="2026-11-24T17:00:00Z")
    message = render(payload)
    assert message["Subject"] == "To-do reminder: File taxes"
    text = text_of(message)
    assert text.startswith("To-do reminder: File taxes\n\n")
    assert f"Due:        Tuesday, November 24, 2026, 6:00{NNBSP}PM ({CET_EN})\n" in text
    assert "When:" not in text
    assert "Starts:" not in text
    html = html_of(message)
    assert "<title>To-do reminder: File taxes</title>" in html
    assert ">Due</th>" in html
    assert ">When</th>" not in html


def test_todo_ics_is_a_vtodo_with_due() -> None:
    payload = sample_payload(component="todo", summary="File taxes", start="", end="2026-11-24T17:00:00Z")
    todo = only_component(ics_of(render(payload, attach_ics=True)), "VTODO")
    assert todo.decoded("DUE") == datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
    assert "DTSTART" not in todo
    assert str(todo["SUMMARY"]) == "File taxes"


@pytest.mark.parametrize(
    ("start", "end", "shown"),
    [
        ("2026-11-23", "2026-11-24", "When:       Monday, November 23, 2026\n"),
        ("2026-11-23", "", "When:       Monday, November 23, 2026\n"),
        # DTEND is exclusive: the 26th is not a day of the event.
        ("2026-11-23", "2026-11-26", f"When:       Mon, Nov 23{THIN}–{THIN}Wed, Nov 25, 2026\n"),
        # alarmd sends the computed end as an instant when the event has no DTEND:
        # local midnight (Europe/Paris) after the last day.
        ("2026-11-23", "2026-11-23T23:00:00Z", "When:       Monday, November 23, 2026\n"),
    ],
)
def test_all_day_events_show_plain_dates(start: str, end: str, shown: str) -> None:
    message = render(sample_payload(start=start, end=end))
    text = text_of(message)
    assert shown in text
    assert "00:00" not in text
    assert "AM" not in text
    assert "PM" not in text
    assert CET_EN not in text  # no zone for dates
    assert shown.removeprefix("When:       ").rstrip("\n") + "</td>" in html_of(message)


def test_all_day_todo_shows_plain_dates() -> None:
    text = text_of(render(sample_payload(component="todo", start="2026-11-23", end="2026-11-25")))
    assert "Starts:     Monday, November 23, 2026\n" in text
    assert "Due:        Wednesday, November 25, 2026\n" in text  # DUE is not exclusive
    assert "(" not in text.split("Where:")[0]  # no zone label


def test_unknown_time_zone_falls_back_to_utc() -> None:
    text = text_of(render(sample_payload(tz="Mars/Olympus_Mons")))
    assert (
        f"When:       Monday, November 23, 2026, 10:00{NNBSP}AM – 11:00{NNBSP}AM (Coordinated Universal Time)\n"
    ) in text


def test_tz_argument_overrides_the_payload_zone() -> None:
    text = text_of(render(tz="America/New_York"))
    assert f"When:       Monday, November 23, 2026, 5:00{NNBSP}AM – 6:00{NNBSP}AM (Eastern Standard Time)\n" in text


def test_unknown_tz_argument_falls_back_to_the_payload_zone() -> None:
    text = text_of(render(tz="Nowhere/Special"))
    assert f"When:       Monday, November 23, 2026, 11:00{NNBSP}AM – 12:00{NNBSP}PM ({CET_EN})\n" in text


def test_unparsable_start_is_shown_as_given() -> None:
    text = text_of(render(sample_payload(start="sometime\r\nsoon", end="")))
    assert "When:       sometime soon\n" in text


def test_missing_summary_has_a_placeholder() -> None:
    message = render(sample_payload(summary=""))
    assert message["Subject"] == "Reminder: (no title)"
    assert text_of(message).startswith("Reminder: (no title)\n")
    assert '<h1 style="font-size: 20px; margin: 0 0 12px 0;">Reminder: (no title)</h1>' in html_of(message)


def test_missing_summary_falls_back_to_the_alarm_summary() -> None:
    assert render(sample_payload(summary="", alarm_summary="Wake up"))["Subject"] == "Reminder: Wake up"


def test_subject_is_capped() -> None:
    _raw, parsed = wire(render_raw(sample_payload(summary="word " * 200)))
    subject = parsed["Subject"]
    assert len(subject) == SUBJECT_MAX
    assert subject == ("Reminder: " + " ".join(["word"] * 200))[: SUBJECT_MAX - 1] + "…"


def test_description_is_capped() -> None:
    message = render(sample_payload(description="x" * 10_000))
    for body in (text_of(message), html_of(message)):
        assert "x" * (DESCRIPTION_MAX - 1) + "…" in body
        assert "x" * DESCRIPTION_MAX not in body


def test_description_cap_is_a_parameter() -> None:
    message = parse_message(
        render_reminder(
            sample_payload(description="y" * 50),
            REF,
            SENDER,
            ["bob@example.com"],
            NOW,
            description_max=10,
            attach_ics=True,
        )
    )
    assert "\nyyyyyyyyy…\n" in text_of(message)
    assert "y" * 10 not in text_of(message)
    assert str(only_component(ics_of(message), "VEVENT")["DESCRIPTION"]) == "yyyyyyyyy…"


def test_body_drops_control_characters() -> None:
    message = render(sample_payload(description="bell\x07 and\x00 nul\r\nnext\u2028line\x85end\x1b"))
    assert "\nbell and nul\nnext\nline\nend\n" in text_of(message)
    assert ">bell and nul\nnext\nline\nend</div>" in html_of(message)


# --- locales -----------------------------------------------------------------------------------


def test_german_event() -> None:
    message = render(locale="de")
    assert message["Subject"] == "Erinnerung: Team meeting"
    assert message["Content-Language"] == "de"
    assert text_of(message) == (
        "Erinnerung: Team meeting\n"
        "\n"
        "Wann:        Montag, 23. November 2026, 11:00 – 12:00 (Mitteleuropäische Normalzeit)\n"
        "Wo:          Room 101\n"
        "\n"
        "Agenda:\n1. Budget\n2. Hiring\n"
        "\n"
        "-- \n"
        "Diese Erinnerung wurde automatisch von calalarm versandt.\n"
    )
    html = html_of(message)
    assert '<html lang="de">' in html
    assert ">Wann</th>" in html


def test_french_event() -> None:
    message = render(locale="fr")
    assert message["Subject"] == "Rappel : Team meeting"
    assert message["Content-Language"] == "fr"
    assert text_of(message) == (
        "Rappel : Team meeting\n"
        "\n"
        "Quand :        lundi 23 novembre 2026, 11:00 – 12:00 (heure normale d’Europe centrale)\n"
        "Où :           Room 101\n"
        "\n"
        "Agenda:\n1. Budget\n2. Hiring\n"
        "\n"
        "-- \n"
        "Ce rappel a été envoyé automatiquement par calalarm.\n"
    )
    assert '<html lang="fr">' in html_of(message)


def test_payload_locale_is_used_without_a_locale_argument() -> None:
    message = render(sample_payload(locale="fr"))
    assert message["Subject"] == "Rappel : Team meeting"
    assert message["Content-Language"] == "fr"
    assert "Quand :        lundi 23 novembre 2026, 11:00 – 12:00" in text_of(message)


def test_locale_argument_overrides_the_payload_locale() -> None:
    message = render(sample_payload(locale="fr"), locale="de")
    assert message["Subject"] == "Erinnerung: Team meeting"
    assert message["Content-Language"] == "de"


@pytest.mark.parametrize(
    ("locale", "subject", "due"),
    [
        ("de", "Aufgaben-Erinnerung: File taxes", "Fällig:      Dienstag, 24. November 2026, 18:00"),
        ("fr", "Rappel de tâche : File taxes", "Échéance :     mardi 24 novembre 2026, 18:00"),
        ("en", "To-do reminder: File taxes", f"Due:        Tuesday, November 24, 2026, 6:00{NNBSP}PM"),
    ],
)
def test_todo_in_each_locale(locale: str, subject: str, due: str) -> None:
    payload = sample_payload(component="todo", summary="File taxes", start="", end="2026-11-24T17:00:00Z")
    message = render(payload, locale=locale)
    assert message["Subject"] == subject
    text = text_of(message)
    assert text.startswith(subject + "\n")
    assert due in text


@pytest.mark.parametrize(
    ("locale", "span", "one_day"),
    [
        ("de", f"Mo., 23.{THIN}–{THIN}Mi., 25. Nov. 2026", "Montag, 23. November 2026"),
        ("fr", f"lun. 23{THIN}–{THIN}mer. 25 nov. 2026", "lundi 23 novembre 2026"),
        ("en", f"Mon, Nov 23{THIN}–{THIN}Wed, Nov 25, 2026", "Monday, November 23, 2026"),
    ],
)
def test_all_day_dates_are_localised(locale: str, span: str, one_day: str) -> None:
    assert f"{span}\n" in text_of(render(sample_payload(start="2026-11-23", end="2026-11-26"), locale=locale))
    assert f"{one_day}\n" in text_of(render(sample_payload(start="2026-11-23", end="2026-11-24"), locale=locale))


@pytest.mark.parametrize(
    ("locale", "over_midnight"),
    [
        ("de", "Montag, 23. November 2026, 22:00 – Dienstag, 24. November 2026, 01:00 (Koordinierte Weltzeit)"),
        ("fr", "lundi 23 novembre 2026, 22:00 – mardi 24 novembre 2026, 01:00 (temps universel coordonné)"),
    ],
)
def test_event_over_midnight_is_localised(locale: str, over_midnight: str) -> None:
    payload = sample_payload(start="2026-11-23T22:00:00Z", end="2026-11-24T01:00:00Z", tz="UTC")
    assert over_midnight + "\n" in text_of(render(payload, locale=locale))


@pytest.mark.parametrize(
    ("locale", "chosen", "subject"),
    [
        ("xx", "en", "Reminder: Team meeting"),
        ("", "en", "Reminder: Team meeting"),
        ("not a locale!!", "en", "Reminder: Team meeting"),
        ("de\r\nBcc: victim@example.com", "en", "Reminder: Team meeting"),
        ("zz-DE", "en", "Reminder: Team meeting"),
        ("de-AT", "de", "Erinnerung: Team meeting"),
        ("de_at", "de", "Erinnerung: Team meeting"),
        ("fr_CA", "fr", "Rappel : Team meeting"),
        ("fr-ca", "fr", "Rappel : Team meeting"),
        ("EN", "en", "Reminder: Team meeting"),
        ("DE", "de", "Erinnerung: Team meeting"),
    ],
)
def test_locale_resolution_never_raises(locale: str, chosen: str, subject: str) -> None:
    raw, parsed = wire(render_raw(locale=locale))
    assert parsed["Subject"] == subject
    assert parsed["Content-Language"] == chosen
    assert sorted(header_names(raw)) == sorted(EXPECTED_HEADERS)
    assert f'<html lang="{chosen}">' in html_of(parsed)


def test_unknown_locale_falls_back_to_the_configured_default() -> None:
    message = render(locale="xx", templates=Templates(default_locale="de"))
    assert message["Subject"] == "Erinnerung: Team meeting"
    assert message["Content-Language"] == "de"


def test_locale_and_zone_are_independent() -> None:
    text = text_of(render(locale="de", tz="America/New_York"))
    assert "Wann:        Montag, 23. November 2026, 05:00 – 06:00 (Nordamerikanische Ostküsten-Normalzeit)\n" in text


# --- sanitising --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [
        ("a\r\nb", "a b"),
        ("a\x00b", "a b"),
        ("a\u2028b\u2029c", "a b c"),
        ("a\x85b", "a b"),  # NEL
        ("a\x9bb", "a b"),  # C1 control
        ("a\x7fb", "a b"),
        ("  spaced   out  ", "spaced out"),
        ("tab\there", "tab here"),
        ("=?utf-8?q?Lunch=0D=0ABcc:_victim@example.com?=", "Lunch Bcc: victim@example.com"),
        ("=?utf-8?b?" + base64.b64encode(b"x\r\nBcc: v@e.com").decode() + "?=", "x Bcc: v@e.com"),
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?no-such-charset?q?x=0D=0Ay?=", "= ?no-such-charset?q?x=0D=0Ay?="),
    ],
)
def test_clean_header(value: str, cleaned: str) -> None:
    assert clean_header(value, 100) == cleaned


def test_clean_header_caps_length() -> None:
    assert clean_header("abcdef", 4) == "abc…"
    assert clean_header("abcd", 4) == "abcd"
    assert len(clean_header("y" * 500, 200)) == 200


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [
        ("a\r\nb\rc\x85d\u2028e\u2029f", "a\nb\nc\nd\ne\nf"),
        ("bell\x07\x00\x1b\x7f\x9b!", "bell!"),
        ("tab\tkept", "tab\tkept"),
        ("\n\n  padded  \n\n", "padded"),
    ],
)
def test_clean_text(value: str, cleaned: str) -> None:
    assert clean_text(value, 100) == cleaned


# --- injection ---------------------------------------------------------------------------------

EVIL_DECODED = "x@example.com\r\nBcc: victim@example.com\r\nX-Evil: 1"
EVIL_CLEANED = "x@example.com Bcc: victim@example.com X-Evil: 1"
INJECTIONS: list[tuple[str, str]] = [
    *(
        (f"x@example.com{sep}Bcc: victim@example.com{sep}X-Evil: 1", EVIL_CLEANED)
        for sep in ["\r\n", "\n", "\r", "\x00", "\u2028", "\u2029", "\x85", "\r\n\r\n", "\n\t", "\r\n "]
    ),
    ("=?utf-8?q?x@example.com=0D=0ABcc:_victim@example.com=0D=0AX-Evil:_1?=", EVIL_CLEANED),
    ("=?utf-8?b?" + base64.b64encode(EVIL_DECODED.encode()).decode() + "?=", EVIL_CLEANED),
    ("=?utf-8?q?Lunch=0D=0ABcc:_victim@example.com?=", "Lunch Bcc: victim@example.com"),
    ("=?UTF-8?Q?Lunch=E2=80=A8Bcc:_victim@example.com?=", "Lunch Bcc: victim@example.com"),
    ("=?utf-8?b?" + base64.b64encode(b"x\r\nBcc: v@e.com").decode() + "?=", "x Bcc: v@e.com"),
]
INJECTION_IDS = [
    *(f"raw-{sep}" for sep in ["CRLF", "LF", "CR", "NUL", "U+2028", "U+2029", "NEL", "CRLFCRLF", "LF-TAB", "CRLF-SP"]),
    "q-encoded",
    "b-encoded",
    "q-encoded-lunch",
    "q-encoded-u2028",
    "b-encoded-short",
]
LINE_BREAKS = "\r\n\x00\x85\u2028\u2029\v\f"
HEADER_FIELDS = ["summary", "alarm_summary", "recipients", "ref", "trigger", "sender"]
BODY_FIELDS = ["location", "organizer", "description", "uid"]


def render_with(field: str, evil: str) -> bytes:
    """A reminder with ``evil`` in ``field`` (and the calendar attachment, so the uid reaches it)."""
    recipients, ref, sender = ["bob@example.com"], REF, SENDER
    payload = sample_payload()
    if field == "recipients":
        # notifyd mails the owner when the alarm names no recipients.
        payload, recipients = sample_payload(owner=evil), [evil]
    elif field == "ref":
        ref = evil
    elif field == "sender":
        sender = evil
    elif field == "alarm_summary":
        payload = sample_payload(summary="", alarm_summary=evil)  # the title falls back to it
    else:
        payload = sample_payload(**{field: evil})
    return render_raw(payload, recipients, ref=ref, sender=sender, attach_ics=True)


def assert_no_injected_header(raw: bytes, parsed: EmailMessage) -> None:
    assert sorted(header_names(raw)) == sorted(EXPECTED_HEADERS)
    assert {k.lower() for k in parsed} == EXPECTED_HEADERS
    assert "bcc" not in {k.lower() for k in parsed}
    assert parsed["Bcc"] is None
    assert parsed["X-Evil"] is None
    head = head_of(raw)
    assert head.isascii()  # policy.SMTP encodes anything else: nothing raw can hide here
    assert b"\x00" not in head
    assert "\u2028".encode() not in head
    assert "\u2029".encode() not in head
    assert "\x85".encode() not in head
    for name, value in parsed.items():  # decoded, encoded words included
        assert not set(str(value)) & set(LINE_BREAKS), (name, str(value))
    # The body stays as built: no part added, no part header injected.
    assert content_types(parsed) == MIXED_PARTS
    for part in list(parsed.walk())[1:]:
        assert {k.lower() for k in part} <= PART_HEADERS


def assert_ics_intact(parsed: EmailMessage) -> icalendar.Component:
    cal = ics_of(parsed)
    assert set(cal) == {"VERSION", "PRODID", "METHOD"}
    event = only_component(cal, "VEVENT")
    assert set(event) <= {"UID", "DTSTAMP", "DTSTART", "DTEND", "SUMMARY", "LOCATION", "DESCRIPTION", "ORGANIZER"}
    assert "BCC" not in event
    assert "ATTENDEE" not in event
    return event


@pytest.mark.parametrize(("evil", "cleaned"), INJECTIONS, ids=INJECTION_IDS)
@pytest.mark.parametrize("field", HEADER_FIELDS + BODY_FIELDS)
def test_injection_never_adds_a_header(field: str, evil: str, cleaned: str) -> None:
    raw, parsed = wire(render_with(field, evil))
    assert_no_injected_header(raw, parsed)
    assert_ics_intact(parsed)


@pytest.mark.parametrize(("evil", "cleaned"), INJECTIONS, ids=INJECTION_IDS)
@pytest.mark.parametrize(
    ("field", "header", "prefix"),
    [
        ("summary", "Subject", "Reminder: "),
        ("alarm_summary", "Subject", "Reminder: "),
        ("ref", "X-Alarm-Ref", ""),
        ("trigger", "X-Alarm-Trigger", ""),
    ],
)
def test_injection_stays_inside_its_own_header(field: str, header: str, prefix: str, evil: str, cleaned: str) -> None:
    _raw, parsed = wire(render_with(field, evil))
    assert parsed[header] == prefix + cleaned


@pytest.mark.parametrize(("evil", "cleaned"), INJECTIONS, ids=INJECTION_IDS)
@pytest.mark.parametrize(("field", "header"), [("recipients", "To"), ("sender", "From")])
def test_injection_never_adds_an_address(field: str, header: str, evil: str, cleaned: str) -> None:
    raw, parsed = wire(render_with(field, evil))
    # One address given, at most one address in the header (and never a second header line).
    assert len(parsed[header].addresses) <= 1
    lines = [line for line in head_of(raw).split(b"\r\n") if line.lower().startswith(header.lower().encode() + b":")]
    assert len(lines) == 1


@pytest.mark.parametrize(("evil", "cleaned"), INJECTIONS, ids=INJECTION_IDS)
def test_injection_in_the_sender_leaves_a_sane_message_id(evil: str, cleaned: str) -> None:
    _raw, parsed = wire(render_with("sender", evil))
    message_id = parsed["Message-ID"]
    assert message_id.startswith("<")
    assert message_id.endswith(">")
    assert " " not in message_id
    assert message_id.count("@") == 1


@pytest.mark.parametrize(("evil", "cleaned"), INJECTIONS, ids=INJECTION_IDS)
def test_injection_in_location_stays_on_its_line(evil: str, cleaned: str) -> None:
    _raw, parsed = wire(render_with("location", evil))
    assert f"\nWhere:      {cleaned}\n" in text_of(parsed)
    assert str(assert_ics_intact(parsed)["LOCATION"]) == cleaned


@pytest.mark.parametrize(("evil", "cleaned"), INJECTIONS, ids=INJECTION_IDS)
def test_injection_in_organizer_stays_on_its_line(evil: str, cleaned: str) -> None:
    _raw, parsed = wire(render_with("organizer", evil))
    assert f"\nOrganizer:  {cleaned}\n" in text_of(parsed)
    event = assert_ics_intact(parsed)
    if "ORGANIZER" in event:
        value = str(event["ORGANIZER"])
        assert value.startswith("mailto:")
        assert not set(value) & set(LINE_BREAKS)


@pytest.mark.parametrize(("evil", "cleaned"), INJECTIONS, ids=INJECTION_IDS)
def test_injection_in_description_stays_in_the_body(evil: str, cleaned: str) -> None:
    _raw, parsed = wire(render_with("description", evil))
    body = clean_text(evil, DESCRIPTION_MAX)
    assert f"\n{body}\n" in text_of(parsed)
    assert str(assert_ics_intact(parsed)["DESCRIPTION"]) == body


@pytest.mark.parametrize(("evil", "cleaned"), INJECTIONS, ids=INJECTION_IDS)
def test_injection_in_uid_stays_in_the_uid(evil: str, cleaned: str) -> None:
    _raw, parsed = wire(render_with("uid", evil))
    assert str(assert_ics_intact(parsed)["UID"]) == cleaned


def test_injection_in_summary_stays_inside_the_subject() -> None:
    _raw, parsed = wire(render_raw(sample_payload(summary="Lunch\r\nBcc: victim@example.com")))
    assert parsed["Subject"] == "Reminder: Lunch Bcc: victim@example.com"


def test_injection_in_ref_and_trigger_is_neutralised() -> None:
    payload = sample_payload(trigger="2026-11-23T09:45:00Z\r\nX-Evil: 2")
    raw, parsed = wire(render_raw(payload, ref=REF + "\r\nX-Evil: 1"))
    assert sorted(header_names(raw)) == sorted(EXPECTED_HEADERS)
    assert parsed["X-Alarm-Ref"] == REF + " X-Evil: 1"
    assert parsed["X-Alarm-Trigger"] == "2026-11-23T09:45:00Z X-Evil: 2"


@pytest.mark.parametrize("component", ["event", "todo"])
@pytest.mark.parametrize("field", ["summary", "description", "location", "uid", "organizer"])
def test_ics_values_cannot_add_properties(component: str, field: str) -> None:
    evil = "Lunch\r\nATTENDEE:mailto:x@y\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nSUMMARY:second"
    _raw, parsed = wire(render_raw(sample_payload(component=component, **{field: evil}), attach_ics=True))
    cal = ics_of(parsed)
    name = "VTODO" if component == "todo" else "VEVENT"
    comp = only_component(cal, name)
    assert "ATTENDEE" not in comp
    assert [c.name for c in cal.walk()] == ["VCALENDAR", name]
    flat = "Lunch ATTENDEE:mailto:x@y END:VEVENT BEGIN:VEVENT SUMMARY:second"
    if field == "description":
        assert str(comp["DESCRIPTION"]) == "Lunch\nATTENDEE:mailto:x@y\nEND:VEVENT\nBEGIN:VEVENT\nSUMMARY:second"
    elif field == "organizer":
        assert "ORGANIZER" not in comp or str(comp["ORGANIZER"]).startswith("mailto:")
    else:
        assert str(comp[field.upper()]) == flat


def test_ics_escapes_structural_characters() -> None:
    payload = sample_payload(summary="a;b,c\\d", description="e;f,g\\h")
    raw = occurrence_ics(payload, NOW)
    assert b"SUMMARY:a\\;b\\,c\\\\d\r\n" in raw
    event = only_component(icalendar.Calendar.from_ical(raw), "VEVENT")
    assert str(event["SUMMARY"]) == "a;b,c\\d"
    assert str(event["DESCRIPTION"]) == "e;f,g\\h"


def test_html_part_escapes_markup() -> None:
    payload = sample_payload(
        summary="<script>alert(1)</script>",
        description="<b>bold</b> & more",
        location='<img src="x" onerror="alert(2)">',
        organizer="Org <org@example.com>",
        action="EMAIL",
        alarm_summary="<i>note</i>",
    )
    message = render(payload)
    html = html_of(message)
    assert "<title>Reminder: &lt;script&gt;alert(1)&lt;/script&gt;</title>" in html
    assert ">Reminder: &lt;script&gt;alert(1)&lt;/script&gt;</h1>" in html
    assert ">&lt;b&gt;bold&lt;/b&gt; &amp; more</div>" in html
    assert "&lt;img src=&#34;x&#34; onerror=&#34;alert(2)&#34;&gt;</td>" in html
    assert "Org &lt;org@example.com&gt;</td>" in html
    assert "</strong> &lt;i&gt;note&lt;/i&gt;</div>" in html
    assert "<script>" not in html
    assert "<b>" not in html
    assert "<img" not in html
    assert "<i>" not in html
    text = text_of(message)
    assert text.startswith("Reminder: <script>alert(1)</script>\n")
    assert "\n<b>bold</b> & more\n" in text
    assert 'Where:      <img src="x" onerror="alert(2)">\n' in text
    assert "Note: <i>note</i>\n" in text
    assert message["Subject"] == "Reminder: <script>alert(1)</script>"


def test_to_header_writes_idn_domains_in_ascii_and_leaves_out_what_it_cannot_write() -> None:
    raw, parsed = wire(render_raw(recipients=["bob@exämple.com", "jörg@example.com", "al@example.com"]))
    assert head_of(raw).isascii()
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bob@xn--exmple-cua.com", "al@example.com"]


def test_to_header_of_many_recipients_is_folded() -> None:
    recipients = [f"person{n}@example.com" for n in range(30)]
    raw, parsed = wire(render_raw(recipients=recipients))
    assert all(len(line) <= 78 for line in head_of(raw).split(b"\r\n"))
    assert [a.addr_spec for a in parsed["To"].addresses] == recipients


def test_a_sender_with_an_address_literal_keeps_it_and_the_message_id_falls_back() -> None:
    _raw, parsed = wire(render_raw(sender="Cal <cal@[192.0.2.1]>"))
    assert parsed["From"].addresses[0].addr_spec == "cal@[192.0.2.1]"
    assert parsed["Message-ID"].endswith("@calalarm.invalid>")
