"""Fault injection against the real `vaekit` command: what is lost, and what the user is told.

    python benchmarks/faults.py                 # every row, 20 kill -9 points (about 18 minutes on 2 cores)
    python benchmarks/faults.py --kills 5 --only kill,signal
    python benchmarks/faults.py --only user-errors   # the careless-user rows alone (a few minutes)

Every fault runs `python -m vaekit ...` in a subprocess, on a tiny conv VAE trained on the built-in
digits (--width 8 --hidden 32 --latent-dim 4 --batch-size 16, 4 epochs, a checkpoint every 0.12 s),
and prints a markdown table: fault | expected | exit status | first line of stderr | data lost | result.
The script exits with status 0 when every row passes, 1 otherwise.

The faults:
  kill -9 at N random points   seeded delays spread over a run; each killed run is resumed with
                               `vaekit train --resume` and must equal an uninterrupted reference run
                               bit for bit (weights, best weights, optimizer; metrics.jsonl epochs 1..E
                               once each, same values) and hold its pictures.
  SIGTERM, SIGINT              exit 128 + signal, one line saying how to resume, nothing lost.
  disk full                    a write that fails with ENOSPC (injected into the process; also on a
                               real, full tmpfs when this user may mount one): exit 2, one line, no
                               temporary file left, and the run resumes once there is space again.
  corrupt inputs               damaged IDX/.npz/image files, run folders, configs, weights, downloads:
                               exit 2, exactly one line starting "vaekit: error:", no traceback, and
                               no file written or changed.
  non-finite loss              exit 2, the message names epoch, step and term; the last checkpoint loads.
  user errors (user-errors)    a second process on a run folder that one trains (the run lock), a kill -9
                               of the lock's holder, `--resume` without last.safetensors, `--overwrite`
                               that fails or is killed before its first checkpoint, out-of-range flag and
                               config.json values, unusable output paths, a closed output pipe, Ctrl-C
                               during start-up, NaN weights, impossible data (channels, labels), image
                               formats: one line and exit 2 (or the stated outcome), nothing lost.

"data lost" is the number of optimisation steps done before the fault that the run folder no
longer holds: the step reached (counted inside the process) minus the `step` of the checkpoint left
in last.safetensors. Faults that need a precise moment (a write error, a NaN, a kill at a given
place) are injected by a small wrapper (`PROBE` below) that patches one function and then calls
vaekit.cli.main; the same wrapper counts the steps. Every resume runs the unmodified command.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import itertools
import json
import os
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vaekit.checkpoint import load_tensors  # noqa: E402
from vaekit.data import IDX_FILES  # noqa: E402

VAEKIT = [sys.executable, "-m", "vaekit"]
TINY = ["--width", "8", "--hidden", "32", "--latent-dim", "4"]
PICTURES = ("samples.png", "reconstructions.png", "latent.png", "curves.png")
TIMING = {"seconds", "train_seconds", "images_per_second"}
ERROR_PREFIX = "vaekit: error:"

# The wrapper for faults that need a precise moment. Environment:
#   FAULTS_COUNTER  a file of 8 bytes: the number of training steps done so far (int64, mmap'ed, so
#                   it survives kill -9)
#   FAULTS_INJECT   enospc:NAME:N   the (N+1)-th write of NAME (last.safetensors, model.safetensors:
#                                   atomic writes; metrics.jsonl: appends) fails with ENOSPC after
#                                   half of its bytes
#                   nan:K           the images of training step K (counted in this process) are NaN
#                   kill:pictures   SIGKILL when the final pictures are drawn
#                   term:pictures   SIGTERM to itself when the final pictures are drawn
#                   kill:before-metrics:E, kill:after-metrics:E
#                                   SIGKILL just before / just after epoch E's line is appended to
#                                   metrics.jsonl (the epoch's checkpoint is written next to it)
#                   kill:step:K     SIGKILL just before training step K (counted in this process)
#                   pause:K         just before training step K: create the file FAULTS_COUNTER.paused,
#                                   then sleep (holding the run folder's lock) until killed
PROBE = r"""
import builtins, errno, importlib, mmap, os, signal, struct, sys, tempfile
import vaekit.checkpoint as ckpt, vaekit.cli, vaekit.plots
training = importlib.import_module("vaekit.train")  # the attribute vaekit.train is the API function

counter = os.environ.get("FAULTS_COUNTER")
spec = os.environ.get("FAULTS_INJECT", "").split(":")
steps = [0]
if counter:
    counter_file = open(counter, "r+b")
    shared = mmap.mmap(counter_file.fileno(), 8)
real_step = training.train_step

