"""The chapter's training runs: the book's loss, and equal runs for equal seeds."""

import numpy as np
import pytest

from adagrad_gluon.chapter import adagrad, init_adagrad_states
from adagrad_gluon.data import get_data_ch10
from adagrad_gluon.training import train_ch10, train_concise_ch10

from .reference import relative_error

BOOK_RANGE = (0.235, 0.250)  # the book prints 0.243


@pytest.fixture(scope="module")
def chapter_data():
    return get_data_ch10(batch_size=10)


@pytest.fixture(scope="module")
def runs(chapter_data):
    data_iter, feature_dim = chapter_data
    return {
        "scratch": train_ch10(adagrad, init_adagrad_states(feature_dim), {"lr": 0.1},
                              data_iter, feature_dim, seed=0, name="scratch"),
        "adagrad_scratch": train_concise_ch10("adagrad_scratch", {"learning_rate": 0.1},
                                              data_iter, seed=0),
        "adagrad": train_concise_ch10("adagrad", {"learning_rate": 0.1, "eps": 1e-6},
                                      data_iter, seed=0),
    }


@pytest.mark.parametrize("name", ["scratch", "adagrad_scratch", "adagrad"])
def test_final_loss_is_the_books(runs, name):
    result = runs[name]
    assert result.name == name
    assert BOOK_RANGE[0] <= result.final_loss <= BOOK_RANGE[1]
    assert result.final_loss == result.losses[-1][1]
    assert result.sec_per_epoch > 0
    # every 200 examples of 2 x 1500: 15 records, the last at exactly 2 epochs
    fractions = [f for f, _ in result.losses]
    np.testing.assert_allclose(fractions, np.arange(1, 16) * 200 / 1500)
    assert result.losses[0][1] > result.final_loss  # it learned


def test_default_eps_chapter_loss_with_builtin_defaults(chapter_data):
    """The built-in's own eps (1e-7) lands in the same range."""
    result = train_concise_ch10("adagrad", {"learning_rate": 0.1}, chapter_data[0], seed=0)
    assert BOOK_RANGE[0] <= result.final_loss <= BOOK_RANGE[1]


def test_adagrad_scratch_and_builtin_train_the_same_parameters(runs):
    ours, builtin = runs["adagrad_scratch"].params, runs["adagrad"].params
    for key in ("weight", "bias"):
        np.testing.assert_array_equal(ours[key], builtin[key])
    assert runs["adagrad_scratch"].losses == runs["adagrad"].losses


def test_from_scratch_and_concise_agree(runs):
    """Same initial weights and batches; the gradients differ only by float rounding
    (mean of the loss vs. sum rescaled by 1/batch)."""
    for key in ("weight", "bias"):
        assert relative_error(runs["scratch"].params[key],
                              runs["adagrad_scratch"].params[key]) < 1e-4
    assert runs["scratch"].params["weight"].shape == (5,)
    assert runs["scratch"].params["bias"].shape == (1,)


def test_same_seed_same_run_and_other_seed_differs(chapter_data):
    data_iter, _ = chapter_data
    a = train_concise_ch10("adagrad_scratch", {"learning_rate": 0.1}, data_iter, 1, seed=5)
    b = train_concise_ch10("adagrad_scratch", {"learning_rate": 0.1}, data_iter, 1, seed=5)
    c = train_concise_ch10("adagrad_scratch", {"learning_rate": 0.1}, data_iter, 1, seed=6)
    np.testing.assert_array_equal(a.params["weight"], b.params["weight"])
    assert not np.array_equal(a.params["weight"], c.params["weight"])


def test_loss_is_recorded_at_the_end_when_200_does_not_divide(chapter_data):
    data_iter, _ = get_data_ch10(batch_size=1500)
    result = train_concise_ch10("adagrad_scratch", {"learning_rate": 0.1}, data_iter, 2, seed=0)
    assert [f for f, _ in result.losses] == [1.0, 2.0]


def test_progress_is_told_of_every_batch(chapter_data):
    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    counter = Counter()
    data_iter, _ = get_data_ch10(batch_size=100)
    train_concise_ch10("adagrad_scratch", {"learning_rate": 0.1}, data_iter, 2, progress=counter)
    assert counter.n == 2 * 15


@pytest.mark.parametrize("epochs, error", [(0, ValueError), (-1, ValueError),
                                           (1.5, TypeError)])
def test_bad_epochs(chapter_data, epochs, error):
    with pytest.raises(error, match="num_epochs"):
        train_concise_ch10("adagrad_scratch", {}, chapter_data[0], num_epochs=epochs)
