"""Optimizer state in and out of a ``gluon.Trainer`` that uses ``adagrad_scratch``.

Two formats:

* :func:`save_states` / :func:`load_states`: a safe ``.npz`` file (no pickle; loaded with
  ``allow_pickle=False``) with an explicit schema: ``meta`` (JSON: format name, version, the
  optimizer's options, update counts, parameter names, shapes and dtypes) and one array per
  accumulator (``acc/<index>``) and float32 master weight (``master/<index>``). Loading checks
  all of it against the trainer and refuses a mismatch with a ``ValueError`` that names it:
  resuming under other numerics (another ``eps`` placement, preset, ...) is never silent.
  Writes are atomic: a temporary file renamed over the target.
* :func:`to_torch_state_dict` / :func:`load_torch_state_dict`: PyTorch's
  ``torch.optim.Adagrad`` ``state_dict`` layout (``state[i] = {'step', 'sum'}`` and one param
  group), to move a half-trained model between frameworks.

``Trainer.save_states`` / ``load_states`` work too (they pickle the whole optimizer, and
``load_states`` replaces the trainer's optimizer, options included, with the saved one).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from mxnet import gluon, nd

from .optimizer import AdagradScratch

FORMAT = "adagrad_gluon.states"
VERSION = 1
OPTION_NAMES = ("compat", "eps", "eps_placement", "initial_accumulator_value", "lr_decay",
                "weight_decay_mode", "maximize", "multi_precision")


def optimizer_options(optimizer: AdagradScratch) -> dict[str, object]:
    """The options that decide what the saved numbers mean."""
    return {name: getattr(optimizer, name) for name in OPTION_NAMES}


def _adagrad_trainer(trainer: gluon.Trainer) -> tuple[AdagradScratch, list]:
    """The trainer's optimizer and the updaters that hold its states (initialising them)."""
    if not isinstance(trainer, gluon.Trainer):
        raise TypeError(f"expected a gluon.Trainer, got {type(trainer).__name__}")
    if not isinstance(trainer._optimizer, AdagradScratch):
        raise TypeError(f"the trainer's optimizer is {type(trainer._optimizer).__name__}, "
                        f"not adagrad_scratch")
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    if trainer._update_on_kvstore:
        kvstore = trainer._kvstore
        if "dist" in kvstore.type:
            raise ValueError("with a distributed kvstore and update_on_kvstore=True the states "
                             "live on the servers: use adagrad_gluon.distributed's checkpoints")
        return trainer._optimizer, [kvstore._updater]
    return trainer._optimizer, trainer._updaters


def _split(state) -> tuple[nd.NDArray | None, nd.NDArray]:
    return (state[0], state[1]) if isinstance(state, (tuple, list)) else (None, state)


def _device_ids(trainer: gluon.Trainer) -> list[int]:
    return sorted({ctx.device_id for ctx in trainer._contexts})


def _collect(trainer: gluon.Trainer):
    """``(optimizer, {index: (master, acc, update count)})`` for every parameter with a state."""
    optimizer, updaters = _adagrad_trainer(trainer)
    counts = optimizer._all_index_update_counts.get(_device_ids(trainer)[0], {})
    states = {}
    for index, state in sorted(updaters[0].states.items()):
        master, acc = _split(state)
        states[int(index)] = (master, acc, int(counts.get(index, optimizer.begin_num_update)))
    return optimizer, states


