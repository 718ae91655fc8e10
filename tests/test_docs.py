"""The docs that are generated from the code stay equal to it: the settings table of docs/service.md."""

from __future__ import annotations

import re

from tools.settings_table import SERVICE_DOC, UPDATE_COMMAND, serve_flags, with_table
from xscreen.service.settings import SETTINGS_TABLE_BEGIN, SETTINGS_TABLE_END, Settings


def _table() -> list[list[str]]:
    text = SERVICE_DOC.read_text()
    body = text.split(SETTINGS_TABLE_BEGIN, 1)[1].split(SETTINGS_TABLE_END, 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in body.strip().splitlines()[2:]]


def test_service_doc_settings_table_is_generated_from_the_settings():
    text = SERVICE_DOC.read_text()
    assert with_table(text) == text, f"docs/service.md's settings table is out of date: run {UPDATE_COMMAND}"


def test_settings_table_has_every_setting_its_flag_variable_default_and_meaning():
    rows = {row[0]: row for row in _table()}
    assert list(rows) == list(Settings.model_fields)
    flags = serve_flags()
    assert {"host", "port", "weights", "dicos_port"} <= flags.keys()
    assert "models_dir" not in flags and "api_keys" not in flags  # environment only
    for name, (_, flag, variable, default, meaning) in rows.items():
        assert variable == f"`XSCREEN_{name.upper()}`"
        assert flag == (f"`{flags[name][0]}`" if name in flags else "")
        assert default and meaning, name
    assert rows["port"][3] == "`8000`" and rows["warmup"][1] == "`--no-warmup`"
    assert rows["formats"][3] == "`png,tiff,npy,raw,dicom`" and rows["api_keys"][3] == "none"
    assert rows["device"][4] == "inference device (auto, cuda, cpu)"  # the flag's help, less its default


def test_a_stale_table_is_rewritten():
    text = SERVICE_DOC.read_text()
    stale = re.sub(r"\| `XSCREEN_PORT` \| `8000` \|", "| `XSCREEN_PORT` | `8080` |", text)
    assert stale != text and with_table(stale) == text
