"""The ``adagrad-gluon`` console script (also ``python -m adagrad_gluon``).

Subcommands:

``compare``
    the chapter's comparison on the airfoil data: the from-scratch function (``scratch``),
    ``adagrad_scratch`` through ``gluon.Trainer`` and MXNet's built-in ``adagrad``, with one
    seed and equal eps; a table, ``compare.json``, ``loss_curves.png`` and ``effective_lr.png``.
``trajectory``
    the 2-D example: prints the chapter's line and draws the iterates over the contours.
``sweep``
    the exercise "try other initial learning rates": final loss per learning rate.
``remedy``
    the exercise on the decaying rate: Adagrad and an RMSProp-style leaky accumulator side
    by side, with their effective learning rates.

Bad arguments get a one-line error and exit code 2 (numbers are checked before any work:
learning rates, for instance, must lie in float32's normal range, as the training runs in
float32). ``--out`` is created and checked to be writable before any work too. A run that
fails (a missing or corrupt data file, an output that cannot be written, a value MXNet,
numpy or matplotlib refuse, an overflow: ``OSError``, ``ValueError``, ``ArithmeticError``,
``MXNetError``) gets a one-line error and exit code 1; any other exception is a bug and keeps
its traceback. Set ``ADAGRAD_GLUON_TRACEBACK=1`` to see the traceback of a one-line error too.

To add a subcommand, write one function decorated with :func:`subcommand`: it receives the
subparsers, adds its parser and sets ``run`` to a function of the parsed arguments that
returns the exit code.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet.base import MXNetError
from tqdm import tqdm

from . import __version__
from .d2l import chapter, plotting
from .d2l.data import (
    NUM_ROWS,
    DataFileError,
    airfoil_path,
    get_data_ch10,
    sha1_of,
)
from .d2l.diagnostics import CHAPTER_EPS, EffectiveLRRecorder
from .d2l.training import TrainResult, train_ch10, train_concise_ch10
from .distributed import add_launch_parser
from .validation import (
    argument_type,
    check_number,
    check_positive_int,
    parse_float,
    parse_int,
    positive_float,
    positive_int,
)

PROG = "adagrad-gluon"
DEFAULT_OUT = "adagrad-gluon-out"
REFERENCE_RUN = "adagrad"  # compare measures parameter differences against the built-in
TRACEBACK_ENV = "ADAGRAD_GLUON_TRACEBACK"
# What a run may fail with that is not a bug: files (DataFileError is an OSError), values that
# MXNet, numpy or matplotlib refuse, overflows. Anything else keeps its traceback.
RUNTIME_ERRORS = (OSError, ValueError, ArithmeticError, MXNetError)
# The training runs in float32: a learning rate outside its normal range becomes inf or 0 there
LR_MIN, LR_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def subcommand(add_parser: Callable[[argparse._SubParsersAction], None]):
    """Register ``add_parser(subparsers)`` as a subcommand (in the order registered)."""
    _SUBCOMMANDS.append(add_parser)
    return add_parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def one_line(text: str) -> str:
    """``text`` with control characters (newlines included) escaped, so that a message
    quoting user input stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``adagrad-gluon`` with every registered subcommand."""
    parser = _Parser(
        prog=PROG,
        description="A from-scratch Adagrad for MXNet Gluon and the Adagrad chapter of "
                    "Dive into Deep Learning: compare, draw and explore it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code
    try:
        if "out" in args:
            prepare_output(args.out)
        return args.run(args)
    except RUNTIME_ERRORS as exc:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"{PROG}: error: {describe_error(exc)}", file=sys.stderr)
        return 1


def prepare_output(out: Path) -> None:
    """Create the directory ``out`` and check that a file can be created in it, before any
    work is done; ``OSError`` naming it otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".adagrad-gluon-write-check-"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write into the output directory {out}: "
                      f"{exc.strerror or exc}") from exc


# Lines of a message that are a traceback rather than the error (MXNet puts its C++ stack in)
_TRACEBACK_LINE = re.compile(r'Traceback \(most recent call last\):|File "|\[bt\]|Stack trace'
                             r'|Extension Traceback')
_FRAME_PREFIX = re.compile(r"^\[\d+\] \S+: ")  # "[0] adagrad_ops.cc[258]: "


