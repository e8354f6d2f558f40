"""Reminder templates: shipped locales, operator overrides, locale resolution, start-up checks."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

import notifyd
from common.settings import ConfigError
from notifyd.email import render_reminder, sample_context
from notifyd.templates import KINDS, PARTS, RESOLVED_MAX, TemplateError, Templates, normalise_locale
from tests.messages import parse_message
from tests.payloads import sample_payload

SHIPPED = Path(notifyd.__file__).parent / "templates"
NOW = datetime(2026, 11, 23, 9, 45, 0, tzinfo=UTC)
ALL_FILES = sorted(f"{kind}.{part}.j2" for kind in KINDS for part in PARTS)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def copy_locale(source: str, target: Path) -> None:
    """The shipped ``source`` locale's six templates, copied into the directory ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ALL_FILES:
        shutil.copy(SHIPPED / source / name, target / name)


def subject(templates: Templates, locale: str = "", **changes: str) -> str:
    message = parse_message(
        render_reminder(
            sample_payload(**changes),
            "ref",
            "calalarm@example.com",
            ["bob@example.com"],
            NOW,
            templates=templates,
            locale=locale,
        )
    )
    return str(message["Subject"])


# --- shipped templates -----------------------------------------------------------------------


def test_shipped_locales_are_discovered() -> None:
    templates = Templates()
    assert templates.locales == frozenset({"en", "de", "fr"})
    assert templates.default_locale == "en"


def test_shipped_directory_holds_six_templates_per_locale() -> None:
    for locale in ("en", "de", "fr"):
        assert sorted(p.name for p in (SHIPPED / locale).iterdir()) == ALL_FILES


def test_shipped_templates_pass_the_check() -> None:
    Templates().check(sample_context())  # raises on any fault


@pytest.mark.parametrize(
    ("locale", "event", "todo"),
    [
        ("en", "Reminder: Sample\n", "To-do reminder: Sample\n"),
        ("de", "Erinnerung: Sample\n", "Aufgaben-Erinnerung: Sample\n"),
        ("fr", "Rappel : Sample\n", "Rappel de tâche : Sample\n"),
    ],
)
def test_shipped_subjects(locale: str, event: str, todo: str) -> None:
    templates = Templates()
    assert templates.render("event", locale, sample_context()).subject == event
    assert templates.render("todo", locale, sample_context()).subject == todo


def test_html_is_autoescaped_and_text_is_not() -> None:
    rendered = Templates().render("event", "en", {**sample_context(), "title": "<b>&"})
    assert '<h1 style="font-size: 20px; margin: 0 0 12px 0;">Reminder: &lt;b&gt;&amp;</h1>' in rendered.html
    assert "<b>" not in rendered.html
    assert rendered.subject == "Reminder: <b>&\n"
    assert rendered.text.startswith("Reminder: <b>&\n")


def test_render_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="no template kind 'journal'"):
        Templates().render("journal", "en", sample_context())


@pytest.mark.parametrize("default", ["de", "DE", "fr", " fr "])
def test_default_locale_is_a_shipped_one(default: str) -> None:
    templates = Templates(default_locale=default)
    assert templates.default_locale == normalise_locale(default)
    assert templates.resolve("xx") == templates.default_locale


def test_default_locale_with_a_region_falls_back_to_its_language() -> None:
    # Resolved like a request: fr_FR has no directory of its own, so fr.
    assert Templates(default_locale="fr-FR").default_locale == "fr"


@pytest.mark.parametrize("default", ["xx", "", "not a locale!!", "it"])
def test_unknown_default_locale_is_an_error(default: str) -> None:
    with pytest.raises(TemplateError) as excinfo:
        Templates(default_locale=default)
    assert str(excinfo.value) == f"notifyd.locale {default!r} has no templates; available: de, en, fr"


def test_template_error_is_a_config_error() -> None:
    assert issubclass(TemplateError, ConfigError)


# --- resolution --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "resolved"),
    [
        ("en", "en"),
        ("de", "de"),
        ("fr", "fr"),
        ("EN", "en"),
        ("de-AT", "de"),
        ("de_at", "de"),
        ("fr_CA", "fr"),
        ("fr-ca", "fr"),
        ("  fr  ", "fr"),
        ("xx", "en"),
        ("zz-DE", "en"),
        ("", "en"),
        ("not a locale!!", "en"),
        ("fr_CA.UTF-8", "en"),  # not a language tag at all
        ("de\r\nX-Evil: 1", "en"),
    ],
)
def test_resolve(requested: str, resolved: str) -> None:
    assert Templates().resolve(requested) == resolved


