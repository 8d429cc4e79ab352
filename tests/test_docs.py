"""The docs that are generated from the code match it: docs/cli.md is what `make docs` writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaekit.cli import build_parser
from vaekit.docgen import reference

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8").splitlines()
    generated = reference().splitlines()
    if committed != generated:
        first = next((i for i, (a, b) in enumerate(zip(committed, generated)) if a != b),
                     min(len(committed), len(generated)))
        line = generated[first] if first < len(generated) else "(end of file)"
        pytest.fail(f"docs/cli.md is out of date with the flags (line {first + 1} should be: {line[:120]!r}): "
                    "regenerate it with `make docs` (or `python -m vaekit.docgen docs/cli.md`) and commit it",
                    pytrace=False)


def test_cli_reference_names_every_flag_of_every_command():
    text = reference()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert f"## vaekit {name}\n" in text
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in text, f"vaekit {name} {option} is missing from docs/cli.md"
