"""The server and scheduler processes of a job, started safely.

Run as ``python -m adagrad_gluon.distributed.server --role server`` (or ``--role scheduler``)
with the ps-lite variables of :mod:`adagrad_gluon.distributed.environment` and *without*
``DMLC_ROLE``: the process imports mxnet and adagrad_gluon as an ordinary process (an import
error ends it with a traceback), then takes its role and enters MXNet's server loop with
:class:`Controller` in place of MXNet's.

MXNet's own server runs inside ``import mxnet``; exceptions raised in its controller or in the
optimizer's ``update`` are printed as "Exception ignored" and dropped, and the workers go on
with wrong weights. Here a server that cannot unpickle the optimizer, cannot restore a
checkpoint, or whose ``update`` raises prints why and exits with status 1, so that the launcher
stops the job and reports it. The controller also serves the commands of
:mod:`adagrad_gluon.distributed.protocol`: saving and restoring the optimizer states it holds.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import traceback
from typing import NoReturn

import mxnet as mx
from mxnet.kvstore.kvstore_server import KVStoreServer

from ..optim._gluon import set_server_updater
from . import checkpoint, protocol
from .environment import num_servers

ROLES = ("server", "scheduler")


class Controller:
    """Handles what the workers send to one server: optimizers and commands."""

    def __init__(self, kvstore: mx.kvstore.KVStore):
        self.kvstore = kvstore
        self.updater: mx.optimizer.Updater | None = None
        self._optimizer_bytes = b""

    def __call__(self, command_id: int, body: bytes, _handle) -> None:
        """The ctypes callback; any exception ends the process (see :meth:`fail`)."""
        try:
            if command_id != protocol.CONTROLLER_COMMAND:
                raise ValueError(f"unexpected command id {command_id}")
            fields = protocol.decode_command(body)
            if fields is None:
                self.set_optimizer(body)
            elif fields["op"] == protocol.SAVE_STATES:
                self.save_states(fields["directory"], fields["token"])
            else:
                self.load_states(fields["directory"], fields["check_options"])
        except BaseException as exc:  # ctypes would print and drop it
            self.fail(f"{type(exc).__name__}: {exc}")

    def set_optimizer(self, data: bytes) -> None:
        """Unpickle the optimizer a worker sent and update with it from now on (fresh states,
        as MXNet does)."""
        try:
            optimizer = pickle.loads(data)
        except Exception as exc:
            needs = ", ".join(protocol.pickle_globals(data)) or "nothing"
            self.fail(
                f"cannot unpickle the optimizer the workers sent ({type(exc).__name__}: {exc}); "
                f"a server must be able to import {needs}: start the servers with the packages "
                f"and PYTHONPATH of the workers"
            )
        if not isinstance(optimizer, mx.optimizer.Optimizer):
            self.fail(f"the workers sent a {type(optimizer).__name__}, not an optimizer")
        if data != self._optimizer_bytes:
            self.log(f"optimizer {checkpoint.class_path(optimizer)} "
                     f"{checkpoint.optimizer_options(optimizer)}")
        self._optimizer_bytes = data
        self.updater = mx.optimizer.get_updater(optimizer)
        set_server_updater(self.kvstore, self.update)

    def update(self, key, grad: mx.nd.NDArray, weight: mx.nd.NDArray) -> None:
        """Apply the optimizer to the weight the server stores for ``key``."""
        try:
            self.updater(key, grad, weight)
        except BaseException as exc:  # ctypes would print and drop it
            self.fail(f"the optimizer's update of key {key} failed: {type(exc).__name__}: {exc}")

    def _states_file(self, directory: str):
        return checkpoint.server_file(directory, self.kvstore.rank, num_servers())

    def save_states(self, directory: str, token: str) -> None:
        """Write the states this server holds. A failure is logged, not fatal: the worker that
        asked finds the file missing and raises."""
        path = self._states_file(directory)
        try:
            if self.updater is None:
                raise RuntimeError("no optimizer (update_on_kvstore=False?)")
            checkpoint.write_states(path, self.updater, token=token)
        except (OSError, TypeError, RuntimeError) as exc:
            self.log(f"could not save the optimizer states to {path}: {exc}")
            return
        self.log(f"saved the states of {len(self.updater.states)} keys to {path}")

    def load_states(self, directory: str, check_options: bool) -> None:
        """Replace the states this server holds with those saved in ``directory``."""
        if self.updater is None:
            raise RuntimeError("cannot load optimizer states before an optimizer is set")
        saved = checkpoint.read_states(self._states_file(directory))
        checkpoint.check_compatible(saved, self.updater.optimizer, check_options=check_options)
        checkpoint.restore_states(self.updater, saved)
        self.log(f"restored the states of {len(saved.states)} keys from {saved.path}")

    def log(self, message: str) -> None:
        """One line on stderr, naming this server."""
        print(f"adagrad_gluon server (rank {self.kvstore.rank}): {message}", file=sys.stderr,
              flush=True)

    def fail(self, message: str) -> NoReturn:
        """Print ``message`` (after the traceback, if any) and end the process with status 1.
        ``sys.exit`` would not do: the exception would not leave the ctypes callback."""
        if sys.exc_info()[0] is not None:
            traceback.print_exc()
        self.log(f"error: {message}")
        os._exit(1)


class _Server(KVStoreServer):
    def __init__(self, kvstore: mx.kvstore.KVStore):
        super().__init__(kvstore)
        self.controller = Controller(kvstore)

    def _controller(self):
        return self.controller


def main(argv: list[str] | None = None) -> int:
    """Take the role given on the command line and run it until the workers are done."""
    parser = argparse.ArgumentParser(
        prog="python -m adagrad_gluon.distributed.server",
        description="Run a parameter-server scheduler or server for adagrad_gluon (set the "
                    "DMLC_* variables, but not DMLC_ROLE).",
    )
    parser.add_argument("--role", choices=ROLES, required=True)
    args = parser.parse_args(argv)
    os.environ["DMLC_ROLE"] = args.role  # read by ps-lite from here on, not at import
    _Server(mx.kv.create("dist")).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