def test_resolve_falls_back_to_the_configured_default() -> None:
    templates = Templates(default_locale="fr")
    assert templates.resolve("xx") == "fr"
    assert templates.resolve("") == "fr"
    assert templates.resolve("de-CH") == "de"


def test_exact_regional_locale_wins_over_its_language(tmp_path: Path) -> None:
    copy_locale("fr", tmp_path / "fr_CA")
    write(tmp_path / "fr_CA" / "event.subject.j2", "Rappel (Canada) : {{ title }}\n")
    templates = Templates(tmp_path)
    assert templates.locales == frozenset({"en", "de", "fr", "fr_CA"})
    assert templates.resolve("fr-CA") == "fr_CA"
    assert templates.resolve("fr_ca") == "fr_CA"
    assert templates.resolve("fr-BE") == "fr"
    assert subject(templates, "fr-ca") == "Rappel (Canada) : Team meeting"
    assert subject(templates, "fr") == "Rappel : Team meeting"


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("fr-ca", "fr_CA"),
        ("fr_CA", "fr_CA"),
        ("FR-ca", "fr_CA"),
        ("EN", "en"),
        ("  de  ", "de"),
        ("de--AT", "de_AT"),
        ("zh-Hant-TW", "zh_Hant_TW"),
        ("sr_Latn", "sr_Latn"),
        ("en-US-posix", "en_US_posix"),
        ("", ""),
        ("   ", ""),
        ("x", ""),
        ("toolonglang", ""),
        ("1de", ""),
        ("not a locale!!", ""),
        ("fr_CA.UTF-8", ""),
        ("de@euro", ""),
        ("de\nAT", ""),
    ],
)
def test_normalise_locale(name: str, normalised: str) -> None:
    assert normalise_locale(name) == normalised


# --- overrides ---------------------------------------------------------------------------------


def test_override_replaces_only_that_file(tmp_path: Path) -> None:
    write(tmp_path / "en" / "event.subject.j2", "Heads up: {{ title }}\n")
    overridden, shipped = Templates(tmp_path), Templates()
    assert overridden.locales == shipped.locales
    context = sample_context()
    assert overridden.render("event", "en", context).subject == "Heads up: Sample\n"
    for kind in KINDS:
        for locale in sorted(shipped.locales):
            mine, theirs = overridden.render(kind, locale, context), shipped.render(kind, locale, context)
            if (kind, locale) != ("event", "en"):
                assert mine.subject == theirs.subject
            assert mine.text == theirs.text
            assert mine.html == theirs.html
    overridden.check(context)
    assert subject(overridden) == "Heads up: Team meeting"
    assert subject(overridden, "de") == "Erinnerung: Team meeting"
    assert subject(overridden, component="todo") == "To-do reminder: Team meeting"


def test_override_of_the_shared_layout_applies_to_every_locale(tmp_path: Path) -> None:
    write(tmp_path / "layout.html.j2", '<p lang="{{ locale }}">{% block heading %}{% endblock %}</p>\n')
    templates = Templates(tmp_path)
    templates.check(sample_context())
    assert templates.render("event", "en", sample_context()).html == '<p lang="en">Reminder: Sample</p>\n'
    assert templates.render("todo", "de", sample_context()).html == '<p lang="de">Aufgaben-Erinnerung: Sample</p>\n'


def test_a_name_one_part_sets_does_not_reach_the_next_part(tmp_path: Path) -> None:
    # The three parts share one dict of names: a template's {% set %} must stay its own.
    write(tmp_path / "en" / "event.subject.j2", '{% set title = "changed" %}{% set extra = 1 %}{{ title }}\n')
    write(tmp_path / "en" / "event.txt.j2", "{{ title }} {{ extra is defined }}\n")
    templates = Templates(tmp_path)
    rendered = templates.render("event", "en", sample_context())
    assert (rendered.subject, rendered.text) == ("changed\n", "Sample False\n")
    assert "Reminder: Sample" in rendered.html
    assert templates.render("event", "en", sample_context()) == rendered


