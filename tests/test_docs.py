"""The settings tables in the README and docs/settings.md list every option with its real default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from django_rawws.conf import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def table_rows(text: str) -> dict[str, str]:
    """Map each ``| `KEY` | `default` | ...`` row of a markdown table to its default cell."""
    rows = {}
    for match in re.finditer(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", text, re.MULTILINE):
        rows[match.group(1)] = match.group(2)
    return rows


@pytest.mark.parametrize("document", ["README.md", "docs/settings.md"])
def test_settings_table_lists_every_option_with_its_default(document: str) -> None:
    rows = table_rows((ROOT / document).read_text())
    assert set(rows) == set(DEFAULTS), f"{document}: missing {set(DEFAULTS) - set(rows)}, extra {set(rows) - set(DEFAULTS)}"
    for key, default in DEFAULTS.items():
        assert rows[key] == repr(default), f"{document}: {key} documented as {rows[key]!r}, default is {default!r}"
