"""Row-wise Adagrad (``rowwise=True``): the ``'groupadagrad'`` preset against MXNet's own
``GroupAdaGrad`` bit for bit, the ``'fbgemm'`` preset against FBGEMM's formula in float64, the
(rows,) state through every path that keeps it, and the errors for what it cannot take."""

import pickle

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from mxnet.optimizer.contrib import GroupAdaGrad

import adagrad_gluon as ag
from adagrad_gluon import AdagradScratch

from . import frameworks
from .reference import relative_error

KERNELS = ["reference", "fused"]


def _gradient(rng, shape, rows=None):
    """A float32 gradient of magnitudes from 1e-3 to 1e3 (dense), or its ``rows`` as a
    row_sparse array; some rows all zero."""
    g = (rng.normal(size=shape) * 10.0 ** rng.uniform(-3, 3, size=shape)).astype(np.float32)
    g[rng.integers(shape[0])] = 0.0
    if rows is None:
        return nd.array(g)
    return nd.sparse.row_sparse_array((g[rows], rows), shape=shape)


def _rows(rng, num_rows, count):
    return np.sort(rng.choice(num_rows, count, replace=False))


# -- the presets ----------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("row_sparse", [False, True], ids=["dense", "row_sparse"])
@pytest.mark.parametrize("options", [{}, dict(rescale_grad=0.25, clip_gradient=2.0),
                                     dict(eps=1e-3)], ids=str)
def test_groupadagrad_preset_is_mxnet_groupadagrad_bit_for_bit(kernel, row_sparse, options):
    """MXNet 1.9.1's ``contrib.GroupAdaGrad`` step for step: eps 1e-5 inside the root, a dense
    gradient's row mean as ``nd.mean`` rounds it (Kahan), a row_sparse one's as its sparse
    kernel does (a plain sum); rows of 64."""
    rng = np.random.default_rng(0)
    shape = (40, 64)
    w0 = rng.normal(size=shape).astype(np.float32)
    theirs = GroupAdaGrad(learning_rate=0.1, **options)
    ours = AdagradScratch(learning_rate=0.1, compat="groupadagrad", kernel=kernel, **options)
    w_theirs, w_ours = nd.array(w0), nd.array(w0)
    s_theirs, s_ours = theirs.create_state(0, w_theirs), ours.create_state(0, w_ours)
    assert s_ours.shape == (40,) and s_theirs.shape == (40, 1)
    for _ in range(25):
        grad = _gradient(rng, shape, _rows(rng, 40, 12) if row_sparse else None)
        theirs.update(0, w_theirs, grad, s_theirs)
        ours.update(0, w_ours, grad, s_ours)
    np.testing.assert_array_equal(w_ours.asnumpy(), w_theirs.asnumpy())
    np.testing.assert_array_equal(s_ours.asnumpy(), s_theirs.asnumpy().reshape(-1))


def test_groupadagrad_preset_refuses_weight_decay_as_groupadagrad_does():
    with pytest.raises(ValueError, match=r"compat='groupadagrad' has no weight decay.*wd must "
                                         r"be 0, got 0.01"):
        AdagradScratch(compat="groupadagrad", wd=0.01)


def _fbgemm_run(kernel, mode, row_sparse, steps):
    """``steps`` updates of a 30 x 16 table under ``compat='fbgemm'`` and FBGEMM's float64
    formula (``tests/frameworks.py``); returns the worst relative difference of the weights
    and accumulators, and how many rows the lazy update left untouched."""
    rng = np.random.default_rng(3)
    shape = (30, 16)
    w0 = rng.normal(size=shape).astype(np.float32)
    opt = AdagradScratch(learning_rate=0.05, compat="fbgemm", wd=0.0 if row_sparse else 0.01,
                         weight_decay_mode=mode, kernel=kernel)
    w = nd.array(w0)
    s = opt.create_state(0, w)
    ref_w, ref_s = w0.astype(np.float64), np.zeros(30)
    worst = 0.0
    touched = np.zeros(30, bool)
    for t in range(1, steps + 1):
        rows = _rows(rng, 30, 6) if row_sparse else np.arange(30)
        g = rng.normal(size=shape).astype(np.float32)
        grad = (nd.sparse.row_sparse_array((g[rows], rows), shape=shape) if row_sparse
                else nd.array(g))
        opt.update(0, w, grad, s)
        new_w, new_s = frameworks.fbgemm(ref_w[rows], g[rows].astype(np.float64), ref_s[rows],
                                         t, lr=0.05, wd=opt.wd, weight_decay_mode=mode)
        ref_w[rows], ref_s[rows] = new_w, new_s
        touched[rows] = True
        worst = max(worst, relative_error(w.asnumpy(), ref_w), relative_error(s.asnumpy(), ref_s))
    untouched = ~touched
    np.testing.assert_array_equal(w.asnumpy()[untouched], w0[untouched])
    return worst, int(untouched.sum())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_fbgemm_preset_matches_exact_rowwise_adagrad_to_1e_6(kernel, mode):
    """FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` (eps 1e-8 outside the root; ``WeightDecayMode.L2`` is
    ``weight_decay_mode='l2'``, ``DECOUPLED`` is ``'decoupled'``), 100 steps, dense; float32
    against float64."""
    worst, _ = _fbgemm_run(kernel, mode, row_sparse=False, steps=100)
    assert worst <= 1e-6


