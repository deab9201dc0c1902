"""Property tests (Hypothesis): for random shapes (0-d and empty included), dtypes, option
combinations and gradient magnitudes (zeros, tiny, huge), every update path (the reference, the
fused kernel, the multi-tensor kernel, the row_sparse lazy update of each) agrees with the
float64 reference, weights stay finite, accumulators never decrease and effective learning
rates never increase; the same for row-wise Adagrad (dense and row_sparse)."""

import contextlib

import mxnet as mx
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mxnet import nd

from adagrad_gluon import AdagradScratch

from .reference import (
    adagrad_reference,
    error_at_scale,
    relative_error,
    rowwise_adagrad_reference,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
kernels = st.sampled_from(["reference", "fused"])

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
options = st.fixed_dictionaries({
    "learning_rate": st.sampled_from([0.0, 1e-3, 0.1, 1.0]),
    "wd": st.sampled_from([0.0, 1e-4, 0.05]),
    "rescale_grad": st.sampled_from([0.1, 1.0, 4.0]),
    "clip_gradient": st.sampled_from([None, 0.01, 1.0, 1e3]),
    "eps": st.sampled_from([0.0, 1e-10, 1e-7, 1e-6, 1e-3]),
    "eps_placement": st.sampled_from(["inside", "outside"]),
    "weight_decay_mode": st.sampled_from(["step", "l2", "decoupled"]),
    "initial_accumulator_value": st.sampled_from([0.0, 0.1]),
    "lr_decay": st.sampled_from([0.0, 0.1]),
    "maximize": st.booleans(),
})
# zeros, tiny (squares stay normal float32 numbers) and huge (squares stay below float32's max)
magnitudes = st.sampled_from([0.0, 1e-15, 1e-3, 1.0, 1e3, 1e15])


def _reference_options(opts):
    ref = {k: v for k, v in opts.items()
           if k not in ("learning_rate", "initial_accumulator_value", "lr_decay")}
    return ref


def _steps(shape, magnitude, seed, steps=4):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=shape).astype(np.float32)
    grads = [(rng.normal(size=shape) * magnitude).astype(np.float32) for _ in range(steps)]
    if grads[0].size:
        grads[0].flat[0] = 0.0  # always one exact zero
    return w0, grads


def _shape_semantics(shape):
    """0-d and empty arrays exist in MXNet 1.x only with NumPy shape semantics (as under
    ``npx.set_np()``, which d2l uses); in legacy mode a 0 in a shape means "unknown"."""
    if shape == () or 0 in shape:
        return mx.util.np_shape(True)
    return contextlib.nullcontext()


def _largest(array) -> float:
    return float(np.max(np.abs(array))) if np.size(array) else 0.0


def _check_against_reference(opts, w0, grads, dtype, multi_precision, kernel):
    with _shape_semantics(w0.shape):
        _run_against_reference(opts, w0, grads, dtype, multi_precision, kernel)


def _run_against_reference(opts, w0, grads, dtype, multi_precision, kernel):
    """Run the optimizer and the float64 reference side by side; check every property."""
    opt = AdagradScratch(multi_precision=multi_precision, kernel=kernel, **opts)
    w = nd.array(w0, dtype=dtype)
    state = opt.create_state_multi_precision(0, w)
    master, acc = state if isinstance(state, tuple) else (None, state)
    w_ref = w0.astype(dtype).astype(np.float64)
    s_ref = np.full(w0.shape, opts["initial_accumulator_value"])
    previous_acc = acc.asnumpy().copy()
    previous_rate = None
    scale = _largest(w_ref)  # of the weights so far: the scale of float32's rounding
    for t, g in enumerate(grads, start=1):
        g = g.astype(dtype)
        opt.update_multi_precision(0, w, nd.array(g, dtype=dtype), state)
        lr_t = opts["learning_rate"] / (1 + (t - 1) * opts["lr_decay"])
        w_ref, s_ref = adagrad_reference(w_ref, g.astype(np.float64), s_ref, lr=lr_t,
                                         **_reference_options(opts))
        if dtype == np.float16 and master is None:
            w_ref = w_ref.astype(np.float16).astype(np.float64)
        weights = (master if master is not None else w).asnumpy()
        assert np.isfinite(w.asnumpy()).all(), "weights became non-finite"
        now_acc = acc.asnumpy()
        assert (now_acc >= previous_acc).all(), "the accumulator decreased"
        previous_acc = now_acc.copy()
        rate = opt.effective_lr(0, state).asnumpy()
        if previous_rate is not None:
            both = np.isfinite(rate) & np.isfinite(previous_rate)
            assert (rate[both] <= previous_rate[both]).all(), "an effective rate increased"
        previous_rate = rate
        scale = max(scale, _largest(w_ref))
        # float16 weights without a master copy are rounded to float16 every step (both here
        # and in the reference, but from float32 and float64 values that may round apart by
        # one float16 ulp); with weight_decay_mode 'l2' that rounding reaches the accumulator
        tolerance = 1e-5 if dtype == np.float32 or master is not None else 2e-3
        assert error_at_scale(weights, w_ref, scale) <= tolerance, f"step {t}"
        assert relative_error(now_acc, s_ref) <= tolerance, f"step {t} accumulator"


