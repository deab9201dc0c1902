"""PyTorch interop: an ``adagrad_scratch`` trainer's state in ``torch.optim.Adagrad``'s
``state_dict`` layout (``state[i] = {'step', 'sum'}`` and one param group) and back, to move a
half-trained model between frameworks. torch is optional: without it the values are numpy
arrays. A row-wise (``rowwise=True``) state has no ``torch.optim`` equivalent; it moves to and
from FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` instead (the layout of
``SplitTableBatchedEmbeddingBagsCodegen.split_optimizer_states()``: per table, a list holding
its ``momentum1``, a float32 array of shape ``(rows,)``), as numpy arrays."""

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
    _refuse_rowwise(optimizer)
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


def _refuse_rowwise(optimizer) -> None:
    """``ValueError`` for a row-wise optimizer: ``torch.optim.Adagrad`` has no such state."""
    if optimizer.rowwise:
        raise ValueError("rowwise=True keeps one accumulator per row, which torch.optim.Adagrad "
                         "has no state for: use to_fbgemm_optimizer_states / "
                         "load_fbgemm_optimizer_states (FBGEMM's EXACT_ROWWISE_ADAGRAD)")


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
    _refuse_rowwise(optimizer)
    order = _torch_order(trainer, params)
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        raise ValueError("expected a torch.optim.Adagrad state_dict: a dict whose 'state' is a "
                         "dict of {parameter number: {'step', 'sum'}}")
    _warn_on_other_options(optimizer, _first_group(state_dict))
    updates = [_checked_entry(trainer, optimizer, order, key, entry)
               for key, entry in state_dict["state"].items()]
    for update in updates:  # all checked before any is installed
        install_state(trainer, optimizer, *update)


def _rowwise_tables(trainer: gluon.Trainer, tables) -> tuple:
    """``(optimizer, trainer index of each table)``; ``ValueError`` unless the optimizer is
    row-wise."""
    optimizer, _ = trainer_updaters(trainer)
    if not optimizer.rowwise:
        raise ValueError("FBGEMM's EXACT_ROWWISE_ADAGRAD state is one accumulator per row: "
                         "the trainer's optimizer must have rowwise=True (e.g. "
                         "compat='fbgemm')")
    return optimizer, _torch_order(trainer, tables)


def to_fbgemm_optimizer_states(trainer: gluon.Trainer, tables=None) -> list[list[np.ndarray]]:
    """The row-wise accumulators of ``tables`` (the trainer's Parameters, in the order of the
    FBGEMM module's ``embedding_specs``; by default every parameter of the trainer) in the
    layout of FBGEMM's ``split_optimizer_states()`` for ``EXACT_ROWWISE_ADAGRAD``: one
    ``[momentum1]`` per table, a float32 array of shape ``(rows,)``. Copy each into the
    FBGEMM module's state (``split_optimizer_states()[t][0].copy_(torch.from_numpy(a))``)."""
    _, order = _rowwise_tables(trainer, tables)
    _, states = collect_states(trainer)
    return [[states[index][1].asnumpy().astype(np.float32)] for index in order]


def load_fbgemm_optimizer_states(trainer: gluon.Trainer, states, tables=None) -> None:
    """Load FBGEMM ``EXACT_ROWWISE_ADAGRAD`` accumulators (``split_optimizer_states()``'s
    layout: per table a sequence whose first element is ``momentum1``, torch tensors or
    arrays of shape ``(rows,)``) into the row-wise ``trainer``; ``tables`` as in
    :func:`to_fbgemm_optimizer_states`. Each must be finite, non-negative and of its table's
    row count, and there must be one per table (``ValueError`` otherwise; nothing is loaded
    then). The update counts stay as they are (FBGEMM keeps none)."""
    optimizer, order = _rowwise_tables(trainer, tables)
    if not isinstance(states, (list, tuple)) or len(states) != len(order):
        raise ValueError(f"expected one FBGEMM optimizer state per table ({len(order)}), got "
                         f"{states!r:.80}")
    _, current = collect_states(trainer)
    updates = []
    for t, (index, table) in enumerate(zip(order, states, strict=True)):
        param = trainer_params(trainer)[index]
        if not isinstance(table, (list, tuple)) or len(table) < 1:
            raise ValueError(f"FBGEMM state of table #{t} ({param.name}) must be a list "
                             f"holding its momentum1, got {table!r:.80}")
        source = f"FBGEMM momentum1 of table #{t} ({param.name})"
        acc = check_state_array(source, _numpy(table[0]), shape=param.shape[:1],
                                accumulator=True)
        master = (param.data().astype(np.float32).asnumpy() if has_master(optimizer, param)
                  else None)
        updates.append((index, master, _cast(source, acc, accumulator_dtype(param.dtype)),
                        current[index][2]))
    for update in updates:  # all checked before any is installed
        install_state(trainer, optimizer, *update)


__all__ = ["to_torch_state_dict", "load_torch_state_dict", "to_fbgemm_optimizer_states",
           "load_fbgemm_optimizer_states"]