def test_the_details_table_lists_only_rows_with_a_value() -> None:
    html = Templates().render("todo", "en", {**sample_context(), "start": "", "zone": "UTC", "location": ""}).html
    labels = re.findall(r"<th[^>]*>([^<]*)</th>", html)
    assert labels == ["Due", "Organizer"]
    assert re.search(r"<td[^>]*> \(UTC\)</td>", html) is None


def test_an_override_can_replace_the_details_table_block(tmp_path: Path) -> None:
    write(
        tmp_path / "en" / "event.html.j2",
        '{% extends "layout.html.j2" %}{% block fields %}<tr><td>{{ location }}</td></tr>{% endblock %}',
    )
    templates = Templates(tmp_path)
    templates.check(sample_context())
    html = templates.render("event", "en", sample_context()).html
    assert "<tr><td>Room 1</td></tr>" in html
    assert "<th" not in html


def test_an_override_still_including_the_removed_field_template_fails_the_check(tmp_path: Path) -> None:
    # field.html.j2 was removed (the layout lays out `rows`): an old override must stop notifyd, not send.
    write(
        tmp_path / "en" / "event.html.j2",
        '{% extends "layout.html.j2" %}{% block fields %}'
        '{% with label="When", value=when %}{% include "field.html.j2" %}{% endwith %}{% endblock %}',
    )
    with pytest.raises(TemplateError, match=r"en/event\.\*\.j2: .*field\.html\.j2"):
        Templates(tmp_path).check(sample_context())


def test_new_complete_locale_is_added(tmp_path: Path) -> None:
    copy_locale("en", tmp_path / "it")
    write(tmp_path / "it" / "event.subject.j2", "Promemoria: {{ title }}\n")
    templates = Templates(tmp_path)
    assert templates.locales == frozenset({"en", "de", "fr", "it"})
    assert templates.resolve("it") == "it"
    assert templates.resolve("it-CH") == "it"
    templates.check(sample_context())
    message = parse_message(
        render_reminder(
            sample_payload(), "ref", "calalarm@example.com", ["bob@example.com"], NOW, templates=templates, locale="it"
        )
    )
    assert message["Subject"] == "Promemoria: Team meeting"
    assert message["Content-Language"] == "it"
    text = message.get_body(("plain",))
    assert text is not None
    # The words are the copied English ones; Babel writes the dates in Italian.
    content = text.get_content().replace("\r\n", "\n")
    assert "When:       lunedì 23 novembre 2026, 11:00 – 12:00 (Ora standard dell’Europa centrale)\n" in content


def test_new_locale_unknown_to_babel_gets_english_dates(tmp_path: Path) -> None:
    copy_locale("en", tmp_path / "qq")
    templates = Templates(tmp_path)
    assert templates.resolve("qq") == "qq"
    message = parse_message(
        render_reminder(
            sample_payload(), "ref", "calalarm@example.com", ["bob@example.com"], NOW, templates=templates, locale="qq"
        )
    )
    text = message.get_body(("plain",))
    assert text is not None
    content = text.get_content().replace("\r\n", "\n")
    assert "When:       Monday, November 23, 2026, 11:00\u202fAM – 12:00\u202fPM" in content


def test_new_locale_can_be_the_default(tmp_path: Path) -> None:
    copy_locale("en", tmp_path / "it")
    templates = Templates(tmp_path, default_locale="it")
    assert templates.default_locale == "it"
    assert templates.resolve("xx") == "it"


def test_partial_locale_is_an_error_naming_the_missing_files(tmp_path: Path) -> None:
    for name in ("event.subject.j2", "event.txt.j2", "event.html.j2", "todo.txt.j2"):
        shutil.copy(SHIPPED / "en" / name, write(tmp_path / "it" / name, ""))
    with pytest.raises(TemplateError) as excinfo:
        Templates(tmp_path)
    assert str(excinfo.value) == "templates for locale it lack todo.html.j2, todo.subject.j2"


def test_locale_with_one_file_lacks_the_other_five(tmp_path: Path) -> None:
    write(tmp_path / "it" / "event.subject.j2", "Promemoria: {{ title }}\n")
    with pytest.raises(TemplateError) as excinfo:
        Templates(tmp_path)
    missing = [name for name in ALL_FILES if name != "event.subject.j2"]
    assert str(excinfo.value) == f"templates for locale it lack {', '.join(missing)}"


