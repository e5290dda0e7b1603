"""Every command line the README and docs/ show uses options its command has today."""

import re
from pathlib import Path

import click
import pytest

from datasets_prep.make_lmdb import main as make_lmdb
from progressive.cli import main as progressive

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A command starts at `progressive SUB`, `make-lmdb` or `tools/make_lmdb.py` and runs to the end
# of its code span or line; a `\` at the end of a line continues it.
START = re.compile(r"(progressive (?:train|[a-z]+)\b|make-lmdb|tools/make_lmdb\.py)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])\b")


def _command_lines(text: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in text.splitlines():
        spans = re.findall(r"`([^`]+)`", line) if not line.startswith("    ") else [line]
        found += [s for s in spans if START.search(s)]
    return found


def _commands() -> list[tuple[str, str, str]]:
    """(page, command, the options it gives)."""
    found = []
    for page in PAGES:
        for line in _command_lines(page.read_text()):
            match = START.search(line)
            head, rest = match.group(1), line[match.end():]
            rest = re.split(r"\s(?:&&|\|)\s", rest)[0]
            for option in OPTION.findall(rest):
                found.append((page.name, head, option))
    return found


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}


def test_the_pages_show_commands():
    assert len({(p, c) for p, c, _ in _commands()}) >= 10


@pytest.mark.parametrize(("page", "command", "option"), sorted(set(_commands())))
def test_each_option_exists(page, command, option):
    if command.startswith("progressive"):
        sub = command.split()[1]
        assert sub in progressive.commands, f"{page}: no command `progressive {sub}`"
        known = _options(progressive.commands[sub])
    else:
        known = _options(make_lmdb)
    assert option in known, f"{page}: `{command}` has no option {option}"
