"""The one module that reaches into the private attributes of MXNet 1.9.1's ``gluon.Trainer``,
``mx.optimizer.Updater``, ``mx.optimizer.Optimizer``, ``gluon.Parameter`` and ``KVStore``.

Everything else in adagrad_gluon goes through these small functions, so that a change in
MXNet's internals is fixed here alone. An optimizer's state is the accumulator, or
``(float32 master weight, accumulator)`` for float16 weights with ``multi_precision``.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from .checks import State, split_state
from .optimizer import AdagradScratch
from .quantized import QuantizedAcc, quantize

# -- gluon.Trainer ------------------------------------------------------------------------------

def optimizer_of(trainer: gluon.Trainer) -> mx.optimizer.Optimizer:
    """The trainer's optimizer."""
    return trainer._optimizer


def trainer_params(trainer: gluon.Trainer) -> list[gluon.Parameter]:
    """The trainer's parameters, in its order (by name): a parameter's position is its index."""
    return trainer._params


def device_ids(trainer: gluon.Trainer) -> list[int]:
    """The ids of the trainer's devices: the optimizer keeps update counts per device id."""
    return sorted({ctx.device_id for ctx in trainer._contexts})


def trained_indices(trainer: gluon.Trainer) -> list[int]:
    """Indices of the parameters the optimizer updates (``grad_req`` not ``'null'``)."""
    return [i for i, param in enumerate(trainer._params) if param.grad_req != "null"]


def kvstore_initialized(trainer: gluon.Trainer) -> bool:
    """Whether the trainer has set up its kvstore (it does so lazily, at its first step)."""
    return bool(trainer._kv_initialized)


def initialize_kvstore(trainer: gluon.Trainer) -> None:
    """Set up the trainer's kvstore (if not done yet) and its parameters not initialised yet."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()


def updates_on_kvstore(trainer: gluon.Trainer) -> bool:
    """Whether the kvstore (or its servers) holds the optimizer (after initialisation)."""
    return bool(trainer._update_on_kvstore)


def kvstore_setting(trainer: gluon.Trainer, name: str):
    """What the trainer was given as ``kvstore`` or ``update_on_kvstore``."""
    return trainer._kvstore_params[name]


def set_kvstore(trainer: gluon.Trainer, kvstore: mx.kvstore.KVStore) -> None:
    """Make the (not yet initialised) trainer use ``kvstore``."""
    trainer._kvstore_params["kvstore"] = kvstore


def has_sparse_parameters(trainer: gluon.Trainer) -> bool:
    """Whether a weight or a gradient of the trainer is sparse."""
    return bool(trainer._contains_sparse_weight or trainer._contains_sparse_grad)


def gradient_scale(trainer: gluon.Trainer) -> float:
    """The trainer's ``rescale_grad`` before ``step`` divides it by the batch size."""
    return trainer._scale


def parameter_problem(param: gluon.Parameter) -> str | None:
    """Why ``param`` has no data yet (``"has no shape yet"``, ``"is not initialized"``), or
    ``None`` if it has."""
    if param._data is not None:
        return None
    return "has no shape yet" if param._deferred_init else "is not initialized"


def trainer_updaters(trainer: gluon.Trainer) -> tuple[AdagradScratch, list[mx.optimizer.Updater]]:
    """The ``adagrad_scratch`` optimizer of ``trainer`` and the updaters that hold its states:
    one per device, or the kvstore's when the trainer updates on the kvstore. Initialises the
    trainer's kvstore and parameters if needed. ``TypeError`` for another optimizer,
    ``ValueError`` when the states live on parameter servers."""
    if not isinstance(trainer, gluon.Trainer):
        raise TypeError(f"expected a gluon.Trainer, got {type(trainer).__name__}")
    optimizer = trainer._optimizer
    if not isinstance(optimizer, AdagradScratch):
        raise TypeError(f"the trainer's optimizer is {type(optimizer).__name__}, "
                        f"not adagrad_scratch")
    initialize_kvstore(trainer)
    if trainer._update_on_kvstore:
        kvstore = trainer._kvstore
        if "dist" in kvstore.type:
            raise ValueError("with a distributed kvstore and update_on_kvstore=True the states "
                             "live on the servers: use adagrad_gluon.distributed's checkpoints")
        return optimizer, [kvstore._updater]
    return optimizer, trainer._updaters


def local_updaters(trainer: gluon.Trainer) -> list[mx.optimizer.Updater]:
    """The trainer's updaters, one per device (they hold the states unless the kvstore
    updates)."""
    return trainer._updaters


