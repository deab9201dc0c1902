"""Optimizer states on disk: the accumulators an ``mxnet.optimizer.Updater`` holds, as ``.npz``.

Used on both sides of a job: a server writes the states it holds with
``update_on_kvstore=True`` (one file per server, :func:`server_file`), and with
``update_on_kvstore=False`` worker 0 writes the workers' states (:func:`worker_file`).
A file holds, next to the arrays, a format name and :data:`VERSION`, the optimizer's class and
its options (its public scalar attributes, e.g. ``lr``, ``eps``, ``rescale_grad``), the scalar
attributes of its ``lr_scheduler``, and the update counters, so that a resumed run continues
bit for bit. Files are written atomically (a temporary file, then ``os.replace``) and read
with the bounded reader of :mod:`adagrad_gluon.state` (never unpickling anything).
Keys must be integers, as ``gluon.Trainer`` uses.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mxnet import nd

from ..optim.state import (
    Member,
    NpzReader,
    StateFileError,
    atomic_write,
    check_state_array,
    parse_json,
)

FORMAT = "adagrad_gluon.optimizer_states"
VERSION = 1
WORKER_FILE = "workers.npz"
_SCALARS = (bool, int, float, str, type(None))
_COUNTERS = ("num_update",)  # progress, restored from the counters rather than compared
# how the update runs, not what it computes (the kernels are bit-identical to the reference)
_EXECUTION = ("kernel", "kernel_choice", "aggregate_num")

State = np.ndarray | tuple[np.ndarray, ...] | None


class CheckpointError(OSError):
    """A states file is missing, unreadable or not one this module wrote."""


@dataclass(frozen=True)
class SavedStates:
    """The contents of one states file."""

    path: Path
    optimizer: str  # the optimizer's class, as ``module.QualName``
    options: dict
    scheduler: dict | None  # the lr_scheduler's class and scalar attributes, if it had one
    num_update: int
    counts: dict[int, int]  # updates so far, per key
    states: dict[int, State]
    token: str  # an id the writer was given, so a reader can tell this save from older ones


def server_file(directory: str | os.PathLike, rank: int, num_servers: int) -> Path:
    """Where server ``rank`` of ``num_servers`` keeps its states in ``directory``."""
    return Path(directory) / f"server-{rank}-of-{num_servers}.npz"


def worker_file(directory: str | os.PathLike) -> Path:
    """Where worker 0 keeps the workers' states (``update_on_kvstore=False``)."""
    return Path(directory) / WORKER_FILE


