"""Run folders on disk: safetensors weights + JSON config, atomic writes, no pickle anywhere.

A run folder holds
    config.json         {"vaekit_version", "data", "model", "train"}: the three config dataclasses
    model.safetensors   the best weights by validation ELBO (what evaluate/sample load)
    last.safetensors    everything needed to resume: weights ("model."), best weights ("best."),
                        optimizer tensors ("optim."), RNG states ("rng."), and the JSON scalars
                        (epoch, step, best value, optimizer hyper-parameters) in its metadata;
                        one file, so one atomic rename makes a consistent checkpoint.
    metrics.jsonl       one JSON object per epoch
    evaluation.json     the latest `vaekit evaluate` result per dataset it was evaluated on
    report.html         the report of the run (report.py)
Every write goes to a temporary file in the same folder, is fsynced, then renamed into place.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import run_files
from .config import DataConfig, ModelConfig, TrainConfig, to_dict
from .errors import VaekitError
from .outputs import check_replaceable
from .version import __version__

CONFIG, BEST, LAST, METRICS = "config.json", "model.safetensors", "last.safetensors", "metrics.jsonl"
EVALUATION = "evaluation.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to path so that a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = None
    try:
        # Not tempfile.mkstemp: its 0600 mode would survive the rename. Created with 0666 like open()
        # does, so the file follows the user's umask, as every other file the tool writes.
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        tmp = name
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, read-only folder, quota: the previous file is untouched
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if not path.parent.is_dir():
            raise VaekitError(f"could not write {path}: the folder {path.parent} does not exist") from None
        kept = "; the previous version of it is intact" if path.exists() else ""
        raise VaekitError(f"could not write {path}: {e.strerror or e}{kept}") from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write(path, st_save(_cpu(tensors), metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a missing, truncated or tampered file is a VaekitError."""
    path = Path(path)
    if not path.is_file():
        raise VaekitError(f"{path} does not exist")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError, AttributeError, RecursionError) as e:
        raise VaekitError(f"{path} is not a valid safetensors file (truncated or tampered?): {e}") from None
    return tensors, metadata


def save_config(folder: Path, data: DataConfig, model: ModelConfig, train: TrainConfig) -> None:
    doc = {"vaekit_version": __version__, "data": to_dict(data), "model": to_dict(model), "train": to_dict(train)}
    atomic_write(Path(folder) / CONFIG, (json.dumps(doc, indent=2) + "\n").encode())


LOCK, REPLACED = ".vaekit.lock", ".replaced"  # the run folder's lock; an old run moved aside by --overwrite
BOOKKEEPING = {LOCK, REPLACED}


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name not in BOOKKEEPING]


