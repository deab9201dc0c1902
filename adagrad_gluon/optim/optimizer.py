"""``AdagradScratch``: Adagrad as a Gluon optimizer, registered as ``adagrad_scratch``.

Its jobs are MXNet's protocol only: resolve the options (:mod:`.options`), create the state,
and turn each update call into :class:`~.functional.Step` records for one call of the chosen
path (:func:`~.functional.reference_steps` or :func:`~.kernels.fused_steps`), after the array
checks (:mod:`.checks`), a row_sparse gradient's upkeep (:mod:`.sparse_grads`) and the
non-finite policy (:mod:`.nonfinite`).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import NamedTuple

import mxnet as mx
import numpy as np
from mxnet import nd

from ..validation import check_choice, check_flag, check_number
from . import kernels, lazy_decay
from .checks import (
    Checked,
    State,
    accumulator_dtype,
    accumulator_shape,
    check_dense_weight,
    checked_arrays,
    split_state,
)
from .functional import Step, denominator, reference_steps
from .lazy_decay import LazyDecayMixin
from .nonfinite import NONFINITE_POLICIES, NonFiniteGradientError, safe_updates
from .options import (
    NO_WEIGHT_DECAY_PRESETS,
    AdagradOptions,
    check_compat,
    flush_subnormal,
    optimizer_kwargs,
    resolve,
)
from .quantized import ROWWISE_REFUSAL, QuantizedAcc, check_state_bits, dense, run_steps
from .sparse_grads import RowSparseUpkeep
from .sparse_weights import is_row_sparse, update_kvstore_row_sparse

__all__ = ["AdagradScratch", "NonFiniteGradientError", "accumulator_dtype", "register",
           "NONFINITE_POLICIES", "REGISTERED_NAME", "State"]

REGISTERED_NAME = "adagrad_scratch"
# every field of AdagradOptions is an attribute of the optimizer too (rescale_grad and
# clip_gradient are MXNet's own): plain ones, so that pickles and vars() keep their shape
OPTION_FIELDS = tuple(field.name for field in dataclasses.fields(AdagradOptions))
_option_values = operator.attrgetter(*OPTION_FIELDS)  # one tuple of them, in one C call
_CACHES = ("_checked_calls", "_prepared_keys", "_paged", "_paged_last")  # see _new_caches


class AdagradScratch(LazyDecayMixin, RowSparseUpkeep, mx.optimizer.Optimizer):
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
    update: only the rows present in the gradient, and their accumulator rows, change. Weight
    decay is exact all the same with ``weight_decay_mode`` ``'decoupled'`` or ``'step'``: in
    the dense update a row with a zero gradient only decays, ``w_r *= 1 - lr_k * wd_k`` at
    each update ``k``. Each parameter (on each device) keeps a float64 running sum of
    ``log1p(-lr_k * wd_k)`` and, per row, the sum at which its decay stands; a row's next update
    first applies the product over exactly the updates it skipped, each with its own rate
    (:mod:`.lazy_decay`). Rows lag until then: call :meth:`apply_pending_decay` (or
    :func:`adagrad_gluon.apply_pending_decay` for a ``gluon.Trainer``) with a batch's token ids
    before its forward pass, so that the lookup reads decayed rows, and for all rows before
    evaluating or exporting; the lazy run then equals the dense one. ``'l2'`` decay, which
    enters the accumulator of every row, and ``lr * wd >= 1`` raise a ``ValueError``. With
    ``wd == 0`` nothing is kept. The marks are saved with the states (both state files, the
    pickled ``Trainer.save_states``, the servers' checkpoints).

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
    rowwise : bool, default False (from ``compat``)
        One accumulator per row (axis 0) instead of per coordinate, for weights of two or
        more dimensions (embedding tables): ``s_r += mean_j(g_rj^2)``, and every coordinate
        of row ``r`` steps by ``lr * g_rj / sqrt(s_r + eps)`` (see
        :mod:`adagrad_gluon.optim.functional`). The state is a ``(rows,)`` array, the row width
        times smaller. A 1-D weight raises ``ValueError`` (in ``create_state``).
    compat : {'d2l', 'mxnet1', 'mxnet2', 'pytorch', 'keras', 'optax', 'groupadagrad', \
'fbgemm'}, default 'd2l'
        A preset for the five options above, as that framework defines Adagrad (table in
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
    host_row_check : bool or None, default None
        Whether a ``row_sparse`` gradient's rows are checked on the host before the update:
        strictly increasing and inside the weight, else a ``ValueError`` naming the parameter
        and nothing written. Reading the rows is a host sync: it waits for the gradient's
        backward and for everything MXNet's CPU worker queued before it, so it stalls the
        pipeline (0.21 ms of a 0.74 ms update of 10k rows of 64 in ``bench_sparse.py``).
        ``None``: checked, except a gradient that is a ``gluon.Trainer`` parameter's own gradient
        array (``param_dict``; ``backward`` wrote its rows sorted, unique and in range).
        ``True``: always checked. ``False``: not on the host. The fused row_sparse kernel checks
        the rows before it writes anything; what it refuses leaves weight and accumulator
        untouched and raises MXNet's ``MXNetError`` naming the rows at the next read (MXNet runs
        operators asynchronously). Whatever the setting, the host checks rows that are read
        before or without that kernel: the reference path (``kernel='reference'``), 8-bit
        states and master copies of non-float16 weights (both updated by the reference), lazy
        weight decay (``wd != 0`` or decay still pending: its catch-up gathers the rows first),
        and a kvstore's ``row_sparse`` weight.
    state_bits : {32, 8}, default 32
        The accumulator's storage: float32, or 8-bit blockwise (uint8 codes plus a float32
        scale per block of 256 elements, <= 1.016 bytes per element; each step dequantizes,
        updates in float32 and requantizes: the map and its error bound are in
        :mod:`adagrad_gluon.optim.quantized`). float64 weights keep a float64 accumulator.
        A numerics option: a saved state resumes only under the same ``state_bits``.
        ``ValueError`` with ``rowwise=True`` (whose accumulator is one float per row). The
        ``row_sparse`` weight a kvstore keeps (``SparseEmbedding``) keeps a float32 accumulator
        (its lazy update gathers the accumulator's rows); ``row_sparse`` gradients of dense
        weights and their lazy weight decay work as with float32 (see
        :mod:`~adagrad_gluon.optim.quantized`).
    huge_pages : bool or None, default None
        Whether a table that ``row_sparse`` gradients update is backed by transparent huge
        pages (2 MiB; :mod:`adagrad_gluon.optim.pages`): at its first such update (and again
        for new arrays), its weight, accumulator and master copy get ``madvise(MADV_HUGEPAGE)``
        and ``MADV_COLLAPSE``, once, so the scattered rows of each step miss the TLB far less
        (the collapse copies the arrays: a few hundred ms per 256 MB, once). ``None``: tables
        of at least 64 MiB (:data:`~adagrad_gluon.optim.pages.LARGE_TABLE_BYTES`). ``True``:
        every such table (only whole 2 MiB pages inside an array are advised). ``False``:
        never. Linux, CPU arrays and transparent huge pages other than ``never`` only. Advice
        only: the update is bit for bit the same either way, and a failing ``madvise`` is
        ignored. Dense gradients stream through memory and are never advised.
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
        rowwise: bool | None = None,
        compat: str = "d2l",
        kernel: str = "auto",
        nonfinite: str = "propagate",
        host_row_check: bool | None = None,
        state_bits: int = 32,
        huge_pages: bool | None = None,
        **kwargs,
    ):
        kwargs = optimizer_kwargs(check_compat(compat), {"learning_rate": learning_rate, **kwargs})
        options = resolve(compat, eps=eps, eps_placement=eps_placement,
                          initial_accumulator_value=initial_accumulator_value,
                          lr_decay=lr_decay, weight_decay_mode=weight_decay_mode,
                          maximize=maximize, rescale_grad=kwargs["rescale_grad"],
                          clip_gradient=kwargs.get("clip_gradient"), rowwise=rowwise)
        _check_no_decay(compat, kwargs["wd"])
        super().__init__(**kwargs)
        self.compat = compat
        vars(self).update(dataclasses.asdict(options))
        self._options, self._option_values = options, dataclasses.astuple(options)
        self.nonfinite = check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        self.state_bits = check_state_bits(state_bits)
        if self.state_bits == 8 and options.rowwise:
            raise ValueError(ROWWISE_REFUSAL)
        self.nonfinite_skipped: dict = {}  # index -> unsafe updates skipped
        self.host_row_check = (None if host_row_check is None
                               else check_flag("host_row_check", host_row_check))
        self.huge_pages = None if huge_pages is None else check_flag("huge_pages", huge_pages)
        self.kernel_choice = kernels.check_kernel(kernel)  # as asked; ``kernel``: as resolved
        self._use_kernel(kernels.resolve_kernel(kernel))
        self._checked: dict = {}  # (index, rowwise) -> the arrays last checked (checks.Checked)
        # nonfinite='raise': (index, context) updated so far in the Trainer's current step
        self._step_updated: set = set()
        self._row_decay: dict = {}  # (index, device id) -> RowDecay (lazy weight decay)
        self._new_caches()

    def _new_caches(self) -> None:
        """The caches of this process (never pickled, made anew when unpickled): list calls'
        checked arrays ((indices, context) -> (key, its Checked, states)), per-key prepared
        updates (index -> _PreparedKey), the arrays advised onto huge pages (per (index,
        context), and the last seen per index), and the gradient of update_known_rows."""
        for name in _CACHES:
            setattr(self, name, {})
        self._rows_known_good = None

    @property
    def options(self) -> AdagradOptions:
        """The update's numerics, from the attributes as they are now (``gluon.Trainer`` sets
        ``rescale_grad`` every step; an attribute set to a bad value raises here, naming it)."""
        values = _option_values(self)
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
        of the weight's shape, or ``(rows,)`` with ``rowwise`` (``ValueError`` for a weight of
        fewer than two dimensions); dense, also for the ``row_sparse`` weight a kvstore keeps
        (see :meth:`update`). With ``state_bits=8`` an 8-bit one for dense float16/float32
        weights (the ``row_sparse`` weight a kvstore keeps keeps a float32 one)."""
        name = self._name(index)
        if not is_row_sparse(weight):
            check_dense_weight(name, weight)
        if self.state_bits == 8 and weight.dtype != np.float64 and not is_row_sparse(weight):
            if self.rowwise:  # set since __init__
                raise ValueError(f"parameter {name}: {ROWWISE_REFUSAL}")
            return QuantizedAcc.full(weight.shape, self.initial_accumulator_value, weight.context)
        return nd.full(accumulator_shape(name, weight.shape, self.rowwise),
                       self.initial_accumulator_value, weight.context,
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
        the :func:`~.functional.denominator` of the update. With ``rowwise`` one rate per row
        (shape ``(rows,)``): each coordinate of row ``r`` steps by its row's rate times ``g``.

        Adagrad's accumulator only grows, so these only shrink; this is the quantity behind the
        chapter's warning that the rate may decay too fast. ``gluon.Trainer`` keeps the states:
        see :func:`adagrad_gluon.d2l.diagnostics.effective_learning_rates`.
        """
        _, acc = split_state(state)
        return self.current_lr(index) / denominator(dense(acc), self.eps, self.eps_placement)

    def update(self, index: int, weight: nd.NDArray, grad: nd.NDArray, state: State) -> None:
        """Update ``weight`` in place from ``grad``; ``state`` as from ``create_state``.

        ``weight`` is dense, or the ``row_sparse`` weight (every row present) a kvstore keeps for
        a ``Parameter(stype='row_sparse')`` (e.g. ``gluon.contrib.nn.SparseEmbedding``) with
        ``update_on_kvstore``: on parameter servers, each holding a shard of its rows, or in
        ``gluon.Trainer``'s local kvstore. Such a weight takes ``row_sparse`` gradients and a
        lazy update (``wd == 0``): the gradient's rows of the weight and accumulator are
        gathered, updated as dense rows (exactly as a dense weight's rows would be), and
        written back; the other rows are not touched.
        """
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
            self._update_key(index, weight, grad, state)
        elif len(index) == 1:  # MXNet's Updater wraps a parameter server's per-key call so
            self._update_key(index[0], weight[0], grad[0], state[0])
        else:
            self._update_lists(index, weight, grad, state)

    def _update_lists(self, index: Sequence[int], weight: Sequence[nd.NDArray],
                      grad: Sequence[nd.NDArray], state: Sequence[State]) -> None:
        """The whole update of one call (equally long lists): checks, policy, rates, lazy
        decay, then one call of the chosen path."""
        options = self.options
        checked = self._checked_call(index, weight, grad, state, rowwise=options.rowwise)
        if checked is None:  # a kvstore's row_sparse weights among them: each updated apart
            for args in zip(index, weight, grad, state, strict=True):
                if is_row_sparse(args[1]):
                    update_kvstore_row_sparse(self, *args)
                else:
                    self.update_multi_precision(*args)
            return
        wds = _each(flush_subnormal, self._get_wds(index))
        _check_no_decay(self.compat, max(wds))  # wd may have been set since __init__
        if self.nonfinite != "propagate":
            keep = safe_updates(self, options, index, checked, wds)
            index, checked, wds = ([x for x, k in zip(seq, keep, strict=True) if k]
                                   for seq in (index, checked, wds))
            if not index:
                return
        lrs, pending = self._lrs_and_pending_decay(index, checked, wds,
                                                   options.weight_decay_mode)
        lazy_decay.catch_up_all(pending)
        run_steps(self._steps, [Step(c.weight, c.grad, c.acc, c.master, lr, wd, c.row_sparse)
                                for c, lr, wd in zip(checked, lrs, wds, strict=True)],
                  options, fused=self.kernel == "fused")
        lazy_decay.advance_all(pending)

    def _update_key(self, index, weight: nd.NDArray, grad: nd.NDArray, state: State) -> None:
        """One parameter's update, called with no lists or lists of one (as a parameter server
        calls it, once per key, through MXNet's Updater). A call with the very arrays and the
        options of the key's last call runs the fused update prepared then
        (:func:`~.kernels.prepare`), without checking the arrays again (an NDArray's shape,
        dtype and storage type cannot change), unless a non-finite policy or lazy weight decay
        needs the whole path; the rates are computed and counted as that path does. A
        row_sparse gradient (its rows change every call) is prepared once a call hands the
        same gradient object as the key's last one (``gluon.Trainer`` hands a parameter's own
        gradient, a parameter server a new one per push), and its rows are still checked on
        the host as ``host_row_check`` says."""
        plain = self.nonfinite == "propagate" and not self._row_decay
        known = self._prepared_keys.get(index) if plain else None
        if (known is not None and known.checked.grad is grad and known.update is not None
                and known.checked.weight is weight and known.state is state
                and known.options is self.options):
            wd = flush_subnormal(self._get_wds([index])[0])
            _check_no_decay(self.compat, wd)
            row_sparse = known.checked.row_sparse
            if not (row_sparse and wd):  # (else lazy weight decay begins: the whole path)
                if row_sparse:
                    self._row_sparse_upkeep([index], [known.checked])
                known.update(self._count_and_lrs([index])[0], wd)
                return
        self._update_lists([index], [weight], [grad], [state])
        if plain:
            self._prepared_keys[index] = self._prepared_key(index, weight, grad, state, known)

    def _prepared_key(self, index, weight, grad, state,
                      last: _PreparedKey | None) -> _PreparedKey | None:
        """What :meth:`_update_key` reuses for these arrays, just checked, or None: not the
        fused kernels, a list state (its items can change), arrays the call did not check as
        a dense weight's (a kvstore's row_sparse weight) or an 8-bit accumulator (its own
        operator). A row_sparse gradient other than ``last``'s (the key's last call) is
        remembered, not prepared (``update`` None)."""
        if self.kernel != "fused" or isinstance(state, list):
            return None
        master, acc = split_state(state)
        options = self.options
        checked = self._checked.get((index, options.rowwise))
        if checked is None or isinstance(acc, QuantizedAcc) or not _same_objects(
                checked, (weight, grad, acc, master)):
            return None
        if checked.row_sparse and (last is None or last.checked.grad is not grad):
            return _PreparedKey(state, options, None, checked)
        update = kernels.prepare(Step(weight, grad, acc, master, 0.0, 0.0, checked.row_sparse),
                                 options)
        return None if update is None else _PreparedKey(state, options, update, checked)

    def _checked_call(self, indices, weights, grads, states, **check_options) -> list | None:
        """:func:`~.checks.checked_arrays` (with ``check_options``) of each parameter of one
        update call, or None if a weight is the row_sparse one a kvstore keeps (the caller
        updates those apart). A list call that hands the very objects of an earlier one, with
        the same options (``gluon.Trainer`` and its updater do, every step), gets that call's
        result back without a check per parameter (its weights were checked dense), unless a
        gradient is row_sparse (its rows change every step). The cache holds the objects it
        was keyed on, so their ids stay theirs."""
        cached = len(indices) > 1  # a parameter server's per-key call: nothing to gain here
        if cached:
            key = (tuple(indices), *(tuple(map(id, seq)) for seq in (weights, grads, states)),
                   tuple(sorted(check_options.items())))
            slot = (key[0], weights[0].context)  # a Trainer's updater per context calls in turn
            known = self._checked_calls.get(slot)
            if known is not None and known[0] == key:
                return known[1]
        if any(map(is_row_sparse, weights)):
            return None
        checked = [checked_arrays(self._checked, *args, self._name, **check_options)
                   for args in zip(indices, weights, grads, states, strict=True)]
        self._row_sparse_upkeep(indices, checked)
        if cached and not any(c.row_sparse for c in checked) \
                and not any(isinstance(s, list) for s in states):  # a list's items can change
            if len(self._checked_calls) >= 16:  # the Trainer makes one call per dtype
                self._checked_calls.clear()
            self._checked_calls[slot] = (key, checked, list(states))
        return checked

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
        if len(indices) > 1 and len({self._index_update_count.get(i, begin)
                                     for i in indices}) > 1:
            lrs = []
            for i in indices:
                self._update_count(i)
                lrs.append(self.current_lr(i))
            return lrs
        self._update_count(indices)
        t = self._index_update_count[indices[0]]  # the count all of them share
        return _each(lambda lr: self._decayed(lr, t), self._get_lrs(indices))

    def __getstate__(self) -> dict:
        """Pickle (``gluon.Trainer.save_states``, the parameter servers) without the caches:
        the checked arrays, the options object (made again from the attributes) and the
        chosen update function (chosen again on loading)."""
        state = super().__getstate__()
        state["_checked"] = {}  # array references, not worth pickling
        for name in ("_steps", "_options", "_option_values", "_rows_known_good", *_CACHES):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        """Unpickle, resolving ``kernel`` again for this machine (a parameter server or another
        host may lack the compiler the pickling one had): ``'auto'`` may fall back, ``'fused'``
        raises :class:`~adagrad_gluon.optim.kernels.KernelUnavailableError` here, not mid-training.
        Its shape is the one of the code before the options object, whose pickles load too."""
        super().__setstate__(state)
        for field in dataclasses.fields(AdagradOptions):  # options added since it was pickled
            vars(self).setdefault(field.name, field.default)
        vars(self).setdefault("state_bits", 32)  # pickled before state_bits existed
        self._options, self._option_values = None, None
        self._new_caches()
        self._step_updated = set()
        vars(self).setdefault("_row_decay", {})  # pickled before lazy weight decay
        vars(self).setdefault("host_row_check", None)  # pickled before it existed
        vars(self).setdefault("huge_pages", None)  # the same
        self._use_kernel(kernels.resolve_kernel(self.kernel_choice))

    def _name(self, index) -> str:
        """The parameter's name for messages (from ``gluon.Trainer`` if it gave them)."""
        param = self.param_dict.get(index)
        return repr(param.name if param is not None else self.idx2name.get(index, index))


