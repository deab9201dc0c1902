"""What the optimizer guarantees when an update cannot be made: a non-finite gradient or an
overflowing accumulator under ``nonfinite='skip'``/``'raise'`` (nothing of the step updated
under 'raise', across dtypes and kernels), rates too small for MXNet's arguments, refused
lazy updates that must not count, and gradients of a storage type it does not take."""

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from adagrad_gluon import AdagradScratch
from adagrad_gluon.optimizer import NonFiniteGradientError

KERNELS = ["reference", "fused"]
DTYPES = ["float32", "float16", "float64"]


# -- nonfinite='raise' updates nothing of the step ------------------------------------------

def _mixed_dtype_trainer(policy, kernel, contexts=None, kvstore=None, dtypes=DTYPES):
    """A Trainer over a parameter of each of ``dtypes`` (by default float32, float16 and
    float64), in that order (the Trainer hands them over in one update call per dtype and
    context, the last dtype last), by default updated where the gradients are (no kvstore)."""
    params = gluon.ParameterDict("mixed_")
    for k, dtype in enumerate(dtypes):
        param = params.get(f"p{k}_{dtype}", shape=(3,), dtype=dtype)
        param.initialize(mx.init.Constant(0.5), ctx=list(contexts or [mx.cpu()]))
    trainer = gluon.Trainer(params, "adagrad_scratch",
                            {"learning_rate": 0.1, "nonfinite": policy, "kernel": kernel},
                            kvstore=kvstore)
    return list(params.values()), trainer


def _mixed_step(params, trainer, bad_value=None):
    """One step on the loss sum(p) of every parameter on every context; the last one's
    gradient on the last context gets ``bad_value`` in one element if given."""
    contexts = params[0].list_ctx()
    with autograd.record():
        losses = [sum(p.data(ctx).astype("float32").sum() for p in params) for ctx in contexts]
    autograd.backward(losses)
    if bad_value is not None:
        params[-1].grad(contexts[-1])[1] = bad_value
    trainer.step(1)


def _snapshot(params, trainer):
    """Every weight, accumulator and update count (of every context)."""
    opt = trainer._optimizer
    return ([w.asnumpy().copy() for p in params for w in p.list_data()],
            {(k, i): s.asnumpy().copy() for k, updater in enumerate(trainer._updaters)
             for i, s in updater.states.items()},
            {device: dict(counts) for device, counts in opt._all_index_update_counts.items()},
            opt.num_update)


# 1e200 is finite in float64, but its square overflows the float64 accumulator
@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e200])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("contexts", [(mx.cpu(),), (mx.cpu(0), mx.cpu(1))],
                         ids=["one_context", "two_contexts"])
def test_raise_with_mixed_dtypes_updates_nothing_of_the_step(contexts, kernel, bad):
    params, trainer = _mixed_dtype_trainer("raise", kernel, contexts)
    _mixed_step(params, trainer)  # accumulators and counts are not at their start
    weights, accs, counts, num_update = _snapshot(params, trainer)
    with pytest.raises(NonFiniteGradientError, match=r"'mixed_p2_float64'.*nothing was updated"):
        _mixed_step(params, trainer, bad_value=bad)
    after = _snapshot(params, trainer)
    for w, w_before in zip(after[0], weights, strict=True):
        np.testing.assert_array_equal(w, w_before)
    assert after[1].keys() == accs.keys() and len(accs) == 3 * len(contexts)
    for key, acc in accs.items():
        np.testing.assert_array_equal(after[1][key], acc)
    assert after[2:] == (counts, num_update)
    _mixed_step(params, trainer)  # a good step afterwards updates every parameter
    assert all(not np.array_equal(w, w_before)
               for w, w_before in zip(_snapshot(params, trainer)[0], weights, strict=True))


def _set_accumulators(trainer, index, value):
    for updater in trainer._updaters:
        updater.states[index][:] = value


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("contexts", [(mx.cpu(),), (mx.cpu(0), mx.cpu(1))],
                         ids=["one_context", "two_contexts"])
