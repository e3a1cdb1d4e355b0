"""The README's options table is drift-checked against `dptext run`'s options: every option is
documented, every documented option exists, and each documented default is the real default."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from dptext.pipeline.options import DPTextOptions

README = Path(__file__).resolve().parents[1] / "README.md"


def _run_options() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    DPTextOptions._add_argparse_args(parser)
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"}


def _readme_rows() -> dict[str, str]:
    """First-column option names of the README's options table -> the row's default column."""
    text = README.read_text(encoding="utf-8")
    table = text.split("### Options (`dptext run --help`)", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in re.findall(r"`(--[a-z0-9-]+)`", cells[0]):
            rows[name] = cells[1]
    return rows


def test_every_run_option_is_in_the_readme_table_and_nothing_else():
    documented, real = set(_readme_rows()), set(_run_options())
    assert documented - real == set(), "documented but not an option"
    assert real - documented == set(), "an option missing from the README's table"


def test_single_option_rows_state_the_real_default():
    options = _run_options()
    for name, default in _readme_rows().items():
        action = options[name]
        if "," in default or action.default is None:  # combined rows; (required)/none/computed defaults
            continue
        shown = default.strip("`").replace(",", "")
        if isinstance(action.default, bool) or action.default is False:
            assert shown == {True: "on", False: "off"}[action.default], name
        elif isinstance(action.default, (int, float)):
            assert float(shown) == action.default, name
        else:
            assert shown == str(action.default), name