@PROPERTY_SETTINGS
@given(shape=shapes, opts=options, magnitude=magnitudes, seed=st.integers(0, 2**16),
       kernel=kernels)
@example(shape=(), opts={"learning_rate": 1.0, "wd": 0.0, "rescale_grad": 0.1,
                         "clip_gradient": 0.01, "eps": 0.0, "eps_placement": "inside",
                         "weight_decay_mode": "step", "initial_accumulator_value": 0.0,
                         "lr_decay": 0.1, "maximize": False},
         magnitude=1.0, seed=0, kernel="reference")  # a weight taken from ~1 to ~0.002
def test_dense_float32_agrees_with_the_reference(shape, opts, magnitude, seed, kernel):
    w0, grads = _steps(shape, magnitude, seed)
    _check_against_reference(opts, w0, grads, np.float32, False, kernel)


@PROPERTY_SETTINGS
@given(shape=shapes, opts=options, magnitude=st.sampled_from([0.0, 1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2**16), multi_precision=st.booleans(), kernel=kernels)
@example(shape=(2,), opts={"learning_rate": 1.0, "wd": 0.05, "rescale_grad": 0.1,
                           "clip_gradient": None, "eps": 1e-10, "eps_placement": "outside",
                           "weight_decay_mode": "l2", "initial_accumulator_value": 0.0,
                           "lr_decay": 0.0, "maximize": False},
         magnitude=0.0, seed=0, multi_precision=False, kernel="reference")
def test_dense_float16_agrees_with_the_reference(shape, opts, magnitude, seed, multi_precision,
                                                 kernel):
    w0, grads = _steps(shape, magnitude, seed)
    _check_against_reference(opts, w0, grads, np.float16, multi_precision, kernel)


@PROPERTY_SETTINGS
@given(shape_list=st.lists(shapes.filter(lambda s: s != () and 0 not in s), min_size=2,
                           max_size=5),
       opts=options, magnitude=magnitudes, seed=st.integers(0, 2**16))
def test_multi_tensor_call_agrees_with_the_reference(shape_list, opts, magnitude, seed):
    """Several parameters in one ``update_multi_precision`` call (one multi-tensor kernel
    call), each against its own float64 reference."""
    opt = AdagradScratch(kernel="fused", **opts)
    runs = [_steps(shape, magnitude, seed + i) for i, shape in enumerate(shape_list)]
    ws = [nd.array(w0) for w0, _ in runs]
    states = [opt.create_state(i, w) for i, w in enumerate(ws)]
    refs = [(w0.astype(np.float64), np.full(w0.shape, opts["initial_accumulator_value"]))
            for w0, _ in runs]
    scales = [_largest(w0) for w0, _ in runs]
    for t in range(1, len(runs[0][1]) + 1):
        grads = [nd.array(g[t - 1]) for _, g in runs]
        opt.update_multi_precision(list(range(len(ws))), ws, grads, states)
        lr_t = opts["learning_rate"] / (1 + (t - 1) * opts["lr_decay"])
        refs = [adagrad_reference(w, g[t - 1], s, lr=lr_t, **_reference_options(opts))
                for (w, s), (_, g) in zip(refs, runs, strict=True)]
        scales = [max(scale, _largest(w_ref)) for scale, (w_ref, _) in zip(scales, refs,
                                                                            strict=True)]
        for w, state, (w_ref, s_ref), scale in zip(ws, states, refs, scales, strict=True):
            assert np.isfinite(w.asnumpy()).all()
            assert error_at_scale(w.asnumpy(), w_ref, scale) <= 1e-5
            assert relative_error(state.asnumpy(), s_ref) <= 1e-5


@PROPERTY_SETTINGS
@given(rows=st.integers(1, 8), cols=st.integers(1, 4), data=st.data(), opts=options,
       magnitude=magnitudes, seed=st.integers(0, 2**16), kernel=kernels)
def test_row_sparse_agrees_with_the_reference_on_present_rows(rows, cols, data, opts,
                                                               magnitude, seed, kernel):
    opts = {**opts, "wd": 0.0}  # a lazy update takes no weight decay
    present = sorted(data.draw(st.sets(st.integers(0, rows - 1), max_size=rows)))
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(rows, cols)).astype(np.float32)
    with _shape_semantics(w0.shape):
        _run_row_sparse(opts, w0, present, magnitude, rng, kernel)


