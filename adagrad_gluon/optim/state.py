"""Optimizer states on disk: ONE versioned ``.npz`` schema, for a ``gluon.Trainer``'s states
(:func:`save_states` / :func:`load_states`) and for those a parameter server or worker 0 keeps
(:mod:`adagrad_gluon.distributed.checkpoint`).

A file (format :data:`FORMAT`, version :data:`VERSION`) holds no pickle: ``meta``, a JSON
string::

    {"format", "version", "optimizer": "module.Class", "options": {the numerics options},
     "scheduler": null | {"class", "attributes"}, "num_update", "token",
     "params": [{"index", "name", "shape", "dtype", "update_count", "master"[, "decay"]
                 [, "state_bits"]}, ...]}

and one array per accumulator (``acc/<index>``, float32, float64 for float64 weights) and
float32 master weight (``master/<index>``, where ``master`` is true); an 8-bit accumulator
(``state_bits=8``, the entry's ``"state_bits": 8``) is saved as its uint8 codes
(``codes/<index>``) and float32 scales (``scales/<index>``) instead of ``acc/<index>``. A
parameter with lazy weight decay pending (:mod:`adagrad_gluon.optim.lazy_decay`) has
``decay``, its ``log_sum``, and its rows' marks ``decay/<index>`` (float64, one per row,
between ``decay`` and 0); a file without them (all version 2 files before lazy decay) has none
pending. ``dtype`` is the weight's (a server sees the states, not the weights: it writes
float16 where there is a master weight and the accumulator's dtype elsewhere). Version 1 files
(adagrad_gluon 0.1's ``save_states``: no ``optimizer``, ``scheduler``, ``token`` or
``master``) are read too.

**What must match to resume** (:func:`check_resumable`): the optimizer's class and its
numerics options (:data:`OPTION_NAMES`: preset, ``eps`` and its placement, initial
accumulator, ``lr_decay``, weight decay mode, ``maximize``, ``multi_precision``), under which
the saved accumulators mean what the resumed run takes them to mean. The learning rate,
``wd``, ``rescale_grad``, clipping and the choice of kernel may change on resume (users often
lower the rate when they resume); a scheduler of the saved class continues from the saved
one's attributes. Files are read through :class:`~adagrad_gluon.optim.npz.NpzReader` within
budgets (exact ones where the reader knows the shapes) and written atomically
(:func:`~adagrad_gluon.optim.atomic.atomic_write`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from mxnet import gluon

from ._gluon import (
    collect_states,
    counts_of_others,
    has_master,
    has_sparse_weight,
    install_state,
    known_device_ids,
    trained_indices,
    trainer_params,
    trainer_updaters,
)
from .atomic import atomic_write, remove_stale_temporaries
from .npz import Member, NpzReader, StateFileError, check_state_array, parse_json
from .optimizer import AdagradScratch
from .quantized import QuantizedAcc, host_copy
from .schema import (
    FORMAT,
    OPTION_DEFAULTS,
    OPTION_NAMES,
    SCALARS,
    VERSION,
    Entry,
    check_count,
    check_meta,
    class_path,
    optimizer_options,
    scalar_attributes,
)
from .torch_interop import load_torch_state_dict, to_torch_state_dict

# 'meta' is a 0-d str array (4 bytes a character): room for the options and, per parameter, an
# entry with its name
META_BYTES = 4 * 16384
META_BYTES_PER_PARAM = 4 * 1024


@dataclass(frozen=True)
class SavedStates:
    """The contents of one states file: ``meta``'s fields and, once read, the arrays."""

    path: Path
    optimizer: str | None  # the optimizer's class, as ``module.QualName`` (None: version 1)
    options: dict
    scheduler: dict | None  # the lr_scheduler's class and scalar attributes, if it had one
    num_update: int
    token: str  # an id the writer was given, so a reader can tell this save from older ones
    params: dict[int, Entry]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def counts(self) -> dict[int, int]:
        """Updates so far, per parameter index (key)."""
        return {index: entry.update_count for index, entry in self.params.items()}

    @property
    def decay(self) -> dict[int, tuple[float, np.ndarray]]:
        """``{index: (log_sum, marks)}`` of the parameters with lazy weight decay pending."""
        return {index: (entry.decay, self.arrays[f"decay/{index}"])
                for index, entry in self.params.items() if entry.decay is not None}

    @property
    def states(self) -> dict[int, np.ndarray | tuple[np.ndarray, np.ndarray]]:
        """Each parameter's state as the optimizer keeps it: the accumulator, or
        ``(master, accumulator)``."""
        return {index: (self.arrays[f"master/{index}"], self.accumulator(index))
                if entry.master else self.accumulator(index)
                for index, entry in self.params.items()}

    def accumulator(self, index: int) -> np.ndarray | QuantizedAcc:
        """Parameter ``index``'s accumulator: an array, or the codes and scales of an 8-bit
        one (numpy arrays)."""
        if self.params[index].state_bits == 8:
            return QuantizedAcc(self.arrays[f"codes/{index}"], self.arrays[f"scales/{index}"])
        return self.arrays[f"acc/{index}"]


