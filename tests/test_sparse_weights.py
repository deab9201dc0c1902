"""``adagrad_scratch`` on the ``row_sparse`` weights a kvstore keeps (every row present): the
shards on parameter servers and gluon's local kvstore (``SparseEmbedding``)."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

import adagrad_gluon as ag
from adagrad_gluon import AdagradScratch
from adagrad_gluon.distributed import prepare_trainer
from adagrad_gluon.distributed.checkpoint import read_states

ROWS, DIM = 50, 4


def train_table(sparse_weight: bool, kernel: str, steps: int = 6, dim: int = DIM,
                **options) -> np.ndarray:
    """The table (``ROWS`` x ``dim``) after ``steps`` updates: a ``SparseEmbedding`` (a
    row_sparse weight in the local kvstore) or an ``Embedding(sparse_grad=True)`` (a dense
    weight)."""
    mx.random.seed(0)
    net = (gluon.contrib.nn.SparseEmbedding(ROWS, dim) if sparse_weight
           else gluon.nn.Embedding(ROWS, dim, sparse_grad=True))
    net.initialize(mx.init.Normal(1.0))
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.1, "kernel": kernel, **options})
    rng = np.random.RandomState(1)
    for _ in range(steps):
        rows = nd.array(rng.randint(0, ROWS // 2, 8))  # the upper half is never touched
        with autograd.record():
            loss = ((net(rows) - 1.0) ** 2).sum()
        loss.backward()
        trainer.step(8)
    if sparse_weight:
        return net.weight.row_sparse_data(nd.arange(ROWS, dtype=np.int64)).asnumpy()
    return net.weight.data().asnumpy()


@pytest.mark.parametrize("kernel", ["fused", "reference"])
def test_sparse_embedding_table_matches_the_dense_weight_bit_for_bit(kernel):
    sparse, dense = train_table(True, kernel), train_table(False, kernel)
    np.testing.assert_array_equal(sparse, dense)
    initial = train_table(True, kernel, steps=0)
    np.testing.assert_array_equal(sparse[ROWS // 2:], initial[ROWS // 2:])
    assert (sparse[: ROWS // 2] != initial[: ROWS // 2]).any(axis=1).sum() > 5


@pytest.mark.parametrize("kernel", ["fused", "reference"])
def test_rowwise_sparse_embedding_table_matches_the_dense_weight_bit_for_bit(kernel):
    """Row-wise, the kvstore's table sums each row's squares as the row_sparse update of a
    dense weight does (plainly, as GroupAdaGrad), not with the dense gradient's compensation:
    rows of 300, gradients scaled by 1e3, where the two roundings differ (this failed before)."""
    options = {"rowwise": True, "rescale_grad": 1e3}
    sparse = train_table(True, kernel, dim=300, **options)
    np.testing.assert_array_equal(sparse, train_table(False, kernel, dim=300, **options))
    initial = train_table(True, kernel, steps=0, dim=300)
    assert (sparse[: ROWS // 2] != initial[: ROWS // 2]).any(axis=1).sum() > 5


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_sparse_embedding_table_with_a_nonfinite_policy_updates(nonfinite):
    # 'raise' checks the rest of the Trainer's step too, which list_data() of a row_sparse
    # weight refused (and the kvstore's callback swallowed: nothing was ever updated)
    np.testing.assert_array_equal(train_table(True, "auto", nonfinite=nonfinite),
                                  train_table(False, "auto", nonfinite=nonfinite))


def shard(values: np.ndarray) -> nd.NDArray:
    """A row_sparse weight holding every row, as a kvstore keeps it."""
    return nd.sparse.row_sparse_array((nd.array(values), nd.arange(len(values), dtype=np.int64)),
                                      shape=values.shape)


def row_sparse(values, rows, shape=(ROWS, DIM)) -> nd.NDArray:
    return nd.sparse.row_sparse_array((nd.array(values), nd.array(rows, dtype=np.int64)),
                                      shape=shape)


def test_server_update_of_a_shard_touches_the_gradients_rows_only():
    rng = np.random.RandomState(0)
    start = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    weight, dense_weight = shard(start), nd.array(start)
    updater = mx.optimizer.get_updater(AdagradScratch(learning_rate=0.1))
    reference = AdagradScratch(learning_rate=0.1)
    dense_state = reference.create_state(0, dense_weight)
    rows = [3, 7, 40]
    grad_values = rng.normal(size=(3, DIM)).astype(np.float32)
    for _ in range(2):
        updater(0, row_sparse(grad_values, rows), weight)
        reference.update(0, dense_weight, row_sparse(grad_values, rows), dense_state)
    # a push without rows (a shard no worker touched this step) counts the update only
    updater(0, row_sparse(np.zeros((0, DIM), np.float32), []), weight)
    result = weight.asnumpy()
    np.testing.assert_array_equal(result, dense_weight.asnumpy())
    untouched = np.setdiff1d(np.arange(ROWS), rows)
    np.testing.assert_array_equal(result[untouched], start[untouched])
    assert weight.stype == "row_sparse" and weight.indices.shape == (ROWS,)
    state = updater.states[0]
    assert state.stype == "default" and state.shape == (ROWS, DIM)
    np.testing.assert_array_equal(state.asnumpy(), dense_state.asnumpy())
    assert updater.optimizer._index_update_count[0] == 3


@pytest.mark.parametrize("options", [{}, {"kernel": "reference"}, {"state_bits": 8},
                                     {"host_row_check": True}])
def test_server_update_copies_the_gradients_rows_to_the_host_once(monkeypatch, options):
    """The pushed rows are checked on the host; the gathered rows numbered 0..n-1 are not
    checked again (a second host sync per server step)."""
    from adagrad_gluon.optim import checks, sparse_grads
    calls = []
    original = checks.check_rows

    def counting(name, grad, weight):
        calls.append(grad.indices.asnumpy().tolist())
        return original(name, grad, weight)

    monkeypatch.setattr(checks, "check_rows", counting)
    monkeypatch.setattr(sparse_grads, "check_rows", counting)
    start = np.ones((ROWS, DIM), np.float32)
    weight = shard(start)
    optimizer = AdagradScratch(learning_rate=0.1, **options)
    updater = mx.optimizer.get_updater(optimizer)
    updater(0, row_sparse(np.ones((2, DIM)), [4, 9]), weight)
    assert calls == [[4, 9]]
    assert optimizer._rows_known_good is None
    moved = np.flatnonzero((weight.asnumpy() != start).any(axis=1))
    np.testing.assert_array_equal(moved, [4, 9])


@pytest.mark.parametrize("make_grad, options, error, match", [
    (lambda: row_sparse(np.ones((2, DIM)), [5, 2]), {}, ValueError, "strictly increasing"),
    (lambda: row_sparse(np.ones((1, DIM)), [ROWS]), {}, ValueError, r"in \[0, 50\)"),
    (lambda: nd.ones((ROWS, DIM)), {}, TypeError, "needs a row_sparse gradient"),
    (lambda: row_sparse(np.ones((1, 3)), [1], (ROWS, 3)), {}, ValueError, "gradient shape"),
    (lambda: row_sparse(np.ones((1, DIM)), [1]), {"wd": 0.01}, ValueError,
     "cannot apply weight decay"),
], ids=["unsorted", "out_of_range", "dense_grad", "shape", "weight_decay"])
def test_server_update_refuses_bad_input(make_grad, options, error, match):
    start = np.ones((ROWS, DIM), np.float32)
    weight = shard(start)
    updater = mx.optimizer.get_updater(AdagradScratch(learning_rate=0.1, **options))
    with pytest.raises(error, match=match):
        updater(0, make_grad(), weight)
    np.testing.assert_array_equal(weight.asnumpy(), start)


@pytest.mark.parametrize("acc, options, error, match", [
    (lambda: nd.zeros((ROWS, DIM)), {"rowwise": True}, ValueError,
     r"accumulator \(optimizer state\) shape \(50, 4\) should be \(50,\)"),
    (lambda: nd.zeros((ROWS, DIM + 1)), {}, ValueError, r"shape \(50, 5\) should be \(50, 4\)"),
    (lambda: nd.zeros((ROWS, DIM), dtype=np.float64), {}, TypeError,
     "dtype float64 should be float32"),
    (lambda: nd.sparse.zeros("row_sparse", (ROWS, DIM)), {}, TypeError,
     "must be a dense NDArray, got a row_sparse one"),
], ids=["rowwise_of_elementwise", "width", "dtype", "sparse"])
def test_server_update_refuses_a_mismatched_accumulator(acc, options, error, match):
    """The accumulator is checked whole before anything is gathered (only its rows were)."""
    start = np.ones((ROWS, DIM), np.float32)
    weight = shard(start)
    with pytest.raises(error, match=match):
        AdagradScratch(**options).update(0, weight, row_sparse(np.ones((1, DIM)), [3]), acc())
    np.testing.assert_array_equal(weight.asnumpy(), start)


def test_row_sparse_weight_without_every_row_is_refused():
    partial = row_sparse(np.ones((2, DIM)), [0, 1])
    optimizer = AdagradScratch(learning_rate=0.1)
    with pytest.raises(ValueError, match="must hold every row.*got 2 of 50"):
        optimizer.update(0, partial, row_sparse(np.ones((1, DIM)), [0]),
                         optimizer.create_state(0, partial))


@pytest.mark.parametrize("net", [
    lambda: gluon.contrib.nn.SparseEmbedding(ROWS, DIM),
    lambda: gluon.nn.Embedding(ROWS, DIM, sparse_grad=True),
], ids=["sparse_weight", "sparse_grad"])
def test_prepare_trainer_refuses_sparse_parameters_updated_on_workers(net):
    block = net()
    block.initialize()
    trainer = gluon.Trainer(block.collect_params(), "adagrad_scratch", kvstore="dist_sync",
                            update_on_kvstore=False)
    with pytest.raises(ValueError, match="no update_on_kvstore=False"):
        prepare_trainer(trainer, 10)  # before connecting: no job is running here


def test_prepare_trainer_refuses_rowwise_for_dense_weights_on_the_servers():
    # a server keeps a dense parameter as a flat array: it has no rows to keep a state for
    net = gluon.nn.Sequential()
    net.add(gluon.contrib.nn.SparseEmbedding(ROWS, DIM), gluon.nn.Dense(1, in_units=DIM))
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch", {"rowwise": True},
                            kvstore="dist_sync")
    with pytest.raises(ValueError, match=r"rowwise=True on the servers needs sparse weights.*"
                                         r"dense\d+_bias, dense\d+_weight are dense"):
        prepare_trainer(trainer, 10)  # before connecting: no job is running here


@pytest.mark.parametrize("net", [
    lambda: gluon.contrib.nn.SparseEmbedding(ROWS, DIM),
    lambda: gluon.nn.Embedding(ROWS, DIM, sparse_grad=True),
], ids=["sparse_weight", "sparse_grad"])
def test_prepare_trainer_refuses_weight_decay_of_sparse_rows_on_the_servers(net):
    # the servers' lazy update cannot decay the rows a step skips, and a server's error is
    # only printed: refused up front, before connecting
    block = net()
    block.initialize()
    trainer = gluon.Trainer(block.collect_params(), "adagrad_scratch",
                            {"wd": 0.01, "weight_decay_mode": "decoupled"}, kvstore="dist_sync")
    with pytest.raises(ValueError, match=r"have sparse rows and weight decay.*wd_mult=0"):
        prepare_trainer(trainer, 10)


def test_states_file_of_a_sparse_embedding_before_and_after_its_first_step(tmp_path):
    # before the first step the state was made from list_data(), which refuses a sparse weight
    net = gluon.contrib.nn.SparseEmbedding(ROWS, DIM)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch", {"learning_rate": 0.1})
    ag.save_states(trainer, tmp_path / "fresh.npz")
    fresh = read_states(tmp_path / "fresh.npz")
    np.testing.assert_array_equal(fresh.states[0], np.zeros((ROWS, DIM), np.float32))
    with autograd.record():
        loss = net(nd.array([2, 5])).sum()
    loss.backward()
    trainer.step(2)
    ag.save_states(trainer, tmp_path / "one.npz")
    acc = read_states(tmp_path / "one.npz").states[0]
    assert (acc[[2, 5]] > 0).all() and not acc[[0, 1, 3, 4]].any()
    ag.load_states(trainer, tmp_path / "fresh.npz")
    ag.save_states(trainer, tmp_path / "again.npz")
    np.testing.assert_array_equal(read_states(tmp_path / "again.npz").states[0], fresh.states[0])
