"""The worker side of a parameter-server job: :func:`prepare_trainer` makes a
``gluon.Trainer`` safe on a ``dist_sync`` / ``dist_async`` kvstore.

What it fixes, in MXNet 1.9.1 (measured):

* **Initialisation order.** A Trainer initialises the kvstore lazily, at its first ``step``,
  and that step's first gradient push can overtake the initial pull of the weights: with
  ``update_on_kvstore=False`` the workers then start from the summed gradients. Here the
  kvstore and the weights are initialised, pulled and waited for, and the workers pass a
  barrier, before anyone steps.
* **Step scaling.** In ``dist_sync`` the servers sum the gradients of the ``W`` workers, each a
  sum over its ``B`` local examples, so the mean over the global batch is
  ``trainer.step(B * W)``; in ``dist_async`` every push is applied alone: ``trainer.step(B)``.
  :meth:`DistTrainer.step` takes the local ``B`` and does the right one.
* **The optimizer on the servers.** With ``update_on_kvstore=True`` the optimizer is pickled
  to the servers, which must import its class. An optimizer that cannot be pickled, or whose
  class lives in the training script (``__main__``), is refused here with a ``TypeError``; a
  server that still cannot unpickle it (a module missing on its host) exits with a message
  (:mod:`adagrad_gluon.distributed.server`).
* **A worker that returns.** At interpreter exit, MXNet's ``atexit`` handler puts its engine in
  shutdown, which *skips* the operations still queued: a worker whose script returns right
  after its last ``step`` can drop its last gradient pushes, and in ``dist_sync`` the other
  workers then wait for them forever. Workers here wait for their queued operations at exit,
  before MXNet's handler (:func:`drain_at_exit`); the kvstore's own destructor then passes
  MXNet's exit barrier.
* **A worker that raises.** An uncaught exception does not end a worker: on the way out,
  MXNet's kvstore waits in a barrier for the other workers, which wait for its gradients, and
  the job hangs. Workers here print the traceback and exit with status 1 at once
  (:func:`exit_on_uncaught_exception`), so that the launcher stops the job.
* **Checkpoints.** ``Trainer.save_states`` refuses distributed training with
  ``update_on_kvstore=True`` (the states live on the servers); :meth:`DistTrainer.save_states`
  asks the servers to write them, and :meth:`DistTrainer.load_states` to read them back.

The ``gluon.Trainer`` internals of MXNet 1.9.1 this needs are reached through
:mod:`adagrad_gluon.optim._gluon`.
"""

from __future__ import annotations

import math
import os
import pickle
import uuid
from pathlib import Path

import mxnet as mx
from mxnet import gluon, nd

from ..optim import _gluon
from ..optim.state import check_for_trainer
from ..validation import check_positive_int
from . import checkpoint, protocol
from .environment import check_worker_environment, kvstore_type, num_servers
from .exits import drain_at_exit, exit_on_uncaught_exception


