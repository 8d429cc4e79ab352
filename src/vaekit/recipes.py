"""Recipes: training set-ups as TOML files (`vaekit train --config FILE.toml`).

A file holds any training option under its field name (latent_dim = 40, or "latent-dim" as the flag
spells it) and optionally `out`, the run folder. Options given on the command line override the
file's. A file with `[[stage]]` tables is a chain: every stage takes the file's top-level options,
then its own, and starts from the best weights of the stage before it (init_from) unless it names
its own. Stage NAME writes OUT/NAME. Run again, a chain skips each stage already finished (the same
options, every epoch trained or stopped early), resumes one that was interrupted, and trains the rest.

    dataset = "fashion-mnist"
    out = "runs/fashion-best"
    [[stage]]
    name = "elbo"
    epochs = 100
    [[stage]]
    name = "iwae10"
    train_samples = 10
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from . import run_files
from .config import to_dict
from .errors import VaekitError
from .runs import read_config

RESUME_CHANGES = {"epochs", "device"}  # the settings a resumed run may change


@dataclass(frozen=True)
class Stage:
    name: str
    out: Path
    options: dict[str, Any]  # training options: fields of the config dataclasses


def _keys(table: dict, source: str) -> dict[str, Any]:
    """Options with the flag spelling (latent-dim) turned into field names (latent_dim)."""
    options = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in options:
            raise VaekitError(f"{source}: {key} is given twice")
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            raise VaekitError(f"{source}: {key} is a table; a recipe holds options (key = value) and [[stage]] tables")
        options[name] = value
    return options


def read_recipe(path: str | Path, overrides: dict[str, Any] | None = None, out: str | Path | None = None) -> list[Stage]:
    """The stages of a recipe file, each with its options merged: the file's, the stage's, then `overrides`
    (the command line's). `out` (the command line's --out) replaces the file's run folder."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise VaekitError(f"cannot read the recipe {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VaekitError(f"{path} is not a valid TOML recipe: {e}") from None
    shared = _keys({k: v for k, v in doc.items() if k != "stage"}, str(path))
    stages = doc.get("stage", [])
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise VaekitError(f"{path}: stages are [[stage]] tables")
    folder = out if out is not None else shared.pop("out", None)
    shared.pop("out", None)
    if "name" in shared:
        raise VaekitError(f"{path}: name belongs in a [[stage]] table")
    if folder is None:
        raise VaekitError(f"{path} names no run folder: add out = \"runs/NAME\" to it, or give --out")
    if not isinstance(folder, (str, Path)):
        raise VaekitError(f"{path}: out must be a folder name (a string), got {folder!r}")
    overrides = dict(overrides or {})
    if not stages:
        return [Stage(Path(folder).name, Path(folder), {**shared, **overrides})]
    result: list[Stage] = []
    for i, table in enumerate(stages, 1):
        own = _keys(table, f"{path}, stage {i}")
        name = own.pop("name", None)
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise VaekitError(f"{path}: stage {i} needs a name (a plain folder name, e.g. name = \"iwae10\")")
        if any(s.name == name for s in result):
            raise VaekitError(f"{path}: two stages are named {name!r}")
        if "out" in own:
            raise VaekitError(f"{path}: stage {name} writes {folder}/{name}; out belongs at the top of the file")
        options = {**shared, **own, **overrides}
        if result and "init_from" not in own:
            options["init_from"] = str(result[-1].out)
        result.append(Stage(name, Path(folder) / name, options))
    return result


def stage_status(stage: Stage, configs: tuple) -> str:
    """'new' (no run in its folder), 'unfinished' (a checkpoint to resume, or more epochs asked for) or
    'finished'. A run there trained with other options than the stage's (`configs`, built from its options)
    is refused; only the epochs and the device may change, as with --resume."""
    out = stage.out
    if not ckpt.is_run(out):
        return "new"
    recorded = read_config(out)
    differ = set()
    for mine, theirs in zip(configs, recorded):
        mine_d, theirs_d = to_dict(mine), to_dict(theirs)
        differ |= {k for k in stage.options if k in mine_d and mine_d[k] != theirs_d.get(k)} - RESUME_CHANGES
    if differ:
        raise VaekitError(f"{out} holds a run trained with other settings ({', '.join(sorted(differ))}) than the "
                          f"recipe's stage {stage.name}: give --overwrite to train it again, or another --out")
    try:
        _, metadata = ckpt.load_tensors(out / ckpt.LAST)
        state = run_files.read_train_state(metadata, out / ckpt.LAST)
    except VaekitError:
        return "unfinished"  # killed before its first checkpoint, or damaged: --resume says which
    epoch, best_epoch = state["epoch"], state.get("best_epoch", state["epoch"])
    train = recorded[2]
    epochs = configs[2].epochs or train.epochs  # 0: the automatic count the run recorded
    stalled = train.patience > 0 and epoch - best_epoch >= train.patience
    return "finished" if epoch >= epochs or stalled else "unfinished"
