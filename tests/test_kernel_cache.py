"""The kernel library's cache (:mod:`adagrad_gluon.kernels`): one real build that says so on
stderr, a key made of contents only, a library loaded only if its bytes are the ones built and
the cache is private to the user, and no temporary files left by failed or killed builds.

Every test uses a private ``ADAGRAD_GLUON_CACHE_DIR``. There is one real compile (the
``built`` fixture); the other tests use a stand-in compiler that copies that library into
place, and load libraries only in subprocesses, where a crash cannot take pytest down.
"""

import errno
import grp
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

import adagrad_gluon
from adagrad_gluon import kernels
from adagrad_gluon.data import CACHE_DIR_ENV

ANNOUNCEMENT = "compiling the fused Adagrad kernels"
NOBODY = 65534  # the uid of "nobody": another user than the one running the tests


def _environment(cache: Path, **updates: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (kernels.KERNEL_ENV, kernels.CXX_ENV, "OMP_NUM_THREADS")}
    return env | {CACHE_DIR_ENV: str(cache)} | updates


def _python(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _fake_compiler(path: Path, body: str) -> Path:
    """A stand-in for g++ that says ``stand-in 1.0`` to ``--version`` and otherwise runs
    ``body`` with ``$out`` set to the output file (the argument after ``-o``, the last)."""
    path.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo stand-in 1.0; exit 0; }\n"
                    "for arg; do out=$arg; done\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real build (and load) in a fresh cache, in a subprocess: the library's path and
    what the process wrote on stderr."""
    cache = tmp_path_factory.mktemp("real-cache")
    done = _python("from adagrad_gluon import kernels; print(kernels.load())",
                   _environment(cache), cache)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip()), done.stderr


@pytest.fixture
def copier(tmp_path, built):
    """A stand-in compiler that "builds" by copying the real library."""
    return _fake_compiler(tmp_path / "copy-c++", f"cp '{built[0]}' \"$out\"")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, private cache directory for this test (in this process too)."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


AUTO_AND_FUSED = """
        import warnings
        from adagrad_gluon import AdagradScratch, kernels
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print("AUTO:", AdagradScratch().kernel)
        print("WARNING:", *[w.message for w in caught
                            if issubclass(w.category, kernels.KernelFallbackWarning)])
        try:
            AdagradScratch(kernel="fused")
        except kernels.KernelUnavailableError as exc:
            print("FUSED:", exc)
"""
# which path kernel='auto' takes (and its warning), and what kernel='fused' says

LOAD_AND_UPDATE = """
    from mxnet import nd
    from adagrad_gluon import kernels
    from adagrad_gluon.optim.options import AdagradOptions
    kernels.load()
    w, s = nd.ones(4), nd.zeros(4)
    kernels.fused_steps([kernels.Step(w, nd.ones(4), s, None, 0.5, 0.0, False)],
                        AdagradOptions(eps=0.0))
    print("updated", w.asnumpy().tolist(), s.asnumpy().tolist())