@pytest.mark.parametrize("kernel", KERNELS)
def test_fbgemm_preset_row_sparse_matches_and_leaves_other_rows(kernel):
    worst, untouched = _fbgemm_run(kernel, "l2", row_sparse=True, steps=4)
    assert worst <= 1e-6 and untouched > 0


def test_rowwise_presets_set_rowwise_and_explicit_arguments_win():
    assert AdagradScratch(compat="fbgemm").options.rowwise
    assert AdagradScratch(compat="groupadagrad").eps == 1e-5
    assert AdagradScratch(compat="fbgemm").eps == 1e-8
    assert not AdagradScratch(compat="fbgemm", rowwise=False).rowwise
    assert AdagradScratch(rowwise=True).options.rowwise
    assert not AdagradScratch().rowwise
    with pytest.raises(TypeError, match="rowwise must be True or False"):
        AdagradScratch(rowwise="yes")


# -- the state ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, acc_dtype", [("float32", np.float32), ("float64", np.float64),
                                              ("float16", np.float32)])
def test_the_state_is_one_accumulator_per_row(dtype, acc_dtype):
    opt = AdagradScratch(rowwise=True, initial_accumulator_value=0.5)
    state = opt.create_state(0, nd.zeros((7, 3, 4), dtype=dtype))
    assert state.shape == (7,) and state.dtype == acc_dtype
    np.testing.assert_array_equal(state.asnumpy(), 0.5)


def test_a_1d_weight_is_refused_naming_the_parameter():
    net = gluon.nn.Dense(3, in_units=4, prefix="model_")
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.1, "rowwise": True})
    with autograd.record():
        loss = net(nd.ones((2, 4))).sum()
    loss.backward()
    with pytest.raises(ValueError, match=r"parameter 'model_bias': rowwise=True keeps one "
                                         r"accumulator per row .*shape \(3,\)"):
        trainer.step(2)


def test_a_state_of_the_wrong_shape_is_refused():
    opt = AdagradScratch(rowwise=True)
    w = nd.ones((4, 3))
    with pytest.raises(ValueError, match=r"accumulator .* shape \(4, 3\) should be \(4,\)"):
        opt.update(0, w, nd.ones((4, 3)), nd.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"accumulator .* shape \(4,\) should be \(4, 3\)"):
        AdagradScratch().update(0, w, nd.ones((4, 3)), nd.zeros(4))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows", [[3, 1], [1, 9], [2, 2], [-1, 2]], ids=str)
def test_bad_rows_of_a_row_sparse_gradient_are_refused(kernel, rows):
    opt = AdagradScratch(rowwise=True, kernel=kernel)
    w = nd.ones((5, 4))
    state = opt.create_state(0, w)
    grad = nd.sparse.row_sparse_array((np.ones((2, 4), np.float32), np.array(rows)),
                                      shape=(5, 4))
    with pytest.raises(ValueError, match="row indices must be strictly increasing and in"):
        opt.update(0, w, grad, state)
    np.testing.assert_array_equal(w.asnumpy(), 1.0)


def test_effective_lr_is_one_rate_per_row():
    opt = AdagradScratch(learning_rate=0.5, rowwise=True, eps=0.0)
    w = nd.ones((2, 3))
    state = opt.create_state(0, w)
    opt.update(0, w, nd.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]), state)
    np.testing.assert_allclose(opt.effective_lr(0, state).asnumpy(), [0.5, 0.25])