def train_step(*args, **kwargs):
    if spec[0] == "kill" and spec[1] == "step" and steps[0] + 1 == int(spec[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    if spec[0] == "pause" and steps[0] + 1 == int(spec[1]):
        open(counter + ".paused", "w").close()
        import time
        time.sleep(3600)
    if spec[0] == "nan" and steps[0] + 1 == int(spec[1]):
        args = (*args[:2], args[2] * float("nan"), *args[3:])
    result = real_step(*args, **kwargs)
    steps[0] += 1
    if counter:
        shared[:8] = struct.pack("<q", steps[0])
    return result

training.train_step = train_step

class Full:
    # A file on a disk that fills up: half of the bytes get written, then ENOSPC.
    def __init__(self, f):
        self.f = f
    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()

if spec[0] == "enospc":
    name, allowed, seen, temporaries = spec[1], int(spec[2]), [0], {}
    if name == "metrics.jsonl":
        def open_(path, mode="r", *args, **kwargs):
            f = builtins.open(path, mode, *args, **kwargs)
            if str(path).endswith(name) and "a" in mode:
                seen[0] += 1
                if seen[0] > allowed:
                    return Full(f)
            return f
        ckpt.open = open_
    else:
        real_open, real_fdopen = os.open, os.fdopen
        def os_open(path, *args, **kwargs):
            fd = real_open(path, *args, **kwargs)
            temporaries[fd] = os.path.basename(path)
            return fd
        def fdopen(fd, *args, **kwargs):
            f = real_fdopen(fd, *args, **kwargs)
            if temporaries.pop(fd, "").startswith("." + name + "."):
                seen[0] += 1
                if seen[0] > allowed:
                    return Full(f)
            return f
        os.open, os.fdopen = os_open, fdopen
elif spec[0] in ("kill", "term") and spec[1] == "pictures":
    real_pictures = vaekit.plots.run_pictures
    def run_pictures(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL if spec[0] == "kill" else signal.SIGTERM)
        return real_pictures(*args, **kwargs)
    vaekit.plots.run_pictures = run_pictures
elif spec[0] == "kill" and spec[1] in ("before-metrics", "after-metrics"):
    real_append = ckpt.append_metrics
    def append_metrics(folder, record):
        if record["epoch"] == int(spec[2]) and spec[1] == "before-metrics":
            os.kill(os.getpid(), signal.SIGKILL)
        real_append(folder, record)
        if record["epoch"] == int(spec[2]) and spec[1] == "after-metrics":
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt.append_metrics = append_metrics

sys.exit(vaekit.cli.main(sys.argv[1:]))
"""


@dataclass
class Row:
    fault: str
    expected: str
    status: str = ""
    stderr: str = ""
    lost: str = "nothing"
    problems: list[str] = field(default_factory=list)
    skipped: str = ""
    command: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition


@dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def first_err(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[0] if lines else ""


class Bench:
    def __init__(self, work: Path, epochs: int, seed: int) -> None:
        self.work, self.epochs, self.seed = work, epochs, seed
        self.env = dict(os.environ, OMP_NUM_THREADS="1", VAEKIT_DATA=str(work / "cache"), PYTHONWARNINGS="",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
        self.env.pop("RANK", None)
        self.env.pop("WORLD_SIZE", None)
        self.train_args = ["train", "--dataset", "digits", "--epochs", str(epochs), "--batch-size", "16", *TINY,
                           "--checkpoint-every", "0.002", "--seed", str(seed)]
        self.ref = work / "reference"
        self.ref_seconds = 0.0  # from config.json appearing to the end of the reference run
        self.train_seconds = 0.0  # from config.json to the last checkpoint: the training steps
        self.total_steps = 0
        self.kill_details: list = []

    # ---- processes

    def run(self, *argv, timeout: float = 300) -> Done:
        p = subprocess.run([*VAEKIT, *map(str, argv)], env=self.env, capture_output=True, text=True, timeout=timeout)
        return Done(p.returncode, p.stdout, p.stderr)

    def start(self, out: Path, inject: str = "", counter: Path | None = None, argv: list[str] | None = None
              ) -> subprocess.Popen:
        env = dict(self.env, FAULTS_INJECT=inject)
        if counter is not None:
            counter.write_bytes(bytes(8))
            env["FAULTS_COUNTER"] = str(counter)
        argv = argv if argv is not None else [*self.train_args, "--out", str(out)]
        return subprocess.Popen([sys.executable, "-c", PROBE, *argv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def probe(self, out: Path, inject: str, argv: list[str] | None = None) -> tuple[Done, int]:
        counter = out.parent / f"{out.name}.steps"
        proc = self.start(out, inject, counter, argv)
        o, e = proc.communicate(timeout=300)
        return Done(proc.returncode, o, e), steps_done(counter)

    def resume(self, out: Path) -> Done:
        return self.run("train", "--resume", out)

    # ---- the reference run

    def reference(self) -> None:
        t0 = time.monotonic()
        proc = subprocess.Popen([*VAEKIT, *self.train_args, "--out", str(self.ref)], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t_config = wait_for(self.ref / "config.json", proc)
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            sys.exit(f"faults.py: the reference run failed:\n{err}")
        self.ref_seconds = time.monotonic() - (t_config or t0)
        # The training window: config.json is written just before the first step, last.safetensors for
        # the last time just after the last step (and a validation pass over 72 images).
        mtime = lambda name: (self.ref / name).stat().st_mtime  # noqa: E731
        self.train_seconds = mtime("last.safetensors") - mtime("config.json")
        self.total_steps = checkpoint_step(self.ref)

    def same_run(self, out: Path, row: Row, what: str = "resumed run") -> bool:
        """Weights, best weights and optimizer bit for bit; metrics epochs 1..E once each, same values."""
        problems = []
        try:
            wa, _ = load_tensors(self.ref / "last.safetensors")
            wb, _ = load_tensors(out / "last.safetensors")
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return row.check(False, f"{what}: last.safetensors unreadable ({e})")
        keys = [k for k in wa if k.startswith(("model.", "best.", "optim."))]
        if set(keys) != {k for k in wb if k.startswith(("model.", "best.", "optim."))}:
            problems.append("different tensors")
        elif not all(torch.equal(wa[k], wb[k]) for k in keys):
            problems.append("weights differ from the reference")
        ma, mb = metrics(self.ref), metrics(out)
        epochs = [m.get("epoch") for m in mb]
        if epochs != list(range(1, self.epochs + 1)):
            problems.append(f"metrics.jsonl epochs {epochs}")
        elif strip_timing(ma) != strip_timing(mb):
            problems.append("metrics values differ from the reference")
        missing = [p for p in PICTURES if not (out / p).is_file()]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        return row.check(not problems, f"{what}: {'; '.join(problems)}")


# ---------------------------------------------------------------------------------------------
# helpers


def steps_done(counter: Path) -> int:
    return struct.unpack("<q", counter.read_bytes()[:8])[0] if counter.is_file() else 0


def checkpoint_step(run: Path) -> int:
    """`step` of the checkpoint in run/last.safetensors (0 when there is none)."""
    if not (run / "last.safetensors").is_file():
        return 0
    _, meta = load_tensors(run / "last.safetensors")
    return int(json.loads(meta["train_state"])["step"])


def finite_checkpoint(run: Path) -> bool:
    tensors, _ = load_tensors(run / "last.safetensors")
    return all(bool(torch.isfinite(v).all()) for k, v in tensors.items()
               if k.startswith(("model.", "best.", "optim.")) and v.is_floating_point())


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    out = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append({"epoch": "cut line"})
    return out


def strip_timing(ms: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in ms]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.tmp")) + sorted(p.name for p in folder.glob("*.part"))


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> float | None:
    """Poll until `path` exists (monotonic time then) or the process ends (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return time.monotonic()
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    return None


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = 0x800 + array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, images: dict[str, bytes] | None = None, labels: dict[str, bytes] | None = None) -> Path:
    """A small MNIST-like set of four .gz IDX files in folder, with some files replaced by raw bytes."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", 60), ("test", 20)):
        image_stem, label_stem = IDX_FILES[part]
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        data = {image_stem: gzip.compress(idx_bytes(x)), label_stem: gzip.compress(idx_bytes(y))}
        data.update({k: v for k, v in (images or {}).items() if k == image_stem})
        data.update({k: v for k, v in (labels or {}).items() if k == label_stem})
        for stem, payload in data.items():
            (folder / f"{stem}.gz").write_bytes(payload)
    return folder


def safetensors_header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8 : 8 + n])


def rewrite_header(path: Path, edit) -> None:
    """Apply edit(header text) -> text of the same length to the JSON header of a safetensors file."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    text = edit(data[8 : 8 + n].decode())
    assert len(text.encode()) == n, "header edits must keep the length"
    data[8 : 8 + n] = text.encode()
    path.write_bytes(bytes(data))


def edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2) + "\n")


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# the faults


def kill_rows(b: Bench, kills: int) -> list[Row]:
    row = Row(f"kill -9 at {kills} random points",
              f"`vaekit train --resume RUN` then completes: weights, best weights, optimizer equal the "
              f"uninterrupted run bit for bit, metrics.jsonl epochs 1..{b.epochs} once each, pictures "
              f"written, no temporary left; lost: at most the steps since the last checkpoint")
    rng = random.Random(b.seed)
    delays = [rng.uniform(0, b.train_seconds) for _ in range(kills)]
    details, lost, stale, codes = [], [], 0, []
    for i, delay in enumerate(delays, 1):
        out = b.work / f"kill{i:02d}"
        counter = b.work / f"kill{i:02d}.steps"
        proc = b.start(out, counter=counter)
        t = wait_for(out / "config.json", proc)
        if t is not None:
            time.sleep(max(0.0, t + delay - time.monotonic()))
        finished = proc.poll() is not None
        proc.kill()
        proc.communicate(timeout=60)
        reached, saved = steps_done(counter), checkpoint_step(out)
        left = temporaries(out) if out.exists() else []
        stale += len(left)
        lost.append(reached - saved)
        done = b.resume(out)
        codes.append(done.code)
        sub = Row("", "")
        sub.check(done.code == 0, f"resume exit {done.code}: {done.first_err}")
        sub.check("Traceback" not in done.err, "traceback")
        if done.code == 0:
            b.same_run(out, sub, "resume")
        sub.check(not temporaries(out), f"temporaries left after the resume: {temporaries(out)}")
        sub.check(0 <= reached - saved <= b.total_steps // b.epochs,
                  f"{reached - saved} steps lost: more than an epoch (a checkpoint is due at least every epoch)")
        where = ("after training (validation, pictures)" if reached == b.total_steps
                 else f"epoch {reached // (b.total_steps // b.epochs) + 1}")
        details.append((i, delay, reached, saved, reached - saved, where, len(left), finished, sub))
        for p in sub.problems:
            row.problems.append(f"kill {i} (step {reached}, {where}): {p}")
    row.status = f"killed (SIGKILL); resume exit {'/'.join(map(str, sorted(set(codes))))} ({codes.count(0)}/{kills})"
    row.stderr = "— (nothing can be said after SIGKILL); the resume writes nothing on stderr"
    row.lost = f"max {max(lost)} steps, mean {sum(lost) / len(lost):.1f} (of {b.total_steps})"
    if stale:
        row.lost += f"; {stale} kill(s) inside a write left a hidden .tmp, removed by the resume"
    b.kill_details = details
    return [row]