"""


# -- telling the user about the build (and only about a real one) --------------------------

def test_a_real_build_says_so_once_on_stderr_and_a_cache_hit_says_nothing(built, tmp_path):
    path, stderr = built
    assert stderr.count(ANNOUNCEMENT) == 1, stderr
    assert "once per machine" in stderr and "done in" in stderr
    again = _python("from adagrad_gluon import kernels; print(kernels.load())",
                    _environment(path.parent.parent.parent), tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(path)
    assert ANNOUNCEMENT not in again.stderr


# -- the key: contents, never paths ---------------------------------------------------------

def _copy_lib_api(mxnet_dir: Path, to: Path) -> Path:
    for relative in ("src/lib_api.cc", "include/mxnet/lib_api.h"):
        (to / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mxnet_dir / relative, to / relative)
    return to


def test_the_key_depends_on_contents_not_on_paths(tmp_path, monkeypatch, cache):
    mxnet_dir = kernels.build_module._mxnet_dir()
    keys = []
    for place in ("clone-a", "elsewhere/clone-b"):
        source = tmp_path / place / "adagrad_ops.cc"
        source.parent.mkdir(parents=True)
        shutil.copyfile(kernels.SOURCE, source)
        copy_of_mxnet = _copy_lib_api(mxnet_dir, tmp_path / place / "mxnet")
        monkeypatch.setattr(kernels.build_module, "SOURCE", source)
        monkeypatch.setattr(kernels.build_module, "_mxnet_dir", lambda copy=copy_of_mxnet: copy)
        keys.append(kernels.library_path("g++"))
    assert keys[0] == keys[1]

    source.write_bytes(source.read_bytes() + b"\n")  # one byte more
    assert kernels.library_path("g++") != keys[0]
    shutil.copyfile(tmp_path / "clone-a" / "adagrad_ops.cc", source)
    assert kernels.library_path("g++") == keys[0]
    monkeypatch.setattr(kernels.build_module, "CXXFLAGS", (*kernels.CXXFLAGS, "-DNDEBUG"))
    assert kernels.library_path("g++") != keys[0]
    assert kernels.library_path("g++ -O2") != kernels.library_path("g++")


def test_a_copy_of_the_package_elsewhere_reuses_the_build(built, tmp_path):
    """A second clone (or virtual environment) of the same version does not compile again."""
    path, _ = built
    package = Path(adagrad_gluon.__file__).parent
    clone = tmp_path / "another" / "clone"
    shutil.copytree(package, clone / "adagrad_gluon",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = _environment(path.parent.parent.parent, PYTHONPATH=str(clone))
    done = _python("from adagrad_gluon import kernels; print(kernels.SOURCE); "
                   "print(kernels.load())", env, tmp_path)
    assert done.returncode == 0, done.stderr
    source = clone / "adagrad_gluon" / kernels.SOURCE.relative_to(package)
    assert done.stdout.split() == [str(source), str(path)]
    assert ANNOUNCEMENT not in done.stderr


# -- a library is loaded only if it is the one that was built -------------------------------

def _record(library: Path) -> dict:
    return json.loads(library.with_name(library.name + ".json").read_text())


def test_a_build_records_its_digest_in_private_directories(copier, cache):
    library = kernels.build(str(copier))
    data = library.read_bytes()
    assert _record(library) == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    for directory in (library.parent, library.parent.parent):
        assert directory.stat().st_mode & 0o777 == 0o700, directory


def test_under_umask_002_the_cache_it_creates_is_private(copier, tmp_path, monkeypatch):
    """umask 002 (the default for users with their own group) must not make the directories
    the build creates, cache root included, group-writable, or the cache is refused."""
    cache = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    previous = os.umask(0o002)
    try:
        library = kernels.build(str(copier))
    finally:
        os.umask(previous)
    for directory in (library.parent, *library.parents):
        if directory == tmp_path:
            break
        assert directory.stat().st_mode & 0o777 == 0o700, directory


def test_a_group_writable_directory_of_ones_own_private_group_is_trusted(copier, cache):
    """Under umask 002 directories made by other tools are 775 with the user's own group, which
    has no other member: as private as 700. A group with other members stays refused."""
    if not set(grp.getgrgid(os.getegid()).gr_mem) <= {pwd.getpwuid(os.geteuid()).pw_name}:
        pytest.skip("this user's group has other members here")
    library = kernels.build(str(copier))
    library.parent.chmod(0o775)
    os.chown(library.parent, -1, os.getegid())
    assert kernels.build(str(copier)) == library  # trusted: no rebuild, no refusal
    os.chown(library.parent, -1, NOBODY)  # a group of someone else's
    with pytest.raises(kernels.KernelUnavailableError, match="writable by group or others"):
        kernels.build(str(copier))


@pytest.mark.parametrize("damage", ["truncated", "emptied", "without a record"])
def test_a_damaged_library_is_rebuilt_instead_of_loaded(damage, copier, cache, tmp_path):
    library = kernels.build(str(copier))
    size = library.stat().st_size
    if damage == "without a record":
        library.with_name(library.name + ".json").unlink()
    else:
        os.truncate(library, size // 3 if damage == "truncated" else 0)
    done = _python(LOAD_AND_UPDATE, _environment(cache, **{kernels.CXX_ENV: str(copier)}),
                   tmp_path)
    assert done.returncode == 0, done.stderr  # no SIGBUS / SIGSEGV, no MXNetError
    assert "updated [0.5, 0.5, 0.5, 0.5] [1.0, 1.0, 1.0, 1.0]" in done.stdout
    assert f"rebuilding {library}" in done.stderr and ANNOUNCEMENT in done.stderr
    assert library.stat().st_size == size
    assert _record(library)["size"] == size


def test_a_compiler_that_writes_nothing_is_a_failed_build(tmp_path, cache):
    silent = _fake_compiler(tmp_path / "silent-c++", "exit 0")
    with pytest.raises(kernels.KernelUnavailableError, match="exited with 0 but wrote no library"):
        kernels.build(str(silent))
    assert list(cache.rglob("*.so")) == []  # no 0-byte library left to be loaded later
    done = _python(AUTO_AND_FUSED, _environment(cache, **{kernels.CXX_ENV: str(silent)}), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "AUTO: reference" in done.stdout
    assert "WARNING: adagrad_gluon: the fused Adagrad kernels are unavailable" in done.stdout
    assert done.stdout.count("wrote no library") == 2  # in the warning and in the error
    assert list(cache.rglob("*.so")) == []


def test_a_cache_this_user_cannot_write_still_serves_its_verified_library(copier, cache,
                                                                           monkeypatch):
    """Say root built the cache in advance: reading and checking the library needs no write
    access, only a rebuild does (and then fails with a clear error)."""
    library = kernels.build(str(copier))
    open_for_real = os.open

    def read_only_cache(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and cache in Path(path).parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open_for_real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_cache)
    assert kernels.build(str(copier)) == library
    os.truncate(library, 100)
    with pytest.raises(kernels.KernelUnavailableError, match="Could not build.*Permission denied"):
        kernels.build(str(copier))


# -- a cache another user could write to is refused ----------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A library whose constructor writes the file named by ``$PLANTED_MARKER`` on dlopen."""
    directory = tmp_path_factory.mktemp("planted")
    source = directory / "planted.c"
    source.write_text(textwrap.dedent("""
        #include <stdio.h>
        #include <stdlib.h>
        __attribute__((constructor)) static void planted(void) {
          const char *path = getenv("PLANTED_MARKER");
          FILE *f = path ? fopen(path, "w") : NULL;
          if (f) { fputs("the planted constructor ran\\n", f); fclose(f); }
        }
    """))
    subprocess.run(["g++", "-x", "c", "-shared", "-fPIC", str(source), "-o",
                    str(directory / "planted.so")], check=True, timeout=300)
    return directory / "planted.so"


