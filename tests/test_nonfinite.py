"""The non-finite gradient policy: propagate (the built-in's behaviour), skip and count, or
raise naming the parameter; on every update path."""

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from adagrad_gluon import AdagradScratch
from adagrad_gluon.optimizer import NonFiniteGradientError

KERNELS = ["reference", "fused"]


def _net_and_trainer(policy, kernel, **options):
    net = gluon.nn.Dense(2, in_units=3, prefix="nf_")
    net.initialize(mx.init.Constant(0.5))
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.1, "nonfinite": policy, "kernel": kernel,
                             **options})
    return net, trainer


def _step(net, trainer, bad_value=None):
    """One step; the bias gradient gets ``bad_value`` in one element if given."""
    with autograd.record():
        loss = net(nd.ones((4, 3))).sum()
    loss.backward()
    if bad_value is not None:
        net.bias.grad()[1] = bad_value
    trainer.step(4)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_skip_leaves_the_parameter_and_its_state_alone_and_counts(kernel, bad):
    net, trainer = _net_and_trainer("skip", kernel)
    _step(net, trainer)
    bias, weight = net.bias.data().asnumpy(), net.weight.data().asnumpy()
    opt = trainer._optimizer
    bias_index = trainer._params.index(net.bias)
    acc_before = trainer._updaters[0].states[bias_index].asnumpy().copy()
    count_before = opt._index_update_count[bias_index]
    _step(net, trainer, bad_value=bad)
    np.testing.assert_array_equal(net.bias.data().asnumpy(), bias)
    np.testing.assert_array_equal(trainer._updaters[0].states[bias_index].asnumpy(), acc_before)
    assert opt._index_update_count[bias_index] == count_before
    assert not np.array_equal(net.weight.data().asnumpy(), weight)  # the others still move
    assert opt.nonfinite_skipped == {bias_index: 1} and opt.num_nonfinite_skipped == 1
    _step(net, trainer)  # and training goes on
    assert np.isfinite(net.bias.data().asnumpy()).all()
    assert not np.array_equal(net.bias.data().asnumpy(), bias)


@pytest.mark.parametrize("kernel", KERNELS)
def test_raise_names_the_parameter_and_updates_nothing(kernel):
    net, trainer = _net_and_trainer("raise", kernel)
    before = [p.data().asnumpy().copy() for p in trainer._params]
    with pytest.raises(NonFiniteGradientError, match=r"'nf_bias'.*nothing was updated"):
        _step(net, trainer, bad_value=math.nan)
    for p, b in zip(trainer._params, before, strict=True):
        np.testing.assert_array_equal(p.data().asnumpy(), b)
    assert isinstance(NonFiniteGradientError("x"), ValueError)


@pytest.mark.parametrize("kernel", KERNELS)
def test_propagate_matches_the_builtin(kernel):
    results = {}
    for name, options in (("adagrad_scratch", {"kernel": kernel}), ("adagrad", {})):
        opt = mx.optimizer.create(name, learning_rate=0.1, eps=1e-6, **options)
        w = nd.ones((4,))
        state = opt.create_state(0, w)
        opt.update(0, w, nd.array([1.0, math.nan, math.inf, 2.0]), state)
        results[name] = (w.asnumpy(), state.asnumpy())
    for ours, builtin in zip(results["adagrad_scratch"], results["adagrad"], strict=True):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(builtin))
        np.testing.assert_array_equal(ours[np.isfinite(ours)], builtin[np.isfinite(builtin)])


@pytest.mark.parametrize("kernel", KERNELS)
def test_skip_on_a_row_sparse_gradient(kernel):
    opt = AdagradScratch(learning_rate=0.1, nonfinite="skip", kernel=kernel)
    w = nd.ones((6, 2))
    state = opt.create_state(0, w)
    values = nd.array([[math.inf, 1.0], [1.0, 1.0]])
    grad = nd.sparse.row_sparse_array((values, nd.array([1, 2], dtype="int64")), shape=(6, 2))
    opt.update(0, w, grad, state)
    np.testing.assert_array_equal(w.asnumpy(), 1.0)
    np.testing.assert_array_equal(state.asnumpy(), 0.0)
    assert opt.num_nonfinite_skipped == 1


def test_skip_in_one_multi_tensor_call_skips_only_the_bad_parameter():
    opt = AdagradScratch(learning_rate=0.1, nonfinite="skip", kernel="fused")
    ws = [nd.ones((3,)), nd.ones((2, 2)), nd.ones((5,))]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    grads = [nd.ones((3,)), nd.array([[1, 1], [math.nan, 1]]), nd.ones((5,))]
    opt.update_multi_precision([0, 1, 2], ws, grads, states)
    assert ws[0].asnumpy().max() < 1 and ws[2].asnumpy().max() < 1
    np.testing.assert_array_equal(ws[1].asnumpy(), 1.0)
    assert opt.nonfinite_skipped == {1: 1}


def test_unknown_policy():
    with pytest.raises(ValueError, match="nonfinite must be one of 'propagate', 'skip', 'raise'"):
        AdagradScratch(nonfinite="ignore")


def test_eps_that_float32_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="eps .* rounds to 0 in float32"):
        AdagradScratch(eps=1e-50)
    assert AdagradScratch(eps=1e-40).eps == 1e-40  # a float32 subnormal is fine


@pytest.mark.parametrize("kernel", KERNELS)
def test_large_finite_float64_gradients_are_not_taken_for_infinite(kernel):
    opt = AdagradScratch(learning_rate=0.1, nonfinite="raise", kernel=kernel)
    w = nd.ones((2,), dtype="float64")
    state = opt.create_state(0, w)
    opt.update(0, w, nd.array([1e39, 1.0], dtype="float64"), state)  # beyond float32's range
    assert np.isfinite(w.asnumpy()).all() and opt.num_nonfinite_skipped == 0
