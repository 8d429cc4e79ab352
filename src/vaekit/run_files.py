"""The run folder's JSON files as read back: one reader per file, each checking the file against its schema.

A file that parses but has the wrong shape or type (a metrics line that is a list, a train_state field
that is a string, an evaluation.json holding strings or NaN, JSON nested thousands deep) is a one-line
VaekitError naming the file and what to do, never a traceback in the code that uses it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import VaekitError




class Damaged(VaekitError):
    """A run file that does not fit its schema."""


def parse_json(text: str | bytes, infinity: bool = False) -> Any:
    """json.loads without NaN (and without ±Infinity unless `infinity`); ValueError for what does not parse,
    nested too deeply included."""
    def constant(name: str) -> float:
        if infinity and name in ("Infinity", "-Infinity"):
            return float(name.replace("Infinity", "inf"))
        raise ValueError(f"{name} is not a number")

    try:
        return json.loads(text, parse_constant=constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def is_number(v: Any, finite: bool = True) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (not finite or math.isfinite(v))


def is_count(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _require(ok: bool, path: Path, problem: str, fix: str) -> None:
    if not ok:
        raise Damaged(f"{path} is damaged ({problem}): {fix}")


# ---- metrics.jsonl: one object per epoch


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The epochs' records; a line cut by a crash ends the file (what follows it is lost work, not data)."""
    if not path.is_file():
        return []
    fix = "restore it, or delete the bad lines (a resume redoes the epochs after the last good one)"
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = parse_json(line, infinity=True)
        except ValueError:
            break
        where = f"line {number}"
        _require(isinstance(record, dict), path, f"{where} is a {type(record).__name__}, not an object", fix)
        _require(is_count(record.get("epoch"), 1) and is_count(record.get("step")), path,
                 f"{where} lacks a whole-number epoch and step", fix)
        bad = [k for k, v in record.items() if v is not None and not is_number(v, finite=False)]
        _require(not bad, path, f"{where}: {', '.join(bad[:3])} is not a number", fix)
        _require(not records or record["epoch"] > records[-1]["epoch"], path, f"{where} repeats an earlier epoch", fix)
        records.append(record)
    return records


# ---- evaluation.json: {dataset: the evaluate() result}

EVALUATION_NUMBERS = ("neg_elbo", "recon", "kl", "nll")


EVALUATION_TEXTS = ("dataset", "likelihood", "density")  # the texts of an evaluate() result; the rest are numbers,
# lists of numbers, `warnings` (texts) and `names` (term -> what it measures)


def read_evaluations(path: Path) -> dict[str, dict[str, Any]]:
    """{} when the file is missing; a file whose results are not evaluate() results is Damaged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise Damaged(f"{path} cannot be read ({e}): delete it; `vaekit evaluate` writes it again") from None
    fix = "delete it; `vaekit evaluate` writes it again"
    try:
        doc = parse_json(text)
    except ValueError as e:
        raise Damaged(f"{path} is damaged ({str(e)[:100]}): {fix}") from None
    _require(isinstance(doc, dict), path, f"a {type(doc).__name__}, not an object", fix)
    for name, result in doc.items():
        _require(isinstance(result, dict), path, f"{name!r} is not an object", fix)
        for key in EVALUATION_NUMBERS:
            _require(is_number(result.get(key)), path, f"{name!r} lacks the number {key}", fix)
        _require(is_count(result.get("n_images"), 1) and is_count(result.get("iw_samples"), 1), path,
                 f"{name!r} lacks n_images or iw_samples", fix)
        for key, value in result.items():
            if key in EVALUATION_TEXTS:
                _require(isinstance(value, str), path, f"{name!r}: {key} is not a text", fix)
            elif key == "warnings":
                _require(isinstance(value, list) and all(isinstance(v, str) for v in value), path,
                         f"{name!r}: warnings is not a list of texts", fix)
            elif key == "names":
                _require(isinstance(value, dict) and all(isinstance(v, str) for v in value.values()), path,
                         f"{name!r}: names is not an object of texts", fix)
            else:
                ok = value is None or is_number(value) or (isinstance(value, list) and all(is_number(v) for v in value))
                _require(ok, path, f"{name!r}: {key} is not a finite number", fix)
    return doc


# ---- last.safetensors: the train_state metadata


def read_train_state(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    """The resume point's scalars: epoch, batch, step (whole numbers), best_val (a number or inf), Adam's
    param_groups, and best_epoch, bound, world where written."""
    try:
        state = parse_json(metadata["train_state"], infinity=True)
    except (KeyError, ValueError, TypeError):
        raise VaekitError(f"{path} holds no training state: it cannot be resumed") from None
    if not isinstance(state, dict) or "param_groups" not in state:
        raise VaekitError(f"{path} holds no training state: it cannot be resumed")
    for key in ("epoch", "batch", "step", "best_val"):
        if key not in state:
            raise VaekitError(f"{path} lacks {key!r} in its training state: it cannot be resumed")
    fix = "it cannot be resumed; start a new run (or restore the file)"
    for key in ("epoch", "batch", "step", "best_epoch"):
        _require(key not in state or is_count(state[key]), path, f"train_state {key} is not a whole number", fix)
    _require(is_count(state.get("world", 1), 1), path, "train_state world is not a whole number", fix)
    _require(is_number(state["best_val"], finite=False) and not math.isnan(state["best_val"]), path,
             "train_state best_val is not a number", fix)
    _require(isinstance(state.get("bound", "neg_elbo"), str) and state.get("bound", "neg_elbo"), path,
             "train_state bound is not the name of a term", fix)
    groups = state["param_groups"]
    _require(isinstance(groups, list) and all(isinstance(g, dict) for g in groups), path,
             "train_state param_groups is not a list of objects", fix)
    return state


# ---- m1.json (the recipe) and classifier.json (the judge): small objects of known fields


def read_object(path: Path, fields: dict[str, Any], fix: str) -> dict[str, Any]:
    """A JSON object whose `fields` each pass their check (a function of the value)."""
    try:
        doc = parse_json(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise Damaged(f"{path} is damaged ({str(e)[:100]}): {fix}") from None
    _require(isinstance(doc, dict), path, f"a {type(doc).__name__}, not an object", fix)
    for key, ok in fields.items():
        _require(key in doc and ok(doc[key]), path, f"{key} is missing or of the wrong type", fix)
    return doc
