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
