"""AdagradScratch: registration, validation, and step-for-step agreement with MXNet's built-in
``adagrad`` and with a float64 numpy reference."""

import itertools
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from adagrad_gluon import AdagradScratch
from adagrad_gluon.optimizer import REGISTERED_NAME

from .reference import adagrad_reference, relative_error

STEPS = 25


def _grads(shape, steps=STEPS, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=scale, size=shape).astype(np.float32) for _ in range(steps)]


# -- registration and defaults ---------------------------------------------------------------

def test_registered_name_and_defaults():
    opt = mx.optimizer.create("adagrad_scratch")
    assert isinstance(opt, AdagradScratch)
    assert REGISTERED_NAME == "adagrad_scratch"
    assert opt.learning_rate == 0.01
    assert opt.eps == 1e-6
    assert mx.optimizer.Optimizer.opt_registry["adagrad_scratch"] is AdagradScratch


def test_gluon_trainer_by_name_trains():
    net = gluon.nn.Dense(1)
    net.initialize(mx.init.Constant(0.0))
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch", {"learning_rate": 0.1})
    assert isinstance(trainer._optimizer, AdagradScratch)
    X, y = nd.ones((4, 2)), nd.ones((4,))
    for _ in range(5):
        with autograd.record():
            loss = gluon.loss.L2Loss()(net(X), y)
        loss.backward()
        trainer.step(4)
    assert net.weight.data().asnumpy().min() > 0  # moved towards the target


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"learning_rate": math.inf}, "learning_rate"),
        ({"eps": -1e-8}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"wd": -0.1}, "wd"),
        ({"wd": math.inf}, "wd"),
        ({"rescale_grad": 0.0}, "rescale_grad"),
        ({"rescale_grad": -1.0}, "rescale_grad"),
        ({"clip_gradient": 0.0}, "clip_gradient"),
        ({"clip_gradient": -1.0}, "clip_gradient"),
        ({"initial_accumulator_value": -0.1}, "initial_accumulator_value"),
        ({"lr_decay": -0.01}, "lr_decay"),
        ({"eps_placement": "middle"}, "eps_placement"),
        ({"weight_decay_mode": "adamw"}, "weight_decay_mode"),
        ({"begin_num_update": -1}, "begin_num_update"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdagradScratch(**kwargs)
    with pytest.raises(ValueError, match=name):
        mx.optimizer.create("adagrad_scratch", **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"learning_rate": "0.1"}, "learning_rate"),
        ({"eps": "1e-6"}, "eps"),
        ({"wd": True}, "wd"),
        ({"maximize": "yes"}, "maximize"),
        ({"multi_precision": 1}, "multi_precision"),
        ({"lr_scheduler": 0.1}, "lr_scheduler"),
    ],
)
def test_wrong_types_raise_type_error_naming_them(kwargs, name):
    with pytest.raises(TypeError, match=name):
        AdagradScratch(**kwargs)


def test_set_learning_rate_is_validated():
    opt = AdagradScratch(learning_rate=0.1)
    opt.set_learning_rate(0.5)
    assert opt.learning_rate == 0.5
    with pytest.raises(ValueError, match="learning_rate"):
        opt.set_learning_rate(-1.0)


def test_mismatched_gradient_or_state_shape_raises():
    opt = AdagradScratch()
    w = nd.ones((3, 4))
    state = opt.create_state_multi_precision(0, w)
    with pytest.raises(ValueError, match=r"gradient shape \(4, 3\).*weight shape \(3, 4\)"):
        opt.update(0, w, nd.ones((4, 3)), state)
    with pytest.raises(ValueError, match=r"gradient shape \(1, 4\)"):
        opt.update(0, w, nd.ones((1, 4)), state)  # would broadcast silently
    with pytest.raises(ValueError, match=r"accumulator .* shape \(4,\) .* weight shape \(3, 4\)"):
        opt.update(0, w, nd.ones((3, 4)), nd.zeros((4,)))
    np.testing.assert_array_equal(w.asnumpy(), 1.0)  # nothing was applied