def _embedding(seed=0):
    mx.random.seed(seed)
    emb = gluon.nn.Embedding(20, 8, sparse_grad=True, prefix="emb_")
    emb.initialize(mx.init.Normal(1.0))
    return emb


def _train_embedding(emb, trainer, start, steps):
    for t in range(start, start + steps):
        tokens = nd.array(np.random.default_rng(t).integers(0, 20, size=6))
        with autograd.record():
            loss = (emb(tokens) * nd.arange(8).reshape((1, 8))).sum()
        loss.backward()
        trainer.step(6)


def _embedding_trainer(emb, compat="d2l", kernel="auto", rowwise=True):
    return gluon.Trainer(emb.collect_params(), "adagrad_scratch",
                         {"learning_rate": 0.1, "compat": compat, "rowwise": rowwise,
                          "lr_decay": 0.01, "kernel": kernel})


def test_trainer_embedding_fused_equals_reference_and_skips_rows():
    results = []
    for kernel in KERNELS:
        emb = _embedding()
        w0 = emb.weight.data().asnumpy()
        trainer = _embedding_trainer(emb, "fbgemm", kernel)
        _train_embedding(emb, trainer, 0, 1)
        acc = trainer._updaters[0].states[0].asnumpy()
        untouched = acc == 0
        assert untouched.any() and acc.shape == (20,)
        np.testing.assert_array_equal(emb.weight.data().asnumpy()[untouched], w0[untouched])
        _train_embedding(emb, trainer, 1, 5)
        results.append(emb.weight.data().asnumpy())
    np.testing.assert_array_equal(results[1], results[0])


@pytest.mark.parametrize("compat", ["groupadagrad", "fbgemm", "d2l"])
@pytest.mark.parametrize("fmt", ["npz", "trainer"])
def test_resume_from_saved_rowwise_states_is_bit_identical(tmp_path, compat, fmt):
    emb = _embedding()
    trainer = _embedding_trainer(emb, compat)
    _train_embedding(emb, trainer, 0, 8)
    uninterrupted = emb.weight.data().asnumpy()

    emb = _embedding()
    trainer = _embedding_trainer(emb, compat)
    _train_embedding(emb, trainer, 0, 4)
    weights = emb.weight.data().copy()
    path = tmp_path / ("s.npz" if fmt == "npz" else "s.pkl")
    ag.save_states(trainer, path) if fmt == "npz" else trainer.save_states(str(path))

    resumed = _embedding(seed=1)
    resumed.weight.set_data(weights)
    trainer = _embedding_trainer(resumed, compat)
    ag.load_states(trainer, path) if fmt == "npz" else trainer.load_states(str(path))
    _train_embedding(resumed, trainer, 4, 4)
    assert trainer._updaters[0].states[0].shape == (20,)
    np.testing.assert_array_equal(resumed.weight.data().asnumpy(), uninterrupted)


@pytest.mark.parametrize("saved, loading", [(True, False), (False, True)])
def test_a_state_file_of_the_other_kind_is_refused_naming_rowwise(tmp_path, saved, loading):
    emb = _embedding()
    trainer = _embedding_trainer(emb, rowwise=saved)
    _train_embedding(emb, trainer, 0, 2)
    ag.save_states(trainer, tmp_path / "s.npz")
    other = _embedding_trainer(_embedding(), rowwise=loading)
    with pytest.raises(ValueError, match=f"other optimizer options .*rowwise: saved {saved}, "
                                         f"trainer {loading}"):
        ag.load_states(other, tmp_path / "s.npz")


def test_a_pickled_optimizer_of_before_rowwise_loads_as_elementwise():
    opt = AdagradScratch()
    state = opt.__getstate__()
    del state["rowwise"]
    restored = AdagradScratch.__new__(AdagradScratch)
    restored.__setstate__(pickle.loads(pickle.dumps(state)))
    assert restored.options.rowwise is False


# -- export ---------------------------------------------------------------------------------

def test_torch_export_and_import_refuse_rowwise_state():
    emb = _embedding()
    trainer = _embedding_trainer(emb)
    _train_embedding(emb, trainer, 0, 1)
    with pytest.raises(ValueError, match="torch.optim.Adagrad has no state for.*fbgemm"):
        ag.to_torch_state_dict(trainer)
    with pytest.raises(ValueError, match="torch.optim.Adagrad has no state for"):
        ag.load_torch_state_dict(trainer, {"state": {}, "param_groups": []})


