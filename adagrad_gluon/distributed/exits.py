"""How a worker leaves a parameter-server job without hanging the others: at once on an
uncaught exception (:func:`exit_on_uncaught_exception`), and after sending its queued
operations on a normal exit (:func:`drain_at_exit`). See :mod:`.worker` for why."""

from __future__ import annotations

import atexit
import os
import sys

from mxnet import nd


def exit_on_uncaught_exception() -> None:
    """From now on, an uncaught exception prints its traceback and ends this process with
    status 1 right away (``os._exit``: no ``atexit`` handlers, no kvstore shutdown barrier, in
    which a failed worker would wait forever). Idempotent."""
    previous = sys.excepthook
    if getattr(previous, "exits_at_once", False):
        return

    def print_and_exit(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    print_and_exit.exits_at_once = True
    sys.excepthook = print_and_exit


_DRAINS_AT_EXIT = False


def drain_at_exit() -> None:
    """From now on, this process waits for every queued MXNet operation (``nd.waitall()``)
    when it exits normally, before MXNet's own ``atexit`` handler stops its engine, which
    would drop them: a worker's last kvstore pushes then reach the servers. Idempotent.

    No barrier is added: the kvstore's destructor, which runs after, passes MXNet's exit
    barrier, and a second one would deadlock with a worker that did not register it."""
    global _DRAINS_AT_EXIT
    if not _DRAINS_AT_EXIT:
        atexit.register(nd.waitall)  # atexit runs last-in first-out: before mxnet's handler
        _DRAINS_AT_EXIT = True