def signal_rows(b: Bench) -> list[Row]:
    rows = []
    for sig, fraction in ((signal.SIGTERM, 0.45), (signal.SIGINT, 0.7)):
        name = sig.name
        out = b.work / name.lower()
        row = Row(f"{name} mid-run", f"exit {128 + sig}; one line saying how to resume; checkpoint at the step "
                  "reached (nothing lost); resume bit-identical")
        counter = b.work / f"{name.lower()}.steps"
        proc = b.start(out, counter=counter)
        t = wait_for(out / "config.json", proc)
        if t is not None:
            time.sleep(max(0.0, t + fraction * b.train_seconds - time.monotonic()))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        done = Done(proc.returncode, "", err)
        reached, saved = steps_done(counter), checkpoint_step(out)
        row.status, row.stderr, row.lost = str(done.code), done.first_err, f"{reached - saved} steps"
        row.check(done.code == 128 + sig, f"exit {done.code}")
        row.check(len(err.strip().splitlines()) == 1 and "Traceback" not in err, f"stderr: {err.strip()[-300:]}")
        row.check(f"resume with `vaekit train --resume {out}`" in err, "no resume command in the message")
        row.check(reached == saved, f"checkpoint at step {saved}, {reached} steps done")
        m = re.search(r"after step (\d+)", err)
        row.check(bool(m) and int(m.group(1)) == saved, "the step named is not the checkpoint's")
        row.check(not temporaries(out), f"temporaries left: {temporaries(out)}")
        done = b.resume(out)
        if row.check(done.code == 0, f"resume exit {done.code}: {done.first_err}"):
            b.same_run(out, row)
        rows.append(row)

    out = b.work / "sigint-twice"
    row = Row("SIGINT twice (impatient Ctrl-C)", "exit 130; one line, no traceback; at most the steps since the "
              "last checkpoint lost; resume bit-identical")
    counter = b.work / "sigint-twice.steps"
    proc = b.start(out, counter=counter)
    t = wait_for(out / "config.json", proc)
    if t is not None:
        time.sleep(max(0.0, t + 0.3 * b.train_seconds - time.monotonic()))
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)  # about one training step: two signals sent at once would merge into one
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    reached, saved = steps_done(counter), checkpoint_step(out)
    row.status, row.stderr, row.lost = str(proc.returncode), Done(0, "", err).first_err, f"{reached - saved} steps"
    row.check(proc.returncode == 130, f"exit {proc.returncode}")
    row.check(len(err.strip().splitlines()) == 1 and "Traceback" not in err, f"stderr: {err.strip()[-300:]}")
    row.check(not temporaries(out), f"temporaries left: {temporaries(out)}")
    done = b.resume(out)
    if row.check(done.code == 0, f"resume exit {done.code}: {done.first_err}"):
        b.same_run(out, row)
    rows.append(row)
    return rows


def disk_full_rows(b: Bench, mount: bool) -> list[Row]:
    rows = []
    cases = [
        ("last.safetensors", 5, "the 6th write of last.safetensors (mid-epoch checkpoint)"),
        ("model.safetensors", 3, "the 4th write of model.safetensors (best weights, start of a checkpoint)"),
        ("metrics.jsonl", 1, "appending epoch 2's line to metrics.jsonl"),
    ]
    for name, allowed, where in cases:
        out = b.work / f"full-{name.split('.')[0]}"
        promise = "the last checkpoint is intact" if name == "metrics.jsonl" else "the previous version of it is intact"
        row = Row(f"disk full (ENOSPC injected) at {where}",
                  f"exit 2; one line `could not write FILE: No space left on device; {promise}`; no temporary "
                  "left; resume (space again) bit-identical")
        done, reached = b.probe(out, f"enospc:{name}:{allowed}")
        saved = checkpoint_step(out)
        row.status, row.stderr, row.lost = str(done.code), done.first_err, f"{reached - saved} steps"
        disk_full_checks(row, done, out)
        resumed = b.resume(out)
        if row.check(resumed.code == 0, f"resume exit {resumed.code}: {resumed.first_err}"):
            b.same_run(out, row)
        rows.append(row)
    rows.append(real_disk_full_row(b, mount))
    return rows


def disk_full_checks(row: Row, done: Done, out: Path) -> None:
    row.check(done.code == 2, f"exit {done.code}")
    row.check(len(done.err.strip().splitlines()) == 1 and "Traceback" not in done.err,
              f"stderr: {done.err.strip()[-300:]}")
    # metrics.jsonl is appended to, not replaced: there the promise is about the checkpoint
    row.check(re.fullmatch(rf"{ERROR_PREFIX} could not write \S+: No space left on device; "
                           r"the (previous version of it|last checkpoint) is intact", done.first_err) is not None,
              "not the disk-full message")
    row.check(not temporaries(out), f"temporaries left: {temporaries(out)}")
    if (out / "last.safetensors").is_file():
        try:
            row.check(finite_checkpoint(out), "the checkpoint left is not finite")
        except Exception as e:  # noqa: BLE001
            row.check(False, f"the checkpoint left does not load: {e}")


def real_disk_full_row(b: Bench, mount: bool) -> Row:
    row = Row("disk full for real (a 4 MB tmpfs filled by another file during the run)",
              "exit 2; one line `could not write ...: No space left on device; ...`; no temporary left; "
              "resume after freeing space bit-identical")
    if not mount:
        row.skipped = "skipped: --no-mount"
        return row
    where = b.work / "tmpfs"
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        row.skipped = "skipped: mounting a tmpfs needs root (Linux)"
        return row
    try:
        out, counter = where / "run", b.work / "tmpfs-run.steps"
        proc = b.start(out, counter=counter)
        if wait_for(out / "last.safetensors", proc) is not None:
            time.sleep(1.0)
        with open(where / "filler", "wb") as f:  # another program takes every free byte
            try:
                while True:
                    f.write(bytes(1 << 16))
                    f.flush()
            except OSError:
                pass
        _, err = proc.communicate(timeout=300)
        done = Done(proc.returncode, "", err)
        reached, saved = steps_done(counter), checkpoint_step(out)
        row.status, row.stderr, row.lost = str(done.code), done.first_err, f"{reached - saved} steps"
        (where / "filler").unlink()
        disk_full_checks(row, done, out)
        resumed = b.resume(out)
        if row.check(resumed.code == 0, f"resume exit {resumed.code}: {resumed.first_err}"):
            b.same_run(out, row)
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)
    return row