def describe_error(exc: BaseException) -> str:
    """One line naming what went wrong in a run (``exc`` is one of :data:`RUNTIME_ERRORS`)."""
    lines = (_FRAME_PREFIX.sub("", line.strip()) for line in str(exc).splitlines())
    text = one_line(" ".join(line for line in lines
                             if line and not _TRACEBACK_LINE.match(line)))
    if isinstance(exc, DataFileError):
        return f"{text} (on the command line: --data-dir DIR)"
    if isinstance(exc, OSError):
        return text
    if isinstance(exc, OverflowError):  # Python float arithmetic, e.g. the 2-D example's g ** 2
        return f"the computation overflowed ({text}); try a smaller learning rate"
    name = type(exc).__name__
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


# -- argument types: each turns a string into a checked value or an ArgumentTypeError ---------

@argument_type
def examples(text: str) -> int:
    """A number of airfoil rows, 1..1503."""
    n = check_positive_int("value", parse_int(text))
    if n > NUM_ROWS:
        raise ValueError(f"value must be at most {NUM_ROWS} (the rows in the data), got {n}")
    return n


@argument_type
def seed(text: str) -> int:
    """An integer in 0 .. 2**32 - 1 (numpy's seed range)."""
    value = parse_int(text)
    if not 0 <= value < 2**32:
        raise ValueError(f"value must be in 0 .. 2**32 - 1, got {value}")
    return value


@argument_type
def leak(text: str) -> float:
    """A number in [0, 1): the leaky accumulator's gamma."""
    value = check_number("value", parse_float(text))
    if value >= 1:
        raise ValueError(f"value must be < 1, got {value!r}")
    return value


def check_learning_rate(name: str, value: float) -> float:
    """``value`` if it is a learning rate the float32 training can use: in float32's normal
    range (:data:`LR_MIN` .. :data:`LR_MAX`), where it is neither rounded to 0 or a
    subnormal nor overflows to inf."""
    value = check_number(name, value, strict=True)
    if not LR_MIN <= value <= LR_MAX:
        raise ValueError(f"{name} must be between {LR_MIN:.3g} and {LR_MAX:.3g} (the training "
                         f"runs in float32), got {value!r}")
    return value


@argument_type
def learning_rate(text: str) -> float:
    """A learning rate: a number in float32's normal range, see :func:`check_learning_rate`."""
    return check_learning_rate("value", parse_float(text))


@argument_type
def learning_rates(text: str) -> list[float]:
    """A comma-separated list of distinct learning rates, e.g. ``0.01,0.1,1``."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"expected comma-separated numbers, got {text!r}")
    rates = [check_learning_rate(f"learning rate {item!r}", parse_float(item))
             for item in items]
    if len(set(rates)) != len(rates):
        raise ValueError(f"learning rates must be distinct, got {text!r}")
    return rates


@argument_type
def existing_dir(text: str) -> Path:
    """A directory that exists."""
    path = Path(text)
    if not path.is_dir():
        raise ValueError(f"{text} is not an existing directory")
    return path


@argument_type
def output_dir(text: str) -> Path:
    """A directory to write into: it may not exist yet, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{text} exists and is not a directory")
    return path


# -- shared pieces ---------------------------------------------------------------------------

def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=output_dir, default=Path(DEFAULT_OUT), metavar="DIR",
                        help=f"where to write the results (default: ./{DEFAULT_OUT})")


def _add_training_options(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--epochs", type=positive_int, default=epochs,
                        help=f"passes over the data (default: {epochs})")
    parser.add_argument("--batch-size", type=positive_int, default=10,
                        help="examples per mini-batch (default: 10)")
    parser.add_argument("--n", type=examples, default=1500,
                        help=f"use the first N of the {NUM_ROWS} examples (default: 1500)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of the initial weights and the batch order (default: 0)")
    parser.add_argument("--data-dir", type=existing_dir, default=None, metavar="DIR",
                        help="directory holding airfoil_self_noise.dat (default: "
                             "$ADAGRAD_GLUON_DATA_DIR, else the copy shipped with the "
                             "package, else the cache, else a download)")
    _add_output_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _load_data(args: argparse.Namespace):
    """``(data_iter, feature_dim, description)`` of the airfoil data the options ask for."""
    path = airfoil_path(args.data_dir)
    data_iter, feature_dim = get_data_ch10(args.batch_size, args.n, data_dir=path.parent)
    info = {"file": str(path), "sha1": sha1_of(path), "examples": args.n,
            "feature_dim": feature_dim, "batch_size": args.batch_size}
    return data_iter, feature_dim, info


