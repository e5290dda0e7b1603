"""Every `--set section.field=value` the README and docs/ show names a real field."""

import re
from pathlib import Path

import pytest

from progressive.config.keys import field_of, parse_value

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
SETTING = re.compile(r"--set\s+([a-z_0-9]+\.[a-z_0-9]+)(?:=([^\s`]+))?")
PLACEHOLDER = re.compile(r"[A-Z]+|value")  # SECTION.FIELD=VALUE, start_res=R


def _settings() -> list[tuple[str, str, str | None]]:
    found = []
    for page in PAGES:
        for key, value in SETTING.findall(page.read_text()):
            if key != "section.field":
                found.append((page.name, key, value or None))
    return found


def test_the_pages_show_settings():
    assert len(_settings()) >= 10


@pytest.mark.parametrize(("page", "key", "value"), _settings())
def test_each_setting_is_a_field_and_its_value_reads(page, key, value):
    field_of(key)  # an unknown field is a UserError naming it
    if value is not None and not PLACEHOLDER.fullmatch(value):
        parse_value(key, value)