def _plant(library: Path, planted: Path) -> None:
    """Put ``planted`` at ``library`` with a matching digest record, as an attacker could."""
    library.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(planted, library)
    data = library.read_bytes()
    library.with_name(library.name + ".json").write_text(json.dumps(
        {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}))


def _writable_by_others(path: Path) -> None:
    path.chmod(0o777)


def _owned_by_another_user(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


UNSAFE = {  # what to change, relative to the library -> what is wrong with the cache
    "world-writable kernels directory": (lambda lib: [lib.parent.parent], _writable_by_others),
    "world-writable key directory": (lambda lib: [lib.parent], _writable_by_others),
    "world-writable cache root": (lambda lib: [lib.parent.parent.parent], _writable_by_others),
    "key directory of another user": (lambda lib: [lib.parent], _owned_by_another_user),
    "library of another user": (
        lambda lib: [lib, lib.with_name(lib.name + ".json")], _owned_by_another_user),
}


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("unsafe", list(UNSAFE))
def test_a_library_in_a_cache_others_can_write_is_never_opened(unsafe, planted, copier, cache,
                                                                tmp_path):
    library = kernels.library_path(str(copier))
    _plant(library, planted)
    which, change = UNSAFE[unsafe]
    culprits = which(library)
    for path in culprits:
        change(path)
    marker = tmp_path / "constructor-ran"
    environment = _environment(cache, PLANTED_MARKER=str(marker),
                               **{kernels.CXX_ENV: str(copier)})
    done = _python(AUTO_AND_FUSED, environment, tmp_path)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "the planted library was opened"
    assert "AUTO: reference" in done.stdout
    reason = "owned by uid 65534" if "another user" in unsafe else "writable by group or others"
    for line in ("WARNING: adagrad_gluon: the fused Adagrad kernels are unavailable", "FUSED:"):
        text = done.stdout.split(line, 1)[1].splitlines()[0]
        assert f"Refusing the kernel cache: {culprits[0]} is not private" in text, text
        assert reason in text and CACHE_DIR_ENV in text
    assert ANNOUNCEMENT not in done.stderr  # refused, not rebuilt over
    assert library.read_bytes() == planted.read_bytes()


# -- temporary files ------------------------------------------------------------------------

def test_stale_temporary_files_are_removed(copier, cache):
    library = kernels.build(str(copier))
    stale = [library.parent / "tmpk1ll3d.so", library.parent / "tmpk1ll3d.json"]
    for path in stale:
        path.write_bytes(b"half a library")
    assert kernels.build(str(copier)) == library
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in library.parent.iterdir()) == [
        "build.lock", library.name, library.name + ".json"]


