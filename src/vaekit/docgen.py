"""The command-line reference, docs/cli.md, generated from the parser that cli.py builds.

Every training flag is a field of a config dataclass (config.py's DataConfig, ModelConfig and
TrainConfig, and each model's own Config in models/), so its help, choices, range and default are
read from the field; the other arguments (the subcommands' own) from argparse. Nothing is written by
hand, so the reference cannot drift from the code: tests/test_docs.py compares the committed file
with this output.

    make docs                                    # = .venv/bin/python -m vaekit.docgen docs/cli.md
    python -m vaekit.docgen                      # the same text on standard output
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from .cli import build_parser
from .config import DataConfig, ModelConfig, TrainConfig
from .models import MODELS


def _cell(text: str) -> str:
    """Text for a Markdown table cell: no pipes, tags or emphasis taken from the help's math."""
    text = " ".join(text.split()).replace("|", "\\|").replace("*", "\\*")
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def _first_line(cls: type) -> str:
    return (inspect.getdoc(cls) or "").strip().split("\n\n")[0].replace("\n", " ")


def _config_fields() -> dict[str, tuple[dataclasses.Field, Any, list[str]]]:
    """Each documented config field by name: the field, its type hint, and the models that take it
    (empty for the fields every run has)."""
    found: dict[str, tuple[dataclasses.Field, Any, list[str]]] = {}
    for cls in (DataConfig, ModelConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "help" in f.metadata:
                found[f.name] = (f, hints[f.name], [])
    for name, model in MODELS.items():
        hints = typing.get_type_hints(model.Config)
        for f in dataclasses.fields(model.Config):
            if "help" not in f.metadata or f.name in {g.name for g in dataclasses.fields(ModelConfig)}:
                continue
            found.setdefault(f.name, (f, hints[f.name], []))[2].append(name)
    return found


def _kind(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _value(kind: Any, choices: Any, metavar: str | None = None) -> str:
    if choices:
        return " \\| ".join(f"`{c}`" for c in choices)
    if metavar:
        return metavar
    return {int: "INT", float: "NUMBER", str: "TEXT"}.get(kind, "TEXT")


def _default(value: Any) -> str:
    if value is None or value is argparse.SUPPRESS:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _flag_names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest.upper()}`"
    return " ".join(f"`{s}`" for s in action.option_strings)


def _config_row(action: argparse.Action, f: dataclasses.Field, hint: Any, models: list[str]) -> str:
    kind = _kind(hint)
    flags = _flag_names(action)  # --gated --no-gated for a bool
    value = "" if kind is bool else _value(kind, f.metadata.get("choices") or action.choices)
    help = f.metadata["help"]
    if models:
        help = f"{help} (--model {', '.join(models)})"
    return f"| {flags} | {value} | {_default(f.default)} | `{f.name}` | {_cell(help)} |"


def _argument_row(action: argparse.Action, key: bool = True) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        value, default = "", _default(bool(action.default))
    else:
        kind = getattr(action.type, "__name__", None)
        kind = {"int": int, "float": float}.get(kind or "", str)
        value = _value(kind, action.choices, action.metavar)
        default = "" if not action.option_strings else _default(action.default)
    help = action.help or ""
    if action.required:
        help = f"{help} (required)" if help else "required"
    if not key:
        return f"| {_flag_names(action)} | {value} | {default} | {_cell(help)} |"
    return f"| {_flag_names(action)} | {value} | {default} | `{action.dest}` | {_cell(help)} |"


_HEADER = ("| flag | value | default | key | what it does |", "|---|---|---|---|---|")
_SHORT_HEADER = ("| argument | value | default | what it does |", "|---|---|---|---|")


def _train_groups(parser: argparse.ArgumentParser, fields: dict) -> list[str]:
    """`vaekit train`: its own arguments, then one table per config dataclass (as the parser groups them)."""
    titles = {"DataConfig": DataConfig, "ModelConfig": ModelConfig, "TrainConfig": TrainConfig}
    titles.update({f"--model {name}": cls.Config for name, cls in MODELS.items()})
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        cls = titles.get(group.title or "")
        if cls is None and group.title in ("options", "optional arguments", "positional arguments"):
            lines += ["", "### The run", "", "Where the run goes, and how it starts.", ""]
        elif cls is None:  # a group cli.py adds under its own title
            title = group.title or ""
            about = [group.description, ""] if group.description else []
            lines += ["", f"### {title[:1].upper() + title[1:]}", "", *about]
        elif cls in (DataConfig, ModelConfig, TrainConfig):
            heading = {DataConfig: "Data", ModelConfig: "Model", TrainConfig: "Training"}[cls]
            lines += ["", f"### {heading}: `{cls.__name__}`", "",
                      f"{_first_line(cls)} Fields of `{cls.__name__}` in `src/vaekit/config.py`.", ""]
        else:
            model = (group.title or "").split()[-1]
            source = f"src/{inspect.getmodule(cls).__name__.replace('.', '/')}.py"
            lines += ["", f"### `--model {model}`: `{cls.__name__}`", "",
                      f"Fields of `{cls.__name__}` in `{source}` that no model above has already added; "
                      "the last column names every model that takes each.", ""]
        lines += _HEADER
        for a in actions:
            if a.dest in fields and a.option_strings and a.option_strings[0].lstrip("-").replace("-", "_") == a.dest:
                lines.append(_config_row(a, *fields[a.dest]))
            else:
                lines.append(_argument_row(a))
    return lines


def reference() -> str:
    """docs/cli.md: every subcommand of `vaekit` and every one of its arguments."""
    parser = build_parser()
    fields = _config_fields()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated from the parser in src/vaekit/cli.py and the config dataclasses by `make docs`",
        "     (python -m vaekit.docgen docs/cli.md). Do not edit by hand: tests/test_docs.py fails until the",
        "     file is regenerated. -->",
        "",
        "`vaekit COMMAND --help` prints the same. The *key* column of `vaekit train` is the flag's name as a",
        "keyword of `vaekit.train(...)`; a training flag that is a field of a config dataclass has that name",
        "in the run folder's `config.json` too.",
        "*unset* means no value: the run or the data decides (each help says how). Ranges are checked in one",
        "place for the command line, the Python API and a config.json read from disk. Errors print one line",
        "and exit with status 2. [guide.md](guide.md) explains the models, data sources and likelihoods.",
        "",
        "Commands: " + ", ".join(f"[`{name}`](#vaekit-{name})" for name in sub.choices) + ".",
    ]
    for name, p in sub.choices.items():
        summary = _cell(helps.get(name) or "")
        lines += ["", f"## vaekit {name}", "", summary[:1].upper() + summary[1:] + "."]
        if name == "train":
            lines += _train_groups(p, fields)
            continue
        actions = [a for a in p._actions if not isinstance(a, argparse._HelpAction)]
        lines += ["", *_SHORT_HEADER, *(_argument_row(a, key=False) for a in actions)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """With a path, write the reference there (whole, once it is built); without, print it."""
    args = sys.argv[1:] if argv is None else argv
    text = reference()
    if args:
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
