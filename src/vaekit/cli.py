"""The `vaekit` command. Training flags are generated from the config dataclasses' fields: the shared
ones, then each model's own (models/), so a flag and its field always agree.

Errors a user can cause (VaekitError, bad flags, an OSError on a path they gave) print one line on
stderr and exit with status 2. A Ctrl-C while the package and torch are imported is only noted
(vaekit/__init__.py) and ends the command in run() with one line, not a traceback. Only the modules
that load matplotlib (report, plots, explore: about 0.45 s) are imported where a command needs them.
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

import torch

from . import _STARTING
from .api import dataset_defaults, diagnose, evaluate, load, train, train_recipe, training_defaults
from .checkpoint import atomic_write, class_index, class_names, is_run, read_metrics, save_evaluation
from .config import DataConfig, ModelConfig, TrainConfig, flag
from .data import test_targets
from .download import download
from .errors import Terminated, VaekitError
from .evaluate import format_report
from .grids import analogy_grid, image_grid, label_rows, reconstruction_grid, sample_grid, save_image
from .guards import Interrupted
from .latent_classifier import fit_m1, predict_csv
from .models import MODELS, conditional_models
from .options import PictureCall
from .outputs import check_output
from .progress import summary
from .runs import evaluation_data
from .version import __version__


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type):
    """argparse type for int/float flags: a clear message for '1.5' given to an int flag."""
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str | None = None,
                     skip: set[str] | None = None) -> None:
    """One flag per documented field of a config dataclass: --latent-dim for latent_dim."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or (skip and f.name in skip):
            continue  # filled in from the data, or already a flag
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f.metadata["help"])
            continue
        group.add_argument(
            flag(f.name), dest=f.name, type=_number(kind) if kind in (int, float) else kind,
            default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
            help=f"{f.metadata['help']} (default: {f.default})",
        )