# -- writing --------------------------------------------------------------------------------------

def write_states_file(path: str | os.PathLike, optimizer, states: dict[int, tuple], *,
                      names: dict[int, str] | None = None, dtypes: dict[int, str] | None = None,
                      shapes: dict[int, tuple] | None = None, token: str = "") -> None:
    """Write ``states`` (``{index: (master or None, acc, update count)}``, numpy arrays) of
    ``optimizer`` to ``path`` atomically, with their pending lazy weight decay (an
    ``adagrad_scratch`` optimizer's :meth:`~.optimizer.AdagradScratch.lazy_decay_marks`).
    ``names``, ``dtypes`` and ``shapes`` are the parameters' (by default ``str(index)`` and as
    the arrays tell: see the module docstring; a row-wise accumulator tells only the number of
    rows)."""
    arrays: dict[str, np.ndarray] = {}
    params = []
    decay = optimizer.lazy_decay_marks() if isinstance(optimizer, AdagradScratch) else {}
    for index, (master, acc, count) in sorted(states.items()):
        quantized = isinstance(acc, QuantizedAcc)
        if quantized:
            arrays[f"codes/{index}"], arrays[f"scales/{index}"] = acc.codes, acc.scales
        else:
            arrays[f"acc/{index}"] = acc
        if master is not None:
            arrays[f"master/{index}"] = master
        dtype = "float16" if master is not None else np.dtype(acc.dtype).name
        params.append({"index": index, "name": (names or {}).get(index, str(index)),
                       "shape": list((shapes or {}).get(index, (acc if master is None
                                                                 else master).shape)),
                       "dtype": (dtypes or {}).get(index, dtype),
                       "update_count": int(count), "master": master is not None,
                       **({"state_bits": 8} if quantized else {})})
        if index in decay:
            params[-1]["decay"], arrays[f"decay/{index}"] = decay[index]
    scheduler = optimizer.lr_scheduler
    meta = {"format": FORMAT, "version": VERSION, "optimizer": class_path(optimizer),
            "options": optimizer_options(optimizer),
            "scheduler": None if scheduler is None else {
                "class": class_path(scheduler), "attributes": scalar_attributes(scheduler)},
            "num_update": int(optimizer.num_update), "token": token, "params": params}
    atomic_write(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays))


# -- reading --------------------------------------------------------------------------------------