# -- numerics --------------------------------------------------------------------------------

def test_zero_gradients_never_give_nan_even_with_eps_zero():
    for placement in ("inside", "outside"):
        opt = AdagradScratch(learning_rate=0.1, eps=0.0, eps_placement=placement, wd=0.0)
        w = nd.array([[1.0, -2.0, 3.0]])
        state = opt.create_state(0, w)
        opt.update(0, w, nd.zeros((1, 3)), state)
        np.testing.assert_array_equal(w.asnumpy(), [[1.0, -2.0, 3.0]])
        opt.update(0, w, nd.array([[0.0, 1.0, 0.0]]), state)  # mixed: one coordinate moves
        out = w.asnumpy()
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, [[1.0, -2.1, 3.0]], rtol=1e-6)


OPTION_GRID = [
    dict(wd=wd, rescale_grad=rescale, clip_gradient=clip)
    for wd, rescale, clip in itertools.product((0.0, 0.01), (1.0, 0.25), (None, 0.3))
]


@pytest.mark.parametrize("options", OPTION_GRID, ids=str)
@pytest.mark.parametrize("scheduled", [False, True], ids=["const", "FactorScheduler"])
def test_follows_builtin_adagrad_step_for_step(options, scheduled):
    """Same eps: the weights of adagrad_scratch and the built-in agree after every step."""
    def make(name):
        sched = mx.lr_scheduler.FactorScheduler(step=4, factor=0.7) if scheduled else None
        return mx.optimizer.create(name, learning_rate=0.2, eps=1e-6, lr_scheduler=sched,
                                   **options)

    ours, builtin = make("adagrad_scratch"), make("adagrad")
    w0 = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
    w_ours, w_builtin = nd.array(w0), nd.array(w0)
    s_ours, s_builtin = ours.create_state(0, w_ours), builtin.create_state(0, w_builtin)
    w_ref, s_ref = w0.astype(np.float64), np.zeros_like(w0, dtype=np.float64)
    ref_sched = mx.lr_scheduler.FactorScheduler(step=4, factor=0.7, base_lr=0.2)
    for t, g in enumerate(_grads(w0.shape, scale=2.0), start=1):
        ours.update(0, w_ours, nd.array(g), s_ours)
        builtin.update(0, w_builtin, nd.array(g), s_builtin)
        lr = ref_sched(t) if scheduled else 0.2
        w_ref, s_ref = adagrad_reference(w_ref, g, s_ref, lr=lr, eps=1e-6, **options)
        assert relative_error(w_ours.asnumpy(), w_builtin.asnumpy()) <= 1e-5, f"step {t}"
        assert relative_error(w_ours.asnumpy(), w_ref) <= 1e-5, f"step {t}"
        assert relative_error(s_ours.asnumpy(), s_ref) <= 1e-5, f"step {t}"
    # the same float32 operations in the same order: bit-identical
    np.testing.assert_array_equal(w_ours.asnumpy(), w_builtin.asnumpy())


def _two_layer_net(seed):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, activation="tanh"), gluon.nn.Dense(1))
    net.initialize(mx.init.Normal(0.5))
    net(nd.ones((1, 3)))
    params = net.collect_params()
    first = list(params.values())
    first[0].lr_mult = 2.0  # first layer's weight: doubled rate
    first[1].wd_mult = 0.0  # its bias: no weight decay
    first[2].lr_mult = 0.5
    return net


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_trainer_with_lr_mult_wd_mult_matches_builtin(wd):
    rng = np.random.default_rng(3)
    X = nd.array(rng.normal(size=(64, 3)))
    y = nd.array(rng.normal(size=(64,)))
    results = {}
    for name in ("adagrad_scratch", "adagrad"):
        net = _two_layer_net(seed=7)
        sched = mx.lr_scheduler.FactorScheduler(step=5, factor=0.8)
        trainer = gluon.Trainer(net.collect_params(), name,
                                {"learning_rate": 0.05, "eps": 1e-6, "wd": wd,
                                 "clip_gradient": 1.0, "lr_scheduler": sched})
        for i in range(20):
            batch = slice((i % 4) * 16, (i % 4 + 1) * 16)
            with autograd.record():
                loss = gluon.loss.L2Loss()(net(X[batch]), y[batch])
            loss.backward()
            trainer.step(16)
        results[name] = [p.data().asnumpy() for p in net.collect_params().values()]
    for ours, builtin in zip(results["adagrad_scratch"], results["adagrad"], strict=True):
        assert relative_error(ours, builtin) <= 1e-5


