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

The subcommands parse their options here, run :mod:`adagrad_gluon.d2l.experiments` and print
and write with :mod:`adagrad_gluon.d2l.report`.

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
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from mxnet.base import MXNetError
from tqdm import tqdm

from . import __version__
from .d2l import experiments, report
from .d2l.data import NUM_ROWS, DataFileError
from .d2l.experiments import max_param_diff as max_param_diff  # re-exported: 0.1's cli had it
from .d2l.report import format_table as format_table  # re-exported: 0.1's cli had it
from .distributed import add_launch_parser
from .validation import (
    argument_type,
    check_positive_int,
    existing_dir,
    leak,
    learning_rate,
    learning_rates,
    output_dir,
    parse_int,
    positive_float,
    positive_int,
    seed,
)

PROG = "adagrad-gluon"
DEFAULT_OUT = "adagrad-gluon-out"
TRACEBACK_ENV = "ADAGRAD_GLUON_TRACEBACK"
# What a run may fail with that is not a bug: files (DataFileError is an OSError), values that
# MXNet, numpy or matplotlib refuse, overflows. Anything else keeps its traceback.
RUNTIME_ERRORS = (OSError, ValueError, ArithmeticError, MXNetError)

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


def _progress(args: argparse.Namespace) -> experiments.Progress:
    """A tqdm bar on stderr per training run (disabled by ``--quiet``)."""
    def bar(name: str, total: int) -> tqdm:
        return tqdm(total=total, desc=f"{name:>15}", unit="batch", leave=False,
                    disable=args.quiet)
    return bar


def _options(args: argparse.Namespace) -> dict:
    """The parsed options as the JSON documents record them."""
    return {key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items() if key not in ("run", "command")}


def _wrote(paths: Sequence[Path]) -> None:
    print("wrote " + ", ".join(str(p) for p in paths))


def _on_airfoil(args: argparse.Namespace, experiment: Callable, table: Callable[..., str],
                write: Callable[..., list[Path]]) -> int:
    """Load the data, run ``experiment(data, progress)``, print ``table(result)`` and
    ``write(result, out, options)`` (``main`` has created ``--out`` already)."""
    data = experiments.load_data(args.batch_size, args.n, args.data_dir)
    result = experiment(data, _progress(args))
    print(table(result))
    _wrote(write(result, args.out, _options(args)))
    return 0


# -- compare ---------------------------------------------------------------------------------

def _compare(args: argparse.Namespace) -> int:
    return _on_airfoil(
        args, lambda data, bar: experiments.compare(data, args.lr, args.epochs, args.seed, bar),
        report.comparison_table, report.write_comparison)


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
    result = experiments.trajectory(args.eta, args.steps)
    print(report.trajectory_line(result))
    _wrote(report.write_trajectory(result, args.out))
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
    return _on_airfoil(
        args, lambda data, bar: experiments.sweep(data, args.lrs, args.epochs, args.seed, bar),
        report.sweep_table, report.write_sweep)


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

def _remedy(args: argparse.Namespace) -> int:
    def run(data: experiments.AirfoilData, bar: experiments.Progress) -> experiments.Remedy:
        return experiments.remedy(data, args.lr, args.rmsprop_lr, args.gamma, args.epochs,
                                  args.seed, bar)

    return _on_airfoil(args, run, report.remedy_table, report.write_remedy)


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
