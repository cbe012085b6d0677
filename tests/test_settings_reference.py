"""README.md's settings table is rendered from Settings and kept current."""

from __future__ import annotations

from dataclasses import Field, fields
from pathlib import Path
from typing import Any

import pytest

from gateway.core.config import Settings, settings_reference, with_settings_reference

README = Path(__file__).resolve().parent.parent / "README.md"
FIX = "run `make settings-doc` (python -m gateway.core.config --update README.md)"


@pytest.mark.parametrize("setting", fields(Settings), ids=lambda setting: setting.name)
def test_every_setting_has_a_one_line_description(setting: Field[Any]) -> None:
    doc = setting.metadata.get("doc")
    assert isinstance(doc, str) and doc.strip(), f'Settings.{setting.name} needs metadata={{"doc": ...}}'
    assert "\n" not in doc and "|" not in doc, f"Settings.{setting.name}: one line, without '|'"


def test_every_setting_is_in_the_reference() -> None:
    table = settings_reference()
    for setting in fields(Settings):
        toml = setting.metadata.get("toml")
        name = toml or f"KASKAD_{setting.name.upper()}"
        assert f"| `{name}`" in table, f"{setting.name} is missing from the settings reference"


def test_readme_table_is_current() -> None:
    readme = README.read_text(encoding="utf-8")
    assert with_settings_reference(readme) == readme, f"README.md's settings table is stale: {FIX}"


def test_update_needs_the_markers() -> None:
    with pytest.raises(ValueError, match="settings:start"):
        with_settings_reference("# no markers here\n")