def _embedding_run(name, steps=12, **options):
    mx.random.seed(11)
    emb = gluon.nn.Embedding(20, 4, sparse_grad=True)
    emb.initialize(mx.init.Normal(1.0))
    trainer = gluon.Trainer(emb.collect_params(), name,
                            {"learning_rate": 0.3, "eps": 1e-6, **options})
    rng = np.random.default_rng(5)
    touched = set()
    for _ in range(steps):
        tokens = rng.choice(10, size=6)  # rows 10..19 are never used
        touched.update(tokens.tolist())
        x = nd.array(tokens)
        with autograd.record():
            loss = (emb(x) ** 2).sum()
        loss.backward()
        assert emb.weight.grad().stype == "row_sparse"
        trainer.step(6)
    return emb.weight.data().asnumpy(), touched


@pytest.mark.parametrize("options", [{}, {"rescale_grad": 2.0, "clip_gradient": 0.5}], ids=str)
def test_row_sparse_lazy_update_matches_builtin(options):
    mx.random.seed(11)
    before = gluon.nn.Embedding(20, 4)
    before.initialize(mx.init.Normal(1.0))
    w0 = before.weight.data().asnumpy()
    ours, touched = _embedding_run("adagrad_scratch", **options)
    builtin, _ = _embedding_run("adagrad", **options)
    assert relative_error(ours, builtin) <= 1e-5
    untouched = sorted(set(range(20)) - touched)
    np.testing.assert_array_equal(ours[untouched], w0[untouched])  # lazy: rows not seen stay
    assert not np.array_equal(ours[sorted(touched)], w0[sorted(touched)])


def test_row_sparse_with_l2_weight_decay_is_refused_clearly():
    # 'l2' decay enters the accumulator of every row: no lazy update can be exact ('step' and
    # 'decoupled' get the exact lazy decay of tests/test_lazy_decay.py)
    with pytest.raises(ValueError, match="row_sparse.*weight_decay_mode='l2'.*wd=0.01"):
        _embedding_run("adagrad_scratch", steps=1, wd=0.01, weight_decay_mode="l2")


def test_row_sparse_update_against_numpy_reference():
    opt = AdagradScratch(learning_rate=0.5, eps=1e-6)
    w0 = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32)
    w = nd.array(w0)
    s = opt.create_state(0, w)
    rows = np.array([1, 4])
    data = np.random.default_rng(3).normal(size=(2, 3)).astype(np.float32)
    grad = nd.sparse.row_sparse_array((nd.array(data), nd.array(rows, dtype="int64")),
                                      shape=(6, 3))
    opt.update(0, w, grad, s)
    w_ref, s_ref = w0.astype(np.float64), np.zeros((6, 3))
    w_ref[rows], s_ref[rows] = adagrad_reference(w0[rows], data, s_ref[rows], lr=0.5)
    np.testing.assert_allclose(w.asnumpy(), w_ref, rtol=1e-6)
    np.testing.assert_allclose(s.asnumpy(), s_ref, rtol=1e-6)