def non_finite_rows(b: Bench) -> list[Row]:
    rows = []
    pattern = r"(the [a-z_]+(?:, [a-z_]+)* terms?|a gradient) became non-finite in epoch (\d+), step (\d+)"

    out = b.work / "lr1e6"
    row = Row("non-finite loss: `--lr 1e6`", "exit 2; one line naming epoch, step and term; any checkpoint it "
              "claims to keep exists and loads")
    done = b.run(*b.train_args, "--out", out, "--lr", "1e6")
    row.status, row.stderr, row.lost = str(done.code), done.first_err, "—"
    row.check(done.code == 2, f"exit {done.code}")
    row.check(len(done.err.strip().splitlines()) == 1 and "Traceback" not in done.err, "stderr not one line")
    row.check(bool(re.search(pattern, done.err)), "epoch, step or term not named")
    if "last good checkpoint is kept" in done.err:
        if row.check((out / "last.safetensors").is_file(), "says the last good checkpoint is kept, but no "
                     "checkpoint was ever written (it blew up before the first)"):
            row.check(finite_checkpoint(out), "checkpoint not finite")
    rows.append(row)

    nan_step = b.total_steps // b.epochs + b.total_steps // (2 * b.epochs)  # the middle of epoch 2
    out = b.work / "nan"
    row = Row(f"non-finite loss: NaN images injected at step {nan_step}",
              f"exit 2; message names epoch 2, step {nan_step} and the term; last.safetensors loads, finite, "
              "from before the NaN; resume (without the fault) bit-identical")
    done, reached = b.probe(out, f"nan:{nan_step}")
    saved = checkpoint_step(out)
    row.status, row.stderr, row.lost = str(done.code), done.first_err, f"{nan_step - 1 - saved} steps"
    row.check(done.code == 2, f"exit {done.code}")
    row.check(len(done.err.strip().splitlines()) == 1 and "Traceback" not in done.err, "stderr not one line")
    m = re.search(pattern, done.err)
    row.check(bool(m) and m.group(2) == "2" and m.group(3) == str(nan_step), "wrong epoch or step named")
    try:
        row.check(finite_checkpoint(out) and saved < nan_step, f"checkpoint at step {saved}")
    except Exception as e:  # noqa: BLE001
        row.check(False, f"checkpoint does not load: {e}")
    resumed = b.resume(out)
    if row.check(resumed.code == 0, f"resume exit {resumed.code}: {resumed.first_err}"):
        b.same_run(out, row)
    rows.append(row)
    return rows


def targeted_kill_rows(b: Bench) -> list[Row]:
    rows = []
    for inject, fault in (("kill:before-metrics:2", "kill -9 just before epoch 2's metrics.jsonl line is appended"),
                          ("kill:after-metrics:2", "kill -9 just after epoch 2's metrics.jsonl line is appended"),
                          ("kill:pictures", "kill -9 while the final pictures are drawn"),
                          ("term:pictures", "SIGTERM while the final pictures are drawn")):
        out = b.work / inject.replace(":", "-")
        row = Row(fault, "resume completes the run: bit-identical, metrics.jsonl epochs 1..E once each, pictures "
                  "written" + ("; the signal: exit 143 and one line" if inject.startswith("term") else ""))
        done, reached = b.probe(out, inject)
        saved = checkpoint_step(out)
        row.status, row.stderr, row.lost = f"killed ({done.code})", done.first_err or "—", f"{reached - saved} steps"
        if inject.startswith("term"):
            row.status = str(done.code)
            row.check(done.code == 143, f"exit {done.code}" + (" (killed by SIGTERM, nothing said)"
                                                               if done.code == -15 else ""))
            row.check(len(done.err.strip().splitlines()) == 1 and "Traceback" not in done.err,
                      f"stderr: {done.err.strip()[-200:] or 'empty'}")
        resumed = b.resume(out)
        row.status += f"; resume exit {resumed.code}"
        if row.check(resumed.code == 0, f"resume exit {resumed.code}: {resumed.first_err}"):
            b.same_run(out, row)
        rows.append(row)
    return rows


