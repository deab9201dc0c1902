"""``AdagradScratch``: Adagrad as a Gluon optimizer, registered as ``adagrad_scratch``."""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence

import mxnet as mx
import numpy as np
from mxnet import nd

from ..validation import check_choice, check_number
from . import kernels
from . import options as compat_presets
from .functional import (
    EPS_PLACEMENTS,
    WEIGHT_DECAY_MODES,
    adagrad_update,
    adagrad_update_row_sparse,
    prepared_gradient,
)

REGISTERED_NAME = "adagrad_scratch"
NONFINITE_POLICIES = ("propagate", "skip", "raise")
# a parameter's state: its accumulator, or (float32 master weight, accumulator)
State = nd.NDArray | tuple[nd.NDArray, nd.NDArray]


class NonFiniteGradientError(ValueError):
    """Under ``nonfinite='raise'``: a gradient held NaN or infinity, or its square would
    make the accumulator overflow."""


class AdagradScratch(mx.optimizer.Optimizer):
    r"""Adagrad (Duchi, Hazan and Singer, JMLR 2011), written from scratch for MXNet Gluon.

    Use it by name: ``gluon.Trainer(params, 'adagrad_scratch', {'learning_rate': 0.1})`` or
    ``mx.optimizer.create('adagrad_scratch', learning_rate=0.1)``.

    Every parameter keeps an accumulator ``s`` of its squared gradients, and every coordinate
    gets its own step size ``lr / sqrt(s + eps)``. One step, with the defaults::

        g = clip(rescale_grad * grad, -clip_gradient, clip_gradient)
        s = s + g * g
        w = w - lr * (g / sqrt(s + eps) + wd * w)

    This is MXNet 1.9.1's ``adagrad`` update with the chapter's ``eps = 1e-6`` (the built-in
    defaults to 1e-7); with equal ``eps`` the two agree step for step. Where ``s == 0`` the
    gradient is 0 (or so small its square underflows) and so is the update: zero gradients
    never give NaN, even with ``eps = 0``. The options below
    generalise the formula; :mod:`adagrad_gluon.functional` states the full update.

    ``row_sparse`` gradients (``gluon.nn.Embedding(..., sparse_grad=True)``) get a lazy
    update: only the rows present in the gradient, and their accumulator rows, change. A lazy
    update cannot apply weight decay to the rows it skips, so it requires ``wd == 0``
    (a ``ValueError`` otherwise, as the built-in refuses too).

    The accumulator is float32 (float64 for float64 weights). float16 weights are updated in
    float32 and rounded back; with ``multi_precision=True`` a float32 master copy of the weight
    is kept as well.

    Parameters
    ----------
    learning_rate : float, default 0.01
        The global step size ``lr``; finite and >= 0. A rate (after ``lr_mult``, a scheduler,
        ``lr_decay``) or weight decay below float64's smallest normal number, 2.2e-308, acts
        as 0: MXNet refuses such numbers as operator arguments, and the step they scale,
        ``lr * (d + wd * w)`` with ``|d| <= 1``, is below 2.2e-308 * (1 + wd * |w|).
    eps : float, default 1e-6 (from ``compat``)
        Added to the accumulator (or its root, see ``eps_placement``); finite and >= 0.
    eps_placement : {'inside', 'outside'}, default 'inside' (from ``compat``)
        ``g / sqrt(s + eps)`` (MXNet 1.x, d2l) or ``g / (sqrt(s) + eps)`` (PyTorch).
    initial_accumulator_value : float, default 0.0 (from ``compat``)
        The value every accumulator starts at; finite and >= 0.
    lr_decay : float, default 0.0
        ``lr_t = lr / (1 + (t - 1) * lr_decay)``, with ``t`` the number of updates of that
        parameter so far, this one included (as PyTorch counts); finite and >= 0.
    weight_decay_mode : {'step', 'l2', 'decoupled'}, default 'step' (from ``compat``)
        Where ``wd * w`` enters: the step (MXNet 1.x), the gradient before it is accumulated
        (PyTorch, MXNet 2.0), or a separate ``w -= lr * wd * w`` (Keras).
    maximize : bool, default False
        Ascend instead of descend (the gradient is negated after clipping).
    compat : {'d2l', 'mxnet1', 'mxnet2', 'pytorch', 'keras', 'optax'}, default 'd2l'
        A preset for the four options above, as that framework defines Adagrad (table in
        :mod:`adagrad_gluon.compat`); explicit arguments win. With ``'pytorch'`` the names
        ``lr`` and ``weight_decay`` are accepted too.
    nonfinite : {'propagate', 'skip', 'raise'}, default 'propagate'
        What an unsafe update does: a gradient with NaN or infinity, or a finite one whose
        square (rescaled and clipped, as the step takes it) makes the accumulator overflow.
        ``'propagate'``: the update runs and the NaN or infinity reaches the weight and
        accumulator, as with MXNet's built-in (and PyTorch's) Adagrad, at no extra cost.
        ``'skip'``: that parameter's update is skipped (weight, accumulator and update count
        untouched), counted in :attr:`nonfinite_skipped` (index -> count); the others run.
        ``'raise'``: :class:`NonFiniteGradientError` names the parameters and nothing is
        updated: under ``gluon.Trainer`` (which sets ``param_dict``) nothing in the whole step,
        whatever the kernel and however many dtypes (the Trainer hands each dtype over in a
        call of its own; the first call checks every gradient of ``param_dict``, grad_req
        other than ``'null'``, so with ``ignore_stale_grad=True`` a stale non-finite gradient
        raises too); without ``param_dict`` (user code calling ``update``, or an unpickled
        copy, as on a parameter server), nothing in that call. With ``update_on_kvstore``
        MXNet's kvstore calls the optimizer from a callback that swallows exceptions:
        nothing is updated, but ``Trainer.step`` returns without raising. Both policies cost one
        host sync per update call (one call per dtype under the Trainer).
        Not checked: a weight pushed past the float range by ``lr`` or ``wd`` themselves
        (the step changes ``w`` by at most ``lr * (1 + wd * |w|)``).
    kernel : {'auto', 'fused', 'reference'}, default 'auto'
        The update that runs: the fused C++ kernels (:mod:`adagrad_gluon.kernels`, built on
        first use; bit-identical results, one pass over memory, many parameters per call),
        the NDArray reference (:mod:`adagrad_gluon.functional`), or the kernels if they build
        and else the reference with one warning. ``'auto'`` defers to the environment
        variable ``ADAGRAD_GLUON_KERNEL``, and is decided again where a pickled optimizer is
        loaded. The attribute ``kernel`` holds the path chosen.
    **kwargs
        Everything :class:`mxnet.optimizer.Optimizer` takes: ``wd``, ``rescale_grad``,
        ``clip_gradient``, ``lr_scheduler``, ``multi_precision``, ``begin_num_update``, ...
    """

    def __init__(
        self,
        learning_rate: float | None = None,
        eps: float | None = None,
        eps_placement: str | None = None,
        initial_accumulator_value: float | None = None,
        lr_decay: float = 0.0,
        weight_decay_mode: str | None = None,
        maximize: bool = False,
        compat: str = "d2l",
        kernel: str = "auto",
        nonfinite: str = "propagate",
        **kwargs,
    ):
        if compat not in compat_presets.PRESETS:
            compat_presets.resolve(compat, {})  # raises the ValueError listing the presets
        kwargs = compat_presets.translate_pytorch_names(
            compat, {"learning_rate": learning_rate, **kwargs}
        )
        learning_rate = kwargs.pop("learning_rate")
        options = compat_presets.resolve(compat, dict(
            eps=eps, eps_placement=eps_placement,
            initial_accumulator_value=initial_accumulator_value,
            weight_decay_mode=weight_decay_mode,
        ))
        lr_scheduler = kwargs.get("lr_scheduler")
        if learning_rate is None and lr_scheduler is None:
            learning_rate = 0.01
        if learning_rate is not None:
            learning_rate = check_number("learning_rate", learning_rate)
        if lr_scheduler is not None and not callable(lr_scheduler):
            raise TypeError(f"lr_scheduler must be callable, got {lr_scheduler!r}")
        kwargs["wd"] = check_number("wd", kwargs.get("wd", 0.0))
        kwargs["rescale_grad"] = _check_normal("rescale_grad", kwargs.get("rescale_grad", 1.0))
        clip = kwargs.get("clip_gradient")
        if clip is not None:
            kwargs["clip_gradient"] = _check_normal("clip_gradient", clip)
        begin = kwargs.get("begin_num_update", 0)
        if isinstance(begin, bool) or not isinstance(begin, numbers.Integral) or begin < 0:
            raise ValueError(f"begin_num_update must be an integer >= 0, got {begin!r}")
        if not isinstance(kwargs.get("multi_precision", False), bool):
            raise TypeError(
                f"multi_precision must be True or False, got {kwargs['multi_precision']!r}"
            )
        if not isinstance(maximize, bool):
            raise TypeError(f"maximize must be True or False, got {maximize!r}")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.compat = compat
        self.eps = check_number("eps", options["eps"])
        if self.eps and np.float32(self.eps) == 0:
            raise ValueError(f"eps must be 0 or at least float32's smallest number (1.4e-45): "
                             f"{self.eps!r} rounds to 0 in float32 and would give 0/0")
        self.eps_placement = check_choice(
            "eps_placement", options["eps_placement"], EPS_PLACEMENTS
        )
        self.initial_accumulator_value = check_number(
            "initial_accumulator_value", options["initial_accumulator_value"]
        )
        self.lr_decay = check_number("lr_decay", lr_decay)
        self.weight_decay_mode = check_choice(
            "weight_decay_mode", options["weight_decay_mode"], WEIGHT_DECAY_MODES
        )
        self.maximize = maximize
        self.nonfinite = check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        self.nonfinite_skipped: dict = {}  # index -> unsafe updates skipped
        self.kernel_choice = kernels.check_kernel(kernel)  # as asked; ``kernel``: as resolved
        self._use_kernel(kernels.resolve_kernel(kernel))
        self._checked: dict = {}  # index -> the arrays last checked, and what was found

    def _use_kernel(self, kernel: str) -> None:
        """Run the update through ``kernel`` (``'fused'`` or ``'reference'``)."""
        self.kernel = kernel
        # gluon.Trainer hands lists of up to aggregate_num parameters (of one dtype) to one
        # update call; 'skip' and 'raise' check each list in one host sync
        aggregate = kernel == "fused" or self.nonfinite != "propagate"
        self.aggregate_num = kernels.AGGREGATE_NUM if aggregate else 0

    def set_learning_rate(self, lr: float) -> None:
        """Set the global learning rate (validated as in ``__init__``)."""
        super().set_learning_rate(check_number("learning_rate", lr))

    # -- state -------------------------------------------------------------------------------

    def create_state(self, index: int, weight: nd.NDArray) -> nd.NDArray:
        """The accumulator: float32 (float64 for float64 weights), ``initial_accumulator_value``."""
        _check_dense_weight(self._name(index), weight)
        return nd.full(weight.shape, self.initial_accumulator_value, weight.context,
                       dtype=accumulator_dtype(weight.dtype))

    def create_state_multi_precision(self, index: int, weight: nd.NDArray) -> State:
        """``(float32 master weight, accumulator)`` for float16 weights with
        ``multi_precision``; otherwise the accumulator alone."""
        if self.multi_precision and weight.dtype == np.float16:
            master = weight.astype(np.float32)
            return (master, self.create_state(index, master))
        return self.create_state(index, weight)

    # -- update ------------------------------------------------------------------------------

    def current_lr(self, index: int) -> float:
        """The learning rate of parameter ``index`` for the update counted last: the scheduler's
        (or global) rate times its ``lr_mult``, decayed by ``lr_decay``."""
        return self._decayed(self._get_lr(index),
                             self._index_update_count.get(index, self.begin_num_update))

    def _decayed(self, lr: float, t: int) -> float:
        """``lr / (1 + (t - 1) * lr_decay)`` for the ``t``-th update (PyTorch's ``lr_decay``);
        before the first update (``t = 0``) the rate of the first. A rate below float64's
        smallest normal number is 0 (see :func:`_flush_subnormal`)."""
        if self.lr_decay:
            lr = lr / (1.0 + (max(t, 1) - 1) * self.lr_decay)
        return _flush_subnormal(lr)

    def effective_lr(self, index: int, state: State) -> nd.NDArray:
        """Each coordinate's current step size for parameter ``index``, given its ``state``:
        ``lr / sqrt(s + eps)`` (or ``lr / (sqrt(s) + eps)`` with ``eps_placement='outside'``).

        Adagrad's accumulator only grows, so these only shrink; this is the quantity behind the
        chapter's warning that the rate may decay too fast. ``gluon.Trainer`` keeps the states:
        see :func:`adagrad_gluon.diagnostics.effective_learning_rates`.
        """
        acc = state[1] if isinstance(state, (tuple, list)) else state
        if self.eps_placement == "inside":
            return self.current_lr(index) / nd.sqrt(acc + self.eps)
        return self.current_lr(index) / (nd.sqrt(acc) + self.eps)

    def update(self, index: int, weight: nd.NDArray, grad: nd.NDArray, state: State) -> None:
        """Update ``weight`` in place from ``grad``; ``state`` as from ``create_state``."""
        self.update_multi_precision(index, weight, grad, state)

    def update_multi_precision(self, index: int | Sequence[int],
                               weight: nd.NDArray | Sequence[nd.NDArray],
                               grad: nd.NDArray | Sequence[nd.NDArray],
                               state: State | Sequence[State]) -> None:
        """Update ``weight`` in place; handles float16 weights with or without master copies.

        ``index``, ``weight``, ``grad`` and ``state`` may also be equally long lists (as
        ``gluon.Trainer`` hands them when ``aggregate_num > 0``): the fused path then updates
        them all in one multi-tensor call.
        """
        if not isinstance(index, (list, tuple)):
            index, weight, grad, state = [index], [weight], [grad], [state]
        checked = [self._check(*args) for args in zip(index, weight, grad, state, strict=True)]
        wds = [_flush_subnormal(wd) for wd in self._get_wds(index)]
        for i, (_, _, row_sparse, _), wd in zip(index, checked, wds, strict=True):
            if wd and row_sparse:
                raise ValueError(
                    f"parameter {self._name(i)}: a row_sparse gradient gets a lazy update, "
                    f"which cannot apply weight decay to the rows it skips; set wd=0 (or "
                    f"wd_mult=0 for this parameter), or use a dense gradient (got wd={wd})"
                )
        if self.nonfinite != "propagate":
            keep = self._safe_updates(index, weight, grad, checked, wds)
            if not all(keep):
                index, weight, grad, checked, wds = (
                    [x for x, k in zip(seq, keep, strict=True) if k]
                    for seq in (index, weight, grad, checked, wds))
                if not index:
                    return
        lrs = self._count_and_lrs(index)
        fused, reference = [], []
        for w, g, (acc, master, row_sparse, kernel_takes_it), lr, wd in zip(
                weight, grad, checked, lrs, wds, strict=True):
            step = kernels.Step(w, g, acc, master, lr, wd, row_sparse)
            (fused if kernel_takes_it and self.kernel == "fused" else reference).append(step)
        if fused:
            kernels.fused_steps(fused, **self._shared_options())
        for step in reference:
            self._reference_step(step)

    def _safe_updates(self, indices, weights, grads, checked, wds) -> list[bool]:
        """Which of these updates are safe: a finite gradient whose square does not overflow
        the accumulator (one host sync for the whole list). Under ``nonfinite='raise'`` the
        gradients of the rest of the step (every other gradient of ``param_dict``) are checked
        in the same sync, and an unsafe one anywhere raises :class:`NonFiniteGradientError`;
        under ``'skip'`` each unsafe update of this call is counted in
        :attr:`nonfinite_skipped`."""
        probes = [self._probe(w, g, acc, master, row_sparse, wd) for w, g, (acc, master,
                  row_sparse, _), wd in zip(weights, grads, checked, wds, strict=True)]
        named = list(indices)
        if self.nonfinite == "raise":
            for i, probe in self._rest_of_step(grads):
                named.append(i)
                probes.append(probe)
        safe = np.isfinite(nd.concat(*[p.reshape((1,)) for p in probes], dim=0).asnumpy())
        bad = [i for i, ok in zip(named, safe, strict=True) if not ok]
        if bad and self.nonfinite == "raise":
            names = ", ".join(self._name(i) for i in dict.fromkeys(bad))
            raise NonFiniteGradientError(
                f"non-finite gradient (NaN or infinity), or one whose square overflows the "
                f"accumulator, for parameter(s) {names}; nothing was updated. "
                f"nonfinite='skip' skips such updates instead")
        for i in bad:
            self.nonfinite_skipped[i] = self.nonfinite_skipped.get(i, 0) + 1
        return safe[:len(indices)].tolist()

    def _probe(self, weight, grad, acc, master, row_sparse: bool, wd: float) -> nd.NDArray:
        """A float64 scalar: 0 if the gradient is finite and ``s + g * g`` (``g`` as the step
        prepares it, in the accumulator's dtype) is finite everywhere, else NaN. ``acc`` None
        stands for an accumulator of zeros (the gradient's own square is checked)."""
        dtype = accumulator_dtype(weight.dtype)
        work = None  # the weight in the accumulator's dtype: needed for 'l2' decay only
        if self.weight_decay_mode == "l2" and wd:
            work = master if master is not None else weight.astype(dtype, copy=False)
        if row_sparse:
            rows, grad = grad.indices, grad.data
            work = None if work is None else nd.take(work, rows)
            acc = None if acc is None else nd.take(acc, rows)
        grad = grad.astype(dtype, copy=False)  # never overflows: dtype is as wide as grad's
        g = prepared_gradient(work, grad, wd=wd, rescale_grad=self.rescale_grad,
                              clip_gradient=self.clip_gradient,
                              weight_decay_mode=self.weight_decay_mode, maximize=self.maximize)
        square = g * g if acc is None else acc + g * g
        # x * 0 is 0 for finite x and NaN for NaN or infinity
        return (nd.sum(grad * 0) + nd.sum(square * 0)).astype(np.float64)

    def _rest_of_step(self, grads) -> list[tuple[int, nd.NDArray]]:
        """``(index, probe)`` for the gradients of ``param_dict`` (set by ``gluon.Trainer``)
        other than ``grads``: the rest of the step, which the Trainer hands over in further
        calls (one per dtype). Their accumulators are not known here, so each gradient's own
        square is checked."""
        probes = []
        for i, param in self.param_dict.items():
            if param.grad_req == "null":
                continue
            name = self._name(i)
            wd = _flush_subnormal(self._get_wds([i])[0])
            for weight, grad in zip(param.list_data(), param.list_grad(), strict=True):
                if any(grad is g for g in grads):
                    continue
                _check_storage(name, weight, grad)
                row_sparse = grad.stype == "row_sparse"
                probes.append((i, self._probe(weight, grad, None, None, row_sparse, wd)))
        return probes

    @property
    def num_nonfinite_skipped(self) -> int:
        """How many parameter updates ``nonfinite='skip'`` has skipped so far."""
        return sum(self.nonfinite_skipped.values())

    def _check(self, index, weight: nd.NDArray, grad: nd.NDArray, state) -> tuple:
        """Check one parameter's arrays; return ``(acc, master, row_sparse, kernel_takes_it)``,
        the last telling whether the kernels support its dtypes. The checks run again only
        when the arrays are other objects than last time (an NDArray's shape, dtype and storage
        type cannot change): they cost ~10 us a parameter. A row_sparse gradient's rows change
        every step, so they are checked every time.
        """
        master, acc = state if isinstance(state, (tuple, list)) else (None, state)
        known = self._checked.get(index)
        if known is None or not (known[0] is weight and known[1] is grad and known[2] is acc
                                 and known[3] is master):
            _check_arrays(self._name(index), weight, grad, acc, master)
            known = (weight, grad, acc, master, grad.stype == "row_sparse",
                     kernels.supports(weight, acc, master))
            self._checked[index] = known
        if known[4]:
            _check_rows(self._name(index), grad, weight)
        return known[2:]

    def _count_and_lrs(self, indices) -> list[float]:
        """Count one update of each of ``indices``; return their learning rates
        (:meth:`current_lr`), exactly as one update after the other would.
        When every index has been updated equally often (as under ``gluon.Trainer``) that is
        one pass over them; otherwise, the scheduler's rate may change between two of them.
        """
        begin = self.begin_num_update
        if len({self._index_update_count.get(i, begin) for i in indices}) > 1:
            lrs = []
            for i in indices:
                self._update_count(i)
                lrs.append(self.current_lr(i))
            return lrs
        self._update_count(indices)
        t = self._index_update_count[indices[0]]  # the count all of them share
        return [self._decayed(lr, t) for lr in self._get_lrs(indices)]

    def _shared_options(self) -> dict:
        """The update's options other than ``lr`` and ``wd`` (one set for every parameter)."""
        return dict(
            eps=self.eps,
            rescale_grad=self.rescale_grad,
            clip_gradient=self.clip_gradient,
            eps_placement=self.eps_placement,
            weight_decay_mode=self.weight_decay_mode,
            maximize=self.maximize,
        )

    def _reference_step(self, step: kernels.Step) -> None:
        """One parameter's step through :mod:`adagrad_gluon.functional`."""
        weight, grad, acc, master = step.weight, step.grad, step.acc, step.master
        options = dict(lr=step.lr, wd=step.wd, **self._shared_options())
        update = adagrad_update_row_sparse if step.row_sparse else adagrad_update
        if weight.dtype == acc.dtype:
            update(weight, grad, acc, **options)
            return
        # float16 weight: step in the accumulator's precision, then round into the weight
        work = master if master is not None else weight.astype(acc.dtype)
        update(work, grad.astype(acc.dtype), acc, **options)
        nd.cast(work, dtype=weight.dtype, out=weight)

    def __getstate__(self) -> dict:
        """Pickle without the cache of checked arrays (``gluon.Trainer.save_states``)."""
        state = super().__getstate__()
        state["_checked"] = {}  # array references, not worth pickling
        return state

    def __setstate__(self, state: dict) -> None:
        """Unpickle, resolving ``kernel`` again for this machine (a parameter server or another
        host may lack the compiler the pickling one had): ``'auto'`` may fall back, ``'fused'``
        raises :class:`~adagrad_gluon.kernels.KernelUnavailableError` here, not mid-training."""
        super().__setstate__(state)
        self._use_kernel(kernels.resolve_kernel(self.kernel_choice))

    def _name(self, index) -> str:
        """The parameter's name for messages (from ``gluon.Trainer`` if it gave them)."""
        param = self.param_dict.get(index)
        return repr(param.name if param is not None else self.idx2name.get(index, index))


