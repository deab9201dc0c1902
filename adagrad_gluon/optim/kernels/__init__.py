"""Fused Adagrad kernels: an MXNet operator library, built on first use and loaded once.

The update of :func:`adagrad_gluon.functional.adagrad_update` (every option, the same rounding,
so float32 and float64 results are bit-identical to it) as one pass over memory, in place,
inside MXNet's engine. The C++ source, ``adagrad_ops.cc`` beside this file, is compiled on the
user's machine the first time an optimizer asks for it (never at import, never shipped as a binary)
with ``g++ -std=c++17 -O3 -march=native -fno-math-errno -ffp-contract=off -fopenmp``, into
``$ADAGRAD_GLUON_CACHE_DIR/kernels`` (else the user cache directory), under a key that hashes
the source, the flags, the compiler, the CPU and the MXNet version. A file lock keeps
concurrent processes from building it twice; the library appears atomically (built under a
temporary name, then renamed) and is loaded with ``mx.library.load`` at most once per process.

Which update runs:

* ``kernel='fused'`` (or ``ADAGRAD_GLUON_KERNEL=fused``): the kernels, or
  :class:`KernelUnavailableError` if they cannot be built or loaded;
* ``kernel='reference'`` (or ``ADAGRAD_GLUON_KERNEL=reference``): the NDArray reference;
* ``kernel='auto'`` (the default): the kernels if they build, else the reference, with one
  :class:`KernelFallbackWarning` per process. An explicit argument beats the variable.

The compiler is ``$ADAGRAD_GLUON_CXX``, else ``$CXX``, else ``g++``. The kernels run on
``num_threads()`` OpenMP threads: ``$ADAGRAD_GLUON_NUM_THREADS``, else ``$OMP_NUM_THREADS``,
else every CPU the process may use. (MXNet's own operators get half the cores on x86 unless
``MXNET_OMP_MAX_THREADS`` or ``OMP_NUM_THREADS`` says otherwise; one update on this
memory-bound loop is fastest with all of them.)
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import mxnet as mx
import numpy as np
from mxnet import nd

from ...d2l.data import CACHE_DIR_ENV
from ...validation import check_choice
from ..functional import EPS_PLACEMENTS, WEIGHT_DECAY_MODES

KERNEL_ENV = "ADAGRAD_GLUON_KERNEL"
CXX_ENV = "ADAGRAD_GLUON_CXX"
NUM_THREADS_ENV = "ADAGRAD_GLUON_NUM_THREADS"
KERNELS = ("auto", "fused", "reference")
SOURCE = Path(__file__).resolve().parent / "adagrad_ops.cc"
LIBRARY_NAME = "libadagrad_gluon_ops.so"
CXXFLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off",
            "-fopenmp", "-fPIC", "-shared")
# Tensors per multi-tensor call: gluon.Trainer hands the optimizer lists of this many.
AGGREGATE_NUM = 1024
BUILD_TIMEOUT_SECONDS = 600

# The operators' defaults for their optional attributes (as _attrs writes them)
_DEFAULT_ATTRS = dict(eps="1e-06", rescale_grad="1.0", eps_placement="inside",
                      weight_decay_mode="step", maximize="0", multi_precision="0")
_OPS = ("adagrad_gluon_update", "adagrad_gluon_multi_update", "adagrad_gluon_row_sparse_update")


class KernelUnavailableError(RuntimeError):
    """The fused kernels cannot be built or loaded (no compiler, a failed build or load)."""


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
        self.ops: dict[str, object] = {}


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


# -- building and loading -------------------------------------------------------------------

def compiler() -> str:
    """The C++ compiler command: ``$ADAGRAD_GLUON_CXX``, else ``$CXX``, else ``g++``."""
    return os.environ.get(CXX_ENV) or os.environ.get("CXX") or "g++"


def cache_dir() -> Path:
    """Where built libraries are kept: ``$ADAGRAD_GLUON_CACHE_DIR/kernels``, else the user
    cache directory's ``kernels``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]) / "kernels"
    import pooch

    return Path(pooch.os_cache("adagrad-gluon")) / "kernels"


def _mxnet_dir() -> Path:
    return Path(mx.__file__).resolve().parent


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and, on Linux, the CPU's feature flags."""
    signature = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    signature += "\n" + line.strip()
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        signature += platform.processor()
    return signature


def _build_command(cxx: str, output: Path) -> list[str]:
    mxnet_dir = _mxnet_dir()
    return [*shlex.split(cxx), *CXXFLAGS, str(SOURCE), str(mxnet_dir / "src" / "lib_api.cc"),
            "-I", str(mxnet_dir / "include"), "-o", str(output)]


