"""Reminder templates: Jinja2, one set per locale, shipped defaults plus operator overrides.

Each locale is a directory holding six templates::

    event.subject.j2  event.txt.j2  event.html.j2
    todo.subject.j2   todo.txt.j2   todo.html.j2

Shipped locales live in ``notifyd/templates/`` (``en``, ``de``, ``fr``; HTML parts extend
``layout.html.j2``). ``notifyd.templates`` names a directory searched first: a file
there replaces the shipped one of the same name, and a new directory (``it/``) adds a
locale once it holds all six. HTML templates are autoescaped; undefined names are
errors, so a typo in an override fails :meth:`Templates.check` at start-up instead of
producing an empty reminder.

Locale resolution (documented rule): ``fr-CA`` and ``fr_CA`` are the same; an exact
match wins, then the language alone (``fr``), then ``notifyd.locale``. An unknown or
malformed locale is never an error at send time.

The names a template can use are listed in :func:`notifyd.email.reminder_context`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    Template,
    TemplateSyntaxError,
    select_autoescape,
)
from jinja2 import (
    TemplateError as JinjaError,
)

from common.settings import ConfigError

KINDS = ("event", "todo")
PARTS = ("subject", "txt", "html")
RESOLVED_MAX = 1000  # distinct requested locales remembered; the rest are resolved each time
_LOCALE_DIR = re.compile(r"^([A-Za-z]{2,8}(?:[_-][A-Za-z0-9]{1,8})*)/([a-z]+)\.([a-z]+)\.j2$")


class TemplateError(ConfigError):
    """A template set that cannot be used; the message names the file and the fault."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def normalise_locale(name: str) -> str:
    """``fr-ca`` → ``fr_CA``; ``""`` for something that is not a language tag."""
    parts = [p for p in re.split(r"[-_]", name.strip()) if p]
    if not parts or not re.fullmatch(r"[A-Za-z]{2,8}", parts[0]) or not all(p.isalnum() for p in parts):
        return ""
    return "_".join([parts[0].lower(), *(p.upper() if len(p) == 2 else p for p in parts[1:])])


class Templates:
    """The reminder templates of every available locale."""

    def __init__(self, override_dir: str | Path = "", default_locale: str = "en") -> None:
        loaders: list[Any] = []
        if override_dir:
            path = Path(override_dir)
            if not path.is_dir():
                raise TemplateError(f"notifyd.templates {override_dir}: not a directory")
            loaders.append(FileSystemLoader(str(path)))
        loaders.append(PackageLoader("notifyd", "templates"))
        self._env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False, default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self._directories = self._discover()
        self._loaded: dict[tuple[str, str, str], Template] = {}
        self._resolved: dict[str, str] = {}  # requested → resolved, for the few locales a deployment sees
        self.locales = frozenset(self._directories)
        self.default_locale = self._closest(default_locale)
        if not self.default_locale:
            raise TemplateError(
                f"notifyd.locale {default_locale!r} has no templates; available: {', '.join(sorted(self.locales))}"
            )

    def _discover(self) -> dict[str, str]:
        """Available locale (normalised) → its directory name as written (``pt-BR``, ``IT``)."""
        found: dict[str, set[str]] = {}
        for name in self._env.list_templates(extensions=["j2"]):
            match = _LOCALE_DIR.match(name)
            if match and match.group(2) in KINDS and match.group(3) in PARTS:
                found.setdefault(match.group(1), set()).add(f"{match.group(2)}.{match.group(3)}.j2")
        needed = {f"{kind}.{part}.j2" for kind in KINDS for part in PARTS}
        directories: dict[str, str] = {}
        for directory, present in sorted(found.items()):
            missing = needed - present
            if missing:
                raise TemplateError(f"templates for locale {directory} lack {', '.join(sorted(missing))}")
            locale = normalise_locale(directory)
            if locale in directories:
                raise TemplateError(f"template directories {directories[locale]} and {directory} are the same locale")
            directories[locale] = directory
        return directories

    def resolve(self, requested: str) -> str:
        """The available locale closest to ``requested`` (see the module doc)."""
        resolved = self._resolved.get(requested)
        if resolved is None:
            resolved = self._closest(requested) or self.default_locale
            if len(self._resolved) < RESOLVED_MAX:
                self._resolved[requested] = resolved
        return resolved

    def _closest(self, requested: str) -> str:
        name = normalise_locale(requested)
        if name in self.locales:
            return name
        language = name.partition("_")[0]
        return language if language in self.locales else ""

    def render(self, kind: str, locale: str, context: Mapping[str, Any]) -> Rendered:
        """Subject, text and HTML of a ``kind`` reminder in ``locale`` (an available one).

        The three parts share one dict of names (the environment's globals, ``context``
        and ``locale``), built once: a template's own ``{% set %}`` goes to its own
        context, never into that dict, so one part cannot change what the next sees.
        This is what ``Template.render`` does, without its two copies of the names and
        its template lookup per part: half of the rendering time.
        """
        if kind not in KINDS:
            raise ValueError(f"no template kind {kind!r}")
        names = {**self._env.globals, **context, "locale": locale}
        subject, text, html = (self._render(self._template(locale, kind, part), names) for part in PARTS)
        return Rendered(subject, text, html)

    def _template(self, locale: str, kind: str, part: str) -> Template:
        key = (locale, kind, part)
        template = self._loaded.get(key)
        if template is None:
            template = self._loaded[key] = self._env.get_template(f"{self._directories[locale]}/{kind}.{part}.j2")
        return template

    def _render(self, template: Template, names: dict[str, Any]) -> str:
        context = template.new_context(names, shared=True)
        try:
            return self._env.concat(template.root_render_func(context))
        except Exception:  # noqa: BLE001 - re-raised with the template's file and line, as Template.render does
            self._env.handle_exception()

    def check(self, sample: Mapping[str, Any]) -> None:
        """Render ``sample`` through every template; raise :class:`TemplateError` naming the one that fails."""
        for locale in sorted(self.locales):
            for kind in KINDS:
                try:
                    self.render(kind, locale, {**sample, "kind": kind})
                except TemplateSyntaxError as exc:
                    raise TemplateError(f"template {exc.filename or exc.name}:{exc.lineno}: {exc.message}") from None
                except Exception as exc:  # noqa: BLE001 - any fault of an override, e.g. {{ title + 1 }}
                    what = exc if isinstance(exc, JinjaError) else f"{type(exc).__name__}: {exc}"
                    raise TemplateError(f"templates {locale}/{kind}.*.j2: {what}") from None
