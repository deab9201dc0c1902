"""Fused Adagrad kernels: an MXNet operator library, built on first use and loaded once.

:func:`fused_steps` is :func:`adagrad_gluon.optim.functional.reference_steps` (the same
signature, every option, the same rounding, so float32 and float64 results are bit-identical
to it) as one pass over memory, in place, inside MXNet's engine. :mod:`.build` compiles the C++
source, ``adagrad_ops.cc`` beside this file, into a private cache the first time an optimizer
asks for it; this module chooses the path, loads the library with ``mx.library.load`` at most
once per process, sets its threads and encodes the options as operator attributes.

Which update runs:

* ``kernel='fused'`` (or ``ADAGRAD_GLUON_KERNEL=fused``): the kernels, or
  :class:`KernelUnavailableError` if they cannot be built or loaded;
* ``kernel='reference'`` (or ``ADAGRAD_GLUON_KERNEL=reference``): the NDArray reference;
* ``kernel='auto'`` (the default): the kernels if they build, else the reference, with one
  :class:`KernelFallbackWarning` per process. An explicit argument beats the variable.

The kernels run on ``num_threads()`` OpenMP threads: ``$ADAGRAD_GLUON_NUM_THREADS``, else
``$OMP_NUM_THREADS`` (ignored with a warning if invalid, as OpenMP ignores it), else every CPU
the process may use. (MXNet's own operators get half the cores on x86 unless
``MXNET_OMP_MAX_THREADS`` or ``OMP_NUM_THREADS`` says otherwise; one update on this
memory-bound loop is fastest with all of them.)
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import warnings
from array import array as typed_array
from collections.abc import Sequence
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import nd

from ...validation import check_choice, check_count
from ..functional import Step, reference_steps
from ..options import AdagradOptions
from . import build as build_module
from .build import (
    BUILD_TIMEOUT_SECONDS,
    CXX_ENV,
    CXXFLAGS,
    LIBRARY_NAME,
    SOURCE,
    KernelUnavailableError,
    build,
    cache_dir,
    compiler,
    library_path,
)
from .invoke import Attributes, Operator, handles

__all__ = ["AGGREGATE_NUM", "BUILD_TIMEOUT_SECONDS", "CXXFLAGS", "CXX_ENV", "KERNELS",
           "KERNEL_ENV", "LIBRARY_NAME", "NUM_THREADS_ENV", "SOURCE", "KernelFallbackWarning",
           "KernelUnavailableError", "Step", "available", "build", "build_module", "cache_dir",
           "check_kernel", "compiler", "fused_steps", "library_path", "load", "multi_attributes",
           "num_threads", "operator", "PreparedUpdate", "prepare", "resolve_kernel",
           "set_num_threads", "supports"]

KERNEL_ENV = "ADAGRAD_GLUON_KERNEL"
NUM_THREADS_ENV = "ADAGRAD_GLUON_NUM_THREADS"
KERNELS = ("auto", "fused", "reference")
# Tensors per multi-tensor call: gluon.Trainer hands the optimizer lists of this many.
AGGREGATE_NUM = 1024

# The operators' defaults for their optional attributes (as _attrs writes them)
_DEFAULT_ATTRS = dict(eps="1e-06", rescale_grad="1.0", eps_placement="inside",
                      weight_decay_mode="step", maximize="0", multi_precision="0")
# the row-wise operators, by: is the gradient row_sparse?
_ROWWISE_OPS = {False: "adagrad_gluon_rowwise_update",
                True: "adagrad_gluon_rowwise_row_sparse_update"}
_DENSE_OP = "adagrad_gluon_update"  # one dense tensor
_OPS = (_DENSE_OP, "adagrad_gluon_multi_update", "adagrad_gluon_q8_update",
        "adagrad_gluon_row_sparse_update", *_ROWWISE_OPS.values())


class KernelFallbackWarning(RuntimeWarning):
    """``kernel='auto'`` fell back to the reference update because the kernels are unavailable."""


class _Library:
    """The process-wide state: the loaded library, or why it could not be had."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.path: Path | None = None
        self.error: KernelUnavailableError | None = None
        self.warned = False
        self.handle: ctypes.CDLL | None = None
        self.ops: dict[str, Operator] = {}
        self.grad_state_loops: GradStateLoops | None = None


