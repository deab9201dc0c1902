"""Distributed checkpoints: the optimizer states an ``mxnet.optimizer.Updater`` holds, in the
one states-file schema of :mod:`adagrad_gluon.optim.state`.

Used on both sides of a job: a server writes the states it holds with
``update_on_kvstore=True`` (one file per server, :func:`server_file`), and with
``update_on_kvstore=False`` worker 0 writes the workers' states (:func:`worker_file`). Keys
must be integers, as ``gluon.Trainer`` uses; a state must be ``adagrad_scratch``'s (an
accumulator, or a master weight and an accumulator). A reader does not know the shapes in
advance: a file's arrays may claim at most :data:`MAX_EXPANSION` times its size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from mxnet import nd

from ..optim._gluon import replace_states, update_counts
from ..optim.checks import split_state
from ..optim.schema import class_path, optimizer_options
from ..optim.state import (
    SavedStates,
    StateFileError,
    read_states_file,
    restore_lazy_decay,
    restore_scheduler,
    write_states_file,
)
from ..optim.state import check_resumable as check_compatible

WORKER_FILE = "workers.npz"
WHAT = "adagrad_gluon optimizer states file"
# write_states stores the arrays uncompressed, so a file expands to about its own size
MAX_EXPANSION = 8


class CheckpointError(StateFileError):
    """A states file is missing, unreadable or not one this module wrote (an ``OSError``)."""


def server_file(directory: str | os.PathLike, rank: int, num_servers: int) -> Path:
    """Where server ``rank`` of ``num_servers`` keeps its states in ``directory``."""
    return Path(directory) / f"server-{rank}-of-{num_servers}.npz"


def worker_file(directory: str | os.PathLike) -> Path:
    """Where worker 0 keeps the workers' states (``update_on_kvstore=False``)."""
    return Path(directory) / WORKER_FILE


def _numpy_state(key, state) -> tuple[np.ndarray | None, np.ndarray]:
    """``(master or None, accumulator)`` of ``state`` as numpy arrays."""
    parts = state if isinstance(state, (tuple, list)) else (state,)
    if not 1 <= len(parts) <= 2 or not all(isinstance(s, nd.NDArray) for s in parts):
        raise TypeError(f"key {key}: cannot save an optimizer state of type "
                        f"{type(state).__name__} (adagrad_scratch's states are saved)")
    if any(s.stype != "default" for s in parts):
        raise TypeError(f"key {key}: cannot save a sparse optimizer state")
    master, acc = split_state(state)
    return None if master is None else master.asnumpy(), acc.asnumpy()


def _check_key(key) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"optimizer states need integer keys (as gluon.Trainer uses), got {key!r}")
    return int(key)


def write_states(path: str | os.PathLike, updater, *, token: str = "") -> None:
    """Write the states and counters of ``updater`` (an ``mxnet.optimizer.Updater``) to
    ``path`` atomically; ``token`` lets a reader tell this save from older ones."""
    optimizer = updater.optimizer
    counts = update_counts(optimizer)
    states = {}
    for key, state in updater.states.items():
        key = _check_key(key)
        states[key] = (*_numpy_state(key, state), counts.get(key, optimizer.begin_num_update))
    write_states_file(path, optimizer, states, token=token)


def read_states(path: str | os.PathLike, *, arrays: bool = True) -> SavedStates:
    """Read a file from :func:`write_states`; :class:`CheckpointError` if it is not one (a
    FIFO, a corrupt or truncated archive, one whose arrays would expand to more than
    :data:`MAX_EXPANSION` times its size are refused before any of it is decompressed).
    ``arrays=False`` reads its ``meta`` only."""
    path = Path(path)
    try:
        return read_states_file(path, what=WHAT, max_expansion=MAX_EXPANSION, arrays=arrays)
    except FileNotFoundError as exc:
        raise CheckpointError(f"optimizer states file {path} does not exist") from exc
    except StateFileError as exc:
        raise CheckpointError(str(exc)) from exc
    except (OSError, ValueError, TypeError) as exc:  # wrong or missing fields
        raise CheckpointError(f"{path} is not a readable optimizer states file: {exc}") from exc


def restore_states(updater, saved: SavedStates) -> None:
    """Replace the states and counters of ``updater`` with ``saved`` (check it first with
    :func:`check_compatible`). The arrays move to the weights' context at the next update."""
    states = {key: tuple(nd.array(s, dtype=s.dtype) for s in state)
              if isinstance(state, tuple) else nd.array(state, dtype=state.dtype)
              for key, state in saved.states.items()}
    replace_states(updater, states, saved.counts, saved.num_update)
    restore_lazy_decay(updater.optimizer, saved)
    restore_scheduler(updater.optimizer, saved)


__all__ = ["CheckpointError", "MAX_EXPANSION", "SavedStates", "check_compatible", "class_path",
           "optimizer_options", "read_states", "restore_states", "server_file", "worker_file",
           "write_states"]