def _progress(args: argparse.Namespace, data_iter, name: str) -> tqdm:
    return tqdm(total=args.epochs * len(data_iter), desc=f"{name:>15}", unit="batch",
                leave=False, disable=args.quiet)


def _json_safe(value):
    """``value`` with every non-finite float (from a diverged run) replaced by ``None``, so
    that it is valid JSON (``null``)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _run_record(result: TrainResult) -> dict:
    return {
        "name": result.name,
        "final_loss": result.final_loss,
        "sec_per_epoch": result.sec_per_epoch,
        "losses": [list(pair) for pair in result.losses],
        "params": {name: np.asarray(value, dtype=np.float64).tolist()
                   for name, value in result.params.items()},
    }


def _write_json(out: Path, name: str, command: str, args: argparse.Namespace,
                content: dict) -> Path:
    options = {key: str(value) if isinstance(value, Path) else value
               for key, value in vars(args).items() if key not in ("run", "command")}
    document = {
        "command": command,
        **content,
        "options": options,
        "versions": {"adagrad_gluon": __version__, "mxnet": mx.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }
    path = out / name
    path.write_text(json.dumps(_json_safe(document), indent=1, allow_nan=False) + "\n")
    return path


def _save(fig, out: Path, name: str) -> Path:
    try:
        return plotting.save_figure(fig, out / name)
    except ValueError as exc:  # matplotlib refusing the data, e.g. of a diverged run
        raise ValueError(f"cannot draw {name}: {exc}") from exc


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells):
        return "  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line("-" * w for w in widths), *map(line, rows)])


def _wrote(paths: Sequence[Path]) -> None:
    print("wrote " + ", ".join(str(p) for p in paths))


# -- compare ---------------------------------------------------------------------------------

def max_param_diff(result: TrainResult, reference: TrainResult) -> float:
    """``max |p - p_ref|`` over every trained parameter entry."""
    return max(float(np.max(np.abs(np.asarray(result.params[k]) - reference.params[k])))
               for k in reference.params)


def _compare(args: argparse.Namespace) -> int:
    data_iter, feature_dim, data_info = _load_data(args)
    recorder = EffectiveLRRecorder()
    common = {"num_epochs": args.epochs, "seed": args.seed}  # one seed: same weights, batches
    concise = {"learning_rate": args.lr, "eps": CHAPTER_EPS}
    with _progress(args, data_iter, "scratch") as bar:
        scratch = train_ch10(chapter.adagrad, chapter.init_adagrad_states(feature_dim),
                             {"lr": args.lr}, data_iter, feature_dim, name="scratch",
                             progress=bar, **common)
    with _progress(args, data_iter, "adagrad_scratch") as bar:
        ours = train_concise_ch10("adagrad_scratch", concise, data_iter, name="adagrad_scratch",
                                  progress=bar, on_record=recorder, **common)
    with _progress(args, data_iter, REFERENCE_RUN) as bar:
        reference = train_concise_ch10("adagrad", concise, data_iter, name=REFERENCE_RUN,
                                       progress=bar, **common)
    results = [scratch, ours, reference]
    diffs = [max_param_diff(r, reference) for r in results]

    print(f"Adagrad on the airfoil data ({args.n} examples, batch {args.batch_size}): "
          f"lr {args.lr:g}, eps {CHAPTER_EPS:g}, {args.epochs} epoch(s), seed {args.seed}")
    rows = [[r.name, f"{r.final_loss:.6f}", f"{r.sec_per_epoch:.3f}",
             "(reference)" if r is reference else f"{d:.2e}"]
            for r, d in zip(results, diffs, strict=True)]
    print(format_table(
        ["run", "final loss", "sec/epoch", f"max |Δparam| vs {REFERENCE_RUN}"], rows))

    losses_fig = plotting.plot_losses(
        results, title=f"Adagrad on the airfoil data, lr {args.lr:g}: three implementations")
    rates_fig = plotting.plot_effective_lr(
        recorder, title=f"adagrad_scratch, lr {args.lr:g}: effective learning rates")
    figures = [_save(losses_fig, args.out, "loss_curves.png"),
               _save(rates_fig, args.out, "effective_lr.png")]
    runs_json = [{**_run_record(r), f"max_abs_param_diff_vs_{REFERENCE_RUN}": d}
                 for r, d in zip(results, diffs, strict=True)]
    report = _write_json(args.out, "compare.json", "compare", args, {
        "runs": runs_json, "reference": REFERENCE_RUN, "eps": CHAPTER_EPS, "data": data_info,
        "effective_lr": {"run": "adagrad_scratch", **recorder.to_dict()},
        "figures": [p.name for p in figures],
    })
    _wrote([report, *figures])
    return 0


@subcommand
def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="from scratch vs adagrad_scratch vs MXNet's adagrad",
        description="Train the chapter's linear regression on the airfoil data three ways with "
                    "one seed (same initial weights and batches) and equal eps: the chapter's "
                    "from-scratch function (scratch), adagrad_scratch through gluon.Trainer, "
                    "and MXNet's built-in adagrad. Prints a table and writes compare.json, "
                    "loss_curves.png and effective_lr.png.")
    parser.add_argument("--lr", type=learning_rate, default=0.1,
                        help="learning rate (default: 0.1)")
    _add_training_options(parser, epochs=2)
    parser.set_defaults(run=_compare)


# -- trajectory ------------------------------------------------------------------------------

def _trajectory(args: argparse.Namespace) -> int:
    path = chapter.train_2d(functools.partial(chapter.adagrad_2d, eta=args.eta), args.steps)
    print(chapter.format_2d(path))
    fig = plotting.show_trace_2d(
        chapter.f_2d, path,
        title=rf"Adagrad on $f = 0.1x_1^2 + 2x_2^2$, $\eta$ = {args.eta:g}, {args.steps} steps")
    _wrote([_save(fig, args.out, f"trajectory_eta{args.eta:g}.png")])
    return 0


@subcommand
def _add_trajectory(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trajectory", help="the chapter's 2-D example, with a picture",
        description="Run Adagrad on f(x) = 0.1*x1^2 + 2*x2^2 from (-5, -2), print the "
                    "chapter's line and write trajectory_eta<ETA>.png.")
    parser.add_argument("--eta", type=positive_float, default=0.4,
                        help="learning rate (default: 0.4; the chapter also tries 2)")
    parser.add_argument("--steps", type=positive_int, default=20,
                        help="number of steps (default: 20)")
    _add_output_options(parser)
    parser.set_defaults(run=_trajectory)


# -- sweep -----------------------------------------------------------------------------------

def _sweep(args: argparse.Namespace) -> int:
    data_iter, _, data_info = _load_data(args)
    results = []
    for lr in args.lrs:
        name = f"lr={lr:g}"
        with _progress(args, data_iter, name) as bar:
            results.append(train_concise_ch10(
                "adagrad_scratch", {"learning_rate": lr}, data_iter, args.epochs,
                seed=args.seed, name=name, progress=bar))
    finite = [r.final_loss if math.isfinite(r.final_loss) else math.inf for r in results]
    best = int(np.argmin(finite))
    print(f"adagrad_scratch on the airfoil data ({args.n} examples, batch {args.batch_size}): "
          f"{args.epochs} epoch(s), seed {args.seed}")
    rows = [[f"{lr:g}", f"{r.final_loss:.6f}", f"{r.sec_per_epoch:.3f}", "*" if i == best else ""]
            for i, (lr, r) in enumerate(zip(args.lrs, results, strict=True))]
    print(format_table(["lr", "final loss", "sec/epoch", "best"], rows))
    figure = _save(plotting.plot_sweep(
        results, args.lrs, title=f"adagrad_scratch on the airfoil data, {args.epochs} epoch(s)"),
        args.out, "sweep.png")
    report = _write_json(args.out, "sweep.json", "sweep", args, {
        "runs": [{**_run_record(r), "lr": lr} for lr, r in zip(args.lrs, results, strict=True)],
        "best_lr": args.lrs[best], "data": data_info, "figures": [figure.name],
    })
    _wrote([report, figure])
    return 0


@subcommand
def _add_sweep(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="final loss per initial learning rate (the chapter's exercise)",
        description="Train adagrad_scratch on the airfoil data once per learning rate, with "
                    "one seed; prints the final losses and writes sweep.json and sweep.png.")
    parser.add_argument("--lrs", type=learning_rates, default=[0.01, 0.1, 0.4, 1.0, 2.0],
                        metavar="LR,LR,...",
                        help="comma-separated learning rates (default: 0.01,0.1,0.4,1,2)")
    _add_training_options(parser, epochs=2)
    parser.set_defaults(run=_sweep)


# -- remedy ----------------------------------------------------------------------------------

def _rate_range(recorder: EffectiveLRRecorder, record: int) -> str:
    rates = np.concatenate([series[record] for series in recorder.series().values()])
    return f"{rates.min():.2g}..{rates.max():.2g}"


def _remedy(args: argparse.Namespace) -> int:
    data_iter, feature_dim, data_info = _load_data(args)
    setups = [
        ("adagrad", chapter.adagrad, chapter.init_adagrad_states, {"lr": args.lr}),
        ("rmsprop", chapter.rmsprop, chapter.init_rmsprop_states,
         {"lr": args.rmsprop_lr, "gamma": args.gamma}),
    ]
    results, recorders = [], []
    for name, step, init_states, hyperparams in setups:
        recorder = EffectiveLRRecorder(lr=hyperparams["lr"])
        with _progress(args, data_iter, name) as bar:
            results.append(train_ch10(
                step, init_states(feature_dim), hyperparams, data_iter, feature_dim,
                args.epochs, seed=args.seed, name=name, progress=bar, on_record=recorder))
        recorders.append(recorder)
    print(f"From scratch on the airfoil data ({args.n} examples, batch {args.batch_size}): "
          f"{args.epochs} epoch(s), seed {args.seed}")
    print(format_table(
        ["run", "hyperparameters", "final loss", "first eff. lr", "last eff. lr"],
        [[r.name, ", ".join(f"{k} {v:g}" for k, v in setup[3].items()), f"{r.final_loss:.6f}",
          _rate_range(rec, 0), _rate_range(rec, -1)]
         for r, rec, setup in zip(results, recorders, setups, strict=True)]))
    figure = _save(plotting.plot_remedy(
        results, recorders,
        title=f"Adagrad (sum of g²) and RMSProp (leaky average of g²), {args.epochs} epochs"),
        args.out, "remedy.png")
    report = _write_json(args.out, "remedy.json", "remedy", args, {
        "runs": [{**_run_record(r), "hyperparameters": setup[3], "effective_lr": rec.to_dict()}
                 for r, rec, setup in zip(results, recorders, setups, strict=True)],
        "eps": CHAPTER_EPS, "data": data_info, "figures": [figure.name],
    })
    _wrote([report, figure])
    return 0


@subcommand
def _add_remedy(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "remedy", help="Adagrad vs an RMSProp-style leaky accumulator, with effective rates",
        description="The chapter's exercise on the decaying learning rate: train the "
                    "from-scratch adagrad and rmsprop (a leaky average of squared gradients) on "
                    "the same data with one seed; prints their losses and effective learning "
                    "rates and writes remedy.json and remedy.png.")
    parser.add_argument("--lr", type=learning_rate, default=0.1,
                        help="Adagrad's learning rate (default: 0.1, the chapter's)")
    parser.add_argument("--rmsprop-lr", type=learning_rate, default=0.01,
                        help="RMSProp's learning rate (default: 0.01, its chapter's)")
    parser.add_argument("--gamma", type=leak, default=0.9,
                        help="RMSProp's leak, in [0, 1) (default: 0.9)")
    _add_training_options(parser, epochs=10)
    parser.set_defaults(run=_remedy)


# -- launch ----------------------------------------------------------------------------------

subcommand(add_launch_parser)  # distributed training: adagrad_gluon.distributed.command