def library_path(cxx: str | None = None) -> Path:
    """Where the library built by ``cxx`` (default :func:`compiler`) for this source, CPU and
    MXNet lives in :func:`cache_dir` (it may not exist yet)."""
    cxx = cxx or compiler()
    version = _compiler_version(cxx)
    mxnet_dir = _mxnet_dir()
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), (mxnet_dir / "src" / "lib_api.cc").read_bytes(),
                 (mxnet_dir / "include" / "mxnet" / "lib_api.h").read_bytes(),
                 " ".join(_build_command(cxx, Path("out"))).encode(), version.encode(),
                 mx.__version__.encode(), _cpu_signature().encode()):
        digest.update(hashlib.sha256(part).digest())
    return cache_dir() / digest.hexdigest()[:20] / LIBRARY_NAME


def _compiler_version(cxx: str) -> str:
    command = shlex.split(cxx)
    if not command or shutil.which(command[0]) is None:
        raise KernelUnavailableError(
            f"No C++ compiler: {cxx!r} was not found (install g++, or name a compiler in "
            f"{CXX_ENV})."
        )
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True,
                              timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelUnavailableError(f"The C++ compiler {cxx!r} does not run: {exc}.") from exc
    return done.stdout


def build(cxx: str | None = None) -> Path:
    """Build the library into :func:`cache_dir` unless it is there already; return its path.

    Concurrent callers (threads or processes) wait on a file lock and build it once. Raises
    :class:`KernelUnavailableError` with the compiler's output if the build fails.
    """
    cxx = cxx or compiler()
    target = library_path(cxx)
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not target.is_file():
                _compile(cxx, target)
    except OSError as exc:
        raise KernelUnavailableError(f"Could not build the kernels in {target.parent}: {exc}.") \
            from exc
    return target