def has_master(optimizer: AdagradScratch, param: gluon.Parameter) -> bool:
    """Whether ``param``'s state holds a float32 master weight next to its accumulator."""
    return bool(optimizer.multi_precision) and np.dtype(param.dtype) == np.float16


def collect_states(trainer: gluon.Trainer) -> tuple[AdagradScratch, dict]:
    """``(optimizer, {index: (master, acc, update count)})`` for every parameter with a state
    and every trained one: a state not created yet (before the first update) is the one the
    first update would create, with no update counted (the trainer is left as it was)."""
    optimizer, updaters = trainer_updaters(trainer)
    counts = optimizer._all_index_update_counts.get(device_ids(trainer)[0], {})
    created = updaters[0].states
    states = {}
    for index in sorted(set(map(int, created)) | set(trained_indices(trainer))):
        state = created[index] if index in created else optimizer.create_state_multi_precision(
            index, trainer._params[index].list_data()[0])
        master, acc = split_state(state)
        states[index] = (master, acc, int(counts.get(index, optimizer.begin_num_update)))
    return optimizer, states


def install_state(trainer: gluon.Trainer, optimizer: AdagradScratch, index: int,
                  master: np.ndarray | None, acc: np.ndarray | QuantizedAcc,
                  count: int) -> None:
    """Give parameter ``index`` this state (on every context) and this update count."""
    param = trainer._params[index]
    _, updaters = trainer_updaters(trainer)
    if optimizer.state_bits == 8 and isinstance(acc, np.ndarray) and acc.dtype == np.float32:
        acc = QuantizedAcc(*quantize(acc))  # float32 sums (PyTorch's) into an 8-bit trainer
    for updater, ctx in zip(updaters, param.list_ctx(), strict=False):
        acc_nd = acc.to_nd(ctx) if isinstance(acc, QuantizedAcc) else nd.array(
            acc, ctx=ctx, dtype=acc.dtype)
        state = acc_nd if master is None else (nd.array(master, ctx=ctx, dtype=master.dtype),
                                               acc_nd)
        updater.states[index] = state
        updater.states_synced[index] = True
    for device_id in device_ids(trainer):
        optimizer._all_index_update_counts.setdefault(device_id, {})[index] = count
    optimizer.num_update = max(optimizer.num_update, count)


def counts_of_others(optimizer: mx.optimizer.Optimizer, indices) -> list[int]:
    """The update counts the optimizer keeps (on any device) for parameters not in
    ``indices``."""
    return [count for counts in optimizer._all_index_update_counts.values()
            for index, count in counts.items() if index not in indices]


# -- mx.optimizer.Updater / Optimizer (a kvstore's, e.g. on a parameter server) ------------------

def update_counts(optimizer: mx.optimizer.Optimizer) -> dict:
    """``{key: updates so far}`` of the optimizer (for its current device)."""
    return optimizer._index_update_count


def replace_states(updater: mx.optimizer.Updater, states: dict, counts: dict[int, int],
                   num_update: int) -> None:
    """Give ``updater`` these states (NDArrays, moved to the weights' context at the next
    update) and its optimizer these update counts, on every device it keeps counts for."""
    updater.states = dict(states)
    updater.states_synced = dict.fromkeys(updater.states, False)
    # one counter dict per device (the current one among them); the updater switches between
    # them on every call
    for device_counts in updater.optimizer._all_index_update_counts.values():
        device_counts.clear()
        device_counts.update(counts)
    updater.optimizer.num_update = num_update


# -- KVStore ------------------------------------------------------------------------------------

def barrier(kvstore: mx.kvstore.KVStore) -> None:
    """Wait until every worker reaches this point."""
    kvstore._barrier()


def set_server_updater(kvstore: mx.kvstore.KVStore, update) -> None:
    """Make the server of ``kvstore`` call ``update(key, grad, weight)`` for each push."""
    kvstore._set_updater(update)


def send_to_servers(kvstore: mx.kvstore.KVStore, head: int, body: str) -> None:
    """Send a command to every server's controller."""
    kvstore._send_command_to_servers(head, body)


def trainer_state(optimizer: mx.optimizer.Optimizer, param: gluon.Parameter, index: int,
                  k: int) -> State | None:
    """The state parameter ``index`` has on its ``k``-th context in the ``gluon.Trainer`` that
    updates it with ``optimizer`` (None if it has none there yet, or no such Trainer)."""
    trainer = param._trainer
    if trainer is None or trainer._optimizer is not optimizer or k >= len(trainer._updaters):
        return None
    return trainer._updaters[k].states.get(index)
