"""Per-call work of a row_sparse update (issue 12, the fused call beside the operator alone):
a new gradient of arrays already checked gets only its own checks, and no device context is
read without lazy weight decay; every check still refuses what it refused, and the results
stay bit-identical to the reference update."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from adagrad_gluon import AdagradScratch
from adagrad_gluon.optim import checks

TABLE, WIDTH = 40, 8


def _row_sparse(rows, seed, dtype=np.float32, table=TABLE):
    data = np.random.default_rng(seed).standard_normal((len(rows), WIDTH)).astype(dtype)
    return nd.sparse.row_sparse_array((nd.array(data, dtype=dtype),
                                       nd.array(rows, dtype="int64")), shape=(table, WIDTH))


def _grads(count=6):
    """Fresh gradient objects, as a parameter server's pushes (or bench_sparse) hand them."""
    return [_row_sparse(np.sort(np.random.default_rng(k).choice(TABLE, 5, replace=False)), k)
            for k in range(count)]


def _updated(kernel, grads, **options):
    opt = AdagradScratch(learning_rate=0.1, kernel=kernel, **options)
    updater = mx.optimizer.get_updater(opt)
    weight = nd.array(np.random.default_rng(9).standard_normal((TABLE, WIDTH)))
    for grad in grads:
        updater([0], [grad], [weight])
    return weight.asnumpy(), updater.states[0].asnumpy()


def test_a_new_gradient_of_checked_arrays_gets_only_its_own_checks(monkeypatch):
    full = []
    original = checks.check_arrays
    monkeypatch.setattr(checks, "check_arrays",
                        lambda *args, **kw: full.append(args[0]) or original(*args, **kw))
    grads = _grads()
    fused = _updated("fused", grads, host_row_check=False)
    assert full == ["0"]  # the weight and accumulator once; then each new gradient alone
    reference = _updated("reference", grads)
    for got, expected in zip(fused, reference, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("bad", "error", "message"), [
    (_row_sparse([1, 2], 0, table=TABLE + 1), ValueError, "gradient shape"),
    (_row_sparse([1, 2], 0, dtype=np.float64), TypeError, "gradient dtype float64"),
    (nd.ones((TABLE, WIDTH)).tostype("csr"), TypeError, "got a csr gradient"),
    (np.ones((TABLE, WIDTH), np.float32), TypeError, "must be an NDArray"),
], ids=["shape", "dtype", "csr", "numpy"])
def test_a_bad_new_gradient_of_checked_arrays_is_refused_naming_the_parameter(bad, error,
                                                                             message):
    opt = AdagradScratch(learning_rate=0.1, kernel="fused", host_row_check=False)
    weight = nd.ones((TABLE, WIDTH))
    state = opt.create_state(0, weight)
    opt.update(0, weight, _grads(1)[0], state)
    before = weight.asnumpy()
    with pytest.raises(error, match=f"parameter 0.*{message}|{message}.*parameter 0"):
        opt.update(0, weight, bad, state)
    np.testing.assert_array_equal(weight.asnumpy(), before)


def test_no_context_is_read_per_call_without_lazy_weight_decay(monkeypatch):
    """The context costs a C call (~2 us); only lazy weight decay, keyed by device, needs it
    (and huge_pages, once per new set of arrays)."""
    reads = []
    context = nd.NDArray.context
    monkeypatch.setattr(nd.NDArray, "context",
                        property(lambda self: reads.append(1) or context.fget(self)))
    opt = AdagradScratch(learning_rate=0.1, kernel="fused", host_row_check=False)
    weight = nd.ones((TABLE, WIDTH))
    state = opt.create_state(0, weight)
    opt.update(0, weight, _grads(1)[0], state)
    first = len(reads)
    for grad in _grads():
        opt.update(0, weight, grad, state)
    assert len(reads) == first


def _same_gradient_run(kernel, steps, bad_step=None, wd_from=None, **options):
    """``steps`` per-key updates through MXNet's Updater, each with new rows written into
    ONE gradient array (as backward writes a gluon.Trainer parameter's own gradient); at
    ``bad_step`` the rows are [3, 3]; from step ``wd_from`` on, wd = 0.01 (decoupled)."""
    opt = AdagradScratch(learning_rate=0.1, kernel=kernel, weight_decay_mode="decoupled",
                         **options)
    updater = mx.optimizer.get_updater(opt)
    weight = nd.array(np.random.default_rng(9).standard_normal((TABLE, WIDTH)))
    grad = _grads(1)[0]
    for step in range(steps):
        rows = [3, 3] if step == bad_step else np.sort(
            np.random.default_rng(100 + step).choice(TABLE, 3 + step % 4, replace=False))
        _row_sparse(rows, step).copyto(grad)
        if step == wd_from:
            opt.wd = 0.01
        updater([0], [grad], [weight])
    return opt, weight, updater.states[0]


def test_a_repeated_row_sparse_gradient_takes_the_prepared_path_bit_for_bit(monkeypatch):
    whole = []
    original = AdagradScratch._update_lists
    monkeypatch.setattr(AdagradScratch, "_update_lists",
                        lambda self, *args: whole.append(1) or original(self, *args))
    _, weight, acc = _same_gradient_run("fused", 8, host_row_check=False)
    assert len(whole) == 2  # seen once, then prepared: the rest skip the whole path
    whole.clear()
    _, expected_weight, expected_acc = _same_gradient_run("reference", 8)
    np.testing.assert_array_equal(weight.asnumpy(), expected_weight.asnumpy())
    np.testing.assert_array_equal(acc.asnumpy(), expected_acc.asnumpy())


@pytest.mark.parametrize("check", [None, True])
def test_the_prepared_row_sparse_path_still_checks_rows_on_the_host(check):
    """An array handed to update (not a Trainer parameter's own gradient) is checked on the
    host by default, also once its update is prepared: bad rows are refused, nothing
    written."""
    with pytest.raises(ValueError, match="row indices must be strictly increasing"):
        _same_gradient_run("fused", 6, bad_step=5, host_row_check=check)


def test_the_prepared_row_sparse_path_leaves_bad_rows_to_the_kernel_if_asked():
    opt = AdagradScratch(learning_rate=0.1, kernel="fused", host_row_check=False)
    updater = mx.optimizer.get_updater(opt)
    weight, grad = nd.ones((TABLE, WIDTH)), _grads(1)[0]
    for _ in range(3):
        updater([0], [grad], [weight])
    before = weight.asnumpy()
    _row_sparse([3, 3], 0).copyto(grad)
    updater([0], [grad], [weight])
    with pytest.raises(mx.base.MXNetError, match="strictly increasing"):
        weight.asnumpy()
    np.testing.assert_array_equal(weight.asnumpy(), before)


def test_weight_decay_set_on_a_prepared_row_sparse_key_takes_the_lazy_path():
    """wd set after the update was prepared: lazy weight decay starts (the whole path),
    exactly as on the reference."""
    opt, weight, acc = _same_gradient_run("fused", 8, wd_from=4, host_row_check=False)
    assert opt._row_decay  # the decay is kept, per row
    ref, expected_weight, expected_acc = _same_gradient_run("reference", 8, wd_from=4)
    opt.apply_pending_decay(0, weight, acc)
    ref.apply_pending_decay(0, expected_weight, expected_acc)
    np.testing.assert_array_equal(weight.asnumpy(), expected_weight.asnumpy())
    np.testing.assert_array_equal(acc.asnumpy(), expected_acc.asnumpy())
