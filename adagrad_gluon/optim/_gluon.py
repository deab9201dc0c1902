"""The one module that reaches into the private attributes of MXNet 1.9.1's ``gluon.Trainer``,
``mx.optimizer.Updater``, ``mx.optimizer.Optimizer``, ``gluon.Parameter`` and ``KVStore``.

Everything else in adagrad_gluon goes through these small functions, so that a change in
MXNet's internals is fixed here alone. An optimizer's state is the accumulator, or
``(float32 master weight, accumulator)`` for float16 weights with ``multi_precision``.
"""

from __future__ import annotations

import ctypes
import weakref

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from . import kernels
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


def has_sparse_weight(param: gluon.Parameter) -> bool:
    """Whether ``param``'s weight is sparse (``stype='row_sparse'``): a kvstore holds and
    updates it, and ``param.list_data()`` refuses it."""
    return storage_types(param)[0] != "default"


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
            index, _dense_weight(trainer._params[index]))
        master, acc = split_state(state)
        states[index] = (master, acc, int(counts.get(index, optimizer.begin_num_update)))
    return optimizer, states


def _dense_weight(param: gluon.Parameter) -> nd.NDArray:
    """``param``'s weight on its first context; for a sparse weight (a kvstore holds it),
    row_sparse zeros of its shape and dtype, to create a state from as the kvstore does."""
    if has_sparse_weight(param):
        return nd.sparse.zeros("row_sparse", param.shape, param.list_ctx()[0], dtype=param.dtype)
    return param.list_data()[0]


def install_state(trainer: gluon.Trainer, optimizer: AdagradScratch, index: int,
                  master: np.ndarray | None, acc: np.ndarray | QuantizedAcc,
                  count: int) -> None:
    """Give parameter ``index`` this state (on every context) and this update count."""
    param = trainer._params[index]
    _, updaters = trainer_updaters(trainer)
    if optimizer.state_bits == 8 and isinstance(acc, np.ndarray) and acc.dtype == np.float32 \
            and not has_sparse_weight(param):
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


def apply_pending_decay(trainer: gluon.Trainer, rows: dict | None = None) -> None:
    """Apply the weight decay that lazy ``row_sparse`` updates of ``trainer``'s
    ``adagrad_scratch`` have left pending (:meth:`AdagradScratch.apply_pending_decay`), on
    every device: to every row of every parameter (``rows=None``: before evaluating or
    exporting), or to the rows ``{parameter: row ids}`` names (before a batch's forward pass,
    with the batch's token ids: the lookup then reads up-to-date rows). ``ValueError`` if a
    kvstore holds the weights (``update_on_kvstore=True``) or a key is not the trainer's."""
    optimizer, updaters = trainer_updaters(trainer)
    if trainer._update_on_kvstore:
        raise ValueError("apply_pending_decay needs the trainer to update its own weights "
                         "(update_on_kvstore=False): with update_on_kvstore=True the kvstore "
                         "holds the weights and their pending decay")
    indices = {id(param): i for i, param in enumerate(trainer._params)}
    if rows is None:
        chosen = dict.fromkeys(range(len(trainer._params)))
    elif not isinstance(rows, dict) or any(id(p) not in indices for p in rows):
        raise ValueError(f"rows must be None or a dict {{parameter: row ids}} whose keys are "
                         f"the trainer's parameters, got {rows!r:.200}")
    else:
        chosen = {indices[id(param)]: ids for param, ids in rows.items()}
    for k, updater in enumerate(updaters):
        for index, ids in chosen.items():
            if index in updater.states:
                optimizer.apply_pending_decay(index, trainer._params[index].list_data()[k],
                                              updater.states[index], ids)


def known_device_ids(optimizer: mx.optimizer.Optimizer) -> list[int]:
    """The device ids the optimizer keeps update counts for."""
    return sorted(optimizer._all_index_update_counts)


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


# -- gluon.Parameter: the flat layout (optim/flat.py) -------------------------------------------

class FlatParameter(gluon.Parameter):
    """A ``gluon.Parameter`` that calls ``on_read()`` whenever its data is read as a list, as
    ``gluon.Trainer`` reads it (for the stale-gradient check and the update) in every step."""

    on_read = None

    def _check_and_get(self, arr_list, ctx):
        if ctx is list and arr_list is self._data and self.on_read is not None:
            self.on_read()
        return super()._check_and_get(arr_list, ctx)


def install_arrays(param: gluon.Parameter, data: nd.NDArray, grad: nd.NDArray) -> tuple:
    """Make ``data`` and ``grad`` the (initialised, single-context) parameter's arrays, and
    ``grad`` the gradient ``backward`` writes for ``data``. Return the two lists now holding
    them: MXNet gives a parameter new lists whenever it replaces its arrays (``cast``,
    ``reset_ctx``, ``initialize(force_reinit=True)``, a new ``grad_req``), see
    :func:`replaced_arrays`."""
    param._data, param._grad = [data], [grad]
    mx.autograd.mark_variables([data], [grad], param.grad_req)
    return param._data, param._grad


