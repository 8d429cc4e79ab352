"""Which files of a run folder belong to the run, and the two rules that keep other commands off them.

1. A command's own output (`sample`, `reconstruct`, `analogy`, `predict --out`) never replaces a file of a
   run folder: `vaekit predict RUN --out RUN/config.json` would leave the run unusable.
2. `train --overwrite` replaces only what a run writes: a folder that also holds another run (in a
   subfolder) or any file a run does not write is refused, naming what is there.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import VaekitError

CONFIG = "config.json"
# Every name a run folder's own commands write (train, evaluate, report, m1, the judge, the bookkeeping).
RUN_FILES = frozenset({
    CONFIG, "model.safetensors", "last.safetensors", "metrics.jsonl", "evaluation.json", "report.html",
    "labelled.json", "split.json", "classifier.safetensors", "classifier.json", "m1.safetensors", "m1.json",
    "samples.png", "reconstructions.png", "latent.png", "traversal.png", "analogy.png", "curves.png",
    ".vaekit.lock", ".replaced",
})
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # checkpoint.atomic_write's temporaries
EVALUATIONS = re.compile(r"^evaluation-K[0-9]+\.json$")  # evaluate's file per K (checkpoint.evaluation_file)


def is_run_file(name: str) -> bool:
    return name in RUN_FILES or bool(EVALUATIONS.match(name))


def is_run_folder(folder: Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def check_output(path: str | Path, flag: str = "--out") -> Path:
    """`path` as an output file of a command that does not own the run folder it may point into."""
    path = Path(path)
    try:
        folder = path.parent.resolve()
    except (OSError, RuntimeError):  # a loop of links: the write itself will say what is wrong
        return path
    if is_run_folder(folder) and (is_run_file(path.name) or path.exists() or path.is_symlink()):
        raise VaekitError(f"{flag} {path} would replace a file of the run folder {path.parent}: write elsewhere "
                          f"(or to a new name there); nothing was written")
    return path


def foreign_entries(folder: Path) -> list[str]:
    """What in `folder` a run did not write: other runs (folders holding config.json) first, then anything else."""
    nested, other = [], []
    for entry in sorted(Path(folder).iterdir()):
        if entry.name == ".replaced" and entry.is_dir() and not entry.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            runs = [p.parent for p in [entry / CONFIG, *entry.rglob(CONFIG)] if p.is_file()]
            (nested if runs else other).append(entry.name + "/" + (" (a vaekit run)" if runs else ""))
        elif not is_run_file(entry.name) and not TEMPORARY.match(entry.name):
            other.append(entry.name)
    return nested + other


def check_replaceable(folder: Path) -> None:
    """--overwrite may move aside only a run's own files: refuse a folder that holds more, saying what."""
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        kind = "another vaekit run" if foreign[0].endswith("(a vaekit run)") else "files a vaekit run does not write"
        raise VaekitError(f"--overwrite replaces only a run's own files, and {folder} also holds {kind}: {shown}; "
                          "nothing was changed: move them elsewhere, or train into another --out")
