"""The `vaekit` command. Training flags are generated from the config dataclasses' fields.

Errors a user can cause (VaekitError, bad flags) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import types
import typing
import warnings
from pathlib import Path

from .config import DataConfig, ModelConfig, TrainConfig
from .errors import Terminated, VaekitError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per documented field of a config dataclass: --latent-dim for latent_dim."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue  # filled in from the data, not a flag
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f.metadata["help"])
            continue
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=argparse.SUPPRESS,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata['help']} (default: {f.default})",
        )


def config_options(args: argparse.Namespace) -> dict:
    names = {f.name for cls in (DataConfig, ModelConfig, TrainConfig) for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def build_parser() -> Parser:
    from . import __version__

    parser = Parser(prog="vaekit", description="Train, evaluate and sample variational autoencoders on images.")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train a model into a run folder")
    p.add_argument("--out", help="run folder to write (required unless --resume)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (--epochs may be raised)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    for cls in (DataConfig, ModelConfig, TrainConfig):
        add_config_flags(p, cls)

    p = sub.add_parser("evaluate", help="-ELBO, IWAE -log p(x) and latent usage on the test split")
    p.add_argument("run", help="run folder")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="evaluate on this dataset's test split instead of the run's own")
    source.add_argument("--data", metavar="FILE.npz", help="evaluate on every image of this .npz file")
    p.add_argument("--data-dir", help="folder holding IDX files")
    p.add_argument("--iw-samples", type=int, default=1000, help="importance samples K (default: 1000)")
    p.add_argument("--limit", type=int, help="evaluate only the first N test images (quicker, larger standard errors)")
    p.add_argument("--max-batch", type=int,
                   help="(image, sample) pairs per decoder pass, the memory cap (default: 2**21 / pixels, at most 8192)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--samples-per-class", type=int, default=1000,
                   help="conditional models: samples per class judged by the classifier (default: 1000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("sample", help="draw images from the model")
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--label", type=int, help="class to draw (conditional models)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("reconstruct", help="test images above their reconstructions")
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=int, default=16, help="number of test images (default: 16)")
    p.add_argument("--out", required=True, help="PNG file to write")

    p = sub.add_parser("analogy", help="conditional models: test images redrawn as every class")
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=int, default=8, help="number of source images (rows, default: 8)")
    p.add_argument("--out", required=True, help="PNG file to write")

    p = sub.add_parser("download", help="download an IDX dataset into the cache, checking SHA-256")
    p.add_argument("name", choices=("mnist", "fashion-mnist", "kmnist"))
    p.add_argument("--dest", help="folder to write (default: the cache)")
    p.add_argument("--base-url", help="mirror to download from")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train
    from .train import Interrupted

    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise VaekitError("give either --out (a new run) or --resume RUN, not both")
    if not args.resume and not args.out:
        raise VaekitError("--out RUN is required: the folder to write the run into")
    out = Path(args.resume or args.out)
    try:
        train(out, overwrite=args.overwrite, resume=bool(args.resume), **config_options(args))
    except Interrupted as e:
        print(f"vaekit: {e}", file=sys.stderr)
        return e.exit_code
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        print(f"run written to {out}; next: vaekit evaluate {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import evaluate
    from .evaluate import format_report

    result = evaluate(
        args.run, dataset=args.dataset, data=args.data, data_dir=args.data_dir,
        iw_samples=args.iw_samples, device=args.device, max_batch=args.max_batch,
        samples_per_class=args.samples_per_class, limit=args.limit,
        log=lambda message: print(f"vaekit: {message}", file=sys.stderr, flush=True),
    )
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .api import load
    from .plots import image_grid, save_png

    if args.n < 1:
        raise VaekitError(f"--n must be at least 1, got {args.n}")
    model = load(args.run)
    if args.label is not None and not model.conditional:
        raise VaekitError(f"--label needs a conditional model, and {args.run} is not one (train with --model cvae)")
    torch.manual_seed(args.seed)
    if model.conditional and args.label is None:
        from .plots import sample_grid

        picture = sample_grid(model)
    else:
        picture = image_grid(model.sample(args.n, labels=args.label), nrow=min(args.n, 8))
    print(save_png(args.out, picture))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .api import evaluation_data, load
    from .plots import reconstruction_grid, save_png
    from .data import test_targets

    model = load(args.run)
    split, data_cfg, mode = evaluation_data(args.run)
    targets = test_targets(split, data_cfg.split_seed, mode, "cpu")
    print(save_png(args.out, reconstruction_grid(model, targets.x, targets.y, n=args.n)))
    return 0


def cmd_analogy(args: argparse.Namespace) -> int:
    from .api import evaluation_data, load
    from .plots import analogy_grid, save_png
    from .data import test_targets

    model = load(args.run)
    if not model.conditional:
        raise VaekitError(f"analogies need a conditional model, and {args.run} is not one (train with --model cvae)")
    split, data_cfg, mode = evaluation_data(args.run)
    targets = test_targets(split, data_cfg.split_seed, mode, "cpu")
    print(save_png(args.out, analogy_grid(model, targets.x, targets.y, n=args.n)))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import download

    print(download(args.name, Path(args.dest) if args.dest else None, base_url=args.base_url))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "reconstruct": cmd_reconstruct,
            "analogy": cmd_analogy, "download": cmd_download}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"vaekit: warning: {message}", file=sys.stderr)


def _terminate(signum: int, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    # SIGTERM (kill, a job scheduler) stops like Ctrl-C: one line, not a silent death. The training
    # loop installs its own handler, which checkpoints first.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return COMMANDS[args.command](args)
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
        print(f"vaekit: interrupted by {name}; files are replaced whole, never half-written "
              "(`vaekit train --resume RUN` finishes a stopped training run)", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