def corrupt_rows(b: Bench) -> list[Row]:
    """Each case: (fault, set-up returning (argv, folder to watch, new paths that must not appear))."""
    w = b.work / "corrupt"
    w.mkdir()
    cases, numbers = [], itertools.count(1)

    def case(fault):
        def register(setup):
            cases.append((fault, setup))
            return setup
        return register

    def train_on(dataset: str | Path, *extra) -> tuple[list, Path | None, list[Path]]:
        out = w / f"out-{next(numbers)}"
        return ["train", "--dataset", str(dataset), "--epochs", "1", *TINY, *extra, "--out", out], None, [out]

    def idx_train(name: str, **files) -> tuple[list, Path | None, list[Path]]:
        folder = write_idx(w / name, **files)
        return train_on("mnist", "--data-dir", folder)

    def run_copy(name: str, edit=None, source: Path | None = None) -> Path:
        run = w / name
        shutil.copytree(source or b.ref, run)
        if edit:
            edit(run)
        return run

    def evaluate(run: Path):
        return ["evaluate", run, "--iw-samples", "2", "--limit", "10"], run, []

    def sample(run: Path):
        png = w / f"{run.name}.png"
        return ["sample", run, "--out", png], run, [png]

    def resume(run: Path):
        return ["train", "--resume", run], run, []

    stem_images, stem_labels = IDX_FILES["train"]
    rng = np.random.default_rng(1)
    good_images = gzip.compress(idx_bytes(rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)))

    cut_gzip = good_images[: len(good_images) // 2]
    case("IDX: truncated gzip file")(lambda: idx_train("idx-cut", images={stem_images: cut_gzip}))
    case("IDX: wrong magic number")(lambda: idx_train("idx-magic", images={stem_images: gzip.compress(
        idx_bytes(np.zeros((60, 28, 28), np.uint8), magic=0x0D03))}))
    case("IDX: 60 images but 59 labels")(lambda: idx_train("idx-count", labels={stem_labels: gzip.compress(
        idx_bytes(np.zeros(59, np.uint8)))}))
    case("IDX: label 10 (out of range 0..9)")(lambda: idx_train("idx-label", labels={stem_labels: gzip.compress(
        idx_bytes(np.full(60, 10, np.uint8)))}))

    def npz(name, **arrays):
        path = w / f"{name}.npz"
        np.savez(path, **arrays)
        return train_on(path)

    nan_x = np.full((40, 8, 8), 0.5, np.float32)
    nan_x[3, 2, 2] = np.nan
    case(".npz: NaN pixel")(lambda: npz("nan", x=nan_x))
    case(".npz: float pixels above 1")(lambda: npz("above1", x=np.full((40, 8, 8), 1.5, np.float32)))
    case(".npz: no images (x of shape 0x8x8)")(lambda: npz("empty", x=np.zeros((0, 8, 8), np.uint8)))

    def zero_bytes():
        (w / "zero.npz").write_bytes(b"")
        return train_on(w / "zero.npz")

    case(".npz: zero-byte file")(zero_bytes)

    def folder_with_bad_image():
        from PIL import Image

        folder = w / "images"
        for label in ("a", "b"):
            (folder / label).mkdir(parents=True)
            for i in range(10):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / label / f"{i}.png")
        (folder / "b" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return train_on(folder)

    case("image folder: one unreadable .png")(folder_with_bad_image)

    def not_a_run():
        folder = w / "notes"
        folder.mkdir(exist_ok=True)
        (folder / "thesis.tex").write_text("precious")
        return folder

    case("a folder that is not a run (`evaluate`)")(lambda: evaluate(not_a_run()))
    case("a folder that is not a run (`train --resume`)")(lambda: resume(not_a_run()))

    def version(run):
        edit_json(run / "config.json", lambda d: d.update(vaekit_version="9.0.0"))

    case("config.json from vaekit 9.0.0")(lambda: evaluate(run_copy("v9", version)))

    def unknown_field(run):
        edit_json(run / "config.json", lambda d: d["model"].update(flow_layers=4))

    case("config.json with an unknown field (another model)")(lambda: resume(run_copy("unknown", unknown_field)))

    def cut(name: str, keep: float):
        """A damage: keep only the first `keep` of run/name, as a crash or a copy cut short would."""
        def damage(run):
            data = (run / name).read_bytes()
            (run / name).write_bytes(data[: int(len(data) * keep)])
        return damage

    case("config.json cut in half")(lambda: evaluate(run_copy("cutcfg", cut("config.json", 1 / 2))))
    case("config.json not text (binary garbage)")(lambda: evaluate(run_copy(
        "binarycfg", lambda r: (r / "config.json").write_bytes(b"\xff\xfe\x00\x01 garbage"))))

    def wrong_type(run):
        edit_json(run / "config.json", lambda d: d["model"].update(latent_dim="four"))

    case("config.json with a field of the wrong type")(lambda: sample(run_copy("typecfg", wrong_type)))

    case("model.safetensors truncated")(lambda: evaluate(run_copy("cutw", cut("model.safetensors", 2 / 3))))

    def flip_header(run):
        data = bytearray((run / "model.safetensors").read_bytes())
        for i in (20, 21, 40):  # inside the JSON header
            data[i] ^= 0x5A
        (run / "model.safetensors").write_bytes(bytes(data))

    case("model.safetensors: bytes flipped in the header")(lambda: sample(run_copy("fliph", flip_header)))

    def shape_edit(run):
        _, header = safetensors_header(run / "model.safetensors")
        key = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 4)
        old = json.dumps(header[key]["shape"], separators=(",", ":"))
        shape = header[key]["shape"]
        new = json.dumps([shape[1], shape[0], *shape[2:]], separators=(",", ":"))  # same size, transposed
        rewrite_header(run / "model.safetensors", lambda t: t.replace(f'"shape":{old}', f'"shape":{new}', 1))

    case("model.safetensors: a shape changed in the header (sizes agree)")(lambda: evaluate(
        run_copy("shape", shape_edit)))

    def other_model(run):
        from safetensors.torch import save_file

        tensors, _ = load_tensors(run / "model.safetensors")
        key = next(k for k, v in tensors.items() if v.ndim == 2)
        tensors[key] = torch.zeros(tensors[key].shape[0] + 4, tensors[key].shape[1])  # a larger latent space
        save_file(tensors, run / "model.safetensors")

    case("model.safetensors of another model")(lambda: sample(run_copy("othermodel", other_model)))

    def dtype_edit(run):
        rewrite_header(run / "model.safetensors", lambda t: t.replace('"dtype":"F32"', '"dtype":"I32"', 1))

    case("model.safetensors: dtype F32 changed to I32 in the header")(lambda: sample(run_copy("dtype", dtype_edit)))

    case("last.safetensors truncated (`train --resume`)")(lambda: resume(run_copy("cutlast", cut("last.safetensors", 1 / 2))))
    case("last.safetensors holds no training state")(lambda: resume(run_copy(
        "nostate", lambda r: shutil.copy(r / "model.safetensors", r / "last.safetensors"))))

    def drop_state_field(run):
        from safetensors.torch import save_file

        tensors, meta = load_tensors(run / "last.safetensors")
        state = json.loads(meta["train_state"])
        del state["batch"]
        save_file(tensors, run / "last.safetensors", metadata={"train_state": json.dumps(state)})

    case("last.safetensors: training state without `batch`")(lambda: resume(run_copy("nobatch", drop_state_field)))

    def drop_rng(run):
        from safetensors.torch import save_file

        tensors, meta = load_tensors(run / "last.safetensors")
        save_file({k: v for k, v in tensors.items() if not k.startswith("extra.rng.")}, run / "last.safetensors",
                  metadata=meta)

    case("last.safetensors without the RNG state")(lambda: resume(run_copy("norng", drop_rng)))

    def cvae_cache():
        run = w / "cvae"
        done = b.run("train", "--model", "cvae", "--dataset", "digits", "--epochs", "1", *TINY, "--out", run)
        assert done.code == 0, done.err
        (run / "classifier.safetensors").write_bytes(b"\x00" * 64)
        (run / "classifier.json").write_text('{"image_shape": [1, 8')
        return ["evaluate", run, "--iw-samples", "2", "--limit", "10", "--samples-per-class", "5"], run, []

    case("cvae: classifier.json (cached judge) cut")(cvae_cache)

    rows = []
    for fault, setup in cases:
        argv, watch, new_paths = setup()
        before = run_files(watch) if watch else {}
        row = Row(fault, "exit 2; one line `vaekit: error: ...`; no traceback; nothing written (but the lock "
                  "file of a refused `train --resume`)")
        done = b.run(*argv)
        row.status, row.stderr, row.lost = str(done.code), done.first_err, "nothing"
        one_line(row, done)
        if watch is not None:
            row.check(run_files(watch) == before, f"{watch.name} changed")
        created = [p.name for p in new_paths if p.exists()]
        row.check(not created, f"written: {created}")
        row.command = "vaekit " + " ".join(str(a).replace(str(b.work), "WORK") for a in argv)
        rows.append(row)
    rows.append(download_row(b))
    return rows


def one_line(row: Row, done: Done) -> None:
    row.check(done.code == 2, f"exit {done.code}")
    lines = done.err.strip().splitlines()
    row.check(len(lines) == 1 and lines[0].startswith(ERROR_PREFIX) and "Traceback" not in done.err,
              f"stderr: {' | '.join(lines[-2:])}")


