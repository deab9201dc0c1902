"""The chapter's 2-D example and from-scratch update, with the book's printed numbers."""

from functools import partial

import numpy as np
import pytest
from mxnet import nd

from adagrad_gluon.chapter import (
    adagrad,
    adagrad_2d,
    f_2d,
    format_2d,
    init_adagrad_states,
    train_2d,
)


def test_f_2d():
    assert f_2d(-5.0, -2.0) == pytest.approx(0.1 * 25 + 2 * 4)


def test_train_2d_eta_04_prints_the_books_numbers():
    path = train_2d(adagrad_2d)
    assert len(path) == 21
    assert path[0] == (-5.0, -2.0, 0.0, 0.0)
    assert format_2d(path) == "epoch 20, x1 -2.382563, x2 -0.158591"


def test_train_2d_eta_2_prints_the_books_numbers():
    path = train_2d(partial(adagrad_2d, eta=2))
    assert format_2d(path) == "epoch 20, x1 -0.002295, x2 -0.000000"


def test_adagrad_2d_one_step_by_hand():
    x1, x2, s1, s2 = adagrad_2d(-5.0, -2.0, 0.0, 0.0, eta=0.4, eps=0.0)
    assert (s1, s2) == (1.0, 64.0)  # g1 = 0.2 * -5 = -1, g2 = 4 * -2 = -8
    assert (x1, x2) == pytest.approx((-4.6, -1.6))  # each coordinate moves by eta


def test_train_2d_start_and_steps():
    path = train_2d(adagrad_2d, steps=3, start=(1.0, 1.0))
    assert len(path) == 4 and path[0][:2] == (1.0, 1.0)
    with pytest.raises(ValueError, match="steps"):
        train_2d(adagrad_2d, steps=-1)


def test_from_scratch_adagrad_matches_formula():
    w, b = nd.array([[1.0], [2.0]]), nd.array([0.5])
    for p in (w, b):
        p.attach_grad()
    w.grad[:] = nd.array([[0.5], [-1.0]])
    b.grad[:] = nd.array([2.0])
    states = init_adagrad_states(2)
    adagrad([w, b], states, {"lr": 0.1})
    np.testing.assert_allclose(states[0].asnumpy(), [[0.25], [1.0]])
    expected_w = [[1.0 - 0.1 * 0.5 / np.sqrt(0.25 + 1e-6)], [2.0 + 0.1 / np.sqrt(1.0 + 1e-6)]]
    np.testing.assert_allclose(w.asnumpy(), expected_w, rtol=1e-6)
    np.testing.assert_allclose(b.asnumpy(), [0.5 - 0.1 * 2 / np.sqrt(4 + 1e-6)], rtol=1e-6)