def test_fbgemm_export_has_split_optimizer_states_layout_and_round_trips():
    emb = _embedding()
    trainer = _embedding_trainer(emb, "fbgemm")
    _train_embedding(emb, trainer, 0, 3)
    exported = ag.to_fbgemm_optimizer_states(trainer)
    acc = trainer._updaters[0].states[0].asnumpy()
    assert len(exported) == 1 and len(exported[0]) == 1
    assert exported[0][0].dtype == np.float32 and exported[0][0].shape == (20,)
    np.testing.assert_array_equal(exported[0][0], acc)

    other = _embedding_trainer(_embedding(), "fbgemm")
    ag.load_fbgemm_optimizer_states(other, [[exported[0][0] * 2]], tables=[
        other._params[0]])
    np.testing.assert_array_equal(ag.to_fbgemm_optimizer_states(other)[0][0], acc * 2)


@pytest.mark.parametrize("states, message", [
    ([[np.ones(19, np.float32)]], r"momentum1 of table #0 \(emb_weight\) has shape \(19,\), "
                                  r"expected \(20,\)"),
    ([[-np.ones(20, np.float32)]], "negative values"),
    ([[np.full(20, np.nan, np.float32)]], "NaN"),
    ([], "one FBGEMM optimizer state per table"),
    ([np.ones(20, np.float32)], "must be a list holding its momentum1"),
], ids=["rows", "negative", "nan", "count", "layout"])
def test_bad_fbgemm_states_are_refused(states, message):
    trainer = _embedding_trainer(_embedding(), "fbgemm")
    with pytest.raises(ValueError, match=message):
        ag.load_fbgemm_optimizer_states(trainer, states)


def test_fbgemm_export_needs_a_rowwise_optimizer():
    trainer = _embedding_trainer(_embedding(), rowwise=False)
    with pytest.raises(ValueError, match="must have rowwise=True"):
        ag.to_fbgemm_optimizer_states(trainer)


# -- non-finite gradients -------------------------------------------------------------------

@pytest.mark.parametrize("kernel", KERNELS)
def test_nonfinite_skip_and_raise_work_row_wise(kernel):
    w = nd.ones((3, 4))
    bad = nd.array(np.where(np.eye(3, 4) > 0, np.inf, 1.0))
    skip = AdagradScratch(rowwise=True, nonfinite="skip", kernel=kernel)
    state = skip.create_state(0, w)
    skip.update(0, w, bad, state)
    assert skip.num_nonfinite_skipped == 1
    np.testing.assert_array_equal(w.asnumpy(), 1.0)
    np.testing.assert_array_equal(state.asnumpy(), 0.0)
    with pytest.raises(ag.optim.optimizer.NonFiniteGradientError):
        AdagradScratch(rowwise=True, nonfinite="raise", kernel=kernel).update(
            0, w, bad, state)
    skip.update(0, w, nd.ones((3, 4)), state)
    np.testing.assert_array_equal(state.asnumpy(), 1.0)


def test_turning_rowwise_on_after_the_states_exist_is_refused_not_skipped():
    # the per-parameter check cache must not let elementwise accumulators through as row-wise
    opt = mx.optimizer.create("adagrad_scratch", learning_rate=0.1)
    updater = mx.optimizer.get_updater(opt)
    weight, grad = nd.ones((4, 3)), nd.ones((4, 3))
    updater(0, grad, weight)
    opt.rowwise = True
    with pytest.raises(ValueError, match=r"parameter 0: accumulator .* shape \(4, 3\) should be "
                                         r"\(4,\)"):
        updater(0, grad, weight)


def test_groupadagrad_refuses_weight_decay_set_after_creation():
    opt = mx.optimizer.create("adagrad_scratch", compat="groupadagrad", learning_rate=0.1)
    opt.wd = 0.01
    weight = nd.ones((4, 3))
    with pytest.raises(ValueError, match="compat='groupadagrad' has no weight decay"):
        mx.optimizer.get_updater(opt)(0, nd.ones((4, 3)), weight)
    np.testing.assert_array_equal(weight.asnumpy(), np.ones((4, 3)))
