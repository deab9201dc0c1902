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

from .optimizer import AdagradScratch, accumulator_dtype

FORMAT = "adagrad_gluon.states"
VERSION = 1
OPTION_NAMES = ("compat", "eps", "eps_placement", "initial_accumulator_value", "lr_decay",
                "weight_decay_mode", "maximize", "multi_precision")


def optimizer_options(optimizer: AdagradScratch) -> dict[str, object]:
    """The options that decide what the saved numbers mean."""
    return {name: getattr(optimizer, name) for name in OPTION_NAMES}


def trainer_updaters(trainer: gluon.Trainer) -> tuple[AdagradScratch, list]:
    """The ``adagrad_scratch`` optimizer of ``trainer`` and the updaters that hold its states:
    one per device, or the kvstore's when the trainer updates on the kvstore. Initialises the
    trainer's kvstore and parameters if needed. ``TypeError`` for another optimizer,
    ``ValueError`` when the states live on parameter servers."""
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
    optimizer, updaters = trainer_updaters(trainer)
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
    _, updaters = trainer_updaters(trainer)
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


def check_state_array(source: str, array, *, shape: tuple | None = None, dtype=None,
                      accumulator: bool = False) -> np.ndarray:
    """``array`` as a numpy array if it is a finite float array (of ``shape`` and ``dtype``,
    if given; ``>= 0`` if it is an ``accumulator``); else ``ValueError`` naming ``source``."""
    array = np.asarray(array)
    if array.dtype.kind != "f" or (dtype is not None and array.dtype != np.dtype(dtype)):
        wanted = np.dtype(dtype).name if dtype is not None else "a float dtype"
        raise ValueError(f"{source} has dtype {array.dtype.name}, expected {wanted}")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{source} has shape {array.shape}, expected {tuple(shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{source} holds NaN or infinite values")
    if accumulator and (array < 0).any():
        raise ValueError(f"{source} holds negative values: not a sum of squared gradients")
    return array


def _check_count(source: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{source} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_entry(path: Path, entry, num_params: int) -> dict:
    """One ``meta['params']`` entry, with the types the schema says."""
    fields = {"index": int, "name": str, "shape": list, "dtype": str, "update_count": int}
    if not isinstance(entry, dict) or any(
            not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
            for k, t in fields.items()):
        raise ValueError(f"{path}: a parameter entry must have {', '.join(fields)} of types "
                         f"{', '.join(t.__name__ for t in fields.values())}; got {entry!r:.200}")
    if not 0 <= entry["index"] < num_params:
        raise ValueError(f"{path}: state for parameter #{entry['index']}, but the trainer has "
                         f"{num_params} parameters")
    _check_count(f"{path}: update_count of parameter #{entry['index']}", entry["update_count"])
    return entry


def load_states(trainer: gluon.Trainer, path: str | os.PathLike, *,
                check_names: bool = True) -> None:
    """Restore states written by :func:`save_states` into ``trainer``.

    Refuses (``ValueError``, naming what differs) a file saved under other optimizer options,
    for other parameters (count, names, shapes, dtypes), or with arrays of the wrong shape or
    dtype. ``check_names=False`` accepts parameters whose names differ only because Gluon
    numbered them differently (``dense0_weight`` vs ``dense3_weight``).
    """
    path = Path(path)
    optimizer, _ = trainer_updaters(trainer)
    meta, arrays = _read(path)
    saved, current = meta.get("options", {}), optimizer_options(optimizer)
    differ = {k: (saved.get(k), current[k]) for k in OPTION_NAMES if saved.get(k) != current[k]}
    if differ:
        listing = ", ".join(f"{k}: saved {a!r}, trainer {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"{path} was saved under other optimizer options ({listing}); create "
                         f"the trainer with the saved options to resume")
    entries = meta.get("params")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'params' must be a list, got {entries!r:.80}")
    num_update = _check_count(f"{path}: num_update", meta.get("num_update"))
    expected_keys = set()
    for entry in entries:
        index = _check_entry(path, entry, len(trainer._params))["index"]
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
        if f"acc/{index}" not in arrays or (has_master and f"master/{index}" not in arrays):
            raise ValueError(f"{path}: the state of parameter #{index} ({param.name}) is missing")
        check_state_array(f"{path}: acc/{index}", arrays[f"acc/{index}"], shape=param.shape,
                          dtype=accumulator_dtype(param.dtype), accumulator=True)
        if has_master:
            check_state_array(f"{path}: master/{index}", arrays[f"master/{index}"],
                              shape=param.shape, dtype=np.float32)
    if set(arrays) != expected_keys:
        raise ValueError(f"{path}: unexpected arrays {sorted(set(arrays) - expected_keys)}")
    for entry in entries:
        index = entry["index"]
        _install(trainer, optimizer, index, arrays.get(f"master/{index}"),
                 arrays[f"acc/{index}"], entry["update_count"])
    optimizer.num_update = num_update


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
    optimizer, states = _collect(trainer)
    order = _torch_order(trainer, params)
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


def _numpy(value) -> np.ndarray:
    """A torch tensor (on any device) or array-like as a numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# torch's name -> ours, for the options whose difference changes what the state means
_TORCH_OPTIONS = {"eps": "eps", "lr_decay": "lr_decay", "weight_decay": "wd",
                  "initial_accumulator_value": "initial_accumulator_value"}


def load_torch_state_dict(trainer: gluon.Trainer, state_dict: dict, params=None) -> None:
    """Load a ``torch.optim.Adagrad`` ``state_dict`` (one param group) into ``trainer``.

    ``params`` as in :func:`to_torch_state_dict`. Each ``sum`` must be a finite, non-negative
    float array of the matching parameter's shape and each ``step`` an integer >= 0 (it
    becomes that parameter's update count, so ``lr_decay`` continues where PyTorch left off);
    anything else raises ``ValueError``. Warns if the state was made under other options
    (``eps``, ``lr_decay``, ``weight_decay``, ``initial_accumulator_value``) than the
    trainer's optimizer has.
    """
    optimizer, _ = trainer_updaters(trainer)
    order = _torch_order(trainer, params)
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        raise ValueError("expected a torch.optim.Adagrad state_dict: a dict whose 'state' is a "
                         "dict of {parameter number: {'step', 'sum'}}")
    groups = state_dict.get("param_groups") or [{}]
    differ = {theirs: (groups[0][theirs], getattr(optimizer, ours))
              for theirs, ours in _TORCH_OPTIONS.items()
              if theirs in groups[0] and groups[0][theirs] != getattr(optimizer, ours)}
    if differ:
        listing = ", ".join(f"{k}: saved {a!r}, trainer {b!r}" for k, (a, b) in differ.items())
        warnings.warn(f"the PyTorch state was made under other options ({listing}); training "
                      f"continues with the trainer's", stacklevel=2)
    updates = []
    for key, entry in state_dict["state"].items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) \
                or not 0 <= key < len(order):
            raise ValueError(f"state_dict has state for parameter {key!r}, but the trainer has "
                             f"parameters 0..{len(order) - 1}")
        if not isinstance(entry, dict) or not {"sum", "step"} <= set(entry):
            raise ValueError(f"state_dict state #{key} must be a dict with 'sum' and 'step'")
        index = order[key]
        param = trainer._params[index]
        source = f"state_dict 'sum' of parameter #{key} ({param.name})"
        acc = check_state_array(source, _numpy(entry["sum"]), shape=param.shape,
                                accumulator=True)
        step = _numpy(entry["step"])
        if step.shape != () or not np.isfinite(step) or step < 0 or step != int(step):
            raise ValueError(f"state_dict 'step' of parameter #{key} must be an integer >= 0, "
                             f"got {step!r}")
        master = None
        if optimizer.multi_precision and np.dtype(param.dtype) == np.float16:
            master = param.data().astype(np.float32).asnumpy()
        updates.append((index, master, acc.astype(accumulator_dtype(param.dtype)), int(step)))
    for update in updates:  # all checked before any is installed
        _install(trainer, optimizer, *update)


__all__ = ["save_states", "load_states", "to_torch_state_dict", "load_torch_state_dict",
           "optimizer_options"]