def config_options(args: argparse.Namespace) -> dict:
    classes = (DataConfig, TrainConfig, *(m.Config for m in MODELS.values()))
    names = {f.name for cls in classes for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def build_parser() -> Parser:
    parser = Parser(prog="vaekit", description="Train, evaluate and sample variational autoencoders on images.")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train a model into a run folder")
    p.add_argument("--out", help="run folder to write (required unless --resume)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (--epochs may be raised, --device changed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out (once the new one has a checkpoint)")
    p.add_argument("--no-pictures", dest="pictures", action="store_false",
                   help="write no pictures and no report.html after training (`vaekit report RUN` writes the report later)")
    p.add_argument("--config", metavar="FILE.toml",
                   help="a recipe: training options (and `out`, or [[stage]] tables of a chain) in a TOML file; flags "
                        "given here override it; a stage already finished is skipped (recipes/)")
    add_config_flags(p, DataConfig)
    p.add_argument("--model", default=argparse.SUPPRESS, choices=tuple(MODELS), help="which model (default: vae)")
    add_config_flags(p, ModelConfig, skip={"model"})
    shared = {f.name for f in dataclasses.fields(ModelConfig)}
    for name, cls in MODELS.items():
        if cls.Config is not ModelConfig:
            add_config_flags(p, cls.Config, f"--model {name}", skip=shared)
            shared |= {f.name for f in dataclasses.fields(cls.Config)}
    add_config_flags(p, TrainConfig)
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also log the scalars and sample images to this TensorBoard folder (needs vaekit[tensorboard])")

    p = sub.add_parser("evaluate", help="-ELBO, IWAE -log p(x) and latent usage on the test split")
    p.add_argument("run", help="run folder")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="evaluate on this dataset's test split instead of the run's own")
    source.add_argument("--data", metavar="FILE.npz", help="evaluate on every image of this .npz file")
    p.add_argument("--data-dir", help="folder holding IDX files")
    p.add_argument("--iw-samples", type=_number(int), default=1000, help="importance samples K (default: 1000)")
    p.add_argument("--limit", type=_number(int), help="evaluate only the first N test images (quicker, larger standard errors)")
    p.add_argument("--max-batch", type=_number(int),
                   help="(image, sample) pairs per decoder pass, the memory cap (default: 2**18 / pixels, 256 to 4096, "
                        "on the CPU; 2**23 / pixels, 4096 to 65536, on a GPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--samples-per-class", type=_number(int), default=1000,
                   help="models that draw classes: samples per class judged by the classifier (default: 1000)")
    p.add_argument("--json", action="store_true", help="print one JSON object (undefined numbers are null)")

    p = sub.add_parser("report", help="write the run's report.html: numbers, curves, samples, the latent space")
    p.add_argument("run", help="run folder")
    p.add_argument("--map", default="auto", choices=("auto", "pca", "tsne"),
                   help="the latent map: auto (the two dimensions if the latent has 2, else PCA), pca or tsne")

    p = sub.add_parser("plot", help="one panel of the report as a figure of its own: SVG or PDF (vector), or PNG")
    p.add_argument("run", help="run folder")
    p.add_argument("panel", choices=("curves", "schedules", "latent", "samples", "reconstructions", "traversal"))
    p.add_argument("--out", required=True, help="figure file to write: .svg, .pdf, .eps or .png")
    p.add_argument("--seed", type=_number(int), default=0, help="seed of the samples drawn (default: 0)")

    p = sub.add_parser("explore", help="a local web app to walk the latent space (Ctrl-C stops it)")
    p.add_argument("run", help="run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_number(int), default=8000, help="port (default: 8000; 0: a free one)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--map", default="auto", choices=("auto", "pca", "tsne"),
                   help="the latent map: auto (the two dimensions if the latent has 2, else PCA), pca or tsne "
                        "(a click on a t-SNE map decodes the nearest test image's code)")

    p = sub.add_parser("sample", help="draw images from the model")
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=_number(int), default=64, help="number of images (default: 64)")
    p.add_argument("--label", help="class to draw, by name (an image folder's subfolder) or number (models that draw classes)")
    p.add_argument("--out", required=True, help="image file to write (.png, .jpg, .webp, ...)")
    p.add_argument("--seed", type=_number(int), default=0)

    p = sub.add_parser("reconstruct", help="test images above their reconstructions")
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=_number(int), default=16, help="number of test images (default: 16)")
    p.add_argument("--out", required=True, help="image file to write")

    p = sub.add_parser("analogy", help="models that draw classes: test images redrawn as every class")
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=_number(int), default=8, help="number of source images (rows, default: 8)")
    p.add_argument("--out", required=True, help="image file to write")

    p = sub.add_parser("m1", help="fit M1: a classifier on the latent means of a run's training images")
    p.add_argument("run", help="run folder (any model)")
    p.add_argument("--labels-per-class", type=_number(int), default=None,
                   help="use the labels of only this many training images per class (default: the run's labels)")
    p.add_argument("--classifier", choices=("spreading", "logistic"), default="spreading",
                   help="spreading: label spreading over a kNN graph of every training code (transductive, "
                   "default); logistic: logistic regression on the labelled codes alone")
    p.add_argument("--label-seed", type=_number(int), default=None,
                   help="with --labels-per-class: seed of which images keep their labels (default: the run's)")

    p = sub.add_parser("predict", help="predicted labels and class probabilities (M2, or a run with M1) as CSV")
    p.add_argument("run", help="run folder")
    p.add_argument("--data", metavar="FILE.npz", help="images to label (default: the run's test split)")
    p.add_argument("--out", help="CSV file to write (default: standard output)")

    p = sub.add_parser("download", help="download a dataset into the cache, checking its SHA-256 (or MD5)")
    p.add_argument("name", choices=("mnist", "fashion-mnist", "kmnist", "cifar10", "svhn"))
    p.add_argument("--dest", help="folder to write (default: the cache)")
    p.add_argument("--base-url", help="mirror to download from")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    if args.config:
        if args.resume:
            raise VaekitError("--config trains a recipe and resumes its unfinished stages itself: drop --resume")
        try:
            train_recipe(args.config, out=args.out, overwrite=args.overwrite, tensorboard=args.tensorboard,
                         pictures=args.pictures, log=lambda message: print(message, file=sys.stderr, flush=True),
                         **config_options(args))
        except Interrupted as e:
            print(f"vaekit: {e}", file=sys.stderr)
            return e.exit_code
        return 0
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise VaekitError("give either --out (a new run) or --resume RUN, not both")
    if not args.resume and not args.out:
        raise VaekitError("--out RUN is required: the folder to write the run into")
    out = Path(args.resume or args.out)
    options = config_options(args)
    if not args.resume and os.environ.get("RANK", "0") == "0":
        def shown(settings: dict) -> str:
            return " ".join(flag(k) if v is True else f"{flag(k)} {v:g}" if isinstance(v, float) else f"{flag(k)} {v}"
                            for k, v in settings.items())

        applied = dataset_defaults(options)
        if applied:
            print(f"vaekit: the defaults on {options['dataset']}: {shown(applied)} (a flag overrides each; naming "
                  "--arch conv or mlp: the built-in ones)")
        needed = training_defaults({**applied, **options})
        if needed:
            print(f"vaekit: against posterior collapse this model trains with {shown(needed)} (a flag overrides it)")
    try:
        train(out, overwrite=args.overwrite, resume=bool(args.resume), tensorboard=args.tensorboard,
              pictures=args.pictures, **options)
    except Interrupted as e:
        print(f"vaekit: {e}", file=sys.stderr)
        return e.exit_code
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job

        if is_run(out):
            done = summary(read_metrics(out))
            if done:
                print(f"vaekit: {done}")
            for line in diagnose(out):  # a run that failed quietly (health.py)
                print(f"vaekit: warning: {line}", file=sys.stderr)
        print(f"run written to {out}; next: vaekit evaluate {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = evaluate(
        args.run, dataset=args.dataset, data=args.data, data_dir=args.data_dir,
        iw_samples=args.iw_samples, device=args.device, max_batch=args.max_batch,
        samples_per_class=args.samples_per_class, limit=args.limit, progress=None,
        log=lambda message: print(f"vaekit: {message}", file=sys.stderr, flush=True),
    )
    print(json.dumps(result, allow_nan=False) if args.json else format_report(result))
    for line in result.get("warnings", []):
        print(f"vaekit: warning: {line}", file=sys.stderr)
    key = result.get("dataset", "test") + (f", first {args.limit} images" if args.limit else "")
    _add_to_report(Path(args.run), result, key)
    return 0


