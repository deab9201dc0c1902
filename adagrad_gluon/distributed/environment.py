"""The environment each process of a parameter-server job needs, and what a worker reads back.

MXNet's ``dist_sync`` / ``dist_async`` kvstores run on ps-lite, which is configured entirely
through environment variables. Every process (one scheduler, the servers, the workers) needs::

    DMLC_PS_ROOT_URI    the scheduler's address, e.g. 127.0.0.1
    DMLC_PS_ROOT_PORT   the scheduler's port
    DMLC_NUM_SERVER     the number of servers
    DMLC_NUM_WORKER     the number of workers
    DMLC_NODE_HOST      this process's own address, as the others reach it
    DMLC_INTERFACE      this host's network interface (optional; ``lo`` on loopback)

Workers also get ``DMLC_ROLE=worker`` and :data:`KVSTORE_ENV` (``dist_sync`` or
``dist_async``, read by :func:`kvstore_type`). Servers and the scheduler get *no*
``DMLC_ROLE``: ``import mxnet`` with ``DMLC_ROLE=server`` would turn the process into MXNet's
own server, which swallows errors; they run :mod:`adagrad_gluon.distributed.server` with
``--role server`` or ``--role scheduler`` instead. ``PORT`` is never passed on: ps-lite reads it
as the process's own port, so one inherited ``PORT`` would make every process bind the same one.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from pathlib import Path

from ..validation import check_choice

ROLES = ("scheduler", "server", "worker")
KVSTORE_TYPES = ("dist_sync", "dist_async")
KVSTORE_ENV = "ADAGRAD_GLUON_KVSTORE"
LOOPBACK = "127.0.0.1"
# Variables a parent may have set that must not leak into a job's processes.
_CLEARED = ("PORT", "DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER",
            "DMLC_NUM_WORKER", "DMLC_NODE_HOST", "DMLC_INTERFACE", KVSTORE_ENV)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now, for the scheduler.

    Taken outside the kernel's ephemeral range where it can: the scheduler binds it a moment
    later (after importing mxnet) and, unlike the other ps-lite nodes, never retries, while the
    servers and workers pick their own ports with ``bind(0)`` from the ephemeral range in the
    meantime: a port from there could be handed to one of them first ("bind failed")."""
    low, _ = _ephemeral_range()
    for port in random.sample(range(_FIRST_UNPRIVILEGED, low), min(64, low - _FIRST_UNPRIVILEGED)):
        if _bindable(host, port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


_FIRST_UNPRIVILEGED = 10000  # well above the ports services commonly listen on


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ``bind(0)`` and outgoing connections (Linux; else IANA's)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = map(int, text.split())
    except (OSError, ValueError):
        return 49152, 65535
    return max(low, _FIRST_UNPRIVILEGED), high


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def role_environment(role: str, *, root_uri: str, root_port: int, num_workers: int,
                     num_servers: int, node_host: str, interface: str | None = None,
                     kvstore: str = "dist_sync",
                     base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one process of a job: ``base`` (default ``os.environ``) without any
    inherited ps-lite variables or ``PORT``, plus the variables the module docstring lists and
    ``PYTHONUNBUFFERED=1`` (so that a launcher streams the logs as they are written).

    ``role`` is ``'scheduler'``, ``'server'`` or ``'worker'``; only workers get ``DMLC_ROLE``
    and ``kvstore`` (``'dist_sync'`` or ``'dist_async'``).
    """
    check_choice("role", role, ROLES)
    check_choice("kvstore", kvstore, KVSTORE_TYPES)
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _CLEARED}
    env.update(
        DMLC_PS_ROOT_URI=root_uri,
        DMLC_PS_ROOT_PORT=str(root_port),
        DMLC_NUM_WORKER=str(num_workers),
        DMLC_NUM_SERVER=str(num_servers),
        DMLC_NODE_HOST=node_host,
        PYTHONUNBUFFERED="1",
    )
    if interface:
        env["DMLC_INTERFACE"] = interface
    if role == "worker":
        env["DMLC_ROLE"] = "worker"
        env[KVSTORE_ENV] = kvstore
    return env


def kvstore_type(default: str = "dist_sync") -> str:
    """The kvstore type a worker should create: ``$ADAGRAD_GLUON_KVSTORE`` (set by
    ``adagrad-gluon launch --sync/--async``), else ``default``."""
    return check_choice(KVSTORE_ENV, os.environ.get(KVSTORE_ENV) or default, KVSTORE_TYPES)


def check_worker_environment() -> None:
    """Raise ``RuntimeError`` unless this process has what a ps-lite worker needs."""
    missing = [name for name in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER",
                                 "DMLC_NUM_WORKER") if not os.environ.get(name)]
    if missing:
        raise RuntimeError(
            f"this process is not a parameter-server worker: {', '.join(missing)} not set; "
            f"start it with `adagrad-gluon launch -n WORKERS -s SERVERS -- python ...` or set "
            f"the variables listed in adagrad_gluon.distributed.environment"
        )
    role = os.environ.get("DMLC_ROLE", "worker")
    if role != "worker":
        raise RuntimeError(f"this process has DMLC_ROLE={role!r}; workers need 'worker'")


def num_servers() -> int:
    """``DMLC_NUM_SERVER`` of this process (every process of a job has it)."""
    value = os.environ.get("DMLC_NUM_SERVER", "")
    if not value.isdigit() or int(value) < 1:
        raise RuntimeError(f"DMLC_NUM_SERVER must be an integer >= 1, got {value!r}")
    return int(value)