class _PreparedKey(NamedTuple):
    """A per-key call's state and options, the fused update prepared for them (None: a
    row_sparse gradient seen once) and its arrays as :class:`~.checks.Checked` (the weight and
    gradient the call handed)."""

    state: State
    options: AdagradOptions
    update: kernels.PreparedUpdate | None
    checked: Checked


def _same_objects(known: tuple | None, arrays: tuple) -> bool:
    """Whether ``known`` starts with the very objects of ``arrays``."""
    return known is not None and all(a is b for a, b in zip(known, arrays, strict=False))


def _check_no_decay(compat: str, wd: float) -> None:
    """A preset whose framework refuses weight decay (``groupadagrad``) needs ``wd == 0``."""
    if compat in NO_WEIGHT_DECAY_PRESETS and wd:
        raise ValueError(f"compat={compat!r} has no weight decay (the framework refuses it): "
                         f"wd must be 0, got {wd!r}")


def _each(function, values: list) -> list:
    """``[function(v) for v in values]`` with one call per distinct value (a Trainer's rates
    and decays are mostly equal). Exact for the functions used here: equal floats differ only
    as 0.0 and -0.0, which :func:`~.options.flush_subnormal` maps to the same 0.0."""
    if len(values) == 1:
        return [function(values[0])]
    results = {value: function(value) for value in set(values)}
    return [results[value] for value in values]


def register() -> None:
    """Register :class:`AdagradScratch` under the name ``adagrad_scratch``.

    ``@mx.optimizer.register`` would file the class as ``adagradscratch`` (its lower-cased
    name), so the registry entry is written directly. Idempotent.
    """
    mx.optimizer.Optimizer.opt_registry[REGISTERED_NAME] = AdagradScratch
