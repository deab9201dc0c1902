"""Whether the kernel cache can be trusted: no other user may change what a path names.

A library is only loaded from a directory that is this user's (or root's) and writable by
nobody else, as is every directory above it (unless sticky, like ``/tmp``), and read through a
descriptor whose owner and mode are checked on the very bytes read (see
:func:`adagrad_gluon.optim.kernels.build.ready_library`). A directory writable by the group is
trusted only when that group is the user's own private group.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from ...cache import CACHE_DIR_ENV
from .errors import KernelUnavailableError

__all__ = ["own_private_group", "private_directory", "read_own_file", "refuse", "untrusted"]


def untrusted(info: os.stat_result, *, ancestor: bool = False) -> str | None:
    """Why another user could change a file or directory with this status, or ``None``. It
    must be this user's (or root's, who can change anything anyway) and writable by nobody
    else; an ancestor directory may be writable by others if sticky (like ``/tmp``: there
    only an entry's owner may rename it)."""
    uid = os.geteuid()
    if info.st_uid not in (uid, 0):
        return f"it is owned by uid {info.st_uid}, neither this user (uid {uid}) nor root"
    sticky = ancestor and info.st_mode & stat.S_ISVTX
    writable_by = 0o002 if own_private_group(info.st_gid) else 0o022
    if info.st_mode & writable_by and not sticky:
        return f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def own_private_group(gid: int) -> bool:
    """Whether ``gid`` is this user's own group with no other members (the "user private
    group" of systems whose umask is 002): then group-writable is as private as 0o700."""
    if gid != os.getegid():
        return False
    try:
        members = grp.getgrgid(gid).gr_mem
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # no entry: nothing says who else is in the group
        return False
    return set(members) <= {name}


def refuse(path: Path | str, problem: str) -> KernelUnavailableError:
    return KernelUnavailableError(
        f"Refusing the kernel cache: {path} is not private to this user ({problem}), so "
        f"another user could plant a library there. Make it private (e.g. chmod go-w), or set "
        f"{CACHE_DIR_ENV} to a directory of your own."
    )


def private_directory(directory: Path) -> Path:
    """Create the key ``directory`` and the kernels directory above it (mode 0o700) if needed;
    return its real path if no other user can change what it holds (see
    :func:`ready_library`), else raise :class:`KernelUnavailableError` naming the culprit."""
    missing = [level for level in (directory, *directory.parents) if not level.exists()]
    for level in reversed(missing):  # 0o700 whatever the umask (mkdir's parents= takes it)
        level.mkdir(mode=0o700, exist_ok=True)
    real = directory.resolve()
    for depth, path in enumerate((real, *real.parents)):
        problem = untrusted(os.stat(path), ancestor=depth >= 2)
        if problem is not None:
            raise refuse(path, problem)
    return real


def read_own_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file of this user's that nobody else may
    write, checked on the very descriptor that is read (symbolic links are not followed)."""
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as file:
        info = os.fstat(file.fileno())
        problem = untrusted(info) if stat.S_ISREG(info.st_mode) else "it is not a regular file"
        if problem is not None:
            raise refuse(path, problem)
        return file.read()