def class_path(obj) -> str:
    """``module.QualName`` of ``obj``'s class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _scalar_attributes(obj) -> dict:
    return {k: v for k, v in sorted(vars(obj).items())
            if not k.startswith("_") and isinstance(v, _SCALARS)}


def optimizer_options(optimizer) -> dict:
    """The optimizer's public scalar attributes but its counters and the choice of update
    path: what a resumed run must share with the saved one to continue bit for bit."""
    return {k: v for k, v in _scalar_attributes(optimizer).items()
            if k not in _COUNTERS + _EXECUTION}


def _state_arrays(key, state) -> tuple[int, list[np.ndarray]]:
    """``(layout, arrays)``: layout -1 for no state, 0 for one array, n for a tuple of n."""
    if state is None:
        return -1, []
    if isinstance(state, nd.NDArray):
        return 0, [_dense(key, state)]
    if isinstance(state, (tuple, list)) and all(isinstance(s, nd.NDArray) for s in state):
        return len(state), [_dense(key, s) for s in state]
    raise TypeError(f"key {key}: cannot save an optimizer state of type {type(state).__name__}")


def _dense(key, array: nd.NDArray) -> np.ndarray:
    if array.stype != "default":
        raise TypeError(f"key {key}: cannot save a {array.stype} optimizer state")
    return array.asnumpy()


def _check_key(key) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"optimizer states need integer keys (as gluon.Trainer uses), got {key!r}")
    return int(key)


def write_states(path: str | os.PathLike, updater, *, token: str = "") -> None:
    """Write the states and counters of ``updater`` (an ``mxnet.optimizer.Updater``) to
    ``path`` atomically."""
    path = Path(path)
    optimizer = updater.optimizer
    keys = sorted(_check_key(k) for k in updater.states)
    counts = {_check_key(k): int(v) for k, v in optimizer._index_update_count.items()}
    scheduler = optimizer.lr_scheduler
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION),
        "optimizer": np.array(class_path(optimizer)),
        "options": np.array(json.dumps(optimizer_options(optimizer))),
        "scheduler": np.array(json.dumps(
            None if scheduler is None
            else {"class": class_path(scheduler), "attributes": _scalar_attributes(scheduler)}
        )),
        "num_update": np.array(int(optimizer.num_update), dtype=np.int64),
        "token": np.array(token),
        "keys": np.array(keys, dtype=np.int64),
        "count_keys": np.array(sorted(counts), dtype=np.int64),
        "count_values": np.array([counts[k] for k in sorted(counts)], dtype=np.int64),
    }
    layouts = []
    for key in keys:
        layout, parts = _state_arrays(key, updater.states[key])
        layouts.append(layout)
        arrays.update({f"state_{key}_{i}": part for i, part in enumerate(parts)})
    arrays["layouts"] = np.array(layouts, dtype=np.int64)
    atomic_write(path, lambda f: np.savez(f, **arrays))


# what a states file may hold: strings, integer scalars, integer vectors, float state arrays
_STRINGS = ("format", "optimizer", "options", "scheduler", "token")
_INTEGERS = ("version", "num_update")
_VECTORS = ("keys", "count_keys", "count_values", "layouts")
_STATE_ARRAY = re.compile(r"state_\d+_\d+")
# write_states stores the arrays uncompressed, so a file expands to about its own size; a
# reader does not know the shapes in advance, so this bounds what a (deflated) file may claim
MAX_EXPANSION = 8


def _member(name: str) -> Member | None:
    if name in _STRINGS:
        return Member("U", shape=())
    if name in _INTEGERS:
        return Member("iu", shape=())
    if name in _VECTORS:
        return Member("iu")
    return Member("f") if _STATE_ARRAY.fullmatch(name) else None


def read_states(path: str | os.PathLike) -> SavedStates:
    """Read a file from :func:`write_states`; :class:`CheckpointError` if it is not one.

    The file is read within limits (see :class:`adagrad_gluon.state.NpzReader`): a FIFO, a
    corrupt or truncated archive, or one whose arrays would expand to more than
    :data:`MAX_EXPANSION` times its size is refused before any of it is decompressed."""
    path = Path(path)
    try:
        with NpzReader(path, _member, what="optimizer states file",
                       max_expansion=MAX_EXPANSION) as npz:
            return _parse(path, npz)
    except CheckpointError:
        raise
    except FileNotFoundError as exc:
        raise CheckpointError(f"optimizer states file {path} does not exist") from exc
    except StateFileError as exc:
        raise CheckpointError(str(exc)) from exc
    except (OSError, ValueError, TypeError) as exc:  # wrong or missing fields
        raise CheckpointError(f"{path} is not a readable optimizer states file: {exc}") from exc


def _parse(path: Path, npz: NpzReader) -> SavedStates:
    if "format" not in npz.names or str(npz.read("format")) != FORMAT:
        raise CheckpointError(f"{path} is not an adagrad_gluon optimizer states file")
    if int(npz.read("version")) != VERSION:
        raise CheckpointError(f"{path} has format version {int(npz.read('version'))}; this "
                              f"adagrad_gluon reads version {VERSION}")
    unexpected = sorted(name for name in npz.names if _member(name) is None)
    if unexpected:
        raise CheckpointError(f"{path} holds unexpected arrays {unexpected}")
    keys = [int(k) for k in npz.read("keys")]
    states: dict[int, State] = {}
    for key, layout in zip(keys, (int(n) for n in npz.read("layouts")), strict=True):
        count = max(layout, 1)  # AdagradScratch: (accumulator) or (master, accumulator)
        parts = tuple(check_state_array(f"{path}: state {key}.{i}", npz.read(f"state_{key}_{i}"),
                                        accumulator=i == count - 1)
                      for i in range(count))
        states[key] = None if layout < 0 else parts[0] if layout == 0 else parts
    options = parse_json(f"{path}: options", str(npz.read("options")))
    scheduler = parse_json(f"{path}: scheduler", str(npz.read("scheduler")))
    if not isinstance(options, dict) or not (scheduler is None or (
            isinstance(scheduler, dict) and isinstance(scheduler.get("class"), str)
            and isinstance(scheduler.get("attributes"), dict))):
        raise CheckpointError(f"{path}: options must be a JSON object and scheduler null or "
                              f"an object with a class and attributes")
    return SavedStates(
        path=path,
        optimizer=str(npz.read("optimizer")),
        options=options,
        scheduler=scheduler,
        num_update=int(npz.read("num_update")),
        counts=dict(zip((int(k) for k in npz.read("count_keys")),
                        (int(v) for v in npz.read("count_values")), strict=True)),
        states=states,
        token=str(npz.read("token")),
    )


def check_compatible(saved: SavedStates, optimizer, *, check_options: bool = True) -> None:
    """Raise ``ValueError`` if ``optimizer`` cannot continue from ``saved``: another class, or
    (with ``check_options``) other options or another kind of ``lr_scheduler``."""
    if saved.optimizer != class_path(optimizer):
        raise ValueError(
            f"{saved.path} holds the states of a {saved.optimizer}, not of the "
            f"{class_path(optimizer)} being trained"
        )
    if not check_options:
        return
    current = optimizer_options(optimizer)
    differ = sorted(k for k in set(current) | set(saved.options)
                    if current.get(k) != saved.options.get(k))
    if differ:
        details = ", ".join(f"{k}: saved {saved.options.get(k)!r}, now {current.get(k)!r}"
                            for k in differ)
        raise ValueError(
            f"optimizer options differ from those saved in {saved.path} ({details}); the "
            f"resumed run would not continue the saved one (pass check_options=False to "
            f"resume with new options anyway)"
        )
    scheduler = optimizer.lr_scheduler
    now = None if scheduler is None else class_path(scheduler)
    before = None if saved.scheduler is None else saved.scheduler["class"]
    if now != before:
        raise ValueError(f"lr_scheduler: saved {before}, now {now} ({saved.path})")


def restore_states(updater, saved: SavedStates) -> None:
    """Replace the states and counters of ``updater`` with ``saved`` (check it first with
    :func:`check_compatible`). The arrays move to the weights' context at the next update."""
    optimizer = updater.optimizer
    updater.states = {
        key: None if state is None
        else nd.array(state, dtype=state.dtype) if isinstance(state, np.ndarray)
        else tuple(nd.array(s, dtype=s.dtype) for s in state)
        for key, state in saved.states.items()
    }
    updater.states_synced = dict.fromkeys(updater.states, False)
    # One counter dict per device (the current one among them); the updater switches
    # between them on every call.
    for counts in optimizer._all_index_update_counts.values():
        counts.clear()
        counts.update(saved.counts)
    optimizer.num_update = saved.num_update
    if saved.scheduler is not None and optimizer.lr_scheduler is not None:
        for name, value in saved.scheduler["attributes"].items():
            setattr(optimizer.lr_scheduler, name, value)