def _add_to_report(run: Path, result: dict, key: str) -> None:
    """Record an evaluation in the run folder and redraw its report; a run folder that cannot take
    them (read-only, say) only costs a warning: the numbers are printed already."""
    from .report import write_report

    try:
        replaced = save_evaluation(run, result, key)
        if replaced is not None:
            print(f"vaekit: evaluation.json now holds K = {result['iw_samples']} for {key}; the K = {replaced} "
                  f"numbers stay in {run / f'evaluation-K{replaced}.json'}", file=sys.stderr)
        write_report(run)
    except (VaekitError, OSError) as e:
        print(f"vaekit: warning: the report in {run} was not updated: {e}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.run, method=args.map))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import panel_figure, save_figure

    model = test = None
    if args.panel not in ("curves", "schedules"):
        model, test = load(args.run), _test_images(args.run)
    torch.manual_seed(args.seed)
    print(save_figure(Path(args.out), panel_figure(Path(args.run), args.panel, model, test)))
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from .explore import load_explorer, make_server, url_of

    if not 0 <= args.port <= 65535:
        raise VaekitError(f"--port must be in 0..65535, got {args.port}")
    explorer = load_explorer(args.run, args.device, args.map)
    server = make_server(explorer, args.host, args.port)
    print(f"vaekit: exploring {args.run} at {url_of(server)} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("vaekit: explorer stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    check_output(args.out)
    if args.n < 1:
        raise VaekitError(f"--n must be at least 1, got {args.n}")
    PictureCall(args.n, args.seed)
    model = load(args.run)
    if args.label is not None and not model.num_classes:
        raise VaekitError(f"--label needs a model that draws classes, and {args.run} does not (train with --model "
                          f"{' or '.join(conditional_models())})")
    torch.manual_seed(args.seed)
    names = class_names(Path(args.run), model.num_classes)
    with torch.no_grad():
        if args.label is None:  # a model that draws classes: a row per class; else --n samples
            picture = sample_grid(model, n=args.n, names=names)
        else:
            label = class_index(Path(args.run), model.num_classes, args.label)
            grid = image_grid(model.sample(args.n, labels=label), nrow=min(args.n, 8))
            picture = label_rows(grid, [""], title=f"{args.n} samples of class {names[label]}")
    print(save_image(args.out, picture))
    return 0


def _test_images(run: str):
    split, data_cfg, mode = evaluation_data(run)
    return test_targets(split, data_cfg.split_seed, mode, "cpu")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    check_output(args.out)
    if args.n < 1:
        raise VaekitError(f"--n must be at least 1, got {args.n}")
    PictureCall(args.n)
    model, targets = load(args.run), _test_images(args.run)
    print(save_image(args.out, reconstruction_grid(model, targets.x, targets.y, n=args.n)))
    return 0


def cmd_analogy(args: argparse.Namespace) -> int:
    check_output(args.out)
    if args.n < 1:
        raise VaekitError(f"--n must be at least 1, got {args.n}")
    PictureCall(args.n)
    model = load(args.run)
    if not model.num_classes:
        raise VaekitError(f"analogies need a model that draws classes, and {args.run} does not (train with --model "
                          f"{' or '.join(conditional_models())})")
    targets = _test_images(args.run)
    print(save_image(args.out, analogy_grid(model, targets.x, targets.y, n=args.n)))
    return 0


def cmd_m1(args: argparse.Namespace) -> int:
    report = fit_m1(Path(args.run), labels_per_class=args.labels_per_class, classifier=args.classifier,
                    label_seed=args.label_seed)
    print(f"M1 fitted on {report['labelled']} labelled training images: validation error "
          f"{report['val_error']:.4f}; `vaekit evaluate {args.run}` reports its test label_error")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if args.out:
        check_output(args.out)
    text = predict_csv(Path(args.run), data=args.data)
    if args.out:
        atomic_write(Path(args.out), text.encode())
        print(args.out)
    else:
        sys.stdout.write(text)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    if args.dest is not None and not args.dest.strip():
        raise VaekitError("--dest is empty: give a folder, or leave it out for the cache")
    print(download(args.name, Path(args.dest) if args.dest is not None else None, base_url=args.base_url))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report, "plot": cmd_plot, "explore": cmd_explore,
            "sample": cmd_sample, "reconstruct": cmd_reconstruct,
            "analogy": cmd_analogy, "m1": cmd_m1, "predict": cmd_predict, "download": cmd_download}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"vaekit: warning: {message}", file=sys.stderr)