_library = _Library()


# -- choosing the path ----------------------------------------------------------------------

def check_kernel(kernel, name: str = "kernel") -> str:
    """Return ``kernel`` if it is one of ``'auto'``, ``'fused'``, ``'reference'``."""
    return check_choice(name, kernel, KERNELS)


def resolve_kernel(kernel: str = "auto") -> str:
    """The update to run for an optimizer's ``kernel=`` argument: ``'fused'`` or
    ``'reference'``.

    ``'auto'`` defers to ``$ADAGRAD_GLUON_KERNEL`` if set; then ``'fused'`` builds and loads
    the library (raising :class:`KernelUnavailableError` if it cannot), and ``'auto'`` takes it
    if it can be had, else warns once per process and returns ``'reference'``.
    """
    kernel = check_kernel(kernel)
    if kernel == "auto":
        kernel = check_kernel(os.environ.get(KERNEL_ENV) or "auto", name=KERNEL_ENV)
    if kernel == "fused":
        load()
    elif kernel == "auto":
        kernel = "fused" if available() else "reference"
    return kernel


def available() -> bool:
    """Whether the kernels can be used, building and loading them if needed. The first
    failure in a process emits one :class:`KernelFallbackWarning`."""
    try:
        load()
    except KernelUnavailableError as exc:
        with _library.lock:
            first = not _library.warned
            _library.warned = True
        if first:
            warnings.warn(
                f"adagrad_gluon: the fused Adagrad kernels are unavailable, so adagrad_scratch "
                f"uses its slower reference NDArray update. {exc} (Set {KERNEL_ENV}=reference "
                f"to choose that path and silence this warning.)",
                KernelFallbackWarning, stacklevel=3,
            )
        return False
    return True


def load() -> Path:
    """Build (if needed), verify and load the library into MXNet, once per process; return
    its path.

    Later calls return the same path without loading again (MXNet refuses an operator library
    registered a third time); a failure is remembered and raised again as
    :class:`KernelUnavailableError`.
    """
    with _library.lock:
        if _library.path is not None:
            return _library.path
        if _library.error is not None:
            raise _library.error
        threads = _default_num_threads()  # a bad variable is an error before anything is built
        try:
            with build_module.ready_library(compiler()) as path:
                try:
                    mx.library.load(str(path), verbose=False)
                except mx.base.MXNetError as exc:
                    raise KernelUnavailableError(f"MXNet could not load {path}: {exc}") from exc
                _library.handle = ctypes.CDLL(str(path))  # the same handle MXNet opened
        except KernelUnavailableError as exc:
            _library.error = exc
            raise
        _library.ops = {name: Operator(name) for name in _OPS}
        _library.grad_state_loops = GradStateLoops(_library.handle)
        _library.path = path
        _set_threads(threads)
        return path


class GradStateLoops:
    """The library's loops over the gradient states of many arrays (``get(get_state, arrays,
    n, states)``, ``set(set_state, arrays, n, state)``: the C API's ``MXNDArrayGetGradState`` /
    ``MXNDArraySetGradState`` called for each of ``n`` array handles; 0, or -1 on failure)."""

    def __init__(self, handle: ctypes.CDLL) -> None:
        self.get = handle.adagrad_gluon_get_grad_states
        self.set = handle.adagrad_gluon_set_grad_states
        pointer = ctypes.c_void_p
        self.get.argtypes = [pointer, pointer, ctypes.c_int64, pointer]
        self.set.argtypes = [pointer, pointer, ctypes.c_int64, ctypes.c_int]
        self.get.restype = self.set.restype = ctypes.c_int


def grad_state_loops() -> GradStateLoops | None:
    """The loops of :class:`GradStateLoops` if the library is loaded, else None (they are
    not worth a build of their own)."""
    return _library.grad_state_loops