def test_raise_checks_the_rest_of_the_step_against_its_accumulators(contexts, kernel):
    """The float32 parameter, updated in the step's second call, holds an accumulator near
    float32's max: a moderate gradient (1.7e19, whose square alone fits) overflows it, and the
    first call (float64) must see that too."""
    params, trainer = _mixed_dtype_trainer("raise", kernel, contexts,
                                           dtypes=("float64", "float32"))
    _mixed_step(params, trainer)
    _set_accumulators(trainer, 1, 3e38)
    before = _snapshot(params, trainer)
    assert len(before[2]) == len(contexts)
    with pytest.raises(NonFiniteGradientError, match=r"'mixed_p1_float32'.*nothing was updated"):
        _mixed_step(params, trainer, bad_value=1.7e19)
    after = _snapshot(params, trainer)
    for w, w_before in zip(after[0], before[0], strict=True):
        np.testing.assert_array_equal(w, w_before)
    assert after[1].keys() == before[1].keys()
    for key, acc in before[1].items():
        np.testing.assert_array_equal(after[1][key], acc)
    assert after[2:] == before[2:]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("contexts", [(mx.cpu(),), (mx.cpu(0), mx.cpu(1))],
                         ids=["one_context", "two_contexts"])
def test_raise_does_not_check_an_update_made_earlier_in_the_step_again(contexts, kernel):
    """The float32 parameter, updated first, ends the step with an accumulator that one more
    such gradient would overflow: the step's later calls must not take that for this step's
    update and raise halfway through it."""
    params, trainer = _mixed_dtype_trainer("raise", kernel, contexts,
                                           dtypes=("float32", "float64"))
    _mixed_step(params, trainer)
    _set_accumulators(trainer, 0, 1.5e38)
    before = _snapshot(params, trainer)
    for ctx in contexts:  # 1.5e38 + (1e19)^2 fits in float32, 1.5e38 + 2 * (1e19)^2 does not
        with autograd.record():
            loss = params[0].data(ctx).sum() + params[1].data(ctx).astype("float32").sum()
        loss.backward()
        params[0].grad(ctx)[:] = 1e19
    trainer.step(1)
    after = _snapshot(params, trainer)
    assert all(not np.array_equal(w, w_b) for w, w_b in zip(after[0], before[0], strict=True))
    assert all(np.isfinite(acc).all() for acc in after[1].values())


# the exception MXNet's callback swallows reaches pytest as an "unraisable" warning
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kernel", KERNELS)
def test_raise_on_the_kvstore_updates_no_parameter(kernel):
    """With update_on_kvstore (two devices and a 'device' kvstore) MXNet calls the optimizer
    once per parameter from a callback that swallows the exception (as the docstring says):
    every call sees the bad gradient among the Trainer's, so no parameter is updated."""
    params, trainer = _mixed_dtype_trainer("raise", kernel, (mx.cpu(0), mx.cpu(1)), "device")
    _mixed_step(params, trainer)
    assert trainer._update_on_kvstore
    weights = _snapshot(params, trainer)[0]
    try:
        _mixed_step(params, trainer, bad_value=math.nan)
    except NonFiniteGradientError:
        pass  # should MXNet ever pass it on
    for w, w_before in zip(_snapshot(params, trainer)[0], weights, strict=True):
        np.testing.assert_array_equal(w, w_before)


@pytest.mark.parametrize("kernel", KERNELS)
def test_skip_with_mixed_dtypes_skips_only_the_bad_parameter(kernel):
    params, trainer = _mixed_dtype_trainer("skip", kernel)
    _mixed_step(params, trainer)
    weights, accs, counts, _ = _snapshot(params, trainer)
    _mixed_step(params, trainer, bad_value=math.nan)
    after = _snapshot(params, trainer)
    np.testing.assert_array_equal(after[0][2], weights[2])
    np.testing.assert_array_equal(after[1][0, 2], accs[0, 2])
    assert not np.array_equal(after[0][0], weights[0])
    assert not np.array_equal(after[0][1], weights[1])
    assert after[2] == {device: {0: c[0] + 1, 1: c[1] + 1, 2: c[2]} for device, c in counts.items()}
    assert trainer._optimizer.nonfinite_skipped == {2: 1}


