"""The ``launch`` subcommand: ``adagrad-gluon launch -n WORKERS -s SERVERS [--sync|--async]
[--timeout SECONDS] -- python train.py ...``.

:func:`add_launch_parser` adds it to any ``argparse`` subparsers object; the parsed arguments
carry their handler as ``args.run`` (the convention of :mod:`adagrad_gluon.cli`), which
returns the exit status.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ..validation import positive_float, positive_int
from .launcher import LaunchError, launch

DESCRIPTION = """\
Start a scheduler, SERVERS servers and WORKERS copies of the command on loopback, stream
their output, and stop them all at the first failure."""
EPILOG = """\
The workers get DMLC_ROLE=worker and ADAGRAD_GLUON_KVSTORE=dist_sync (dist_async with
--async); adagrad_gluon.distributed.create_kvstore() connects with that kvstore. Exit status:
0 when every process succeeded, 1 when one failed (the message names it and why), 124 on
--timeout, 128+N after signal N (SIGINT, SIGHUP, SIGTERM stop every process first). If the
launcher is killed, the processes it started get SIGKILL."""

STOP_SIGNALS = (signal.SIGHUP, signal.SIGTERM)  # handled like Ctrl-C (SIGINT)


def add_launch_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``launch`` subcommand to ``subparsers`` (from ``add_subparsers()``) and return
    its parser; its handler is set as the ``run`` default."""
    parser = subparsers.add_parser(
        "launch",
        help="run a training script on MXNet's parameter server, on this host",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-n", "--num-workers", type=positive_int, required=True,
                        metavar="WORKERS", help="number of worker processes")
    parser.add_argument("-s", "--num-servers", type=positive_int, default=1,
                        metavar="SERVERS", help="number of server processes (default 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sync", dest="kvstore", action="store_const", const="dist_sync",
                      help="synchronous updates, kvstore dist_sync (the default)")
    mode.add_argument("--async", dest="kvstore", action="store_const", const="dist_async",
                      help="asynchronous updates, kvstore dist_async")
    parser.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                        help="stop everything and fail after this many seconds")
    parser.add_argument("--grace", type=positive_float, default=5.0, metavar="SECONDS",
                        help="how long processes get to exit once stopped (default 5)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the worker's command line, after --")
    parser.set_defaults(run=run_launch, kvstore="dist_sync")
    return parser


def run_launch(args: argparse.Namespace) -> int:
    """Run the job the parsed ``args`` describe; return the exit status."""
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("adagrad-gluon launch: error: give the worker's command after --, e.g. "
              "-- python train.py", file=sys.stderr)
        return 2
    previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    try:
        launch(command, args.num_workers, args.num_servers, kvstore=args.kvstore,
               timeout=args.timeout, grace=args.grace)
    except LaunchError as exc:
        print(f"adagrad-gluon launch: error: {exc}", file=sys.stderr)
        return exc.returncode
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"adagrad-gluon launch: interrupted by {signal.Signals(signum).name}; every "
              f"process was stopped", file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


class _Signalled(KeyboardInterrupt):
    """Raised by :func:`_interrupt` for ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise _Signalled(signum)  # unwinds through launch(), which stops every process