def operator(name: str) -> Operator:
    """This library's operator ``name``, called without the Python of MXNet's generated
    ``nd.<name>`` (see :mod:`.invoke`); loads (and if need be builds) the library."""
    if _library.path is None:
        load()
    return _library.ops[name]


# -- threads --------------------------------------------------------------------------------

def _count_from(variable: str) -> int | None:
    """The thread count in the environment ``variable`` (its first entry, as OpenMP reads a
    list), or ``None`` if unset; ValueError if it is not an integer >= 1."""
    text = os.environ.get(variable, "").split(",")[0].strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{variable} must be an integer >= 1, got {text!r}")
    return int(text)


def _default_num_threads() -> int:
    """``$ADAGRAD_GLUON_NUM_THREADS`` (ValueError if invalid: it is this package's own
    setting), else ``$OMP_NUM_THREADS`` (ignored with a RuntimeWarning if invalid, as OpenMP
    itself ignores it), else every CPU the process may use."""
    count = _count_from(NUM_THREADS_ENV)
    if count is None:
        try:
            count = _count_from("OMP_NUM_THREADS")
        except ValueError as exc:
            warnings.warn(f"adagrad_gluon: {exc}; ignoring it, as OpenMP does, so the fused "
                          f"kernels use every CPU.", RuntimeWarning, stacklevel=2)
    if count is not None:
        return count
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _set_threads(n: int) -> int:
    function = _library.handle.adagrad_gluon_num_threads
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function(n)


def num_threads() -> int:
    """The number of OpenMP threads one fused update may use (loads the library)."""
    load()
    return _set_threads(0)


def set_num_threads(n: int) -> None:
    """Let one fused update use ``n`` OpenMP threads (loads the library). Updates smaller than
    65536 elements always run on one thread."""
    n = check_count("n", n, minimum=1)
    load()
    _set_threads(n)


# -- the updates ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)  # options rarely change between steps; callers copy it
def _attrs(options: AdagradOptions, multi_precision: bool) -> dict[str, str]:
    """The shared options as operator attributes, floats as exact decimal strings. Options at
    their default are left out: every attribute costs the operator call ~1 us."""
    attrs = dict(eps=repr(float(options.eps)), rescale_grad=repr(float(options.rescale_grad)),
                 eps_placement=options.eps_placement,
                 weight_decay_mode=options.weight_decay_mode,
                 maximize="1" if options.maximize else "0",
                 multi_precision="1" if multi_precision else "0")
    if options.clip_gradient is not None:
        attrs["clip_gradient"] = repr(float(options.clip_gradient))
    return {key: value for key, value in attrs.items() if _DEFAULT_ATTRS.get(key) != value}


@functools.lru_cache(maxsize=64)
def _single_attributes(options: AdagradOptions, multi_precision: bool) -> Attributes:
    """:func:`_attrs` as the C arrays of a single-tensor call (``lr`` and ``wd`` added per
    call, see :class:`~.invoke.Attributes`)."""
    return Attributes(_attrs(options, multi_precision))


def supports(weight: nd.NDArray, acc: nd.NDArray, master: nd.NDArray | None) -> bool:
    """Whether the kernels take these dtypes: a float32 or float16 weight with a float32
    accumulator (and float32 master), or float64 with float64: what ``AdagradScratch``
    creates."""
    if master is not None:
        return weight.dtype == np.float16 and acc.dtype == master.dtype == np.float32
    return acc.dtype == (np.float64 if weight.dtype == np.float64 else np.float32)


def _arrays(step: Step) -> tuple[nd.NDArray, ...]:
    """The operators' inputs of one step: weight, grad, acc[, master]."""
    if step.master is None:
        return step.weight, step.grad, step.acc
    return step.weight, step.grad, step.acc, step.master