class DistTrainer:
    """A ``gluon.Trainer`` on a dist kvstore, as :func:`prepare_trainer` returns it.

    Call :meth:`step` with the *local* batch size. The trainer itself stays available as
    :attr:`trainer`. With ``update_on_kvstore=True`` the servers hold the optimizer: a
    ``trainer.set_learning_rate`` on a worker does not reach them (use an ``lr_scheduler``).
    """

    def __init__(self, trainer: gluon.Trainer, kvstore: mx.kvstore.KVStore, batch_size: int):
        self.trainer = trainer
        self.kvstore = kvstore
        self.batch_size = batch_size
        self.rank: int = kvstore.rank
        self.num_workers: int = kvstore.num_workers
        self.sync: bool = "async" not in kvstore.type
        self.update_on_kvstore: bool = _gluon.updates_on_kvstore(trainer)

    def step(self, batch_size: int | None = None, ignore_stale_grad: bool = False) -> None:
        """One update from this worker's gradients of a local batch of ``batch_size`` examples
        (default: the one given to :func:`prepare_trainer`): ``trainer.step(batch_size *
        num_workers)`` in ``dist_sync``, ``trainer.step(batch_size)`` in ``dist_async``.

        Every worker must use the same local batch size. With ``update_on_kvstore=True`` it
        cannot change between steps either (drop the last, smaller batch): the servers'
        optimizer got its ``rescale_grad`` at :func:`prepare_trainer`.
        """
        size = (self.batch_size if batch_size is None
                else check_positive_int("batch_size", batch_size))
        if self.update_on_kvstore and size != self.batch_size:
            raise ValueError(
                f"batch_size: with update_on_kvstore=True every step must use the batch_size "
                f"given to prepare_trainer ({self.batch_size}), got {size}"
            )
        self.trainer.step(_step_batch_size(size, self.num_workers, self.sync),
                          ignore_stale_grad)

    def save_states(self, directory: str | os.PathLike) -> None:
        """Save the optimizer states into ``directory`` (created if needed); every worker calls
        this at the same step.

        With ``update_on_kvstore=True`` each server writes ``server-R-of-S.npz`` (the servers
        must see ``directory`` at the same path as worker 0: one host or a shared file
        system); otherwise worker 0 writes ``workers.npz``. The weights are not included: save
        them from worker 0 with ``net.save_parameters``. ``OSError`` if a file is not written.
        """
        directory = Path(os.path.abspath(directory))
        nd.waitall()
        _gluon.barrier(self.kvstore)
        if self.rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            if self.update_on_kvstore:
                self._save_on_servers(directory)
            else:
                checkpoint.write_states(checkpoint.worker_file(directory),
                                        _gluon.local_updaters(self.trainer)[0])
        _gluon.barrier(self.kvstore)

    def _save_on_servers(self, directory: Path) -> None:
        token = uuid.uuid4().hex
        protocol.send_command(self.kvstore, protocol.SAVE_STATES, directory=str(directory),
                              token=token)
        count = num_servers()
        for rank in range(count):
            path = checkpoint.server_file(directory, rank, count)
            try:
                written = checkpoint.read_states(path, arrays=False).token == token
            except checkpoint.CheckpointError:
                written = False
            if not written:
                raise OSError(
                    f"server {rank} did not write {path}; see its log (the servers must see "
                    f"{directory} at the same path as worker 0)"
                )

    def load_states(self, directory: str | os.PathLike, *, check_options: bool = True) -> None:
        """Restore the optimizer states saved by :meth:`save_states`; every worker calls this,
        after :func:`prepare_trainer` and before the first step of the resumed run.

        The files are checked first: :class:`~adagrad_gluon.distributed.checkpoint.CheckpointError`
        (an ``OSError``) if one is missing or unreadable, ``ValueError`` if it was written for
        another optimizer class, another number of servers, or (with ``check_options``) other
        optimizer options, with which the run would not continue the saved one.
        """
        directory = Path(os.path.abspath(directory))
        nd.waitall()
        _gluon.barrier(self.kvstore)
        optimizer = _gluon.optimizer_of(self.trainer)
        if self.update_on_kvstore:
            if self.rank == 0:
                saved_files = _read_server_files(directory)
                for saved in saved_files:
                    checkpoint.check_compatible(saved, optimizer, check_options=check_options)
                _check_server_entries(saved_files, self.trainer, optimizer)
                protocol.send_command(self.kvstore, protocol.LOAD_STATES,
                                      directory=str(directory), check_options=check_options)
        else:
            saved = checkpoint.read_states(checkpoint.worker_file(directory))
            # worker 0 writes the updater's keys (the parameters' indices) as their names
            check_for_trainer(saved, self.trainer, check_names=False,
                              check_options=check_options)
            for updater in _gluon.local_updaters(self.trainer):
                checkpoint.restore_states(updater, saved)
        _gluon.barrier(self.kvstore)


def _read_server_files(directory: Path) -> list[checkpoint.SavedStates]:
    count = num_servers()
    found = sorted(p.name for p in directory.glob("server-*-of-*.npz"))
    expected = [checkpoint.server_file(directory, rank, count) for rank in range(count)]
    if found and not all(path.is_file() for path in expected):
        raise ValueError(
            f"{directory} holds {', '.join(found)}: states saved by another number of servers; "
            f"this job has {count} (the servers split the keys by their number)"
        )
    return [checkpoint.read_states(path, arrays=False) for path in expected]


