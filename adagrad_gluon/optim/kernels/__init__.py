"""Fused Adagrad kernels: an MXNet operator library, built on first use and loaded once.

The update of :func:`adagrad_gluon.functional.adagrad_update` (every option, the same rounding,
so float32 and float64 results are bit-identical to it) as one pass over memory, in place,
inside MXNet's engine. The C++ source, ``adagrad_ops.cc`` beside this file, is compiled on the
user's machine the first time an optimizer asks for it (never at import, never shipped as a binary)
with ``g++ -std=c++17 -O3 -march=native -fno-math-errno -ffp-contract=off -fopenmp``, into
``$ADAGRAD_GLUON_CACHE_DIR/kernels`` (else the user cache directory), under a key that hashes
contents only (the source, the flags, the compiler's version, the CPU and the MXNet version,
never a path), so every clone and environment on a machine shares one build; a build says so
on stderr. A file lock keeps concurrent processes from building it twice; the library is
flushed to disk under a temporary name, renamed into place and its SHA-256 recorded beside it.
Before loading, the library's bytes must match that record (else it is rebuilt) and the cache
must be private to the user (else it is refused); it is loaded with ``mx.library.load`` at
most once per process.

Which update runs:

* ``kernel='fused'`` (or ``ADAGRAD_GLUON_KERNEL=fused``): the kernels, or
  :class:`KernelUnavailableError` if they cannot be built or loaded;
* ``kernel='reference'`` (or ``ADAGRAD_GLUON_KERNEL=reference``): the NDArray reference;
* ``kernel='auto'`` (the default): the kernels if they build, else the reference, with one
  :class:`KernelFallbackWarning` per process. An explicit argument beats the variable.

The compiler is ``$ADAGRAD_GLUON_CXX``, else ``$CXX``, else ``g++``. The kernels run on
``num_threads()`` OpenMP threads: ``$ADAGRAD_GLUON_NUM_THREADS``, else ``$OMP_NUM_THREADS``
(ignored with a warning if invalid, as OpenMP ignores it), else every CPU the process may use.
(MXNet's own operators get half the cores on x86 unless ``MXNET_OMP_MAX_THREADS`` or
``OMP_NUM_THREADS`` says otherwise; one update on this memory-bound loop is fastest with all
of them.)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
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
    MXNet lives in :func:`cache_dir` (it may not exist yet).

    The key is made of contents only, never of paths, so that every clone, virtual
    environment and install location shares one build: the bytes of the source and of
    MXNet's ``lib_api`` files, the flags (and any arguments in the compiler command), the
    compiler's ``--version`` output, the CPU and the MXNet version.
    """
    cxx = cxx or compiler()
    mxnet_dir = _mxnet_dir()
    parts = [SOURCE.read_bytes(), (mxnet_dir / "src" / "lib_api.cc").read_bytes(),
             (mxnet_dir / "include" / "mxnet" / "lib_api.h").read_bytes(),
             "\0".join(CXXFLAGS).encode(), "\0".join(shlex.split(cxx)[1:]).encode(),
             _compiler_version(cxx).encode(), mx.__version__.encode(), _cpu_signature().encode()]
    digest = hashlib.sha256()
    for part in parts:
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
    """Build the library into :func:`cache_dir` unless a verified build is there already;
    return its path.

    Concurrent callers (threads or processes) wait on a file lock and build it once. Raises
    :class:`KernelUnavailableError` with the compiler's output if the build fails, and naming
    the path and the reason if the cache is not private to this user.
    """
    with _ready_library(cxx or compiler()) as path:
        return path


@contextlib.contextmanager
def _ready_library(cxx: str) -> Iterator[Path]:
    """Yield the path of a library whose bytes are the ones recorded when it was built,
    building it first if it is missing or fails that check, while holding the key directory's
    build lock (so that no build replaces it before the caller has loaded it).

    Why this is safe to load: the key directory and the kernels directory above it must be
    this user's (or root's) and writable by nobody else, and so must every directory above
    them (unless sticky, like ``/tmp``); so between the check and ``dlopen`` only this user
    (or root) can change which bytes the path names, and this user's processes only replace
    them under the lock. The digest is taken of the bytes read through a descriptor opened
    without following symbolic links, whose owner and mode are checked on that descriptor.
    A cache that fails the privacy check is refused, never repaired: a library planted there
    is not opened, so its constructors never run.
    """
    with contextlib.ExitStack() as stack:
        directory = None
        try:
            directory = _private_directory(library_path(cxx).parent)
            stack.enter_context(_build_lock(directory))
            _remove_temporaries(directory)
            target = directory / LIBRARY_NAME
            problem = _check_library(target)
            if problem is not None:
                _announced_compile(cxx, target, problem)
        except OSError as exc:
            raise KernelUnavailableError(
                f"Could not build the kernels in {directory or cache_dir()}: {exc}."
            ) from exc
        yield target


def _untrusted(info: os.stat_result, *, ancestor: bool = False) -> str | None:
    """Why another user could change a file or directory with this status, or ``None``. It
    must be this user's (or root's, who can change anything anyway) and writable by nobody
    else; an ancestor directory may be writable by others if sticky (like ``/tmp``: there
    only an entry's owner may rename it)."""
    uid = os.geteuid()
    if info.st_uid not in (uid, 0):
        return f"it is owned by uid {info.st_uid}, neither this user (uid {uid}) nor root"
    sticky = ancestor and info.st_mode & stat.S_ISVTX
    if info.st_mode & 0o022 and not sticky:
        return f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _refuse(path: Path | str, problem: str) -> KernelUnavailableError:
    return KernelUnavailableError(
        f"Refusing the kernel cache: {path} is not private to this user ({problem}), so "
        f"another user could plant a library there. Make it private (e.g. chmod go-w), or set "
        f"{CACHE_DIR_ENV} to a directory of your own."
    )