def download_row(b: Bench) -> Row:
    www, dest = b.work / "www", b.work / "download"
    www.mkdir()
    for stems in IDX_FILES.values():
        for stem in stems:
            (www / f"{stem}.gz").write_bytes(gzip.compress(b"not the Fashion-MNIST file"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    row = Row("download whose SHA-256 does not match (local HTTP mirror)",
              "exit 2; one line naming both hashes; the partial download removed, nothing under a final name")
    try:
        done = b.run("download", "fashion-mnist", "--base-url", url, "--dest", dest)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    row.status, row.stderr, row.lost = str(done.code), done.first_err, "nothing"
    one_line(row, done)
    row.check("SHA-256" in done.err, "hash not named")
    left = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
    row.check(not left, f"left in --dest: {left}")
    return row


# ---------------------------------------------------------------------------------------------
# a careless user: run lock, --overwrite, resume, checked values, paths, pipes, Ctrl-C, bad data

ARGPARSE_PREFIX = re.compile(r"vaekit( \w+)?: error: ")  # vaekit's own errors, and argparse's (`vaekit train: error:`)


def refused(row: Row, done: Done, pattern: str = "", argparse_ok: bool = False) -> None:
    """Exit 2; exactly one line on stderr, `vaekit: error: ...` matching pattern; no traceback."""
    row.status, row.stderr, row.lost = str(done.code), done.first_err, "nothing"
    row.check(done.code == 2, f"exit {done.code}")
    lines = done.err.strip().splitlines()
    prefix = ARGPARSE_PREFIX.match(lines[0]) if argparse_ok and lines else None
    row.check(len(lines) == 1 and "Traceback" not in done.err and (lines[0].startswith(ERROR_PREFIX) or bool(prefix)),
              f"stderr: {' | '.join(lines[-3:]) or 'empty'}")
    if pattern:
        row.check(bool(re.search(pattern, done.err)), f"message does not match /{pattern}/")


def run_files(folder: Path) -> dict[str, str]:
    """snapshot() without the lock file, which holds the pid of the last process that took the lock."""
    return {k: v for k, v in snapshot(folder).items() if k != ".vaekit.lock"}


def user_error_rows(b: Bench) -> list[Row]:
    w = b.work / "user"
    w.mkdir()
    rows: list[Row] = []
    numbers = itertools.count(1)
    NOTHING = "exit 2; one line `vaekit: error: ...`; no traceback; nothing written"

    long_name = "n" * 300

    def short(text: str) -> str:
        return text.replace(str(b.work), "WORK").replace(long_name, "n…n (300 n)")

    def command(argv) -> str:
        return "vaekit " + " ".join(short(shlex.quote(str(a))) for a in argv)

    def copy_ref(name: str) -> Path:
        return Path(shutil.copytree(b.ref, w / name))

    # ---- 1. the run lock: a second process on a run folder that one is training
    run = w / "locked"
    pause_at = b.total_steps // 2
    counter = w / "locked.steps"
    holder = b.start(run, f"pause:{pause_at}", counter)
    paused = Path(f"{counter}.paused")
    deadline = time.monotonic() + 300
    while not paused.exists() and holder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    holder_ok = paused.exists() and holder.poll() is None
    for fault, extra in (("second `train --out RUN` (another seed) while one trains in RUN", ["--seed", "1"]),
                         ("second `train --out RUN --overwrite` while one trains in RUN", ["--seed", "1", "--overwrite"]),
                         ("`train --resume RUN` while one trains in RUN", None)):
        row = Row(fault, f"exit 2; one line `RUN is in use by another vaekit process (pid N)` naming the holder; "
                  "RUN unchanged (every file, the lock's too); the holder keeps training")
        argv = ["train", "--resume", run] if extra is None else [*b.train_args, "--out", run, *extra]
        row.command = command(argv)
        if not row.check(holder_ok, "the training holding RUN did not reach its pause"):
            rows.append(row)
            continue
        before = snapshot(run)
        done = b.run(*argv)
        refused(row, done, rf"{re.escape(str(run))} is in use by another vaekit process \(pid {holder.pid}\)")
        row.check(snapshot(run) == before, "RUN changed")
        row.check(holder.poll() is None, "the holder stopped")
        rows.append(row)
    reached = steps_done(counter)
    holder.kill()
    holder.communicate(timeout=60)
    saved = checkpoint_step(run)
    row = Row("kill -9 of the process holding the lock (paused mid-run), then `train --resume RUN`",
              "the kernel releases the lock: the resume takes it, exit 0, bit-identical to the uninterrupted run")
    done = b.resume(run)
    row.status, row.stderr, row.lost = f"killed (-9); resume exit {done.code}", done.first_err or "—", \
        f"{reached - saved} steps"
    row.command = command(["train", "--resume", run])
    if row.check(done.code == 0, f"resume exit {done.code}: {done.first_err}"):
        b.same_run(run, row)
    rows.append(row)

    # ---- 2. --resume of a run without last.safetensors
    run = copy_ref("no-last")
    (run / "last.safetensors").unlink()
    before = snapshot(run)
    row = Row("`train --resume RUN` of a finished run whose last.safetensors is missing",
              "exit 2; one line saying it cannot be resumed; nothing changed (every file but the lock file, "
              "which the refused command held)")
    argv = ["train", "--resume", run]
    row.command = command(argv)
    refused(row, b.run(*argv), r"has model\.safetensors and metrics\.jsonl but no last\.safetensors")
    # the refusal comes after the lock is taken: the lock file then holds that process's pid
    row.check(run_files(run) == {k: v for k, v in before.items() if k != ".vaekit.lock"}, "RUN changed")
    rows.append(row)

    run = copy_ref("never-saved")
    for p in run.iterdir():
        if p.name not in ("config.json", ".vaekit.lock"):
            p.unlink()
    row = Row("`train --resume RUN` of a run killed before it wrote weights or a metrics line (config.json only)",
              "starts again from step 0: exit 0, bit-identical to the uninterrupted run")
    argv = ["train", "--resume", run]
    row.command = command(argv)
    done = b.run(*argv)
    row.status, row.stderr, row.lost = str(done.code), done.first_err or "—", "nothing"
    if row.check(done.code == 0, f"exit {done.code}: {done.first_err}"):
        b.same_run(run, row, "restarted run")
    rows.append(row)

    # ---- 3. --overwrite: the old run is kept until the new one has a checkpoint
    run = copy_ref("overwrite-inf")
    before = snapshot(run)
    row = Row("`train --out RUN --overwrite --lr inf` over a finished run",
              "refused before anything is touched: exit 2, one line; RUN unchanged (every file, the lock's too)")
    argv = [*b.train_args, "--out", run, "--overwrite", "--lr", "inf"]
    row.command = command(argv)
    refused(row, b.run(*argv), r"lr \(--lr\) must be a finite number")
    row.check(snapshot(run) == before, "RUN changed")
    rows.append(row)

    run = copy_ref("overwrite-1e30")
    before = run_files(run)
    row = Row("`train --out RUN --overwrite --lr 1e30` over a finished run (non-finite loss at the first steps)",
              "exit 2; one line: the non-finite error, ending with the previous run being back; every file of the "
              "old run byte-identical, no .replaced left")
    argv = [*b.train_args, "--out", run, "--overwrite", "--lr", "1e30"]
    row.command = command(argv)
    done = b.run(*argv)
    lines = done.err.strip().splitlines()
    row.status, row.stderr, row.lost = str(done.code), " / ".join(lines), "nothing"
    row.check(done.code == 2, f"exit {done.code}")
    row.check("Traceback" not in done.err and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX)
              and "non-finite" in lines[0] and lines[0].endswith("is back in place"), f"stderr: {' | '.join(lines[-3:])}")
    row.check(run_files(run) == before, "the old run is not back byte-identical")
    row.check(not (run / ".replaced").exists(), ".replaced left")
    rows.append(row)

    run = copy_ref("overwrite-killed")
    before = run_files(run)
    row = Row("`train --out RUN --overwrite` killed (-9) at its first step, before its first checkpoint; then "
              "`train --resume RUN`",
              "the resume takes the lock and puts the old run back (one line saying so), then finds it finished: "
              "exit 0; every file of the old run byte-identical, no .replaced left")
    argv = [*b.train_args, "--out", str(run), "--overwrite", "--seed", "1"]
    killed, _ = b.probe(run, "kill:step:1", argv)
    aside = (run / ".replaced").is_dir()
    row.check(killed.code == -9, f"the overwrite was not killed (exit {killed.code}: {killed.first_err})")
    row.check(aside, "after the kill no old run was moved aside (the kill came too late or too early to test this)")
    done = b.resume(run)
    row.status, row.stderr, row.lost = f"killed (-9); resume exit {done.code}", done.first_err or "—", "nothing"
    row.command = f"{command(argv)} (killed at step 1), then {command(['train', '--resume', run])}"
    lines = done.err.strip().splitlines()
    row.check(done.code == 0, f"resume exit {done.code}")
    row.check(len(lines) == 1 and "restored the run" in lines[0] and "Traceback" not in done.err,
              f"stderr: {' | '.join(lines[-3:]) or 'empty'}")
    row.check(run_files(run) == before, "the old run is not back byte-identical")
    row.check(not (run / ".replaced").exists(), ".replaced left")
    rows.append(row)

    run = copy_ref("overwrite-ok")
    row = Row("`train --out RUN --overwrite --seed 1` over a finished run, completing",
              "exit 0; RUN holds the new run (seed 1, metrics epochs 1..E once each, pictures); no .replaced left")
    argv = [*b.train_args, "--out", run, "--overwrite", "--seed", "1"]
    row.command = command(argv)
    done = b.run(*argv)
    row.status, row.stderr, row.lost = str(done.code), done.first_err or "—", "—"
    if row.check(done.code == 0, f"exit {done.code}: {done.first_err}"):
        row.check(json.loads((run / "config.json").read_text())["train"]["seed"] == 1, "config.json is not the new run's")
        epochs = [m.get("epoch") for m in metrics(run)]
        row.check(epochs == list(range(1, b.epochs + 1)), f"metrics.jsonl epochs {epochs}")
        row.check(all((run / p).is_file() for p in PICTURES), "pictures missing")
        row.check(not (run / ".replaced").exists(), ".replaced left")
    rows.append(row)

    # ---- 4. one-line refusals: (fault, argv, pattern, folder to watch, paths that must not appear, argparse's?)
    cases: list[tuple] = []

    def new_run(*flags, dataset: str | Path = "digits"):
        out = w / f"out-{next(numbers)}"
        return ["train", "--dataset", dataset, "--epochs", "1", *TINY, *flags, "--out", out], out

    for flags, pattern in ((["--batch-size", "0"], r"batch_size \(--batch-size\) must be >= 1, got 0"),
                           (["--latent-dim", "0"], r"latent_dim \(--latent-dim\) must be >= 1, got 0"),
                           (["--lr", "nan"], r"lr \(--lr\) must be a finite number, got nan"),
                           (["--beta", "-1"], r"beta \(--beta\) must be >= 0, got -1"),
                           (["--hidden", "0"], r"hidden \(--hidden\) must be >= 1"),
                           (["--ema", "1"], r"ema \(--ema\) must be < 1"),
                           (["--epochs", "1.5"], r"--epochs: expected a whole number, got '1\.5'"),
                           (["--alpha", "1", "--model", "vae"], r"--alpha is a setting of --model m2")):
        argv, out = new_run(*flags)
        cases.append((f"flag value: `{' '.join(flags)}`", argv, pattern, None, [out], flags[0] == "--epochs"))
    ARGPARSE = "exit 2; one line `vaekit train: error: ...` (argparse); no traceback; nothing written"

    def batch_zero(name: str) -> Path:
        run = copy_ref(name)
        edit_json(run / "config.json", lambda d: d["train"].update(batch_size=0))
        return run

    run = batch_zero("cfg-batch0-evaluate")
    cases.append(("config.json with `batch_size: 0` (`evaluate`)", ["evaluate", run, "--iw-samples", "2", "--limit", "10"],
                  r"TrainConfig: batch_size \(--batch-size\) must be >= 1, got 0", run, [], False))
    run = batch_zero("cfg-batch0-resume")
    cases.append(("config.json with `batch_size: 0` (`train --resume`)", ["train", "--resume", run],
                  r"TrainConfig: batch_size \(--batch-size\) must be >= 1, got 0", run, [], False))

    blocker = w / "a-file"
    blocker.write_text("precious")
    cases.append(("`--out` under a regular file", ["train", "--dataset", "digits", "--epochs", "1", *TINY, "--out",
                  blocker / "run"], rf"cannot use {re.escape(str(blocker / 'run'))} as a run folder: Not a directory",
                  w, [], False))
    long = w / long_name / "run"
    cases.append(("`--out` with a 300-character folder name", ["train", "--dataset", "digits", "--epochs", "1", *TINY,
                  "--out", long], r"cannot use .*n{300}/run as a run folder: File name too long", None,
                  [long.parent], False))
    cases.append(("`sample --out` into a missing folder", ["sample", b.ref, "--out", w / "nowhere" / "x.png"],
                  rf"the folder {re.escape(str(w / 'nowhere'))} does not exist", b.ref, [w / "nowhere"], False))
    cases.append(("`sample --out x.txt` (no image format)", ["sample", b.ref, "--out", w / "x.txt"],
                  r"cannot tell the image format from '\.txt'", b.ref, [w / "x.txt"], False))

    run = copy_ref("nan-weights")
    weights, _ = load_tensors(run / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone().fill_(float("nan"))
    from safetensors.torch import save_file

    save_file(weights, run / "model.safetensors")
    cases.append((f"NaN in model.safetensors (tensor `{name}`; `evaluate`)",
                  ["evaluate", run, "--iw-samples", "2", "--limit", "10"],
                  rf"model\.safetensors holds non-finite values \(NaN or inf\) in {re.escape(name)}", run, [], False))

    def npz(name: str, model: str = "vae", **arrays):
        path = w / f"{name}.npz"
        np.savez(path, **arrays)
        argv, out = new_run("--model", model, dataset=path)
        return argv, out

    x40 = np.zeros((40, 8, 8), np.uint8)
    for fault, (argv, out), pattern in (
        (".npz: 5 channels (40x5x8x8)", npz("five", x=np.zeros((40, 5, 8, 8), np.uint8)), r"C = 1 \(grayscale\) or 3 \(RGB\)"),
        (".npz: channels-last (40x16x16x4)", npz("chlast", x=np.zeros((40, 16, 16, 4), np.uint8)), r"channels-last"),
        (".npz: labels {0, 1000} with `--model cvae`", npz("gap", "cvae", x=x40, y=np.array([0, 1000] * 20)),
         r"999 of the classes 0\.\.1000 have no images"),
        (".npz: one class of labels with `--model cvae`", npz("oneclass", "cvae", x=x40, y=np.zeros(40, np.int64)),
         r"labels of only 1 class"),
        (".npz: label -2", npz("minus2", x=x40, y=np.array([0, 1, -2, 1] * 10)),
         r"labels must be -1 \(unknown\) or 0\.\.K-1, found -2"),
        (".npz: 40 images but 39 labels", npz("short", x=x40, y=np.zeros(39, np.int64)), r"x holds 40 images but y 39 labels"),
    ):
        cases.append((fault, argv, pattern, None, [out], False))
    argv, out = new_run("--data-dir", "/nonexistent", dataset="mnist")
    cases.append(("`--dataset mnist --data-dir /nonexistent`", argv, r"data_dir /nonexistent does not exist", None, [out],
                  False))
    cases.append(("`download mnist --base-url ''`", ["download", "mnist", "--base-url", "", "--dest", w / "dl"],
                  r"base_url '' is not an http\(s\) URL", None, [w / "dl"], False))

    for fault, argv, pattern, watch, new_paths, argparse_ok in cases:
        before = snapshot(watch) if watch else {}
        row = Row(fault, ARGPARSE if argparse_ok else NOTHING)
        row.command = command(argv)
        refused(row, b.run(*argv), pattern, argparse_ok)
        row.stderr = short(row.stderr)
        if watch is not None:
            row.check(snapshot(watch) == before, f"{watch.name} changed")
        created = [p.name[:40] for p in new_paths if os.path.lexists(p)]  # (Path.exists raises ENAMETOOLONG)
        row.check(not created, f"written: {created}")
        rows.append(row)

    # ---- 5. image formats follow the suffix
    row = Row("`sample --out x.jpg` / `x.webp` / `x.png`", "exit 0 each; the file is JPEG / WEBP / PNG")
    from PIL import Image

    codes, found = [], []
    for suffix, fmt in ((".jpg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")):
        path = w / f"sample{suffix}"
        done = b.run("sample", b.ref, "--n", "4", "--out", path)
        codes.append(done.code)
        row.check(done.code == 0 and not done.err.strip(), f"{suffix}: exit {done.code}: {done.first_err}")
        if path.is_file():
            with Image.open(path) as picture:
                found.append(picture.format)
                row.check(picture.format == fmt, f"{path.name} is {picture.format}")
    row.status, row.stderr, row.lost = "/".join(map(str, codes)), "—", f"— (wrote {'/'.join(found)})"
    row.command = command(["sample", b.ref, "--n", "4", "--out", w / "sample.jpg"])
    rows.append(row)

    # ---- 6. a reader that goes away
    evaluate = [*VAEKIT, "evaluate", str(b.ref), "--iw-samples", "2", "--limit", "10"]
    row = Row("`vaekit evaluate RUN | head -c 10`", "head gets 10 bytes; vaekit exits quietly (0, or 141 if a write "
              "met the closed pipe): no traceback, nothing on stderr")
    first = subprocess.Popen(evaluate, env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-c", "10"], stdin=first.stdout, stdout=subprocess.PIPE)
    first.stdout.close()
    out, _ = head.communicate(timeout=300)
    err = first.stderr.read().decode(errors="replace")
    first.wait(timeout=300)
    row.status, row.stderr, row.lost = f"{first.returncode} (head: {head.returncode})", Done(0, "", err).first_err or "—", "—"
    row.check(len(out) == 10, f"head got {len(out)} bytes")
    row.check(first.returncode in (0, 141), f"exit {first.returncode}")
    row.check(not err.strip(), f"stderr: {err.strip()[-300:]}")
    row.command = command(["evaluate", b.ref, "--iw-samples", "2", "--limit", "10"]) + " | head -c 10"
    rows.append(row)

    row = Row("`vaekit evaluate RUN` into a pipe whose reader has already exited", "exit 141 (128 + SIGPIPE), as "
              "`cat` would; no traceback, nothing on stderr")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before vaekit writes a byte
    first = subprocess.Popen(evaluate, env=b.env, stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    _, err_bytes = first.communicate(timeout=300)
    err = err_bytes.decode(errors="replace")
    row.status, row.stderr, row.lost = str(first.returncode), Done(0, "", err).first_err or "—", "—"
    row.check(first.returncode == 141, f"exit {first.returncode}")
    row.check(not err.strip(), f"stderr: {err.strip()[-300:]}")
    row.command = command(["evaluate", b.ref, "--iw-samples", "2", "--limit", "10"]) + " | true"
    rows.append(row)

    # ---- 7. Ctrl-C while the command starts (imports torch, sklearn; loads the data)
    delays = [round(0.1 + 0.05 * i, 2) for i in range(23)]  # 0.1, 0.15, ..., 1.2 s
    row = Row(f"SIGINT during start-up, {len(delays)} times ({delays[0]:g}, {delays[1]:g}, ..., {delays[-1]:g} s "
              "after launch of `train`: importing torch and scikit-learn, loading the data)",
              "exit 130 and one line naming SIGINT each time (0 if it had already finished); never a traceback or "
              "death by signal (-2)")
    codes, first_line = [], ""
    for i, delay in enumerate(delays):
        argv = [*VAEKIT, "train", "--dataset", "digits", "--epochs", "1", *TINY, "--out", str(w / f"ctrlc-{i}")]
        proc = subprocess.Popen(argv, env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        codes.append(proc.returncode)
        lines = err.strip().splitlines()
        if proc.returncode == 130 and len(lines) == 1:
            first_line = first_line or lines[0]
        if "Traceback" in err or "KeyboardInterrupt" in err:
            row.check(False, f"{delay:g} s: exit {proc.returncode} with a {len(lines)}-line traceback ending "
                      f"`{lines[-1][:120] if lines else ''}`")
        elif proc.returncode not in (130, 0):
            said = " | ".join(lines)[:160].replace(str(b.work), "WORK") or "nothing"
            row.check(False, f"{delay:g} s: exit {proc.returncode} (stderr: {said})")
        elif proc.returncode == 130:
            row.check(len(lines) == 1 and "SIGINT" in lines[0], f"{delay:g} s: stderr: {' | '.join(lines[-3:]) or 'empty'}")
    row.status = ", ".join(f"{code} ×{n}" for code, n in sorted(collections.Counter(codes).items(), key=lambda c: -c[1]))
    row.stderr, row.lost = first_line, "—"
    row.command = "vaekit train --dataset digits --epochs 1 " + " ".join(TINY) + " --out WORK/user/ctrlc-N, then SIGINT"
    rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    """A markdown code span, also for text that holds backticks."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def table(rows: list[Row], work: Path) -> str:
    lines = ["| fault | expected | exit status | first line of stderr | data lost | result |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        result = r.skipped or ("pass" if r.ok else "**FAIL**: " + "; ".join(r.problems))
        stderr = r.stderr.replace(str(work), "WORK")
        stderr = code(stderr) if stderr.startswith("vaekit") else stderr or "—"
        cells = (r.fault, r.expected, r.status or "—", stderr, r.lost, result.replace(str(work), "WORK"))
        lines.append("| " + " | ".join(cell(x) for x in cells) + " |")
    return "\n".join(lines)


def kill_table(details, work: Path) -> str:
    lines = ["| kill | delay after config.json (s) | step reached | checkpoint step | steps lost | where | "
             "stale .tmp | resume |", "|---|---|---|---|---|---|---|---|"]
    for i, delay, reached, saved, lost, where, stale, finished, sub in details:
        result = "bit-identical" if sub.ok else "**FAIL**: " + "; ".join(sub.problems)
        if finished:
            where += " (had finished)"
        result = cell(result.replace(str(work), "WORK"))
        lines.append(f"| {i} | {delay:.2f} | {reached} | {saved} | {lost} | {where} | {stale} | {result} |")
    return "\n".join(lines)


GROUPS = ("kill", "signal", "full", "nonfinite", "targeted", "corrupt", "user-errors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kill -9 points (default: 20)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the runs that get killed (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the runs and of the kill points")
    parser.add_argument("--only", help=f"comma-separated groups: {','.join(GROUPS)} (default: all)")
    parser.add_argument("--no-mount", action="store_true", help="skip the real disk-full row (it mounts a tmpfs)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    groups = set((args.only or ",".join(GROUPS)).split(","))
    if groups - set(GROUPS):
        parser.error(f"unknown group(s) {sorted(groups - set(GROUPS))}: choose from {','.join(GROUPS)}")

    work = Path(tempfile.mkdtemp(prefix="vaekit-faults-"))
    t0 = time.monotonic()
    try:
        b = Bench(work, args.epochs, args.seed)
        b.reference()
        print(f"reference run: {b.total_steps} steps in {b.train_seconds:.1f} s, {b.ref_seconds:.1f} s from "
              "config.json to exit", file=sys.stderr)
        rows: list[Row] = []
        steps = [("kill", lambda: kill_rows(b, args.kills)), ("signal", lambda: signal_rows(b)),
                 ("full", lambda: disk_full_rows(b, not args.no_mount)), ("nonfinite", lambda: non_finite_rows(b)),
                 ("targeted", lambda: targeted_kill_rows(b)), ("corrupt", lambda: corrupt_rows(b)),
                 ("user-errors", lambda: user_error_rows(b))]
        for name, step in steps:
            if name in groups:
                t = time.monotonic()
                rows += step()
                print(f"{name}: {time.monotonic() - t:.0f} s", file=sys.stderr)
        print(table(rows, work))
        if b.kill_details:
            print(f"\nThe {len(b.kill_details)} kill -9 points ({b.total_steps} steps, "
                  f"{b.total_steps // b.epochs} per epoch):\n")
            print(kill_table(b.kill_details, work))
        commands = [r for r in rows if r.command]
        if commands:
            print("\nCommands of the corrupt-input and user-error rows (WORK: the working folder):\n")
            print("\n".join(f"- {r.fault}: `{r.command}`" for r in commands))
        failed = [r for r in rows if not r.ok]
        print(f"\n{len(rows) - len(failed) - sum(bool(r.skipped) for r in rows)} passed, {len(failed)} failed, "
              f"{sum(bool(r.skipped) for r in rows)} skipped; {time.monotonic() - t0:.0f} s")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"working folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