def test_without_a_trainer_raise_updates_nothing_of_the_call():
    """Without ``param_dict`` a call is all the optimizer sees: that call updates nothing."""
    opt = AdagradScratch(learning_rate=0.1, nonfinite="raise", kernel="reference")
    ws = [nd.ones((2,)), nd.ones((2,))]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    with pytest.raises(NonFiniteGradientError, match=r"parameter\(s\) 1;"):
        opt.update_multi_precision([0, 1], ws, [nd.ones((2,)), nd.array([1, math.inf])],
                                   states)
    for w, state in zip(ws, states, strict=True):
        np.testing.assert_array_equal(w.asnumpy(), 1.0)
        np.testing.assert_array_equal(state.asnumpy(), 0.0)
    assert opt._index_update_count == {}


# -- an accumulator that would overflow ----------------------------------------------------

def _one_update(policy, kernel, grad, acc_value=0.0, **options):
    opt = AdagradScratch(learning_rate=0.1, nonfinite=policy, kernel=kernel, **options)
    w = nd.ones((2,))
    state = opt.create_state(0, w)
    state[:] = acc_value
    opt.update(0, w, nd.array(grad), state)
    return opt, w, state


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("grad, acc_value, options", [
    ([1e20, 1.0], 0.0, {}),  # (1e20)^2 = 1e40 overflows float32
    ([1e10, 1.0], 0.0, {"rescale_grad": 1e10}),  # the same after rescaling
    ([1e19, 1.0], 3e38, {}),  # 1e38 fits, but not on top of the accumulator
    ([1.0, 1.0], 0.0, {"wd": 1e20, "weight_decay_mode": "l2"}),  # (1 + 1e20 * w)^2
])
def test_skip_an_update_that_would_overflow_the_accumulator(kernel, grad, acc_value, options):
    opt, w, state = _one_update("skip", kernel, grad, acc_value, **options)
    np.testing.assert_array_equal(w.asnumpy(), 1.0)
    np.testing.assert_array_equal(state.asnumpy(), np.float32(acc_value))
    assert opt.nonfinite_skipped == {0: 1} and 0 not in opt._index_update_count


@pytest.mark.parametrize("kernel", KERNELS)
def test_skip_an_overflowing_row_sparse_row(kernel):
    opt = AdagradScratch(learning_rate=0.1, nonfinite="skip", kernel=kernel)
    w = nd.ones((5, 2))
    state = opt.create_state(0, w)
    grad = nd.sparse.row_sparse_array((nd.array([[1.0, 1e20]]), nd.array([3], dtype="int64")),
                                      shape=(5, 2))
    opt.update(0, w, grad, state)
    np.testing.assert_array_equal(w.asnumpy(), 1.0)
    np.testing.assert_array_equal(state.asnumpy(), 0.0)
    assert opt.nonfinite_skipped == {0: 1}


@pytest.mark.parametrize("kernel", KERNELS)
def test_skip_an_overflow_of_a_float16_weights_float32_accumulator(kernel):
    """float16 gradients cannot overflow float32 by themselves, but rescaled they can."""
    opt = AdagradScratch(learning_rate=0.1, nonfinite="skip", kernel=kernel,
                         multi_precision=True, rescale_grad=1e18)
    w = nd.ones((2,), dtype="float16")
    master, acc = opt.create_state_multi_precision(0, w)
    opt.update_multi_precision(0, w, nd.array([100.0, 1.0], dtype="float16"), (master, acc))
    np.testing.assert_array_equal(w.asnumpy(), 1.0)
    np.testing.assert_array_equal(master.asnumpy(), 1.0)
    np.testing.assert_array_equal(acc.asnumpy(), 0.0)
    assert opt.nonfinite_skipped == {0: 1}


@pytest.mark.parametrize("kernel", KERNELS)
def test_raise_on_an_update_that_would_overflow_the_accumulator(kernel):
    with pytest.raises(NonFiniteGradientError, match="overflows the accumulator"):
        _one_update("raise", kernel, [1e20, 1.0])


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_clipped_large_gradient_is_safe(kernel):
    opt, w, state = _one_update("raise", kernel, [1e20, 1.0], clip_gradient=1e3)
    assert np.isfinite(state.asnumpy()).all() and w.asnumpy()[0] < 1
    assert opt.num_nonfinite_skipped == 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_propagate_still_lets_the_accumulator_overflow(kernel):
    _, _, state = _one_update("propagate", kernel, [1e20, 1.0])
    assert np.isinf(state.asnumpy()[0])