def _private_directory(directory: Path) -> Path:
    """Create the key ``directory`` and the kernels directory above it (mode 0o700) if needed;
    return its real path if no other user can change what it holds (see
    :func:`_ready_library`), else raise :class:`KernelUnavailableError` naming the culprit."""
    directory.parent.parent.mkdir(parents=True, exist_ok=True)
    for level in (directory.parent, directory):
        level.mkdir(mode=0o700, exist_ok=True)
    real = directory.resolve()
    for depth, path in enumerate((real, *real.parents)):
        problem = _untrusted(os.stat(path), ancestor=depth >= 2)
        if problem is not None:
            raise _refuse(path, problem)
    return real


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Hold the exclusive build lock of a key directory (released when the file closes). In a
    cache this user may read but not write (say, built in advance by root), the lock file
    is opened for reading: enough to check and load a library, not to build one."""
    path, flags = directory / "build.lock", os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        fd = os.open(path, os.O_RDONLY | flags)
    with open(fd, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_temporaries(directory: Path) -> None:
    """Delete what killed builds left (only call with the build lock held: then no build is
    running, and every temporary file is stale)."""
    for pattern in ("tmp*.so", "tmp*.json"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)


def _read_own_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file of this user's that nobody else may
    write, checked on the very descriptor that is read (symbolic links are not followed)."""
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as file:
        info = os.fstat(file.fileno())
        problem = _untrusted(info) if stat.S_ISREG(info.st_mode) else "it is not a regular file"
        if problem is not None:
            raise _refuse(path, problem)
        return file.read()


def _record_path(library: Path) -> Path:
    """The digest record written beside ``library`` after it was built."""
    return library.with_name(library.name + ".json")


def _record(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


_NOT_BUILT = "it is not built yet"


def _check_library(library: Path) -> str | None:
    """Why ``library`` must be (re)built, or ``None`` if its bytes are the ones recorded when
    it was built (a truncated or replaced file, or one without a record, is rebuilt)."""
    try:
        data = _read_own_file(library)
    except FileNotFoundError:
        return _NOT_BUILT
    try:
        recorded = json.loads(_read_own_file(_record_path(library)))
    except FileNotFoundError:
        return "no digest was recorded when it was built"
    except ValueError:
        return "its digest record is unreadable"
    if recorded != _record(data):
        return "it does not match the digest recorded when it was built"
    return None


def _announced_compile(cxx: str, target: Path, problem: str) -> None:
    """:func:`_compile`, saying so on stderr (a first use stalls for the build otherwise)."""
    if problem != _NOT_BUILT:
        print(f"adagrad_gluon: rebuilding {target}: {problem}.", file=sys.stderr)
    print("adagrad_gluon: compiling the fused Adagrad kernels (once per machine; this can take "
          "a minute)...", file=sys.stderr, flush=True)
    start = time.monotonic()
    _compile(cxx, target)
    print(f"adagrad_gluon: compiled the fused Adagrad kernels, done in "
          f"{time.monotonic() - start:.1f} s.", file=sys.stderr, flush=True)


def _compile(cxx: str, target: Path) -> None:
    """Build into a temporary file beside ``target``, then, if the compiler wrote a library,
    flush it to disk, rename it to ``target`` and record its digest beside it."""
    fd, temporary = tempfile.mkstemp(prefix="tmp", suffix=".so", dir=target.parent)
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
        data = _synced_output(temporary)
        if not data:
            raise KernelUnavailableError(
                f"Building the kernels failed: {shlex.join(command)} exited with 0 but wrote "
                f"no library (its output {temporary} is empty or missing)."
            )
        os.replace(temporary, target)
        _write_atomically(_record_path(target), json.dumps(_record(data)).encode())
    except subprocess.SubprocessError as exc:
        raise KernelUnavailableError(f"Building the kernels failed: {exc}.") from exc
    finally:
        Path(temporary).unlink(missing_ok=True)


def _synced_output(path: str) -> bytes:
    """The compiler's output, made private (whatever the umask) and flushed to disk; empty if
    there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    with open(fd, "rb") as file:
        os.fchmod(fd, 0o600)
        os.fsync(fd)
        return file.read()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: to a temporary file, flushed, then renamed;
    then flush the directory so both renames survive a crash."""
    fd, temporary = tempfile.mkstemp(prefix="tmp", suffix=".json", dir=path.parent)
    try:
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(fd)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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
            with _ready_library(compiler()) as path:
                try:
                    mx.library.load(str(path), verbose=False)
                except mx.base.MXNetError as exc:
                    raise KernelUnavailableError(f"MXNet could not load {path}: {exc}") from exc
                _library.handle = ctypes.CDLL(str(path))  # the same handle MXNet opened
        except KernelUnavailableError as exc:
            _library.error = exc
            raise
        _library.ops = {name: getattr(nd, name) for name in _OPS}
        _library.path = path
        _set_threads(threads)
        return path


def _op(name: str):
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
