"""``AdagradScratch``: Adagrad as a Gluon optimizer, registered as ``adagrad_scratch``.

Its jobs are MXNet's protocol only: resolve the options (:mod:`.options`), create the state,
and turn each update call into :class:`~.functional.Step` records for one call of the chosen
path (:func:`~.functional.reference_steps` or :func:`~.kernels.fused_steps`), after the array
checks (:mod:`.checks`) and the non-finite policy (:mod:`.nonfinite`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import mxnet as mx
import numpy as np
from mxnet import nd

from ..validation import check_choice, check_number
from . import kernels
from .checks import State, accumulator_dtype, check_dense_weight, checked_arrays, split_state
from .functional import Step, denominator, reference_steps
from .nonfinite import NONFINITE_POLICIES, NonFiniteGradientError, safe_updates
from .options import AdagradOptions, check_compat, flush_subnormal, optimizer_kwargs, resolve
from .quantized import QuantizedAcc, check_state_bits, dense, run_steps

__all__ = ["AdagradScratch", "NonFiniteGradientError", "accumulator_dtype", "register",
           "NONFINITE_POLICIES", "REGISTERED_NAME", "State"]

REGISTERED_NAME = "adagrad_scratch"
# every field of AdagradOptions is an attribute of the optimizer too (rescale_grad and
# clip_gradient are MXNet's own): plain ones, so that pickles and vars() keep their shape
OPTION_FIELDS = tuple(field.name for field in dataclasses.fields(AdagradOptions))


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
    never give NaN, even with ``eps = 0``. The options below generalise the formula;
    :mod:`adagrad_gluon.optim.functional` states the full update, and :attr:`options` holds
    them as one :class:`~adagrad_gluon.optim.options.AdagradOptions`.

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
        :mod:`adagrad_gluon.optim.options`); explicit arguments win. With ``'pytorch'`` the names
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
        The update that runs: the fused C++ kernels (:mod:`adagrad_gluon.optim.kernels`, built on
        first use; bit-identical results, one pass over memory, many parameters per call),
        the NDArray reference (:mod:`adagrad_gluon.optim.functional`), or the kernels if they build
        and else the reference with one warning. ``'auto'`` defers to the environment
        variable ``ADAGRAD_GLUON_KERNEL``, and is decided again where a pickled optimizer is
        loaded. The attribute ``kernel`` holds the path chosen.
    state_bits : {32, 8}, default 32
        The accumulator's storage: float32, or 8-bit blockwise (uint8 codes plus a float32
        scale per block of 256 elements, <= 1.016 bytes per element; each step dequantizes,
        updates in float32 and requantizes: the map and its error bound are in
        :mod:`adagrad_gluon.optim.quantized`). float64 weights keep a float64 accumulator.
        A numerics option: a saved state resumes only under the same ``state_bits``.
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
        state_bits: int = 32,
        **kwargs,
    ):
        kwargs = optimizer_kwargs(check_compat(compat), {"learning_rate": learning_rate, **kwargs})
        options = resolve(compat, eps=eps, eps_placement=eps_placement,
                          initial_accumulator_value=initial_accumulator_value,
                          lr_decay=lr_decay, weight_decay_mode=weight_decay_mode,
                          maximize=maximize, rescale_grad=kwargs["rescale_grad"],
                          clip_gradient=kwargs.get("clip_gradient"))
        super().__init__(**kwargs)
        self.compat = compat
        vars(self).update(dataclasses.asdict(options))
        self._options, self._option_values = options, dataclasses.astuple(options)
        self.nonfinite = check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        self.state_bits = check_state_bits(state_bits)
        self.nonfinite_skipped: dict = {}  # index -> unsafe updates skipped
        self.kernel_choice = kernels.check_kernel(kernel)  # as asked; ``kernel``: as resolved
        self._use_kernel(kernels.resolve_kernel(kernel))
        self._checked: dict = {}  # index -> the arrays last checked (checks.Checked)
        # nonfinite='raise': (index, context) updated so far in the Trainer's current step
        self._step_updated: set = set()

    @property
    def options(self) -> AdagradOptions:
        """The update's numerics, from the attributes as they are now (``gluon.Trainer`` sets
        ``rescale_grad`` every step; an attribute set to a bad value raises here, naming it)."""
        values = tuple([getattr(self, name) for name in OPTION_FIELDS])
        if values != self._option_values:
            self._options, self._option_values = AdagradOptions(*values), values
        return self._options

    def _use_kernel(self, kernel: str) -> None:
        """Run the update through ``kernel`` (``'fused'`` or ``'reference'``)."""
        self.kernel = kernel
        self._steps = kernels.fused_steps if kernel == "fused" else reference_steps
        # gluon.Trainer hands lists of up to aggregate_num parameters (of one dtype) to one
        # update call; 'skip' and 'raise' check each list in one host sync
        aggregate = kernel == "fused" or self.nonfinite != "propagate"
        self.aggregate_num = kernels.AGGREGATE_NUM if aggregate else 0

    def set_learning_rate(self, lr: float) -> None:
        """Set the global learning rate (validated as in ``__init__``)."""
        super().set_learning_rate(check_number("learning_rate", lr))

    # -- state -------------------------------------------------------------------------------

    def create_state(self, index: int, weight: nd.NDArray) -> nd.NDArray | QuantizedAcc:
        """The accumulator: float32 (float64 for float64 weights), ``initial_accumulator_value``;
        with ``state_bits=8`` an 8-bit one for float16/float32 weights."""
        check_dense_weight(self._name(index), weight)
        if self.state_bits == 8 and weight.dtype != np.float64:
            return QuantizedAcc.full(weight.shape, self.initial_accumulator_value, weight.context)
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
        smallest normal number is 0 (see :func:`~.options.flush_subnormal`)."""
        if self.lr_decay:
            lr = lr / (1.0 + (max(t, 1) - 1) * self.lr_decay)
        return flush_subnormal(lr)

    def effective_lr(self, index: int, state: State) -> nd.NDArray:
        """Each coordinate's current step size for parameter ``index``, given its ``state``:
        ``lr / sqrt(s + eps)`` (or ``lr / (sqrt(s) + eps)`` with ``eps_placement='outside'``),
        the :func:`~.functional.denominator` of the update.

        Adagrad's accumulator only grows, so these only shrink; this is the quantity behind the
        chapter's warning that the rate may decay too fast. ``gluon.Trainer`` keeps the states:
        see :func:`adagrad_gluon.d2l.diagnostics.effective_learning_rates`.
        """
        _, acc = split_state(state)
        return self.current_lr(index) / denominator(dense(acc), self.eps, self.eps_placement)

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
        options = self.options
        checked = [checked_arrays(self._checked, *args, self._name)
                   for args in zip(index, weight, grad, state, strict=True)]
        wds = [flush_subnormal(wd) for wd in self._get_wds(index)]
        self._refuse_lazy_decay(index, checked, wds)
        if self.nonfinite != "propagate":
            keep = safe_updates(self, options, index, checked, wds)
            index, checked, wds = ([x for x, k in zip(seq, keep, strict=True) if k]
                                   for seq in (index, checked, wds))
            if not index:
                return
        lrs = self._count_and_lrs(index)
        run_steps(self._steps, [Step(c.weight, c.grad, c.acc, c.master, lr, wd, c.row_sparse)
                                for c, lr, wd in zip(checked, lrs, wds, strict=True)],
                  options, fused=self.kernel == "fused")

    def _refuse_lazy_decay(self, indices, checked, wds) -> None:
        """A row_sparse gradient gets a lazy update, which cannot apply weight decay."""
        for i, c, wd in zip(indices, checked, wds, strict=True):
            if wd and c.row_sparse:
                raise ValueError(
                    f"parameter {self._name(i)}: a row_sparse gradient gets a lazy update, "
                    f"which cannot apply weight decay to the rows it skips; set wd=0 (or "
                    f"wd_mult=0 for this parameter), or use a dense gradient (got wd={wd})"
                )

    @property
    def num_nonfinite_skipped(self) -> int:
        """How many parameter updates ``nonfinite='skip'`` has skipped so far."""
        return sum(self.nonfinite_skipped.values())

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

    def __getstate__(self) -> dict:
        """Pickle (``gluon.Trainer.save_states``, the parameter servers) without the caches:
        the checked arrays, the options object (made again from the attributes) and the
        chosen update function (chosen again on loading)."""
        state = super().__getstate__()
        state["_checked"] = {}  # array references, not worth pickling
        for name in ("_steps", "_options", "_option_values"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        """Unpickle, resolving ``kernel`` again for this machine (a parameter server or another
        host may lack the compiler the pickling one had): ``'auto'`` may fall back, ``'fused'``
        raises :class:`~adagrad_gluon.optim.kernels.KernelUnavailableError` here, not mid-training.
        Its shape is the one of the code before the options object, whose pickles load too."""
        super().__setstate__(state)
        vars(self).setdefault("state_bits", 32)  # pickled before state_bits existed
        self._options, self._option_values = None, None
        self._step_updated = set()
        self._use_kernel(kernels.resolve_kernel(self.kernel_choice))

    def _name(self, index) -> str:
        """The parameter's name for messages (from ``gluon.Trainer`` if it gave them)."""
        param = self.param_dict.get(index)
        return repr(param.name if param is not None else self.idx2name.get(index, index))


def register() -> None:
    """Register :class:`AdagradScratch` under the name ``adagrad_scratch``.

    ``@mx.optimizer.register`` would file the class as ``adagradscratch`` (its lower-cased
    name), so the registry entry is written directly. Idempotent.
    """
    mx.optimizer.Optimizer.opt_registry[REGISTERED_NAME] = AdagradScratch
