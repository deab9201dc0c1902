"""Building the fused kernels' library: the compiler, the cache key (the trust checks are
:mod:`.trust`), the digest record, the build lock, the compile and its announcement.

The C++ source, ``adagrad_ops.cc`` beside this file, is compiled on the user's machine the
first time an optimizer asks for it (never at import, never shipped as a binary) with
``g++ -std=c++17 -O3 -march=native -fno-math-errno -ffp-contract=off -fopenmp``, into
``$ADAGRAD_GLUON_CACHE_DIR/kernels`` (else the user cache directory), under a key that hashes
contents only (the source, the flags, the compiler's version, the CPU and the MXNet version,
never a path), so every clone and environment on a machine shares one build; a build says so
on stderr. A file lock keeps concurrent processes from building it twice; the library is
flushed to disk under a temporary name, renamed into place and its SHA-256 recorded beside it.
Before it is loaded (:func:`adagrad_gluon.optim.kernels.load`), its bytes must match that
record (else it is rebuilt) and the cache must be private to the user (else it is refused).
The compiler is ``$ADAGRAD_GLUON_CXX``, else ``$CXX``, else ``g++``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mxnet as mx

from ...cache import cache_root
from .errors import KernelUnavailableError
from .trust import private_directory, read_own_file

CXX_ENV = "ADAGRAD_GLUON_CXX"
SOURCE = Path(__file__).resolve().parent / "adagrad_ops.cc"
LIBRARY_NAME = "libadagrad_gluon_ops.so"
CXXFLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off",
            "-fopenmp", "-fPIC", "-shared")
BUILD_TIMEOUT_SECONDS = 600






def compiler() -> str:
    """The C++ compiler command: ``$ADAGRAD_GLUON_CXX``, else ``$CXX``, else ``g++``."""
    return os.environ.get(CXX_ENV) or os.environ.get("CXX") or "g++"


def cache_dir() -> Path:
    """Where built libraries are kept: ``$ADAGRAD_GLUON_CACHE_DIR/kernels``, else the user
    cache directory's ``kernels``."""
    return cache_root() / "kernels"


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
    with ready_library(cxx or compiler()) as path:
        return path


@contextlib.contextmanager
def ready_library(cxx: str) -> Iterator[Path]:
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
            directory = private_directory(library_path(cxx).parent)
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


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Hold the exclusive build lock of a key directory (released when the file closes),
    saying on stderr when another process holds it (its build can take a minute). In a
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
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"adagrad_gluon: waiting for another process to finish building the fused "
                  f"Adagrad kernels (lock {path})...", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_temporaries(directory: Path) -> None:
    """Delete what killed builds left (only call with the build lock held: then no build is
    running, and every temporary file is stale)."""
    for pattern in ("tmp*.so", "tmp*.json"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)


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
        data = read_own_file(library)
    except FileNotFoundError:
        return _NOT_BUILT
    try:
        recorded = json.loads(read_own_file(_record_path(library)))
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