def accumulator_dtype(weight_dtype) -> type:
    """The accumulator's dtype for a weight of ``weight_dtype``: float64 for float64 weights,
    float32 otherwise (float16 weights included)."""
    return np.float64 if np.dtype(weight_dtype) == np.float64 else np.float32


def _flush_subnormal(value: float) -> float:
    """``value``, or 0 if it is below float64's smallest normal number (2.2e-308): MXNet
    refuses such numbers as operator arguments (see ``learning_rate`` in the class
    docstring for what flushing a rate to 0 changes)."""
    return 0.0 if abs(value) < sys.float_info.min else value


def _check_normal(name: str, value) -> float:
    """``value`` as a float if it is a finite number of at least float64's smallest normal
    number: MXNet refuses smaller ones as operator arguments, and unlike a rate such a factor
    cannot act as 0 (it scales the gradient, which may be as large as 1e308)."""
    value = check_number(name, value, strict=True)
    if value < sys.float_info.min:
        raise ValueError(f"{name} must be at least 2.2250738585072014e-308 (float64's smallest "
                         f"normal number; MXNet refuses smaller ones), got {value!r}")
    return value


def _check_dense_weight(name: str, weight) -> None:
    if not isinstance(weight, nd.NDArray):
        raise TypeError(f"weight of parameter {name} must be an mxnet NDArray, "
                        f"got {type(weight).__name__}")
    if weight.stype != "default":
        raise TypeError(
            f"parameter {name}: adagrad_scratch updates dense weights (row_sparse gradients "
            f"are fine); got a {weight.stype} weight"
        )
    if weight.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"parameter {name}: weight must be float16, float32 or float64, "
                        f"got {weight.dtype}")


