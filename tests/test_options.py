"""The options object (:mod:`adagrad_gluon.optim.options`), the one denominator of the formula
(:func:`adagrad_gluon.optim.functional.denominator`), and the optimizer that holds them: its
attributes, its pickles (also one written by the code before the options object)."""

import dataclasses
import pickle
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from adagrad_gluon import AdagradScratch
from adagrad_gluon.d2l.diagnostics import accumulator_learning_rates
from adagrad_gluon.optim.functional import denominator
from adagrad_gluon.optim.options import PRESETS, AdagradOptions, resolve
from adagrad_gluon.validation import check_count, check_flag

# pickled by AdagradScratch at main 417154c (options as plain attributes), with
# learning_rate=0.25, compat='pytorch', eps=1e-8, lr_decay=0.1, maximize=True,
# nonfinite='skip', wd=0.01, rescale_grad=0.5, clip_gradient=2.0, two updates of index 0
# counted and nonfinite_skipped == {3: 2}
OLD_PICKLE = Path(__file__).parent / "fixtures" / "adagrad_scratch_main_417154c.pickle"
OLD_KWARGS = dict(learning_rate=0.25, compat="pytorch", eps=1e-8, lr_decay=0.1, maximize=True,
                  nonfinite="skip", wd=0.01, rescale_grad=0.5, clip_gradient=2.0)


@pytest.mark.parametrize("compat", list(PRESETS))
def test_resolve_gives_the_preset_and_explicit_values_win(compat):
    options = resolve(compat)
    assert {k: getattr(options, k) for k in PRESETS[compat]} == PRESETS[compat]
    assert resolve(compat, eps=None).eps == PRESETS[compat]["eps"]  # None: the preset's
    mine = resolve(compat, eps=0.5, weight_decay_mode="decoupled", lr_decay=0.2)
    assert (mine.eps, mine.weight_decay_mode, mine.lr_decay) == (0.5, "decoupled", 0.2)


def test_resolve_refuses_an_unknown_preset_naming_them():
    with pytest.raises(ValueError, match="compat must be one of 'd2l', 'mxnet1'"):
        resolve("tensorflow")


@pytest.mark.parametrize("field, value, error", [
    ("eps", -1.0, ValueError), ("eps", 1e-50, ValueError), ("eps", "1", TypeError),
    ("eps_placement", "middle", ValueError), ("weight_decay_mode", "l1", ValueError),
    ("initial_accumulator_value", float("nan"), ValueError), ("lr_decay", -0.1, ValueError),
    ("lr_decay", None, TypeError), ("maximize", 1, TypeError), ("rescale_grad", 0.0, ValueError),
    ("rescale_grad", 1e-310, ValueError), ("clip_gradient", float("inf"), ValueError),
])
def test_every_field_is_checked_with_a_message_naming_it(field, value, error):
    with pytest.raises(error, match=field):
        AdagradOptions(**{field: value})