def prepare_run_folder(out: Path, overwrite: bool) -> None:
    """Make `out` ready for a new run. An existing run is replaced only with overwrite, and then only
    moved aside (into out/.replaced) until the new run's first checkpoint; other files are never touched."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VaekitError(f"--out {out} is a file, not a folder")
    if out.is_dir() and _entries(out):
        if not is_run(out):
            raise VaekitError(f"{out} holds files that are not a vaekit run: choose another --out")
        if not overwrite:
            raise VaekitError(f"{out} already holds a vaekit run: pass --overwrite to replace it, or --resume {out} to continue it")
        check_replaceable(out)  # nothing but the run's own files: never another run nested in it
        aside = out / REPLACED
        aside.mkdir()
        for entry in _entries(out):
            os.replace(entry, aside / entry.name)
    out.mkdir(parents=True, exist_ok=True)


def discard_replaced(out: Path) -> None:
    """The new run has a checkpoint: the run that --overwrite moved aside can go."""
    if (Path(out) / REPLACED).is_dir():
        shutil.rmtree(Path(out) / REPLACED)


def restore_replaced(out: Path) -> bool:
    """Put back the run that --overwrite moved aside, removing what the new run wrote before its first
    checkpoint; returns whether there was one."""
    out, aside = Path(out), Path(out) / REPLACED
    if not aside.is_dir():
        return False
    for entry in _entries(out):
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in aside.iterdir():
        os.replace(entry, out / entry.name)
    aside.rmdir()
    return True


class RunLock:
    """An exclusive OS lock on a run folder (fcntl.flock on out/.vaekit.lock, released by the kernel
    when the process dies, even by kill -9), so that two processes never write one run. The holder's
    pid is in the file, for the message. A folder created here and left empty is removed on release.
    On entry, an --overwrite that died before the new run's first checkpoint is undone."""

    def __init__(self, out: Path):
        self.out, self.created, self.fd = Path(out), False, -1

    def __enter__(self) -> RunLock:
        out = self.out
        try:
            if out.exists() and not out.is_dir():
                raise VaekitError(f"--out {out} is a file, not a folder")
            self.created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise VaekitError(f"cannot use {out} as a run folder: {e.strerror or e}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise VaekitError(f"{out} is in use by another vaekit process (pid {holder}): wait for it to finish, "
                              "or train into another --out") from None
        if not _same_file(self.fd, out / LOCK):  # its holder finished and removed it after we opened it
            os.close(self.fd)
            return self.__enter__()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        if (out / REPLACED).is_dir():
            if (out / LAST).is_file():  # died between the new run's first checkpoint and the clean-up
                discard_replaced(out)
            elif restore_replaced(out):
                print(f"vaekit: restored the run in {out} that an interrupted --overwrite had moved aside",
                      file=sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        try:
            # a finished run keeps no lock file (removed while still held; a process that opened it
            # meanwhile sees that it was removed, in __enter__, and opens the new one)
            (self.out / LOCK).unlink(missing_ok=True)
            if self.created and not _entries(self.out):  # nothing was written: leave no trace
                self.out.rmdir()
        except OSError:
            pass
        finally:
            os.close(self.fd)  # releases the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


LABELLED = "labelled.json"
CLASSES = "classes.json"  # the class names of a dataset that has them (an image folder's subfolders)


def save_class_names(folder: Path, names: list[str]) -> None:
    atomic_write(Path(folder) / CLASSES, (json.dumps(list(names)) + "\n").encode())


def class_names(folder: Path, num_classes: int) -> list[str]:
    """The names of a run's classes: classes.json where the dataset named them, else "0".."K-1"."""
    path = Path(folder) / CLASSES
    if not path.is_file():
        return [str(k) for k in range(num_classes)]
    try:
        names = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise VaekitError(f"{path} is not a JSON list of class names ({e}): delete it to use the class numbers") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or (num_classes and len(names) != num_classes):
        raise VaekitError(f"{path} must be a JSON list of {num_classes or 'the'} class names: delete it to use the "
                          "class numbers")
    return names  # (a model without classes, num_classes 0, still names the data's labels with them)


def class_index(folder: Path, num_classes: int, label: str) -> int:
    """The class a user named: by its name (classes.json), else by its number."""
    names = class_names(folder, num_classes)
    if label in names:
        return names.index(label)
    if label.strip().lstrip("-").isdigit() and len(label.strip()) < 10:
        return int(label)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise VaekitError(f"--label {label!r} is not a class of this run: use one of {shown}")


def save_labelled(folder: Path, source_index: torch.Tensor, labels: torch.Tensor) -> None:
    """labelled.json: the training images whose label the model saw, as positions in the data source
    (the .npz or IDX file, the sorted image folder) with their labels."""
    doc = {"source_index": source_index.tolist(), "label": labels.tolist()}
    atomic_write(Path(folder) / LABELLED, (json.dumps(doc) + "\n").encode())


def check_restartable(out: Path) -> None:
    """A run without last.safetensors may start again only if it never wrote weights or a metrics line:
    a finished or partly trained run is never silently replaced."""
    out = Path(out)
    written = [name for name in (BEST, METRICS) if (out / name).is_file() and (out / name).stat().st_size > 0]
    if written:
        raise VaekitError(
            f"{out} has {' and '.join(written)} but no {LAST}, so it cannot be resumed; nothing was changed. "
            f"Restore {LAST}, or start a new run with --out elsewhere (or --overwrite)")


def is_run(folder: Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def read_config_doc(folder: Path) -> dict[str, Any]:
    """config.json of a run folder as a dict {"vaekit_version", "data", "model", "train"}, its version
    checked (runs.read_config builds the config dataclasses from it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VaekitError(f"run folder {folder} does not exist")
    if not is_run(folder):
        raise VaekitError(f"{folder} is not a vaekit run folder (no {CONFIG}); train one with `vaekit train --out {folder}`")
    try:
        doc = json.loads((folder / CONFIG).read_text())
        major = str(doc.get("vaekit_version", "?")).split(".")[0]
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise VaekitError(f"{folder / CONFIG} is not a valid vaekit config: {e}") from None
    except RecursionError:  # JSON nested thousands deep
        raise VaekitError(f"{folder / CONFIG} is not a valid vaekit config: nested too deeply") from None
    if major != __version__.split(".")[0]:
        raise VaekitError(
            f"{folder} was written by vaekit {doc.get('vaekit_version')}, this is {__version__}: retrain or use that version"
        )
    return doc


def load_state_dict_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path,
                         partial: bool = False) -> list[str]:
    """Load `tensors` into `model`, each fitting the model's tensor of its name in shape and dtype. Every one of
    the model's tensors must be there, unless `partial`: then the others keep their values. Returns their names."""
    expected = model.state_dict()
    if (not partial and set(tensors) != set(expected)) or any(
        k not in expected or v.shape != expected[k].shape or v.dtype != expected[k].dtype for k, v in tensors.items()
    ):
        raise VaekitError(f"{source} does not match the model in config.json (another model or a tampered file)")
    model.load_state_dict(tensors, strict=not partial)
    return [k for k in expected if k not in tensors]


def check_finite(tensors: dict[str, torch.Tensor], source: Path) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise VaekitError(f"{source} holds non-finite values (NaN or inf) in {', '.join(bad[:3])}"
                          f"{', ...' if len(bad) > 3 else ''}: the file is damaged or the run diverged")


def append_metrics(folder: Path, record: dict[str, Any]) -> None:
    try:
        with open(Path(folder) / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise VaekitError(f"could not write {Path(folder) / METRICS}: {e.strerror or e}; the last checkpoint is intact") from None


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records, checked (run_files.read_metrics); a line cut by a crash ends them."""
    return run_files.read_metrics(Path(folder) / METRICS)


def read_evaluations(folder: Path, name: str = EVALUATION) -> dict[str, dict[str, Any]]:
    """evaluation.json (or another evaluation file): {dataset: the evaluate() result}, checked; {} when missing."""
    return run_files.read_evaluations(Path(folder) / name)


def evaluation_file(iw_samples: int) -> str:
    """The file that keeps the evaluations with K importance samples: evaluation-K1000.json."""
    return f"evaluation-K{iw_samples}.json"


def save_evaluation(folder: Path, result: dict[str, Any], key: str | None = None) -> int | None:
    """Record an evaluate() result under `key` (default: its dataset) in evaluation.json (the latest of each
    key) and in evaluation-K<K>.json (the latest of each key at that K, so an evaluation with another K
    never loses this one). Returns the K of the result it replaced in evaluation.json when that differs."""
    key = key or str(result.get("dataset", "test"))
    doc = read_evaluations(folder)
    previous = doc.get(key, {})
    before = previous.get("iw_samples")
    for k, kept_result in ((before, previous), (result.get("iw_samples"), result)):
        if isinstance(k, int) and not isinstance(k, bool):  # (a run of vaekit <= 0.2 kept only evaluation.json)
            kept = read_evaluations(folder, evaluation_file(k))
            if kept_result is result or key not in kept:
                kept[key] = kept_result
                atomic_write(Path(folder) / evaluation_file(k),
                             (json.dumps(kept, indent=1, allow_nan=False) + "\n").encode())
    doc[key] = result
    k = result.get("iw_samples")
    atomic_write(Path(folder) / EVALUATION, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    return before if isinstance(before, int) and before != k else None


def evaluations_by_k(folder: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """{K: {key: result}} of every evaluation-K<K>.json in the run folder."""
    found = {}
    for path in Path(folder).glob("evaluation-K*.json"):
        k = path.stem[len("evaluation-K"):]
        if k.isdigit() and len(k) < 10:
            found[int(k)] = read_evaluations(folder, path.name)
    return dict(sorted(found.items()))


def write_metrics(folder: Path, records: list[dict[str, Any]]) -> None:
    atomic_write(Path(folder) / METRICS, "".join(json.dumps(r) + "\n" for r in records).encode())


def save_resume_point(
    folder: Path,
    model: torch.nn.Module,
    best: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    extra: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """Write model.safetensors (best weights), then last.safetensors: model, best, optimizer,
    `extra` tensors (RNG states, partial sums) and the JSON-able `state`, in one atomic file."""
    folder = Path(folder)
    save_tensors(folder / BEST, best)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best.items()})
    opt_state = optimizer.state_dict()
    for i, s in opt_state["state"].items():
        tensors.update({f"optim.{i}.{k}": torch.as_tensor(v) for k, v in s.items()})
    tensors.update({f"extra.{k}": v for k, v in extra.items()})
    meta = dict(state, param_groups=opt_state["param_groups"])
    save_tensors(folder / LAST, tensors, metadata={"train_state": json.dumps(meta)})
    discard_replaced(folder)  # a run that --overwrite moved aside is no longer needed


def saved_step(folder: Path) -> int | None:
    """The optimisation step the resume point in `folder` was written at (None if unreadable)."""
    try:
        _, metadata = load_tensors(Path(folder) / LAST)
        return run_files.read_train_state(metadata, Path(folder) / LAST)["step"]
    except VaekitError:
        return None


def load_resume_point(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model and optimizer from last.safetensors; returns (best weights, extra tensors, state)."""
    path = Path(folder) / LAST
    tensors, metadata = load_tensors(path)
    state = run_files.read_train_state(metadata, path)
    param_groups = state.pop("param_groups")

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    load_state_dict_into(model, part("model."), path)
    opt_state: dict = {"state": {}, "param_groups": param_groups}
    for key, v in part("optim.").items():
        i, name = key.split(".", 1)
        opt_state["state"].setdefault(int(i), {})[name] = v
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise VaekitError(f"{path} holds an optimizer state that does not fit the model: {e}") from None
    return part("best."), part("extra."), state