def _check_server_entries(saved_files: list[checkpoint.SavedStates], trainer: gluon.Trainer,
                          optimizer: mx.optimizer.Optimizer) -> None:
    """``ValueError`` unless each key of the servers' files is a parameter index of
    ``trainer`` whose size the key's arrays (over all files) add up to, with a master weight
    where the trainer has one. A server keeps flat arrays, and a big one (more than
    ``MXNET_KVSTORE_BIGARRAY_BOUND`` elements) is split across the servers under the same
    key, so sizes, not shapes, are what can be checked; nor can coverage (a server has no
    state for a key before its first update)."""
    params = _gluon.trainer_params(trainer)
    sizes: dict[int, int] = {}
    for saved in saved_files:
        for key, entry in saved.params.items():
            if key >= len(params):
                raise ValueError(f"{saved.path}: state for key {key}, but the trainer has "
                                 f"{len(params)} parameters")
            if entry.master != _gluon.has_master(optimizer, params[key]):
                raise ValueError(f"{saved.path}: key {key} ({params[key].name}) has "
                                 f"{'a' if entry.master else 'no'} float32 master weight in "
                                 f"the file, unlike in the trainer")
            sizes[key] = sizes.get(key, 0) + math.prod(entry.shape)
    rowwise = getattr(optimizer, "rowwise", False)  # then one accumulator per row
    for key, size in sizes.items():
        shape = tuple(params[key].shape)
        if size != (shape[0] if rowwise else math.prod(shape)):
            raise ValueError(f"the servers' files hold {size} elements for key {key} "
                             f"({params[key].name}), but it has shape {shape}"
                             f"{' (rowwise: one per row)' if rowwise else ''}")


def _check_rowwise_on_servers(trainer: gluon.Trainer) -> None:
    """``ValueError`` if a ``rowwise`` optimizer is to update a dense weight on the servers:
    they keep it as a flat array (split by elements over the servers), which has no rows."""
    if not getattr(_gluon.optimizer_of(trainer), "rowwise", False):
        return
    dense = [p.name for p in _gluon.trainer_params(trainer) if not _gluon.has_sparse_weight(p)]
    if dense:
        raise ValueError(
            f"trainer: rowwise=True on the servers needs sparse weights (e.g. SparseEmbedding): "
            f"the servers keep a dense parameter as a flat array, which has no rows; "
            f"{', '.join(dense)} are dense (give them a trainer of their own, without rowwise)")


def _check_decay_of_sparse_rows_on_servers(trainer: gluon.Trainer) -> None:
    """``ValueError`` if the servers are to update a parameter with sparse rows (a sparse weight
    or gradient) with weight decay: their lazy update leaves the decay of the rows a step skips
    pending, and nothing brings a server's rows up to date before the workers pull them (a
    server would refuse, and MXNet would only print that error)."""
    wd = _gluon.optimizer_of(trainer).wd
    decayed = [p.name for p in _gluon.trainer_params(trainer)
               if wd * p.wd_mult and _gluon.storage_types(p) != ("default", "default")]
    if decayed:
        raise ValueError(
            f"trainer: {', '.join(decayed)} have sparse rows and weight decay (wd={wd} times "
            f"wd_mult): on the servers their lazy update cannot apply the decay of the rows a "
            f"step skips; set wd_mult=0 for them (or wd=0), or update on the workers "
            f"(update_on_kvstore=False, dense weights with sparse gradients only)")


def _step_batch_size(batch_size: int, num_workers: int, sync: bool) -> int:
    """What ``Trainer.step`` must get for a local batch of ``batch_size`` examples."""
    return batch_size * num_workers if sync else batch_size


def check_optimizer_for_servers(optimizer: mx.optimizer.Optimizer) -> list[str]:
    """Check that the servers can receive ``optimizer``; return the ``module.name`` globals
    they must be able to import to unpickle it.

    ``TypeError`` if it cannot be pickled and unpickled here (a lambda ``lr_scheduler``, ...)
    or if a class it needs is defined in ``__main__`` (the training script), which the
    servers do not run.
    """
    try:
        data = pickle.dumps(optimizer, 0)  # as KVStore.set_optimizer does
        pickle.loads(data)
    except Exception as exc:
        raise TypeError(
            f"optimizer: with update_on_kvstore=True the {type(optimizer).__name__} is pickled "
            f"to the servers, and it cannot be: {type(exc).__name__}: {exc}"
        ) from exc
    needs = protocol.pickle_globals(data)
    in_main = [name for name in needs if name.startswith("__main__.")]
    if in_main:
        raise TypeError(
            f"optimizer: {', '.join(in_main)} is defined in the training script (__main__), "
            f"which the servers cannot import; move it into a module that the servers can "
            f"import too"
        )
    return needs


def create_kvstore(name: str | None = None) -> mx.kvstore.KVStore:
    """Connect this worker to the job: ``mx.kv.create(name)``, ``name`` defaulting to
    :func:`~adagrad_gluon.distributed.environment.kvstore_type` (the launcher's ``--sync`` or
    ``--async``). ``RuntimeError`` if the process was not started as a worker; from here on an
    uncaught exception ends the worker (:func:`exit_on_uncaught_exception`) and a normal exit
    first sends what is queued (:func:`drain_at_exit`)."""
    name = kvstore_type() if name is None else name
    if not isinstance(name, str) or "dist" not in name:
        raise ValueError(f"name must name a dist kvstore, e.g. 'dist_sync', got {name!r}")
    check_worker_environment()
    exit_on_uncaught_exception()
    drain_at_exit()
    return mx.kv.create(name)