def read_states_file(path: str | os.PathLike, *, what: str,
                     meta_bytes: int | None = None, max_expansion: float | None = None,
                     check: Callable[[SavedStates], None] | None = None,
                     arrays: bool = True) -> SavedStates:
    """Read a file of this schema; ``check(saved)`` (``saved`` without arrays) may refuse it
    before any array is read; ``arrays=False`` reads ``meta`` only (no array is read or
    checked). Each array must have exactly the shape and dtype its entry
    declares, finite, an accumulator ``>= 0``; no other array may be in the file.

    ``meta`` may hold at most ``meta_bytes`` (any amount if ``None``), all arrays together
    at most ``max_expansion`` times the file's size (see :class:`NpzReader`). A malformed file
    raises :class:`StateFileError` (an ``OSError``), a file of another kind or content that
    breaks the schema ``ValueError``, each naming the file and ``what`` it should be."""
    path = Path(path)
    members = {"meta": Member("U", meta_bytes, shape=())}
    with NpzReader(path, members.get, what=what, max_expansion=max_expansion) as npz:
        saved = _read_meta(path, npz, what)
        if check is not None:
            check(saved)
        if not arrays:
            return saved
        for entry in saved.params.values():
            members.update(entry.members(rowwise=bool(saved.options.get("rowwise"))))
        expected = set(members) - {"meta"}
        unexpected = set(npz.names) - set(members)
        if unexpected:
            raise ValueError(f"{path}: unexpected arrays {sorted(unexpected)}")
        for key in sorted(expected - set(npz.names)):
            index = int(key.partition("/")[2])
            raise ValueError(f"{path}: the state of parameter #{index} "
                             f"({saved.params[index].name}) is missing")
        arrays = {key: _checked_array(f"{path}: {key}", key, npz.read(key))
                  for key in sorted(expected)}
    _check_decay_marks(saved, arrays)
    return replace(saved, arrays=arrays)


def _checked_array(source: str, key: str, array: np.ndarray) -> np.ndarray:
    """A member read from a states file, checked (8-bit codes: any uint8 value is a code)."""
    if key.startswith("codes/"):
        return array
    return check_state_array(source, array, accumulator=key.startswith(("acc/", "scales/")))


def _check_decay_marks(saved: SavedStates, arrays: dict[str, np.ndarray]) -> None:
    """Each row's mark of lazy weight decay lies between its parameter's ``decay`` and 0 (a
    row cannot have decayed further than its parameter, nor grown)."""
    for index, entry in saved.params.items():
        marks = arrays.get(f"decay/{index}")
        if marks is not None and ((marks > 0).any() or (marks < entry.decay).any()):
            raise ValueError(f"{saved.path}: decay/{index} holds marks outside "
                             f"[{entry.decay!r}, 0]: not the lazy weight decay of parameter "
                             f"#{index} ({entry.name})")


def _read_meta(path: Path, npz: NpzReader, what: str) -> SavedStates:
    if "meta" not in npz.names:
        old = " (it looks like a checkpoint in the retired 'adagrad_gluon.optimizer_states' " \
            "format: save the states again)" if "format" in npz.names else ""
        raise ValueError(f"{path} has no 'meta' entry: not an {what}{old}")
    meta = check_meta(path, what, parse_json(f"{path}: its 'meta' entry", str(npz.read("meta"))))
    params = {}
    for raw in meta["params"]:
        entry = Entry.from_meta(path, raw)
        if entry.index in params:
            raise ValueError(f"{path}: parameter #{entry.index} ({entry.name}) has two entries")
        params[entry.index] = entry
    num_update = check_count(f"{path}: num_update", meta.get("num_update"))
    largest = max((entry.update_count for entry in params.values()), default=0)
    if num_update < largest:
        raise ValueError(f"{path}: num_update {num_update} is less than the largest update "
                         f"count of a parameter ({largest}): the counts are inconsistent")
    options = {**OPTION_DEFAULTS, **meta["options"]}
    if options["rowwise"] and any(entry.state_bits == 8 for entry in params.values()):
        raise ValueError(f"{path}: 8-bit accumulators in a file of rowwise=True, whose "
                         f"accumulators are float32 (one per row)")
    return SavedStates(path=path, optimizer=meta["optimizer"], options=options,
                       scheduler=meta["scheduler"], token=meta["token"], params=params,
                       num_update=num_update)


# -- resuming ------------------------------------------------------------------------------------

def check_resumable(saved: SavedStates, optimizer, *, check_options: bool = True) -> None:
    """``ValueError`` if ``optimizer`` cannot continue from ``saved``: another class, or (with
    ``check_options``) other numerics options (:data:`OPTION_NAMES`; see the module
    docstring for what may change)."""
    if saved.optimizer is not None and saved.optimizer != class_path(optimizer):
        raise ValueError(f"{saved.path} holds the states of a {saved.optimizer}, not of the "
                         f"{class_path(optimizer)} being trained")
    if not check_options:
        return
    current = optimizer_options(optimizer)
    differ = {k: (saved.options.get(k), current[k]) for k in OPTION_NAMES
              if saved.options.get(k) != current[k]}
    if differ:
        listing = ", ".join(f"{k}: saved {a!r:.80}, trainer {b!r}"
                            for k, (a, b) in differ.items())
        raise ValueError(f"{saved.path} was saved under other optimizer options ({listing}); "
                         f"create the trainer with the saved options to resume")