@pytest.mark.parametrize("multi_precision", [True, False])
def test_float16_weights_keep_a_float32_accumulator(multi_precision):
    opt = AdagradScratch(learning_rate=0.1, multi_precision=multi_precision)
    w0 = np.random.default_rng(4).normal(size=(4, 5)).astype(np.float16)
    w = nd.array(w0, dtype="float16")
    state = opt.create_state_multi_precision(0, w)
    acc = state[1] if multi_precision else state
    assert acc.dtype == np.float32
    w_ref, s_ref = w0.astype(np.float64), np.zeros(w0.shape)
    for g in _grads(w0.shape, steps=10):
        g16 = g.astype(np.float16)
        opt.update_multi_precision(0, w, nd.array(g16, dtype="float16"), state)
        w_ref, s_ref = adagrad_reference(w_ref, g16, s_ref, lr=0.1)
        if not multi_precision:  # without a master copy the weight is rounded every step
            w_ref = w_ref.astype(np.float16).astype(np.float64)
    assert w.dtype == np.float16
    np.testing.assert_allclose(acc.asnumpy(), s_ref, rtol=1e-5)
    if multi_precision:
        np.testing.assert_allclose(state[0].asnumpy(), w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.asnumpy().astype(np.float64), w_ref, rtol=2e-3, atol=1e-3)


def test_multi_precision_through_trainer_matches_float32_run():
    """float16 parameters with multi_precision: the float32 master weights follow a float32
    run fed the same (float16-rounded) gradients."""
    w0 = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float16)
    opt16 = AdagradScratch(learning_rate=0.1, multi_precision=True, wd=0.01)
    opt32 = AdagradScratch(learning_rate=0.1, wd=0.01)
    w16, w32 = nd.array(w0, dtype="float16"), nd.array(w0.astype(np.float32))
    st16, st32 = opt16.create_state_multi_precision(0, w16), opt32.create_state(0, w32)
    for g in _grads(w0.shape, steps=10):
        g16 = g.astype(np.float16)
        opt16.update_multi_precision(0, w16, nd.array(g16, dtype="float16"), st16)
        opt32.update(0, w32, nd.array(g16.astype(np.float32)), st32)
    np.testing.assert_array_equal(st16[0].asnumpy(), w32.asnumpy())
    np.testing.assert_array_equal(w16.asnumpy(), w32.asnumpy().astype(np.float16))


def test_lr_decay_rate_before_the_first_update_is_the_first_updates():
    opt = AdagradScratch(learning_rate=0.1, lr_decay=1.0)
    assert opt.current_lr(0) == 0.1  # not 0.1 / (1 - 1): no update counted yet
    w = nd.ones((2,))
    state = opt.create_state(0, w)
    opt.update(0, w, nd.ones((2,)), state)
    assert opt.current_lr(0) == 0.1
    opt.update(0, w, nd.ones((2,)), state)
    assert opt.current_lr(0) == pytest.approx(0.05)


def test_state_or_gradient_of_the_wrong_dtype_is_refused():
    opt = AdagradScratch()
    w = nd.ones((3,))
    with pytest.raises(TypeError, match="accumulator .* dtype float16 should be float32"):
        opt.update(0, w, nd.ones((3,)), nd.zeros((3,), dtype="float16"))
    with pytest.raises(TypeError, match="gradient dtype float64 does not match weight dtype "
                                        "float32"):
        opt.update(0, w, nd.ones((3,), dtype="float64"), opt.create_state(0, w))
    w16 = nd.ones((3,), dtype="float16")
    master = nd.ones((3,), dtype="float16")
    with pytest.raises(TypeError, match="master weight .* dtype float16 should be float32"):
        opt.update(0, w16, nd.ones((3,), dtype="float16"), (master, nd.zeros((3,))))


@pytest.mark.parametrize("kernel", ["reference", "fused"])
@pytest.mark.parametrize("rows", [[2, 1], [1, 1], [0, 6], [-1, 2]], ids=str)
def test_malformed_row_sparse_rows_are_refused(kernel, rows):
    opt = AdagradScratch(kernel=kernel)
    w = nd.ones((6, 2))
    state = opt.create_state(0, w)
    grad = nd.sparse.row_sparse_array((nd.ones((2, 2)), nd.array(rows, dtype="int64")),
                                      shape=(6, 2))
    with pytest.raises(ValueError, match=r"row indices must be strictly increasing and in "
                                         r"\[0, 6\)"):
        opt.update(0, w, grad, state)
    np.testing.assert_array_equal(w.asnumpy(), 1.0)