def _check_storage(name: str, weight, grad) -> None:
    """Refuse a weight that is not dense, or a gradient neither dense nor row_sparse."""
    _check_dense_weight(name, weight)
    if not isinstance(grad, nd.NDArray):
        raise TypeError(f"gradient of parameter {name} must be an NDArray, got {type(grad)}")
    if grad.stype not in ("default", "row_sparse"):
        raise TypeError(f"parameter {name}: adagrad_scratch takes dense or row_sparse "
                        f"gradients; got a {grad.stype} gradient")


def _check_arrays(name: str, weight, grad, acc, master) -> None:
    """Refuse mismatched shapes or types instead of letting MXNet broadcast them."""
    _check_storage(name, weight, grad)
    if grad.shape != weight.shape:
        raise ValueError(
            f"parameter {name}: gradient shape {grad.shape} does not match "
            f"weight shape {weight.shape}"
        )
    if grad.dtype != weight.dtype:
        raise TypeError(f"parameter {name}: gradient dtype {np.dtype(grad.dtype).name} does not "
                        f"match weight dtype {np.dtype(weight.dtype).name}")
    for what, array, dtype in (("accumulator", acc, accumulator_dtype(weight.dtype)),
                               ("master weight", master, np.float32)):
        if array is None:
            continue
        if not isinstance(array, nd.NDArray):
            raise TypeError(f"parameter {name}: {what} must be an NDArray, got {type(array)}")
        if array.shape != weight.shape:
            raise ValueError(
                f"parameter {name}: {what} (optimizer state) shape {array.shape} does not "
                f"match weight shape {weight.shape}"
            )
        if array.dtype != dtype:
            raise TypeError(f"parameter {name}: {what} (optimizer state) dtype "
                            f"{np.dtype(array.dtype).name} should be {np.dtype(dtype).name} "
                            f"for a {np.dtype(weight.dtype).name} weight")


def _check_rows(name: str, grad: nd.NDArray, weight: nd.NDArray) -> None:
    """A row_sparse gradient's rows must be strictly increasing and inside the weight (one
    host sync; MXNet itself would apply duplicates once, or fail or hang out of range)."""
    rows = grad.indices.asnumpy()
    if rows.size and (rows[0] < 0 or rows[-1] >= weight.shape[0]
                      or (np.diff(rows) <= 0).any()):
        raise ValueError(f"parameter {name}: the row_sparse gradient's row indices must be "
                         f"strictly increasing and in [0, {weight.shape[0]}); got "
                         f"{np.array2string(rows, threshold=10)}")


def register() -> None:
    """Register :class:`AdagradScratch` under the name ``adagrad_scratch``.

    ``@mx.optimizer.register`` would file the class as ``adagradscratch`` (its lower-cased
    name), so the registry entry is written directly. Idempotent.
    """
    mx.optimizer.Optimizer.opt_registry[REGISTERED_NAME] = AdagradScratch