def _same_kind(saved, current) -> bool:
    """``saved`` may replace ``current``: a finite number for a number (int and float mix;
    a bool is not a number), else a value of the same type."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if number(current):
        return number(saved) and math.isfinite(saved)
    return type(saved) is type(current)


def scheduler_updates(optimizer, saved: SavedStates) -> dict:
    """The saved ``lr_scheduler`` attributes that :func:`restore_scheduler` sets (none if
    there is no scheduler of the saved class): those the current scheduler has; ``ValueError``
    naming the file if a scalar is not of the current attribute's type or not finite."""
    scheduler = optimizer.lr_scheduler
    if saved.scheduler is None or scheduler is None \
            or saved.scheduler["class"] != class_path(scheduler):
        return {}
    current = scalar_attributes(scheduler)
    updates = {name: value for name, value in saved.scheduler["attributes"].items()
               if name in current and isinstance(value, SCALARS)}
    for name, value in updates.items():
        if not _same_kind(value, current[name]):
            raise ValueError(f"{saved.path}: the lr_scheduler's {name!r} is {value!r:.80} in "
                             f"the file, which cannot replace the trainer's {current[name]!r}")
    return updates


def restore_lazy_decay(optimizer, saved: SavedStates) -> None:
    """Give each of the ``adagrad_scratch`` optimizer's parameters in ``saved`` (on every
    device it counts updates for) the lazy weight decay pending in the file: none for a
    parameter saved without (its rows were up to date)."""
    if not isinstance(optimizer, AdagradScratch):
        return
    decay = saved.decay
    for index in saved.params:
        optimizer.restore_lazy_decay_marks(index, known_device_ids(optimizer), decay.get(index))


def restore_scheduler(optimizer, saved: SavedStates) -> None:
    """Continue the optimizer's ``lr_scheduler`` from the saved one, if it has the same
    class (another class starts its own schedule): its public scalar attributes (those it
    has; nothing else is set) take the saved values, checked by :func:`scheduler_updates`."""
    for name, value in scheduler_updates(optimizer, saved).items():
        setattr(optimizer.lr_scheduler, name, value)


# -- a gluon.Trainer's states ---------------------------------------------------------------------

def save_states(trainer: gluon.Trainer, path: str | os.PathLike) -> None:
    """Write the trainer's ``adagrad_scratch`` states to ``path`` (``.npz``, atomically)."""
    optimizer, states = collect_states(trainer)
    params = trainer_params(trainer)
    write_states_file(path, optimizer, {
        index: (None if master is None else master.asnumpy(), host_copy(acc), count)
        for index, (master, acc, count) in states.items()},
        names={i: params[i].name for i in states},
        dtypes={i: np.dtype(params[i].dtype).name for i in states},
        shapes={i: tuple(params[i].shape) for i in states})


def _check_entries(saved: SavedStates, trainer: gluon.Trainer, optimizer,
                   check_names: bool) -> None:
    """Each of the file's parameter entries matches the trainer's parameter."""
    params = trainer_params(trainer)
    for index, entry in saved.params.items():
        if index >= len(params):
            raise ValueError(f"{saved.path}: state for parameter #{index}, but the trainer has "
                             f"{len(params)} parameters")
        param, dtype = params[index], np.dtype(params[index].dtype).name
        if check_names and entry.name != param.name:
            raise ValueError(f"{saved.path}: parameter #{index} is {entry.name!r} in the file "
                             f"but {param.name!r} in the trainer (check_names=False to accept)")
        if entry.shape != tuple(param.shape) or entry.dtype != dtype:
            raise ValueError(f"{saved.path}: parameter #{index} ({param.name}) is "
                             f"{entry.shape} {entry.dtype} in the file but "
                             f"{tuple(param.shape)} {dtype} in the trainer")
        bits = 32 if dtype == "float64" or has_sparse_weight(param) \
            else getattr(optimizer, "state_bits", 32)
        if entry.state_bits != bits:
            raise ValueError(f"{saved.path}: parameter #{index} ({param.name}) has a "
                             f"{entry.state_bits}-bit accumulator in the file but state_bits="
                             f"{bits} in the trainer")
        if entry.master != has_master(optimizer, param):
            raise ValueError(f"{saved.path}: parameter #{index} ({param.name}) has "
                             f"{'a' if entry.master else 'no'} float32 master weight in the "
                             f"file, unlike in the trainer")