def fused_steps(steps: Sequence[Step], options: AdagradOptions) -> None:
    """:func:`adagrad_gluon.optim.functional.reference_steps` in a single pass over memory
    per tensor, bit-identical to it (the same operations in the same order): the dense steps
    in one multi-tensor call (float16 weights with master copies in a call of their own; a
    single dense step by the single-tensor operator), the ``row_sparse`` ones one by one, and
    any with a master copy whose dtypes the kernels do not take (see :func:`supports`: the
    optimizer's checks make sure of the others') through the reference. With
    ``options.rowwise`` every step goes through a row-wise operator of its own.
    The operators check shapes and dtypes and raise ``mxnet.base.MXNetError`` on a mismatch,
    and on row indices out of order or range."""
    dense: dict[bool, list[Step]] = {False: [], True: []}  # by: with master weights?
    for step in steps:
        name = _single_operator(step, options)
        if name is None:
            reference_steps([step], options)
        elif name == _DENSE_OP:
            dense[step.master is not None].append(step)
        else:
            PreparedUpdate(name, step, options)(step.lr, step.wd)
    for with_masters, group in dense.items():
        if len(group) == 1:
            PreparedUpdate(_DENSE_OP, group[0], options)(group[0].lr, group[0].wd)
        elif group:
            _multi_update(group, options, with_masters)


def _single_operator(step: Step, options: AdagradOptions) -> str | None:
    """The single-tensor operator that runs ``step`` on its own, or None for the reference
    (a master copy whose dtypes the kernels do not take)."""
    if step.master is not None and not supports(step.weight, step.acc, step.master):
        return None
    if options.rowwise:
        return _ROWWISE_OPS[step.row_sparse]
    return "adagrad_gluon_row_sparse_update" if step.row_sparse else _DENSE_OP


class PreparedUpdate:
    """One tensor's update by a single-tensor operator with everything but its rates encoded:
    the arrays' handles (kept alive with the arrays) and the options' attributes. Call it with
    ``(lr, wd)``; a parameter server's per-key calls reuse it (see :func:`prepare`)."""

    def __init__(self, name: str, step: Step, options: AdagradOptions) -> None:
        self._arrays = _arrays(step)
        self._inputs = handles(self._arrays)
        self._operator = operator(name)
        self._attributes = _single_attributes(options, step.master is not None)

    def __call__(self, lr: float, wd: float) -> None:
        attributes = self._attributes
        self._operator.invoke(self._inputs, len(self._arrays), attributes.keys,
                              attributes.values(lr, wd), attributes.count)


def prepare(step: Step, options: AdagradOptions) -> PreparedUpdate | None:
    """The update :func:`fused_steps` runs for ``[step]`` alone with ``options``, prepared
    (a row_sparse gradient's rows are read when it runs: the same array may hold other rows
    at each call); None for the reference path."""
    name = _single_operator(step, options)
    return None if name is None else PreparedUpdate(name, step, options)


def _multi_update(steps: list[Step], options: AdagradOptions, with_masters: bool) -> None:
    """One multi-tensor call: weight, grad, acc[, master] of each step."""
    operator("adagrad_gluon_multi_update")(
        *[array for step in steps for array in _arrays(step)],
        **multi_attributes(steps, options, with_masters))


def multi_attributes(steps: Sequence[Step], options: AdagradOptions,
                     with_masters: bool) -> dict[str, str]:
    """The attributes of a multi-tensor operator (the float32 one, or the 8-bit one) for
    ``steps``: their count, rates, weight decays and the shared options."""
    return {"num_tensors": str(len(steps)),
            "lrs": _joined(typed_array("d", [step.lr for step in steps]).tobytes()),
            "wds": _joined(typed_array("d", [step.wd for step in steps]).tobytes()),
            **_attrs(options, with_masters)}


@functools.lru_cache(maxsize=16)  # a Trainer's rates rarely change from one step to the next
def _joined(numbers: bytes) -> str:
    """The float64 ``numbers`` (their bytes: the key tells -0.0 from 0.0, as ``repr`` does) as
    exact decimal strings, comma-separated: the operator's ``lrs``/``wds`` attribute."""
    return ",".join(map(repr, typed_array("d", numbers)))