def _wait_for(path: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.parametrize("victim", ["the compiler", "the building process"])
def test_a_killed_build_leaves_no_temporary_file(victim, built, cache, tmp_path):
    """Kill a build midway (the compiler, or the whole process with it); after the next
    build, the key directory holds just the library, its record and the lock."""
    started, hold = tmp_path / "started", tmp_path / "hold"
    hold.touch()
    compiler = _fake_compiler(
        tmp_path / "sleepy-c++",
        f"if [ -e '{hold}' ]; then echo $$ > '{started}.tmp'; mv '{started}.tmp' '{started}'; "
        f"exec sleep 600; fi\ncp '{built[0]}' \"$out\"")  # exec: $$ is the sleeping process
    env = _environment(cache, **{kernels.CXX_ENV: str(compiler)})
    process = subprocess.Popen([sys.executable, "-c", "from adagrad_gluon import kernels\n"
                                "kernels.build()"], env=env, cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(started)
        library = kernels.library_path(str(compiler))
        assert list(library.parent.glob("tmp*.so"))  # the build is under way
        if victim == "the compiler":
            os.kill(int(started.read_text()), signal.SIGKILL)
        else:
            os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if victim == "the compiler":
        assert process.returncode != 0 and "exited with -9" in stderr, stderr
    hold.unlink()
    assert kernels.build(str(compiler)) == library
    assert sorted(p.name for p in library.parent.iterdir()) == [
        "build.lock", library.name, library.name + ".json"]
    assert library.read_bytes() == built[0].read_bytes()


def test_a_process_waiting_for_anothers_build_says_so(copier, cache, tmp_path):
    """While another process holds the build lock, a second one says on stderr that it waits
    (instead of stalling silently), then gets the library once the lock is released."""
    import fcntl

    library = kernels.build(str(copier))
    err = tmp_path / "stderr"
    with open(library.parent / "build.lock", "rb") as lock, open(err, "w") as err_file:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = subprocess.Popen(
            [sys.executable, "-c", "from adagrad_gluon import kernels; print(kernels.build())"],
            env=_environment(cache, **{kernels.CXX_ENV: str(copier)}), cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=err_file, text=True)
        try:
            deadline = time.monotonic() + 120
            while "waiting for" not in err.read_text() and time.monotonic() < deadline:
                assert process.poll() is None, err.read_text()  # it must wait, not finish
                time.sleep(0.1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 0, err.read_text()
    assert "waiting for another process to finish building" in err.read_text()
    assert stdout.strip() == str(library)


# -- OMP_NUM_THREADS ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_an_invalid_omp_num_threads_is_ignored_with_a_warning(value, monkeypatch):
    monkeypatch.delenv(kernels.NUM_THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    default = kernels._default_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.warns(RuntimeWarning, match=f"OMP_NUM_THREADS .*{value!r}.*ignoring it"):
        assert kernels._default_num_threads() == default
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels._default_num_threads() == 3
    monkeypatch.setenv(kernels.NUM_THREADS_ENV, value)  # this package's own variable: an error
    with pytest.raises(ValueError, match=kernels.NUM_THREADS_ENV):
        kernels._default_num_threads()


def test_auto_uses_the_kernels_despite_omp_num_threads_0(copier, cache, tmp_path):
    """``OMP_NUM_THREADS=0`` (which OpenMP and MXNet ignore) does not stop an optimizer."""
    done = _python("""
        import os
        from adagrad_gluon import AdagradScratch, kernels
        print("KERNEL:", AdagradScratch().kernel, kernels.num_threads(),
              len(os.sched_getaffinity(0)))
    """, _environment(cache, OMP_NUM_THREADS="0", **{kernels.CXX_ENV: str(copier)}), tmp_path)
    assert done.returncode == 0, done.stderr
    kernel, threads, cpus = done.stdout.split("KERNEL:")[1].split()
    assert kernel == "fused" and threads == cpus
    assert "OMP_NUM_THREADS must be an integer >= 1, got '0'; ignoring it" in done.stderr