def check_for_trainer(saved: SavedStates, trainer: gluon.Trainer, *, check_names: bool = True,
                      partial: bool = False, check_options: bool = True) -> None:
    """``ValueError`` unless ``saved`` (its ``meta``) can be loaded into ``trainer``: the
    optimizer (:func:`check_resumable`) and scheduler (:func:`scheduler_updates`) can continue
    from it, each entry matches the trainer's parameter of its index (name, shape, dtype,
    master weight) and, unless ``partial``, every parameter the trainer updates has one."""
    optimizer, _ = trainer_updaters(trainer)
    check_resumable(saved, optimizer, check_options=check_options)
    scheduler_updates(optimizer, saved)
    _check_entries(saved, trainer, optimizer, check_names)
    params = trainer_params(trainer)
    missing = [params[i].name for i in trained_indices(trainer) if i not in saved.params]
    if missing and not partial:
        raise ValueError(f"{saved.path} holds no state for {len(missing)} of the trainer's "
                         f"parameters: {', '.join(missing)} (partial=True loads the others "
                         f"and leaves these as they are)")


def load_states(trainer: gluon.Trainer, path: str | os.PathLike, *,
                check_names: bool = True, partial: bool = False) -> None:
    """Restore states written by :func:`save_states` into ``trainer``.

    Refuses (``ValueError``, naming what differs) a file saved by another optimizer class or
    under other numerics options (see :func:`check_resumable`), for other parameters (names,
    shapes, dtypes), with arrays of the wrong shape or dtype, with two entries for one
    parameter, or without the state of every parameter the trainer updates: ``partial=True``
    loads such a file's states and leaves the other parameters' as they are.
    ``check_names=False`` accepts parameters whose names differ only because Gluon numbered
    them differently (``dense0_weight`` vs ``dense3_weight``). A scheduler of the saved class
    continues from the saved one (:func:`restore_scheduler`).

    The file is read within budgets computed from the trainer (see :class:`NpzReader`): one
    that is not a regular file, not a zip archive, truncated, corrupt or made to exhaust
    memory raises ``OSError`` (:class:`StateFileError`) or ``ValueError`` naming it. Nothing
    is installed unless all of it is valid.
    """
    optimizer, _ = trainer_updaters(trainer)
    saved = read_states_file(
        path, what="adagrad_gluon state file",
        meta_bytes=META_BYTES + META_BYTES_PER_PARAM * len(trainer_params(trainer)),
        check=lambda s: check_for_trainer(s, trainer, check_names=check_names, partial=partial))
    for index, entry in saved.params.items():
        install_state(trainer, optimizer, index, saved.arrays.get(f"master/{index}"),
                      saved.accumulator(index), entry.update_count)
    # the largest update count, as the optimizer keeps it; a partial load keeps the counts of
    # the parameters it left
    kept = counts_of_others(optimizer, saved.params) if partial else []
    optimizer.num_update = max([saved.num_update, *kept])
    restore_lazy_decay(optimizer, saved)
    restore_scheduler(optimizer, saved)


__all__ = ["FORMAT", "VERSION", "OPTION_NAMES", "SavedStates", "StateFileError",
           "atomic_write", "check_for_trainer", "check_resumable", "load_states",
           "load_torch_state_dict",
           "optimizer_options", "read_states_file", "remove_stale_temporaries",
           "restore_lazy_decay", "restore_scheduler", "save_states", "to_torch_state_dict",
           "trainer_updaters", "write_states_file"]
