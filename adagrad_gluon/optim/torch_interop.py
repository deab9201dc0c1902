"""PyTorch interop: an ``adagrad_scratch`` trainer's state in ``torch.optim.Adagrad``'s
``state_dict`` layout (``state[i] = {'step', 'sum'}`` and one param group) and back, to move a
half-trained model between frameworks. torch is optional: without it the values are numpy
arrays."""

from __future__ import annotations

import warnings

import numpy as np
from mxnet import gluon

from ._gluon import (
    collect_states,
    has_master,
    install_state,
    trainer_params,
    trainer_updaters,
)
from .npz import check_state_array
from .optimizer import accumulator_dtype


def _torch_order(trainer: gluon.Trainer, params) -> list[int]:
    """Trainer index of each PyTorch parameter index."""
    if params is None:
        return list(range(len(trainer_params(trainer))))
    position = {id(p): i for i, p in enumerate(trainer_params(trainer))}
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
    optimizer, states = collect_states(trainer)
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


def _torch_step(source: str, value) -> int:
    """A ``step`` as an int: an integer, or a float holding an integer (PyTorch keeps ``step``
    in a float tensor), >= 0; not a bool or a string."""
    step = _numpy(value)
    if (step.shape != () or step.dtype.kind not in "iuf" or not np.isfinite(step) or step < 0
            or step != np.floor(step)):
        raise ValueError(f"{source} must be an integer >= 0, got {value!r:.80}")
    return int(step)


def _cast(source: str, array: np.ndarray, dtype) -> np.ndarray:
    """``array`` as ``dtype``; ``ValueError`` if a value overflows it."""
    with np.errstate(over="ignore"):
        cast = array.astype(dtype)
    if not np.isfinite(cast).all():
        raise ValueError(f"{source} holds values beyond {np.dtype(dtype).name}'s range "
                         f"(largest {np.finfo(dtype).max:g})")
    return cast


# torch's name -> ours, for the options whose difference changes what the state means
_TORCH_OPTIONS = {"eps": "eps", "lr_decay": "lr_decay", "weight_decay": "wd",
                  "initial_accumulator_value": "initial_accumulator_value"}


def _first_group(state_dict: dict) -> dict:
    """``state_dict['param_groups'][0]`` (``{}`` if there are none): ``ValueError`` unless
    ``param_groups`` is a list of dicts."""
    groups = state_dict.get("param_groups", [])
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise ValueError(f"state_dict 'param_groups' must be a list of dicts, got "
                         f"{groups!r:.80}")
    return groups[0] if groups else {}


def _warn_on_other_options(optimizer, group: dict) -> None:
    """Warn if the PyTorch state was made under other options (``group``'s) than
    ``optimizer``'s."""
    differ = {theirs: (group[theirs], getattr(optimizer, ours))
              for theirs, ours in _TORCH_OPTIONS.items()
              if theirs in group and group[theirs] != getattr(optimizer, ours)}
    if differ:
        listing = ", ".join(f"{k}: saved {a!r}, trainer {b!r}" for k, (a, b) in differ.items())
        warnings.warn(f"the PyTorch state was made under other options ({listing}); training "
                      f"continues with the trainer's", stacklevel=3)


def _checked_entry(trainer: gluon.Trainer, optimizer, order: list[int], key, entry) -> tuple:
    """``(index, master, acc, count)`` for ``install_state`` from PyTorch's state #``key``."""
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) \
            or not 0 <= key < len(order):
        raise ValueError(f"state_dict has state for parameter {key!r}, but the trainer has "
                         f"parameters 0..{len(order) - 1}")
    if not isinstance(entry, dict) or not {"sum", "step"} <= set(entry):
        raise ValueError(f"state_dict state #{key} must be a dict with 'sum' and 'step'")
    index = order[key]
    param = trainer_params(trainer)[index]
    source = f"state_dict 'sum' of parameter #{key} ({param.name})"
    acc = check_state_array(source, _numpy(entry["sum"]), shape=param.shape, accumulator=True)
    master = None
    if has_master(optimizer, param):
        master = param.data().astype(np.float32).asnumpy()
    return (index, master, _cast(source, acc, accumulator_dtype(param.dtype)),
            _torch_step(f"state_dict 'step' of parameter #{key}", entry["step"]))


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
    _warn_on_other_options(optimizer, _first_group(state_dict))
    updates = [_checked_entry(trainer, optimizer, order, key, entry)
               for key, entry in state_dict["state"].items()]
    for update in updates:  # all checked before any is installed
        install_state(trainer, optimizer, *update)


__all__ = ["to_torch_state_dict", "load_torch_state_dict"]