def _install(trainer: gluon.Trainer, optimizer: AdagradScratch, index: int,
             master: np.ndarray | None, acc: np.ndarray, count: int) -> None:
    """Give parameter ``index`` this state (on every context) and this update count."""
    param = trainer._params[index]
    _, updaters = _adagrad_trainer(trainer)
    for updater, ctx in zip(updaters, param.list_ctx(), strict=False):
        acc_nd = nd.array(acc, ctx=ctx, dtype=acc.dtype)
        state = acc_nd if master is None else (nd.array(master, ctx=ctx, dtype=master.dtype),
                                               acc_nd)
        updater.states[index] = state
        updater.states_synced[index] = True
    for device_id in _device_ids(trainer):
        optimizer._all_index_update_counts.setdefault(device_id, {})[index] = count
    optimizer.num_update = max(optimizer.num_update, count)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``:
    a reader (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_states(trainer: gluon.Trainer, path: str | os.PathLike) -> None:
    """Write the trainer's ``adagrad_scratch`` states to ``path`` (``.npz``, atomically)."""
    optimizer, states = _collect(trainer)
    arrays: dict[str, np.ndarray] = {}
    params = []
    for index, (master, acc, count) in states.items():
        param = trainer._params[index]
        arrays[f"acc/{index}"] = acc.asnumpy()
        if master is not None:
            arrays[f"master/{index}"] = master.asnumpy()
        params.append({"index": index, "name": param.name, "shape": list(param.shape),
                       "dtype": np.dtype(param.dtype).name, "update_count": count})
    meta = {"format": FORMAT, "version": VERSION, "options": optimizer_options(optimizer),
            "num_update": optimizer.num_update, "params": params}
    atomic_write(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays))


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # not an npz,
        # truncated, or holding pickled objects (refused by allow_pickle=False)
        raise OSError(f"{path} is not a readable adagrad_gluon state file: {exc}") from exc
    if "meta" not in arrays:
        raise ValueError(f"{path} has no 'meta' entry: not an adagrad_gluon state file")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: its 'meta' entry is not JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an adagrad_gluon state file (format {meta!r:.80})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has state format version {meta.get('version')!r}; "
                         f"this adagrad_gluon reads version {VERSION}")
    return meta, arrays


def load_states(trainer: gluon.Trainer, path: str | os.PathLike, *,
                check_names: bool = True) -> None:
    """Restore states written by :func:`save_states` into ``trainer``.

    Refuses (``ValueError``, naming what differs) a file saved under other optimizer options,
    for other parameters (count, names, shapes, dtypes), or with arrays of the wrong shape or
    dtype. ``check_names=False`` accepts parameters whose names differ only because Gluon
    numbered them differently (``dense0_weight`` vs ``dense3_weight``).
    """
    path = Path(path)
    optimizer, _ = _adagrad_trainer(trainer)
    meta, arrays = _read(path)
    saved, current = meta.get("options", {}), optimizer_options(optimizer)
    differ = {k: (saved.get(k), current[k]) for k in OPTION_NAMES if saved.get(k) != current[k]}
    if differ:
        listing = ", ".join(f"{k}: saved {a!r}, trainer {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"{path} was saved under other optimizer options ({listing}); create "
                         f"the trainer with the saved options to resume")
    entries = meta.get("params", [])
    expected_keys = set()
    for entry in entries:
        index = entry["index"]
        if not 0 <= index < len(trainer._params):
            raise ValueError(f"{path}: state for parameter #{index}, but the trainer has "
                             f"{len(trainer._params)} parameters")
        param = trainer._params[index]
        if check_names and entry["name"] != param.name:
            raise ValueError(f"{path}: parameter #{index} is {entry['name']!r} in the file but "
                             f"{param.name!r} in the trainer (check_names=False to accept)")
        if tuple(entry["shape"]) != tuple(param.shape) or entry["dtype"] != np.dtype(
                param.dtype).name:
            raise ValueError(f"{path}: parameter #{index} ({param.name}) is "
                             f"{tuple(entry['shape'])} {entry['dtype']} in the file but "
                             f"{tuple(param.shape)} {np.dtype(param.dtype).name} in the trainer")
        expected_keys.add(f"acc/{index}")
        has_master = optimizer.multi_precision and np.dtype(param.dtype) == np.float16
        if has_master:
            expected_keys.add(f"master/{index}")
        for key in (f"acc/{index}", f"master/{index}") if has_master else (f"acc/{index}",):
            array = arrays.get(key)
            if array is None or array.shape != tuple(param.shape) or array.dtype.kind != "f":
                raise ValueError(f"{path}: {key} should be a float array of shape "
                                 f"{tuple(param.shape)}, got "
                                 f"{None if array is None else (array.shape, array.dtype)}")
    if set(arrays) != expected_keys:
        raise ValueError(f"{path}: unexpected arrays {sorted(set(arrays) - expected_keys)}")
    for entry in entries:
        index = entry["index"]
        _install(trainer, optimizer, index, arrays.get(f"master/{index}"),
                 arrays[f"acc/{index}"], int(entry["update_count"]))
    optimizer.num_update = int(meta["num_update"])


