"""Atomic writes: a file is replaced whole or not at all, with ``open()``'s permissions, and
the temporaries of killed writers are cleaned up."""

from __future__ import annotations

import fcntl
import io
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# mkstemp's names for the temporaries of atomic_write: ".<target name>.<8 characters>.tmp"
_TEMP_SUFFIX = r"[a-z0-9_]{8}\.tmp"
STALE_TEMP_SECONDS = 60.0


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (setting it to
    read it would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_mode(path: Path) -> int:
    """The permissions ``open(path, "wb")`` would leave: the existing file's, else
    ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _remove_if_stale(candidate: Path, cutoff: float) -> bool:
    """Delete ``candidate`` if it is a regular file of ours, unmodified since ``cutoff`` and
    not locked by a live writer; ``True`` if it was deleted."""
    try:
        fd = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid()
                or info.st_mtime > cutoff):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a writer holds it
        candidate.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str | os.PathLike,
                             older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` calls for ``path`` left behind
    when they were killed, and return their paths.

    Only files named like ``path``'s temporaries (``.<name>.XXXXXXXX.tmp`` beside it), owned
    by this user, unmodified for ``older_than`` seconds and not locked are removed: a live
    writer holds an exclusive ``flock`` on its temporary until the rename (the lock dies with
    its process), and the age covers the instant between creating the file and locking it."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + _TEMP_SUFFIX)
    cutoff = time.time() - older_than
    return [candidate for candidate in path.parent.iterdir()
            if pattern.fullmatch(candidate.name) and _remove_if_stale(candidate, cutoff)]


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``:
    a reader (or a crash) sees the old file or the new one, never half of one.

    The file gets the permissions ``open()`` would give it (the old file's, or
    ``0o666 & ~umask`` for a new one); temporaries that killed writes of ``path`` left behind
    are deleted first (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(fd, fcntl.LOCK_EX)  # until closed, after the rename: see above
            os.fchmod(fd, _open_mode(path))
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["atomic_write", "remove_stale_temporaries", "STALE_TEMP_SECONDS"]
