"""Effective learning rates read from a gluon.Trainer and from the chapter's states, and the
leaky-accumulator remedy."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, init, nd

from adagrad_gluon import chapter
from adagrad_gluon.data import get_data_ch10
from adagrad_gluon.diagnostics import (
    EffectiveLRRecorder,
    accumulator_learning_rates,
    effective_learning_rates,
)
from adagrad_gluon.training import train_ch10, train_concise_ch10

LR, EPS = 0.1, 1e-6


def make_trainer(optimizer="adagrad_scratch", params=None, **trainer_kwargs):
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize(init.Normal(0.1))
    return net, gluon.Trainer(net.collect_params(), optimizer,
                              params or {"learning_rate": LR}, **trainer_kwargs)


def train_steps(net, trainer, steps=5, seed=0):
    """``steps`` steps on random data; returns the sum of squared gradients per parameter."""
    rng = np.random.default_rng(seed)
    sums = {p.name: np.zeros(p.shape) for p in net.collect_params().values()}
    for _ in range(steps):
        X = nd.array(rng.standard_normal((4, 3)))
        with autograd.record():
            loss = (net(X) ** 2).sum()
        loss.backward()
        for p in net.collect_params().values():
            sums[p.name] += p.grad().asnumpy().astype(np.float64) ** 2
        trainer.step(1)
    return sums


def test_effective_learning_rates_are_lr_over_root_accumulator():
    net, trainer = make_trainer()
    sums = train_steps(net, trainer)
    rates = effective_learning_rates(trainer)
    assert set(rates) == set(sums)
    for name, s in sums.items():
        assert rates[name].shape == s.shape
        np.testing.assert_allclose(rates[name], LR / np.sqrt(s + EPS), rtol=1e-5)


def test_before_the_first_step_the_rate_is_lr_over_root_eps():
    _, trainer = make_trainer()
    for rate in effective_learning_rates(trainer).values():
        np.testing.assert_allclose(rate, LR / np.sqrt(EPS), rtol=1e-6)


def test_rates_shrink_step_by_step():
    net, trainer = make_trainer()
    previous = None
    for step in range(4):
        train_steps(net, trainer, steps=1, seed=step)
        rates = effective_learning_rates(trainer)
        if previous is not None:
            for name in rates:
                assert np.all(rates[name] <= previous[name])
        previous = rates


def test_rates_follow_lr_mult():
    net, trainer = make_trainer()
    net.weight.lr_mult = 0.5
    sums = train_steps(net, trainer)
    rates = effective_learning_rates(trainer)
    expected = 0.5 * LR / np.sqrt(sums[net.weight.name] + EPS)
    np.testing.assert_allclose(rates[net.weight.name], expected, rtol=1e-5)
    np.testing.assert_allclose(rates[net.bias.name], LR / np.sqrt(sums[net.bias.name] + EPS),
                               rtol=1e-5)


def test_rates_of_float16_weights_with_float32_master_copies():
    param = gluon.Parameter("half", shape=(3,), dtype="float16")
    param.initialize(init.One())
    trainer = gluon.Trainer([param], "adagrad_scratch",
                            {"learning_rate": LR, "multi_precision": True})
    for _ in range(2):
        with autograd.record():
            loss = (param.data() * 2).sum()  # gradient 2 everywhere
        loss.backward()
        trainer.step(1)
    assert isinstance(trainer._updaters[0].states[0], tuple)  # (master weight, accumulator)
    rates = effective_learning_rates(trainer)
    np.testing.assert_allclose(rates["half"], np.full(3, LR / np.sqrt(8 + EPS)), rtol=1e-6)
    assert rates["half"].dtype == np.float32


def test_rates_are_read_from_the_kvstore_when_it_updates():
    net, trainer = make_trainer(kvstore=mx.kv.create("local"), update_on_kvstore=True)
    sums = train_steps(net, trainer)
    assert trainer._update_on_kvstore
    for name, rate in effective_learning_rates(trainer).items():
        np.testing.assert_allclose(rate, LR / np.sqrt(sums[name] + EPS), rtol=1e-5)


def test_only_a_trainer_with_adagrad_scratch_has_effective_rates():
    _, trainer = make_trainer("sgd")
    with pytest.raises(TypeError, match="adagrad_scratch"):
        effective_learning_rates(trainer)
    with pytest.raises(TypeError, match="gluon.Trainer"):
        effective_learning_rates("adagrad_scratch")


def test_accumulator_learning_rates():
    states = (nd.array([[1.0], [4.0]]), nd.array([0.0]))
    rates = accumulator_learning_rates(states, lr=0.2)
    np.testing.assert_allclose(rates["weight"], 0.2 / np.sqrt(np.array([[1.0], [4.0]]) + EPS))
    np.testing.assert_allclose(rates["bias"], [0.2 / np.sqrt(EPS)])
    with pytest.raises(ValueError, match="lr"):
        accumulator_learning_rates(states, lr=-1)
    with pytest.raises(ValueError, match="names"):
        accumulator_learning_rates(states, lr=0.1, names=("weight",))


@pytest.fixture(scope="module")
def data():
    return get_data_ch10(batch_size=10, n=600)


def test_recorder_follows_the_training_loops_and_both_agree(data):
    """From scratch and through the Trainer, the same seed gives the same rates."""
    data_iter, feature_dim = data
    scratch_rec, trainer_rec = EffectiveLRRecorder(lr=LR), EffectiveLRRecorder()
    scratch = train_ch10(chapter.adagrad, chapter.init_adagrad_states(feature_dim), {"lr": LR},
                         data_iter, feature_dim, num_epochs=2, seed=0, on_record=scratch_rec)
    concise = train_concise_ch10("adagrad_scratch", {"learning_rate": LR}, data_iter,
                                 num_epochs=2, seed=0, on_record=trainer_rec)
    for result, rec in ((scratch, scratch_rec), (concise, trainer_rec)):
        assert rec.epochs == [epoch for epoch, _ in result.losses]
    ours, theirs = scratch_rec.series(), trainer_rec.series()
    assert ours["weight"].shape == (len(scratch.losses), feature_dim)
    weight_name = next(name for name in theirs if name.endswith("weight"))
    bias_name = next(name for name in theirs if name.endswith("bias"))
    np.testing.assert_allclose(ours["weight"], theirs[weight_name], rtol=1e-4)
    np.testing.assert_allclose(ours["bias"], theirs[bias_name], rtol=1e-4)
    assert np.all(np.diff(ours["weight"], axis=0) <= 0)
    document = scratch_rec.to_dict()
    assert document["epoch_fraction"] == scratch_rec.epochs
    assert np.array(document["rates"]["weight"]).shape == ours["weight"].shape


def test_recorder_needs_lr_for_states_and_valid_numbers():
    with pytest.raises(ValueError, match="lr="):
        EffectiveLRRecorder()(0.5, chapter.init_adagrad_states(5))
    with pytest.raises(ValueError, match="lr"):
        EffectiveLRRecorder(lr=float("nan"))
    with pytest.raises(ValueError, match="eps"):
        EffectiveLRRecorder(lr=0.1, eps=-1.0)
    assert EffectiveLRRecorder().series() == {}


def test_rmsprop_is_the_leaky_average_update():
    w = nd.array([[1.0], [-2.0]])
    b = nd.array([0.5])
    grads = (nd.array([[0.3], [-1.0]]), nd.array([2.0]))
    for p, g in zip((w, b), grads, strict=True):
        p.attach_grad()
        p.grad[:] = g
    states = chapter.init_rmsprop_states(2)
    states[0][:] = 0.5
    chapter.rmsprop([w, b], states, {"lr": 0.01, "gamma": 0.9})
    s_w = 0.9 * 0.5 + 0.1 * np.array([[0.09], [1.0]])
    np.testing.assert_allclose(states[0].asnumpy(), s_w, rtol=1e-6)
    np.testing.assert_allclose(states[1].asnumpy(), [0.1 * 4.0], rtol=1e-6)
    np.testing.assert_allclose(
        w.asnumpy(), np.array([[1.0], [-2.0]]) - 0.01 * np.array([[0.3], [-1.0]])
        / np.sqrt(s_w + EPS), rtol=1e-6)
    np.testing.assert_allclose(b.asnumpy(), [0.5 - 0.01 * 2.0 / np.sqrt(0.4 + EPS)], rtol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5])
def test_rmsprop_refuses_a_gamma_outside_0_1(gamma):
    params = [nd.zeros((2, 1)), nd.zeros(1)]
    for p in params:
        p.attach_grad()
    with pytest.raises(ValueError, match="gamma"):
        chapter.rmsprop(params, chapter.init_rmsprop_states(2), {"lr": 0.01, "gamma": gamma})


def test_rmsprop_rates_settle_where_adagrads_keep_falling(data):
    data_iter, feature_dim = data
    recorders = {}
    for name, step, init_states, hyperparams in [
            ("adagrad", chapter.adagrad, chapter.init_adagrad_states, {"lr": LR}),
            ("rmsprop", chapter.rmsprop, chapter.init_rmsprop_states, {"lr": LR, "gamma": 0.9})]:
        recorders[name] = EffectiveLRRecorder(lr=LR)
        result = train_ch10(step, init_states(feature_dim), hyperparams, data_iter, feature_dim,
                            num_epochs=4, seed=0, on_record=recorders[name])
        assert np.isfinite(result.final_loss) and result.final_loss < 0.3
    adagrad = recorders["adagrad"].series()["weight"]
    rmsprop = recorders["rmsprop"].series()["weight"]
    # from the first record to the last (12 of them), Adagrad's rates fall like 1/sqrt(t),
    # by about sqrt(12); RMSProp's stay level
    assert np.median(adagrad[-1] / adagrad[0]) < 0.5
    assert 0.5 < np.median(rmsprop[-1] / rmsprop[0]) < 2