def _run_row_sparse(opts, w0, present, magnitude, rng, kernel):
    rows, cols = w0.shape
    opt = AdagradScratch(kernel=kernel, **opts)
    w = nd.array(w0)
    acc = opt.create_state(0, w)
    values = (rng.normal(size=(len(present), cols)) * magnitude).astype(np.float32)
    grad = nd.sparse.row_sparse_array(
        (nd.array(values), nd.array(present, dtype="int64")), shape=(rows, cols))
    opt.update(0, w, grad, acc)
    w_ref = w0.astype(np.float64)
    s_ref = np.full(w0.shape, opts["initial_accumulator_value"])
    if present:
        w_ref[present], s_ref[present] = adagrad_reference(
            w0[present], values, s_ref[present], lr=opts["learning_rate"],
            **_reference_options(opts))
    assert np.isfinite(w.asnumpy()).all()
    assert error_at_scale(w.asnumpy(), w_ref, max(_largest(w0), _largest(w_ref))) <= 1e-5
    assert relative_error(acc.asnumpy(), s_ref) <= 1e-5
    absent = sorted(set(range(rows)) - set(present))
    np.testing.assert_array_equal(w.asnumpy()[absent], w0[absent])


@PROPERTY_SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=3).map(tuple), opts=options,
       magnitude=magnitudes, data=st.data(), seed=st.integers(0, 2**16), kernel=kernels,
       row_sparse=st.booleans())
def test_rowwise_agrees_with_the_reference(shape, opts, magnitude, data, seed, kernel,
                                           row_sparse):
    """Row-wise Adagrad, dense or row_sparse (a lazy update: wd 0, absent rows unchanged),
    against the float64 row-wise reference over 4 steps; the accumulator never decreases."""
    if row_sparse:
        opts = {**opts, "wd": 0.0}
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=shape).astype(np.float32)
    opt = AdagradScratch(kernel=kernel, rowwise=True, **opts)
    w = nd.array(w0)
    acc = opt.create_state(0, w)
    w_ref, s_ref = w0.astype(np.float64), np.full(shape[0], opts["initial_accumulator_value"])
    scale = _largest(w0)
    for t in range(1, 5):
        present = sorted(data.draw(st.sets(st.integers(0, shape[0] - 1)))) if row_sparse \
            else list(range(shape[0]))
        g = (rng.normal(size=(len(present),) + shape[1:]) * magnitude).astype(np.float32)
        grad = (nd.sparse.row_sparse_array((nd.array(g), nd.array(present, dtype="int64")),
                                           shape=shape) if row_sparse else nd.array(g))
        before, w_before = acc.asnumpy().copy(), w.asnumpy().copy()
        opt.update(0, w, grad, acc)
        lr_t = opts["learning_rate"] / (1 + (t - 1) * opts["lr_decay"])
        if present:
            w_ref[present], s_ref[present] = rowwise_adagrad_reference(
                w_ref[present], g, s_ref[present], lr=lr_t, **_reference_options(opts))
        scale = max(scale, _largest(w_ref))
        assert np.isfinite(w.asnumpy()).all(), "weights became non-finite"
        assert (acc.asnumpy() >= before).all(), "the accumulator decreased"
        assert error_at_scale(w.asnumpy(), w_ref, scale) <= 1e-5, f"step {t}"
        assert relative_error(acc.asnumpy(), s_ref) <= 1e-5, f"step {t} accumulator"
        absent = sorted(set(range(shape[0])) - set(present))
        np.testing.assert_array_equal(w.asnumpy()[absent], w_before[absent])