# -- rates below float64's smallest normal number -------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("options, moves", [
    ({"learning_rate": 1e-320}, False),  # the rate acts as 0
    ({"learning_rate": 0.1, "wd": 1e-320}, True),  # the decay acts as 0
    ({"learning_rate": 0.1, "lr_decay": 1e308}, True),  # 0.1 / (1 + 1e308) from update 2 on
    ({"lr_scheduler": lambda num_update: 1e-320}, False),
])
def test_subnormal_rates_act_as_zero(kernel, dtype, options, moves):
    opt = AdagradScratch(kernel=kernel, **options)
    twin = AdagradScratch(kernel=kernel, learning_rate=0.1 if moves else 0.0)
    results = []
    for o in (opt, twin):
        w = nd.ones((3,), dtype=dtype)
        state = o.create_state(0, w)
        for _ in range(3):
            o.update(0, w, nd.array([1.0, -2.0, 0.5], dtype=dtype), state)
        results.append((w.asnumpy(), state.asnumpy()))
    if "lr_decay" in options:  # only the first update moves the weight
        assert results[0][0][0] < 1 and results[0][0][0] > results[1][0][0]
    else:
        np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert opt.current_lr(0) == (0.1 if "wd" in options else 0.0)


# -- refused updates do not count -----------------------------------------------------------

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("options", "message"), [
    ({"learning_rate": 0.1, "wd": 0.01, "weight_decay_mode": "l2"}, "no lazy update can be exact"),
    ({"learning_rate": 2.0, "wd": 0.5}, "lr \\* wd = 1.0 must be below 1"),
], ids=["l2", "lr*wd=1"])
def test_refused_lazy_update_with_weight_decay_counts_nothing(kernel, options, message):
    opt = AdagradScratch(kernel=kernel, **options)
    w = nd.ones((4, 2))
    state = opt.create_state(0, w)
    grad = nd.sparse.row_sparse_array((nd.ones((1, 2)), nd.array([2], dtype="int64")),
                                      shape=(4, 2))
    for _ in range(3):
        with pytest.raises(ValueError, match=message):
            opt.update(0, w, grad, state)
    assert opt._index_update_count.get(0, 0) == 0 and opt.num_update == 0
    np.testing.assert_array_equal(w.asnumpy(), 1.0)
    np.testing.assert_array_equal(state.asnumpy(), 0.0)


# -- storage types ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", KERNELS)
def test_csr_gradient_is_a_type_error_naming_the_parameter(kernel):
    opt = mx.optimizer.create("adagrad_scratch", kernel=kernel,
                              param_idx2name={0: "emb_weight"})
    w = nd.ones((3, 2))
    state = opt.create_state(0, w)
    grad = nd.ones((3, 2)).tostype("csr")
    with pytest.raises(TypeError, match=r"'emb_weight'.*csr gradient"):
        opt.update(0, w, grad, state)
    np.testing.assert_array_equal(w.asnumpy(), 1.0)


@pytest.mark.parametrize("stype", ["csr", "row_sparse"])
def test_sparse_weight_is_a_type_error_naming_the_parameter(stype):
    opt = mx.optimizer.create("adagrad_scratch", param_idx2name={0: "emb_weight"})
    w = nd.ones((3, 2)).tostype(stype)
    if stype == "csr":
        with pytest.raises(TypeError, match=rf"'emb_weight'.*{stype} weight"):
            opt.create_state(0, w)
    # a row_sparse weight holding every row is what a kvstore keeps for a sparse table: its
    # (dense) state is made, and only a row_sparse gradient updates it (test_sparse_weights.py)
    with pytest.raises(TypeError, match=rf"'emb_weight'.*{stype} weight"):
        opt.update(0, w, nd.ones((3, 2)), nd.zeros((3, 2)))
    np.testing.assert_array_equal(w.asnumpy(), 1.0)


@pytest.mark.parametrize("name", ["rescale_grad", "clip_gradient"])
def test_gradient_factors_below_the_smallest_normal_number_are_refused(name):
    """A factor on the gradient cannot act as 0 like a rate (the gradient may be 1e300), and
    MXNet refuses it as an operator argument: refused when the optimizer is made."""
    with pytest.raises(ValueError, match=rf"{name} must be at least 2.2250738585072014e-308"):
        AdagradScratch(**{name: 1e-310})
    assert getattr(AdagradScratch(**{name: 1e-300}), name) == 1e-300