def _kvstore_type(trainer: gluon.Trainer) -> str:
    """The type of the trainer's kvstore, which must be a dist one."""
    kvstore = _gluon.kvstore_setting(trainer, "kvstore")
    kvstore_type = kvstore.type if isinstance(kvstore, mx.kvstore.KVStore) else kvstore
    if not isinstance(kvstore_type, str) or "dist" not in kvstore_type:
        raise ValueError(
            f"trainer: prepare_trainer needs a Trainer created with kvstore='dist_sync' or "
            f"'dist_async' (or such a KVStore), got kvstore={kvstore!r}"
        )
    return kvstore_type


def _updates_on_kvstore(trainer: gluon.Trainer, kvstore_type: str) -> bool:
    """Whether ``Trainer._init_kvstore`` will send the optimizer to the servers."""
    config = _gluon.kvstore_setting(trainer, "update_on_kvstore")
    if config is not None:
        return bool(config)
    if "async" in kvstore_type or _gluon.has_sparse_parameters(trainer):
        return True
    return bool(int(os.environ.get("MXNET_UPDATE_ON_KVSTORE", "1")))


def _connect(trainer: gluon.Trainer) -> mx.kvstore.KVStore:
    """The trainer's dist kvstore, created (and connected) here if it was given by name."""
    kvstore = _gluon.kvstore_setting(trainer, "kvstore")
    if isinstance(kvstore, str):
        kvstore = create_kvstore(kvstore)
        _gluon.set_kvstore(trainer, kvstore)
    exit_on_uncaught_exception()
    drain_at_exit()
    return kvstore


def prepare_trainer(trainer: gluon.Trainer, batch_size: int) -> DistTrainer:
    """Make ``trainer`` safe on its dist kvstore; call it on every worker, after the parameters
    are initialised (and loaded, when resuming) and before the first step.

    ``batch_size`` is this worker's local batch size. If the servers are to update, the
    optimizer is checked first (:func:`check_optimizer_for_servers`). Then the kvstore is
    created if the trainer was given its name, the optimizer's ``rescale_grad`` is set for the
    global batch (see the module docstring) and the optimizer sent to the servers if they
    update, worker 0's weights are pushed to the servers and pulled by every worker, and all
    workers wait for each other. An uncaught exception ends the worker from then on
    (:func:`exit_on_uncaught_exception`), and a worker that returns waits for its last steps
    to reach the servers (:func:`drain_at_exit`). Returns the :class:`DistTrainer` to step
    with.
    """
    if not isinstance(trainer, gluon.Trainer):
        raise TypeError(f"trainer must be a gluon.Trainer, got {type(trainer).__name__}")
    batch_size = check_positive_int("batch_size", batch_size)
    if _gluon.kvstore_initialized(trainer):
        raise ValueError("trainer: call prepare_trainer before the trainer's first step")
    for param in _gluon.trainer_params(trainer):
        state = _gluon.parameter_problem(param)
        if state is not None:
            raise ValueError(
                f"trainer: parameter {param.name} {state}; initialize every parameter with "
                f"known shapes (e.g. in_units=) before prepare_trainer"
            )
    kvstore_type = _kvstore_type(trainer)
    if (_gluon.has_sparse_parameters(trainer)
            and _gluon.kvstore_setting(trainer, "update_on_kvstore") is False):
        raise ValueError(
            "trainer: a parameter with a sparse weight or gradient (e.g. SparseEmbedding, "
            "Embedding(sparse_grad=True)) is updated on the servers: on a dist kvstore MXNet "
            "has no update_on_kvstore=False for it; leave update_on_kvstore unset (or True)"
        )
    if _updates_on_kvstore(trainer, kvstore_type):
        check_optimizer_for_servers(_gluon.optimizer_of(trainer))
        _check_rowwise_on_servers(trainer)
        _check_decay_of_sparse_rows_on_servers(trainer)
    kvstore = _connect(trainer)
    _gluon.optimizer_of(trainer).rescale_grad = _gluon.gradient_scale(trainer) / _step_batch_size(
        batch_size, kvstore.num_workers, "async" not in kvstore_type)
    _gluon.initialize_kvstore(trainer)
    nd.waitall()
    _gluon.barrier(kvstore)
    return DistTrainer(trainer, kvstore, batch_size)