def _compile(cxx: str, target: Path) -> None:
    fd, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = _build_command(cxx, Path(temporary))
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_SECONDS)
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip().splitlines()
            raise KernelUnavailableError(
                f"Building the kernels failed ({shlex.join(command)} exited with "
                f"{done.returncode}): " + "\n".join(output[-20:])
            )
        os.chmod(temporary, 0o755)  # mkstemp made it private; a library is for everyone
        os.replace(temporary, target)
    except subprocess.SubprocessError as exc:
        raise KernelUnavailableError(f"Building the kernels failed: {exc}.") from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def load() -> Path:
    """Build (if needed) and load the library into MXNet, once per process; return its path.

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
            path = build()
            try:
                mx.library.load(str(path), verbose=False)
            except mx.base.MXNetError as exc:
                raise KernelUnavailableError(f"MXNet could not load {path}: {exc}") from exc
        except KernelUnavailableError as exc:
            _library.error = exc
            raise
        _library.handle = ctypes.CDLL(str(path))  # the same handle MXNet opened
        _library.ops = {name: getattr(nd, name) for name in _OPS}
        _library.path = path
        _set_threads(threads)
        return path


def _op(name: str):
    if _library.path is None:
        load()
    return _library.ops[name]


# -- threads --------------------------------------------------------------------------------

def _default_num_threads() -> int:
    for variable in (NUM_THREADS_ENV, "OMP_NUM_THREADS"):
        text = os.environ.get(variable, "").split(",")[0].strip()
        if text:
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"{variable} must be an integer >= 1, got {text!r}")
            return int(text)
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
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    load()
    _set_threads(n)


# -- the updates ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)  # options rarely change between steps; callers copy it
def _attrs(eps: float = 1e-6, rescale_grad: float = 1.0, clip_gradient: float | None = None,
           eps_placement: str = "inside", weight_decay_mode: str = "step",
           maximize: bool = False, multi_precision: bool = False) -> dict[str, str]:
    """The shared options as operator attributes, floats as exact decimal strings. Options at
    their default are left out: every attribute costs the operator call ~1 us."""
    check_choice("eps_placement", eps_placement, EPS_PLACEMENTS)
    check_choice("weight_decay_mode", weight_decay_mode, WEIGHT_DECAY_MODES)
    attrs = dict(eps=repr(float(eps)), rescale_grad=repr(float(rescale_grad)),
                 eps_placement=eps_placement, weight_decay_mode=weight_decay_mode,
                 maximize="1" if maximize else "0", multi_precision="1" if multi_precision else "0")
    if clip_gradient is not None:
        attrs["clip_gradient"] = repr(float(clip_gradient))
    return {key: value for key, value in attrs.items() if _DEFAULT_ATTRS.get(key) != value}


def fused_update(weight: nd.NDArray, grad: nd.NDArray, state: nd.NDArray,
                 master: nd.NDArray | None = None, *, lr: float, wd: float = 0.0,
                 **options) -> None:
    """One Adagrad step in place, as :func:`adagrad_gluon.functional.adagrad_update` computes
    it (the same operations in the same order), in a single pass over memory. With the
    default options::

        g = rescale_grad * grad;  s = s + g * g;  w = w + (g / sqrt(s + eps) + wd * w) * -lr

    ``weight``, ``state`` (and ``master``) are written; nothing is returned. ``weight`` and
    ``grad`` are float32 with a float32 ``state``, float64 with float64, or float16 with a
    float32 ``state``; float16 weights are updated in float32 and rounded back, from the
    float32 ``master`` copy if one is given. A ``row_sparse`` ``grad`` gets the lazy update
    of :func:`adagrad_gluon.functional.adagrad_update_row_sparse`. ``options``: ``eps``,
    ``rescale_grad``, ``clip_gradient``, ``eps_placement``, ``weight_decay_mode``,
    ``maximize``, as for the reference. The operator checks shapes and dtypes and raises
    ``mxnet.base.MXNetError`` on a mismatch.
    """
    attrs = _attrs(multi_precision=master is not None, **options)
    arrays = (weight, grad, state) if master is None else (weight, grad, state, master)
    name = "adagrad_gluon_row_sparse_update" if grad.stype == "row_sparse" else \
        "adagrad_gluon_update"
    _op(name)(*arrays, lr=repr(float(lr)), wd=repr(float(wd)), **attrs)


def fused_multi_update(weights: Sequence[nd.NDArray], grads: Sequence[nd.NDArray],
                       states: Sequence[nd.NDArray], masters: Sequence[nd.NDArray] | None = None,
                       *, lrs: Sequence[float], wds: Sequence[float], **options) -> None:
    """:func:`fused_update` for many dense tensors in one operator call, each with its own
    learning rate ``lrs[i]`` and weight decay ``wds[i]``; ``options`` are shared. With
    ``masters``, every weight is float16 with a float32 master copy."""
    count = len(weights)
    lists = (grads, states, lrs, wds) + (() if masters is None else (masters,))
    if any(len(values) != count for values in lists):
        raise ValueError(f"weights, grads, states, lrs, wds (and masters) must have one length; "
                         f"got {[count, *map(len, lists)]}")
    if count == 0:
        return
    groups = zip(weights, grads, states, strict=True) if masters is None else \
        zip(weights, grads, states, masters, strict=True)
    _multi_update([array for group in groups for array in group], lrs, wds,
                  masters is not None, options)


def _multi_update(arrays: list[nd.NDArray], lrs: Sequence[float], wds: Sequence[float],
                  with_masters: bool, options: dict) -> None:
    """One multi-tensor call on ``arrays`` = weight, grad, state[, master] of each tensor."""
    _op("adagrad_gluon_multi_update")(
        *arrays, num_tensors=str(len(lrs)),
        lrs=",".join([repr(float(lr)) for lr in lrs]),
        wds=",".join([repr(float(wd)) for wd in wds]),
        **_attrs(multi_precision=with_masters, **options),
    )


class Step(NamedTuple):
    """One parameter's update, as :func:`fused_steps` takes it."""

    weight: nd.NDArray
    grad: nd.NDArray
    acc: nd.NDArray
    master: nd.NDArray | None  # the float32 copy of a float16 weight, if kept
    lr: float
    wd: float
    row_sparse: bool  # whether ``grad`` is row_sparse


def supports(weight: nd.NDArray, acc: nd.NDArray, master: nd.NDArray | None) -> bool:
    """Whether the kernels take these dtypes: a float32 or float16 weight with a float32
    accumulator (and float32 master), or float64 with float64: what ``AdagradScratch``
    creates."""
    if master is not None:
        return weight.dtype == np.float16 and acc.dtype == master.dtype == np.float32
    return acc.dtype == (np.float64 if weight.dtype == np.float64 else np.float32)


def fused_steps(steps: Sequence[Step], **options) -> None:
    """Run many steps at once: the dense ones in one multi-tensor call (float16 weights with
    master copies in a call of their own), the ``row_sparse`` ones one by one. ``options``
    are shared, as for :func:`fused_update`."""
    # per kind (with master weights or not): the operator's inputs, lrs and wds
    dense: dict[bool, tuple[list, list, list]] = {False: ([], [], []), True: ([], [], [])}
    for step in steps:
        if step.row_sparse:
            fused_update(step.weight, step.grad, step.acc, step.master, lr=step.lr, wd=step.wd,
                         **options)
            continue
        arrays, lrs, wds = dense[step.master is not None]
        arrays += step[:4] if step.master is not None else step[:3]
        lrs.append(step.lr)
        wds.append(step.wd)
    for with_masters, (arrays, lrs, wds) in dense.items():
        if lrs:
            _multi_update(arrays, lrs, wds, with_masters, options)