def test_unrelated_files_in_the_override_directory_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "README.txt", "notes\n")
    write(tmp_path / "en" / "event.subject.txt", "not a template\n")
    write(tmp_path / "en" / "notes.j2", "{{ nothing }\n")
    templates = Templates(tmp_path)
    assert templates.locales == frozenset({"en", "de", "fr"})
    templates.check(sample_context())


def test_syntax_error_fails_the_check_naming_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "de" / "event.txt.j2", "Erinnerung: {{ title }}\n\n{% if when %}\nWann: {{ when }\n")
    templates = Templates(tmp_path)  # discovery does not compile templates
    with pytest.raises(TemplateError) as excinfo:
        templates.check(sample_context())
    message = str(excinfo.value)
    assert message.startswith(f"template {path}:4: ")


def test_syntax_error_in_a_subject_override(tmp_path: Path) -> None:
    path = write(tmp_path / "en" / "event.subject.j2", "Heads up: {{ title }\n")
    with pytest.raises(TemplateError) as excinfo:
        Templates(tmp_path).check(sample_context())
    assert str(excinfo.value) == f"template {path}:1: unexpected '}}'"


def test_undefined_name_fails_the_check(tmp_path: Path) -> None:
    write(tmp_path / "fr" / "todo.txt.j2", "Rappel de tâche : {{ titre }}\n")
    with pytest.raises(TemplateError) as excinfo:
        Templates(tmp_path).check(sample_context())
    assert str(excinfo.value) == "templates fr/todo.*.j2: 'titre' is undefined"


def test_undefined_name_in_an_html_block_fails_the_check(tmp_path: Path) -> None:
    write(
        tmp_path / "en" / "event.html.j2",
        '{% extends "layout.html.j2" %}{% block heading %}{{ title }} at {{ venue }}{% endblock %}\n',
    )
    with pytest.raises(TemplateError, match=re.escape("templates en/event.*.j2: 'venue' is undefined")):
        Templates(tmp_path).check(sample_context())


def test_every_documented_name_is_in_the_sample_context() -> None:
    # reminder_context's documented names: an override may use any of them.
    documented = {"kind", "action", "title", "when", "start", "due", "all_day", "zone", "location"}
    documented |= {"organizer", "description", "alarm_note", "trigger", "calid", "uid", "ref"}
    assert set(sample_context()) == documented


def test_override_using_every_documented_name_passes_the_check(tmp_path: Path) -> None:
    names = sorted(sample_context())
    write(tmp_path / "en" / "todo.txt.j2", "".join(f"{name}={{{{ {name} }}}}\n" for name in names) + "{{ locale }}\n")
    templates = Templates(tmp_path)
    templates.check(sample_context())
    text = templates.render("todo", "en", sample_context()).text
    assert "title=Sample\n" in text
    assert "uid=sample-uid\n" in text
    assert text.endswith("\nen\n")


def test_runtime_error_in_an_override_fails_the_check_as_a_template_error(tmp_path: Path) -> None:
    write(tmp_path / "en" / "event.subject.j2", "{{ title + 1 }}\n")
    with pytest.raises(TemplateError, match=re.escape("en/event")):
        Templates(tmp_path).check(sample_context())


@pytest.mark.parametrize("make", ["missing", "file"])
def test_override_directory_must_be_a_directory(tmp_path: Path, make: str) -> None:
    path = tmp_path / "templates"
    if make == "file":
        write(path, "not a directory\n")
    with pytest.raises(TemplateError) as excinfo:
        Templates(path)
    assert str(excinfo.value) == f"notifyd.templates {path}: not a directory"


def test_empty_override_directory_changes_nothing(tmp_path: Path) -> None:
    templates = Templates(tmp_path)
    assert templates.locales == Templates().locales
    assert templates.render("event", "fr", sample_context()) == Templates().render("event", "fr", sample_context())


def test_resolve_remembers_a_bounded_number_of_requested_locales() -> None:
    templates = Templates()
    for i in range(RESOLVED_MAX + 50):
        assert templates.resolve(f"fr-x{i}") == "fr"
    assert templates.resolve("de-AT") == "de"
    assert len(templates._resolved) == RESOLVED_MAX
