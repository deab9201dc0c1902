"""The ``nonfinite=`` policy of :class:`~adagrad_gluon.AdagradScratch`: which updates are
safe (a finite gradient whose square does not overflow the accumulator), found in one host
sync per update call, and what ``'skip'`` and ``'raise'`` do about the others."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mxnet import nd

from .checks import Checked, accumulator_dtype, check_arrays, split_state
from .functional import prepared_gradient, row_mean_square
from .options import AdagradOptions, flush_subnormal
from .quantized import dense

NONFINITE_POLICIES = ("propagate", "skip", "raise")


class NonFiniteGradientError(ValueError):
    """Under ``nonfinite='raise'``: a gradient held NaN or infinity, or its square would
    make the accumulator overflow."""


def safe_updates(optimizer, options: AdagradOptions, indices: Sequence,
                 checked: Sequence[Checked], wds: Sequence[float]) -> list[bool]:
    """Which of these updates of ``optimizer`` (under its ``options``) are safe (one host
    sync for the whole list).
    Under ``nonfinite='raise'`` the gradients of the rest of the step (every other gradient of
    ``param_dict``) are checked in the same sync, and an unsafe one anywhere raises
    :class:`NonFiniteGradientError`; under ``'skip'`` each unsafe update of this call is
    counted in ``optimizer.nonfinite_skipped``."""
    probes = [probe(options, c.weight, c.grad, c.acc, c.master, c.row_sparse, wd)
              for c, wd in zip(checked, wds, strict=True)]
    named = list(indices)
    if optimizer.nonfinite == "raise":
        ours = {(i, str(c.weight.context)) for i, c in zip(indices, checked, strict=True)}
        if ours & optimizer._step_updated:  # a new step of the Trainer begins
            optimizer._step_updated.clear()
        for i, rest in _rest_of_step(optimizer, options, ours | optimizer._step_updated):
            named.append(i)
            probes.append(rest)
    safe = np.isfinite(nd.concat(*[p.reshape((1,)) for p in probes], dim=0).asnumpy())
    bad = [i for i, ok in zip(named, safe, strict=True) if not ok]
    if bad and optimizer.nonfinite == "raise":
        names = ", ".join(optimizer._name(i) for i in dict.fromkeys(bad))
        raise NonFiniteGradientError(
            f"non-finite gradient (NaN or infinity), or one whose square overflows the "
            f"accumulator, for parameter(s) {names}; nothing was updated. "
            f"nonfinite='skip' skips such updates instead")
    if optimizer.nonfinite == "raise":
        optimizer._step_updated |= ours
    for i in bad:
        optimizer.nonfinite_skipped[i] = optimizer.nonfinite_skipped.get(i, 0) + 1
    return safe[:len(indices)].tolist()


def probe(options: AdagradOptions, weight, grad, acc, master, row_sparse: bool,
          wd: float) -> nd.NDArray:
    """A float64 scalar: 0 if the gradient is finite and ``s + g * g`` (``g`` as the step
    prepares it, in the accumulator's dtype; with ``rowwise``, ``s + mean_j(g * g)`` per row)
    is finite everywhere, else NaN. ``acc`` None
    stands for an accumulator of zeros (the gradient's own square is checked)."""
    dtype = accumulator_dtype(weight.dtype)
    acc = None if acc is None else dense(acc)
    work = None  # the weight in the accumulator's dtype: needed for 'l2' decay only
    if options.weight_decay_mode == "l2" and wd:
        work = master if master is not None else weight.astype(dtype, copy=False)
    if row_sparse:
        rows, grad = grad.indices, grad.data
        work = None if work is None else nd.take(work, rows)
        acc = None if acc is None else nd.take(acc, rows)
    grad = grad.astype(dtype, copy=False)  # never overflows: dtype is as wide as grad's
    g = prepared_gradient(work, grad, wd=wd, rescale_grad=options.rescale_grad,
                          clip_gradient=options.clip_gradient,
                          weight_decay_mode=options.weight_decay_mode, maximize=options.maximize)
    square = row_mean_square(g) if options.rowwise and g.size else g * g
    if acc is not None:
        square = acc + square
    # x * 0 is 0 for finite x and NaN for NaN or infinity
    return (nd.sum(grad * 0) + nd.sum(square * 0)).astype(np.float64)


def _rest_of_step(optimizer, options: AdagradOptions,
                  updated: set) -> list[tuple[int, nd.NDArray]]:
    """``(index, probe)`` for the gradients of ``optimizer.param_dict`` (set by
    ``gluon.Trainer``) whose ``(index, context)`` is not in ``updated`` (this call's, and those
    updated earlier in this step): the rest of the step, which the Trainer hands over in
    further calls (one per dtype and context). Each is probed against the state its update
    will get (:func:`_trainer_state`), as the update itself would be. A sparse weight is
    updated by its kvstore, in a call of its own, which checks its gradient."""
    from ._gluon import has_sparse_weight  # _gluon imports the optimizer, which imports this

    probes = []
    for i, param in optimizer.param_dict.items():
        if param.grad_req == "null" or has_sparse_weight(param):
            continue
        name = optimizer._name(i)
        wd = flush_subnormal(optimizer._get_wds([i])[0])
        for k, (weight, grad) in enumerate(zip(param.list_data(), param.list_grad(),
                                               strict=True)):
            if (i, str(weight.context)) in updated:
                continue
            state = _trainer_state(optimizer, i, param, k, weight)
            master, acc = split_state(state)
            check_arrays(name, weight, grad, acc, master, rowwise=options.rowwise)
            row_sparse = grad.stype == "row_sparse"
            probes.append((i, probe(options, weight, grad, acc, master, row_sparse, wd)))
    return probes


def _trainer_state(optimizer, index, param, k: int, weight):
    """The state parameter ``index`` has on its ``k``-th context in the ``gluon.Trainer``
    that updates it with ``optimizer`` (the one its update will be given); a new one as the
    Trainer will create it if it has none yet (or the optimizer runs on a kvstore)."""
    from ._gluon import trainer_state  # _gluon imports the optimizer, which imports this

    state = trainer_state(optimizer, param, index, k)
    return state if state is not None else optimizer.create_state_multi_precision(index, weight)
