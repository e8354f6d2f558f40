"""How ``alarmctl`` prints: JSON for scripts, rich tables for people (plain lines off a terminal)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def make_console(*, stderr: bool = False) -> Console:
    """A console for tables: the terminal's width there; elsewhere (a pipe, a file) no
    colours and no wrapping, one line per row."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, width=100_000, color_system=None)


def print_renderable(console: Console, renderable: RenderableType) -> None:
    """``console.print``; off a terminal without the padding rich leaves at the ends of lines."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, console: Console | None = None) -> None:
    """``rows`` as a table of ``columns`` (headed in capitals), or ``(none)``."""
    console = console or make_console()
    if not rows:
        console.print("(none)")
        return
    print_renderable(console, build_table(rows, columns, terminal=console.is_terminal))


def build_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, terminal: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD if terminal else None, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column.upper(), overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if row.get(c) is None else str(row.get(c))) for c in columns))
    return table