class WatchedParameter(gluon.Parameter):
    """The class :func:`watch_changes` gives a ``gluon.Parameter``: one that calls its
    watcher whenever its arrays are replaced or its ``lr_mult``/``wd_mult`` set. (MXNet
    replaces a parameter's arrays by assigning it new lists: ``cast``, ``reset_ctx``,
    ``initialize(force_reinit=True)``, a new ``grad_req``.) Otherwise a plain Parameter; a
    copy or a pickle of one is a plain ``gluon.Parameter``."""

    def __reduce_ex__(self, protocol):
        # protocol 1's reduction (copyreg's reconstructor) may name another class; any
        # protocol can store it
        function, arguments, *rest = super().__reduce_ex__(1)
        return (function, (gluon.Parameter, *arguments[1:]), *rest)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in _WATCHED_ATTRIBUTES:
            watcher = _WATCHERS.get(self)
            callback = watcher() if watcher is not None else None
            if callback is not None:
                callback()


_WATCHED_ATTRIBUTES = frozenset({"_data", "_grad", "lr_mult", "wd_mult"})
_WATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # param -> WeakMethod


def watch_changes(param: gluon.Parameter, callback) -> bool:
    """Have ``param`` call ``callback`` (a bound method, held weakly) whenever its arrays are
    replaced or its ``lr_mult``/``wd_mult`` set, by making it a :class:`WatchedParameter`.
    False (nothing done) for a subclass of ``gluon.Parameter``, whose class is left alone."""
    if type(param) not in (gluon.Parameter, WatchedParameter):
        return False
    _WATCHERS[param] = weakref.WeakMethod(callback)
    param.__class__ = WatchedParameter
    return True


def replaced_arrays(params, data_lists, grad_lists) -> list[bool]:
    """Whether each parameter has replaced its arrays since :func:`install_arrays` returned
    its data and gradient lists (``data_lists[i]``, ``grad_lists[i]``)."""
    return [p._data is not d or p._grad is not g
            for p, d, g in zip(params, data_lists, grad_lists, strict=True)]


def fresh_gradients(arrays) -> list[bool]:
    """Whether ``backward`` wrote each array's gradient since it was last marked stale (the
    state ``gluon.Trainer`` checks), read through MXNet's C API: ~0.3 us an array."""
    get, state = mx.base._LIB.MXNDArrayGetGradState, ctypes.c_int()
    out = ctypes.byref(state)
    fresh = [get(array.handle, out) or state.value for array in arrays]  # 0: success
    if -1 in fresh:
        mx.base.check_call(-1)  # raises MXNet's error
    return [value == 1 for value in fresh]


def set_fresh_gradients(arrays, fresh: bool) -> None:
    """Mark the arrays' gradients fresh (or stale), as ``backward`` (or the Trainer) does."""
    set_state, value = mx.base._LIB.MXNDArraySetGradState, ctypes.c_int(int(fresh))
    if any([set_state(array.handle, value) for array in arrays]):
        mx.base.check_call(-1)


class GradStates:
    """The gradient states of a fixed list of arrays (as :func:`fresh_gradients` and
    :func:`set_fresh_gradients`), read or set for all of them in one call to the kernel
    library's loop while the library is loaded (``kernels.grad_state_loops``), else one MXNet
    call per array."""

    def __init__(self, arrays) -> None:
        self._arrays = list(arrays)  # alive while the loops use their handles
        self._handles = (ctypes.c_void_p * len(self._arrays))(
            *(array.handle.value for array in self._arrays))
        self._states = np.zeros(len(self._arrays), dtype=np.intc)

    def fresh(self) -> np.ndarray:
        """Whether ``backward`` wrote each array's gradient since it was marked stale."""
        loops = kernels.grad_state_loops()
        if loops is None:
            return np.array(fresh_gradients(self._arrays), dtype=bool)
        _check(loops.get(_GET_GRAD_STATE, self._handles, len(self._arrays),
                         self._states.ctypes.data))
        return self._states == 1

    def mark(self, fresh: bool) -> None:
        """Mark every array's gradient fresh (or stale)."""
        loops = kernels.grad_state_loops()
        if loops is None:
            set_fresh_gradients(self._arrays, fresh)
        else:
            _check(loops.set(_SET_GRAD_STATE, self._handles, len(self._arrays), int(fresh)))


def _check(status: int) -> None:
    if status != 0:
        mx.base.check_call(-1)  # raises MXNet's error


_GET_GRAD_STATE, _SET_GRAD_STATE = (ctypes.cast(function, ctypes.c_void_p) for function in (
    mx.base._LIB.MXNDArrayGetGradState, mx.base._LIB.MXNDArraySetGradState))


def has_trainer(param: gluon.Parameter) -> bool:
    """Whether a ``gluon.Trainer`` has been created with ``param``."""
    return param._trainer is not None


def storage_types(param: gluon.Parameter) -> tuple[str, str]:
    """The storage types of ``param``'s weight and gradient (``'default'``: dense)."""
    return param._stype, param._grad_stype