def _terminate(signum: int, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (kill, a job scheduler) stops like Ctrl-C: one line, not a silent death. The training
    # loop installs its own handler, which checkpoints first.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        args = build_parser().parse_args(argv)
        warnings.showwarning = _show_warning
        return COMMANDS[args.command](args)
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: unwritable, too long, a file where a folder should be
        if isinstance(e, BrokenPipeError):
            return _broken_pipe()
        where = f"{e.filename}: " if e.filename else ""
        print(f"vaekit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
        print(f"vaekit: interrupted by {name}; files are replaced whole, never half-written "
              "(`vaekit train --resume RUN` finishes a stopped training run)", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _broken_pipe() -> int:
    """The reader of our output went away (`vaekit evaluate RUN | head -1`): stop quietly, as `cat` would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not fail again
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def run() -> typing.NoReturn:
    """The `vaekit` command (and `python -m vaekit`): main(), then exit with its status.

    After an interrupt it exits at once (os._exit, once the output is flushed): a Ctrl-C that lands
    inside an extension's import can leave CPython's "unhandled KeyboardInterrupt" flag set, and the
    interpreter would then kill itself with SIGINT at exit (status -2) after our one-line message.
    A Ctrl-C during the imports (see vaekit/__init__.py) was only noted; it ends the command here."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _STARTING:
        print("vaekit: interrupted by SIGINT while starting; nothing was written", file=sys.stderr, flush=True)
        os._exit(130)
    code = main()
    if code in (130, 143):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)
