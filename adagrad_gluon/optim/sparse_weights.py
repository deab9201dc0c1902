"""The ``row_sparse`` weights a kvstore keeps: ``adagrad_scratch`` on parameter servers (each
holding a shard of a ``Parameter(stype='row_sparse')``'s rows, e.g. of a
``gluon.contrib.nn.SparseEmbedding``) and in ``gluon.Trainer``'s local kvstore.

Such a weight holds every row and takes ``row_sparse`` gradients (row ids relative to the
shard). The update is lazy: only the gradient's rows change, exactly as a dense weight's rows
would, and ``wd`` must be 0 (nothing brings a server's skipped rows up to date before the
workers pull them).
"""

from __future__ import annotations

from mxnet import nd

from .checks import State, check_kvstore_row_sparse, split_state
from .options import flush_subnormal

__all__ = ["is_row_sparse", "set_rows", "update_kvstore_row_sparse"]


def update_kvstore_row_sparse(optimizer, index: int, weight: nd.NDArray, grad: nd.NDArray,
                          state: State) -> None:
    """``optimizer``'s update of a kvstore's ``row_sparse`` weight (see the module): the
    gradient's rows of the weight and accumulator are gathered, updated by
    ``optimizer.update_multi_precision`` with the gradient as a ``row_sparse`` one of those
    rows (so row-wise sums round as for ``Embedding(sparse_grad=True)``), and written back."""
    name = optimizer._name(index)
    master, acc = split_state(state)
    check_kvstore_row_sparse(name, weight, grad, acc, master, rowwise=optimizer.rowwise)
    wd = flush_subnormal(optimizer._get_wds([index])[0])
    if wd:
        raise ValueError(
            f"parameter {name}: a row_sparse weight gets a lazy update, which cannot apply "
            f"weight decay to the rows it skips; set wd=0 (or wd_mult=0 for this "
            f"parameter), got wd={wd}"
        )
    rows = grad.indices
    if rows.shape[0] == 0:  # a server's shard that no gradient of this step touches
        optimizer._update_count(index)
        return
    rows_weight, rows_acc = nd.sparse.retain(weight, rows).data, nd.take(acc, rows)
    count = rows.shape[0]
    local = nd.sparse.row_sparse_array((grad.data, nd.arange(count, dtype=rows.dtype)),
                                       shape=rows_weight.shape)
    optimizer.update_known_rows(index, rows_weight, local, rows_acc)  # rows checked above
    acc[rows] = rows_acc
    set_rows(weight, rows, rows_weight)


def is_row_sparse(array) -> bool:
    """Whether ``array`` is a ``row_sparse`` NDArray."""
    return getattr(array, "stype", None) == "row_sparse"


def set_rows(weight: nd.NDArray, rows: nd.NDArray, values: nd.NDArray) -> None:
    """``weight[rows] = values``, in place, for a ``row_sparse`` weight holding every row
    (MXNet has no such assignment): MXNet's lazy ``sgd_update`` of those rows,
    ``w = (1 - lr * wd) * w - lr * rescale_grad * g``, with ``lr = wd = 1`` and
    ``rescale_grad = -1`` is ``0 * w + values``, exactly ``values`` for a finite ``w``."""
    nd.sgd_update(weight, nd.sparse.row_sparse_array((values, rows), shape=weight.shape),
                  lr=1.0, wd=1.0, rescale_grad=-1.0, lazy_update=True, out=weight)
