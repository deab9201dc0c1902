"""Distributed training with ``adagrad_scratch`` on MXNet's parameter server (ps-lite).

* :func:`launch` (``adagrad-gluon launch -n 2 -s 1 -- python train.py``) runs a job on this
  host: scheduler, servers and workers on loopback, watched, stopped together on any failure.
* :func:`prepare_trainer` makes a ``gluon.Trainer`` on ``dist_sync`` / ``dist_async`` safe:
  initialisation order, step scaling, an optimizer the servers can load, server-side
  checkpoints (:meth:`DistTrainer.save_states`, :meth:`DistTrainer.load_states`).
* :func:`create_kvstore` connects a worker with the kvstore the launcher asked for
  (:func:`kvstore_type`).

The servers run :mod:`adagrad_gluon.distributed.server`, which reports errors MXNet's own server
loop swallows. Nothing here starts a process or connects anywhere at import.
"""

from .checkpoint import CheckpointError
from .command import add_launch_parser
from .environment import kvstore_type, role_environment
from .exits import drain_at_exit, exit_on_uncaught_exception
from .launcher import LaunchError, launch
from .worker import (
    DistTrainer,
    check_optimizer_for_servers,
    create_kvstore,
    prepare_trainer,
)

__all__ = [
    "CheckpointError",
    "DistTrainer",
    "LaunchError",
    "add_launch_parser",
    "check_optimizer_for_servers",
    "create_kvstore",
    "drain_at_exit",
    "exit_on_uncaught_exception",
    "kvstore_type",
    "launch",
    "prepare_trainer",
    "role_environment",
]