def test_options_are_frozen_hashable_and_default_to_d2l():
    options = AdagradOptions()
    assert options == resolve("d2l") and hash(options) == hash(resolve("d2l"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.eps = 0.1  # type: ignore[misc]
    assert AdagradOptions(eps=1).eps == 1.0 and isinstance(AdagradOptions(eps=1).eps, float)


def test_the_optimizer_holds_one_options_object_that_follows_rescale_grad():
    opt = AdagradScratch(compat="pytorch", lr=0.1, lr_decay=0.05, clip_gradient=3.0)
    assert opt.options == resolve("pytorch", lr_decay=0.05, clip_gradient=3.0)
    assert (opt.eps, opt.eps_placement, opt.weight_decay_mode) == (1e-10, "outside", "l2")
    opt.rescale_grad = 0.125  # as gluon.Trainer sets it every step
    assert opt.options.rescale_grad == 0.125 and opt.options.clip_gradient == 3.0


def test_option_attributes_stay_settable_and_are_checked_when_used():
    opt = AdagradScratch()
    opt.initial_accumulator_value = 0.5
    assert opt.options.initial_accumulator_value == 0.5
    assert opt.create_state(0, nd.ones(3)).asnumpy().tolist() == [0.5] * 3
    opt.eps_placement = "middle"
    w = nd.ones(3)
    with pytest.raises(ValueError, match="eps_placement must be one of 'inside', 'outside'"):
        opt.update(0, w, nd.ones(3), opt.create_state(0, w))
    np.testing.assert_array_equal(w.asnumpy(), np.ones(3))  # refused before any change


def test_options_are_plain_attributes_and_no_class_of_their_own_is_pickled():
    """The parameter servers unpickle the optimizer, and saved checkpoints list its public
    scalar attributes: both keep the shape they had before the options object."""
    opt = AdagradScratch(compat="keras", lr_decay=0.1)
    for name in ("eps", "eps_placement", "initial_accumulator_value", "lr_decay",
                 "weight_decay_mode", "maximize"):
        assert vars(opt)[name] == getattr(opt.options, name)
    data = pickle.dumps(opt)
    assert b"AdagradOptions" not in data and b"fused_steps" not in data


def _updated(opt):
    w, g = nd.array([1.0, -2.0, 3.0]), nd.array([0.5, 0.0, -4.0])
    state = opt.create_state(0, w)
    opt.update(0, w, g, state)
    return w.asnumpy(), state.asnumpy()


def test_an_optimizer_pickled_before_the_options_object_loads_and_updates_the_same():
    old = pickle.loads(OLD_PICKLE.read_bytes())
    fresh = AdagradScratch(**OLD_KWARGS)
    assert old.options == fresh.options
    for name in ("compat", "eps", "eps_placement", "initial_accumulator_value", "lr_decay",
                 "weight_decay_mode", "maximize", "multi_precision", "nonfinite",
                 "kernel_choice", "rescale_grad", "clip_gradient", "lr", "wd"):
        assert getattr(old, name) == getattr(fresh, name), name
    assert old.nonfinite_skipped == {3: 2} and old.num_nonfinite_skipped == 2
    fresh._update_count(0)
    fresh._update_count(0)
    for a, b in zip(_updated(old), _updated(fresh), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_pickled_optimizer_round_trips_its_options():
    opt = AdagradScratch(**OLD_KWARGS)
    again = pickle.loads(pickle.dumps(opt))
    assert again.options == opt.options and again.kernel == opt.kernel
    for a, b in zip(_updated(again), _updated(opt), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("placement", ["inside", "outside"])
def test_denominator_is_the_one_statement_of_the_divisor(placement):
    s = np.array([0.0, 0.25, 4.0])
    expected = np.sqrt(s + 1e-2) if placement == "inside" else np.sqrt(s) + 1e-2
    np.testing.assert_allclose(denominator(s, 1e-2, placement), expected)
    np.testing.assert_allclose(denominator(nd.array(s), 1e-2, placement).asnumpy(), expected,
                               rtol=1e-6)


@pytest.mark.parametrize("compat", ["d2l", "pytorch"])
def test_effective_lr_is_lr_over_the_denominator(compat):
    opt = AdagradScratch(learning_rate=0.1, compat=compat)
    acc = nd.array([0.0, 0.25, 4.0])
    expected = 0.1 / denominator(acc.asnumpy().astype(np.float64), opt.eps, opt.eps_placement)
    np.testing.assert_allclose(opt.effective_lr(0, acc).asnumpy(), expected, rtol=1e-6)


def test_chapter_rates_use_the_same_denominator():
    s = nd.array([0.0, 1.0])
    rates = accumulator_learning_rates([s], 0.1, eps=1e-6, names=("w",))
    np.testing.assert_array_equal(rates["w"], 0.1 / denominator(np.array([0.0, 1.0]), 1e-6))


@pytest.mark.parametrize("value", [-1, 1.5, True, "3", None])
def test_check_count_refuses_anything_but_an_integer_at_least_the_minimum(value):
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        check_count("k", value)
    assert check_count("k", np.int64(3)) == 3


def test_check_flag_takes_only_booleans():
    assert check_flag("f", False) is False
    with pytest.raises(TypeError, match="f must be True or False, got 1"):
        check_flag("f", 1)


def test_begin_num_update_and_flags_keep_their_messages():
    with pytest.raises(ValueError, match="begin_num_update must be an integer >= 0"):
        AdagradScratch(begin_num_update=-1)
    with pytest.raises(TypeError, match="multi_precision must be True or False"):
        AdagradScratch(multi_precision=1)
    with pytest.raises(TypeError, match="maximize must be True or False"):
        mx.optimizer.create("adagrad_scratch", maximize="yes")