def _torch_order(trainer: gluon.Trainer, params) -> list[int]:
    """Trainer index of each PyTorch parameter index."""
    if params is None:
        return list(range(len(trainer._params)))
    position = {id(p): i for i, p in enumerate(trainer._params)}
    missing = [getattr(p, "name", p) for p in params if id(p) not in position]
    if missing:
        raise ValueError(f"params must be the trainer's Parameters; not in it: {missing}")
    return [position[id(p)] for p in params]


def to_torch_state_dict(trainer: gluon.Trainer, params=None) -> dict:
    """The trainer's optimizer state in ``torch.optim.Adagrad``'s ``state_dict`` layout.

    ``params`` lists the trainer's Parameters in the order of the PyTorch model's
    ``parameters()``; by default the trainer's own order (``gluon.Trainer`` sorts by name, so
    a Dense layer's bias comes before its weight, unlike ``torch.nn.Linear``). Values are torch
    tensors if torch is importable, numpy arrays otherwise. Warns if the optimizer's numerics
    are not PyTorch's (eps outside the root, L2 weight decay).
    """
    order = _torch_order(trainer, params)
    optimizer, states = _collect(trainer)
    if optimizer.eps_placement != "outside" or (optimizer.wd and
                                                optimizer.weight_decay_mode != "l2"):
        warnings.warn("exporting adagrad_scratch state whose numerics differ from PyTorch's "
                      "(use compat='pytorch' for an exact match); the accumulator and step "
                      "count mean the same", stacklevel=2)
    try:
        import torch

        def tensor(a):
            return torch.from_numpy(np.array(a))
    except ImportError:
        def tensor(a):
            return np.array(a)
    state = {}
    for i, index in enumerate(order):
        if index in states:
            _, acc, count = states[index]
            state[i] = {"step": tensor(np.float32(count)), "sum": tensor(acc.asnumpy())}
    group = {"lr": optimizer.lr, "lr_decay": optimizer.lr_decay, "weight_decay": optimizer.wd,
             "initial_accumulator_value": optimizer.initial_accumulator_value,
             "eps": optimizer.eps, "foreach": None, "maximize": optimizer.maximize,
             "differentiable": False, "fused": None,
             "params": list(range(len(order)))}
    return {"state": state, "param_groups": [group]}


def load_torch_state_dict(trainer: gluon.Trainer, state_dict: dict, params=None) -> None:
    """Load a ``torch.optim.Adagrad`` ``state_dict`` (one param group) into ``trainer``.

    ``params`` as in :func:`to_torch_state_dict`. Each ``sum`` must have the shape of the
    matching parameter; ``step`` becomes that parameter's update count, so ``lr_decay``
    continues where PyTorch left off.
    """
    order = _torch_order(trainer, params)
    optimizer, _ = _adagrad_trainer(trainer)
    if not isinstance(state_dict, dict) or "state" not in state_dict:
        raise ValueError("expected a torch.optim.Adagrad state_dict with a 'state' entry")
    for key, entry in state_dict["state"].items():
        if not 0 <= int(key) < len(order):
            raise ValueError(f"state_dict has state for parameter #{key}, but the trainer has "
                             f"{len(order)} parameters")
        index = order[int(key)]
        param = trainer._params[index]
        acc = np.asarray(entry["sum"].cpu() if hasattr(entry["sum"], "cpu") else entry["sum"])
        if acc.shape != tuple(param.shape):
            raise ValueError(f"state_dict 'sum' for parameter #{index} ({param.name}) has shape "
                             f"{acc.shape}, the parameter {tuple(param.shape)}")
        step = float(np.asarray(entry["step"]))
        master = None
        if optimizer.multi_precision and np.dtype(param.dtype) == np.float16:
            master = param.data().astype(np.float32).asnumpy()
        dtype = np.float64 if np.dtype(param.dtype) == np.float64 else np.float32
        _install(trainer, optimizer, index, master, acc.astype(dtype), int(step))


__all__ = ["save_states", "load_states", "to_torch_state_dict", "load_torch_state_dict",
           "optimizer_options"]
