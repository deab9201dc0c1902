"""``host_row_check``: where a row_sparse gradient's rows are checked. On the host (a sync, a
``ValueError`` before anything is written) for arrays handed to ``update``; not for a
``gluon.Trainer`` parameter's own gradient, whose rows ``backward`` wrote; in the fused kernel
always (an ``MXNetError`` at the next read, nothing written)."""

import pickle

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from adagrad_gluon import AdagradScratch, kernels
from adagrad_gluon.optim import sparse_grads

KERNEL_REFUSAL = r"row indices must be strictly increasing \(sorted, no repeats\) and within"
HOST_REFUSAL = r"row_sparse gradient's row indices must be strictly increasing"


@pytest.fixture(scope="module", autouse=True)
def library():
    return kernels.load()


@pytest.fixture
def host_checks(monkeypatch) -> list:
    """The names of the parameters whose rows the optimizer checks on the host."""
    seen = []
    check = sparse_grads.check_rows

    def counted(name, grad, weight):
        seen.append(name)
        check(name, grad, weight)

    monkeypatch.setattr(sparse_grads, "check_rows", counted)
    return seen


def _row_sparse(rows, num_rows=10, width=4):
    data = np.arange(len(rows) * width, dtype=np.float32).reshape(len(rows), width) + 1
    return nd.sparse.row_sparse_array((nd.array(data), nd.array(rows, dtype="int64")),
                                      shape=(num_rows, width))


def _embedding_trainer(**options):
    mx.random.seed(1)
    embedding = gluon.nn.Embedding(10, 4, sparse_grad=True)
    embedding.initialize(mx.init.Normal(1.0))
    trainer = gluon.Trainer(embedding.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.1, "kernel": "fused", **options})
    return embedding, trainer, list(embedding.collect_params().values())[0]


def _train(embedding, trainer, steps=4):
    for step in range(steps):
        tokens = nd.array([(3 * step + k) % 10 for k in (0, 1, 1, 5)])
        with autograd.record():
            loss = (embedding(tokens) ** 2).sum()
        loss.backward()
        trainer.step(1)


def test_a_trainers_own_gradient_is_not_synced_and_trains_the_same(host_checks):
    """Under ``gluon.Trainer`` the rows come from ``backward``: no host check (no sync), and
    the weights are bit for bit those of a run that checks every step."""
    trained = {}
    for check in (None, True):
        embedding, trainer, param = _embedding_trainer(host_row_check=check)
        host_checks.clear()
        _train(embedding, trainer)
        trained[check] = param.data().asnumpy()
        assert len(host_checks) == (0 if check is None else 4)
    np.testing.assert_array_equal(trained[None], trained[True])


def _write_gradient(param, grad):
    """Put ``grad`` in ``param``'s own gradient array and mark it fresh, as backward would."""
    grad.copyto(param.grad())
    param.data()._fresh_grad = True


@pytest.mark.parametrize("rows", [[5, 2], [3, 3], [4, 10]], ids=str)
def test_bad_rows_written_into_a_trainers_gradient_are_refused_by_the_kernel(rows):
    """Rows written by hand into a parameter's own gradient skip the host check; the kernel
    refuses them before writing: the next read raises, naming the rows, and nothing changed."""
    embedding, trainer, param = _embedding_trainer()
    _train(embedding, trainer, steps=1)
    weight, acc = param.data().asnumpy(), trainer._updaters[0].states[0].asnumpy()
    _write_gradient(param, _row_sparse(rows))
    trainer.step(1)
    with pytest.raises(mx.base.MXNetError, match=KERNEL_REFUSAL):
        param.data().asnumpy()
    np.testing.assert_array_equal(param.data().asnumpy(), weight)
    np.testing.assert_array_equal(trainer._updaters[0].states[0].asnumpy(), acc)


def _assert_a_bad_gradient_is_refused_at_the_step(rows, **options) -> None:
    """A Trainer's own gradient with ``rows`` written by hand: a ValueError at the step (the
    host's check), the weight untouched."""
    embedding, trainer, param = _embedding_trainer(**options)
    _train(embedding, trainer, steps=1)
    weight = param.data().asnumpy()
    _write_gradient(param, _row_sparse(rows))
    with pytest.raises(ValueError, match=HOST_REFUSAL):
        trainer.step(1)
    np.testing.assert_array_equal(param.data().asnumpy(), weight)


def test_host_row_check_true_refuses_a_trainers_bad_gradient_at_the_step():
    _assert_a_bad_gradient_is_refused_at_the_step([5, 2], host_row_check=True)


@pytest.mark.parametrize("check", [None, True])
def test_arrays_handed_to_update_are_checked_on_the_host(check, host_checks):
    """Without a Trainer (or with another array than the parameter's own) the default checks."""
    opt = AdagradScratch(kernel="fused", host_row_check=check)
    weight = nd.ones((10, 4))
    with pytest.raises(ValueError, match=HOST_REFUSAL):
        opt.update(0, weight, _row_sparse([5, 2]), opt.create_state(0, weight))
    assert host_checks == ["0"]


def test_host_row_check_false_leaves_the_rows_to_the_kernel(host_checks):
    opt = AdagradScratch(kernel="fused", host_row_check=False, learning_rate=0.1)
    weight = nd.ones((10, 4))
    state = opt.create_state(0, weight)
    opt.update(0, weight, _row_sparse([1, 3]), state)  # good rows: updated as before
    updated = weight.asnumpy()
    assert (updated[[1, 3]] != 1).all() and (np.delete(updated, [1, 3], axis=0) == 1).all()
    opt.update(0, weight, _row_sparse([3, 3]), state)
    with pytest.raises(mx.base.MXNetError, match=KERNEL_REFUSAL):
        weight.asnumpy()
    np.testing.assert_array_equal(weight.asnumpy(), updated)
    assert host_checks == []


def test_host_row_check_false_still_checks_rows_that_weight_decay_reads_first():
    """The lazy weight decay gathers the gradient's rows before the kernel runs."""
    opt = AdagradScratch(kernel="fused", host_row_check=False, wd=0.01,
                         weight_decay_mode="decoupled")
    weight = nd.ones((10, 4))
    with pytest.raises(ValueError, match=HOST_REFUSAL):
        opt.update(0, weight, _row_sparse([4, 12]), opt.create_state(0, weight))
    np.testing.assert_array_equal(weight.asnumpy(), 1.0)


@pytest.mark.parametrize("options", [{"kernel": "reference"},
                                     {"kernel": "fused", "state_bits": 8}], ids=str)
def test_paths_whose_row_updates_do_not_check_rows_always_check_on_the_host(options):
    """The reference update and the 8-bit state's row_sparse update gather rows with MXNet's
    own operators, which do not check them."""
    opt = AdagradScratch(host_row_check=False, **options)
    weight = nd.ones((10, 4))
    state = opt.create_state_multi_precision(0, weight)
    with pytest.raises(ValueError, match=HOST_REFUSAL):
        opt.update_multi_precision(0, weight, _row_sparse([2, 2]), state)
    np.testing.assert_array_equal(weight.asnumpy(), 1.0)


OPTIONAL_FLAGS = ("host_row_check", "huge_pages")  # bool or None (None: the automatic choice)


@pytest.mark.parametrize("option", OPTIONAL_FLAGS)
@pytest.mark.parametrize("value", [1, "yes", 0.0])
def test_optional_flags_must_be_a_bool_or_none(option, value):
    with pytest.raises(TypeError, match=f"{option} must be True or False"):
        AdagradScratch(**{option: value})


@pytest.mark.parametrize("option", OPTIONAL_FLAGS)
def test_optional_flags_survive_pickling_and_old_pickles_default_to_none(option):
    opt = pickle.loads(pickle.dumps(AdagradScratch(**{option: False})))
    assert getattr(opt, option) is False
    old = AdagradScratch()
    delattr(old, option)  # as pickled before the option existed
    assert getattr(pickle.loads(pickle.dumps(old)), option) is None


def test_a_master_copy_the_kernels_do_not_take_gets_its_rows_checked_on_the_host():
    """A float32 weight with a (master, accumulator) state is updated by the reference, which
    does not check rows: the host does, even with host_row_check=False (a duplicate row was
    applied once, an out-of-range one dropped, silently)."""
    opt = AdagradScratch(kernel="fused", host_row_check=False)
    weight = nd.ones((10, 4))
    state = (weight.copy(), nd.zeros((10, 4)))
    for rows in ([3, 3], [4, 12]):
        with pytest.raises(ValueError, match=HOST_REFUSAL):
            opt.update_multi_precision(0, weight, _row_sparse(rows), state)
    np.testing.assert_array_equal(weight.asnumpy(), 1.0)


@pytest.mark.parametrize("check", [False, None])
def test_rows_that_pending_weight_decay_reads_are_checked_on_the_host(check):
    """Decay still pending after wd is set to 0 is caught up before the kernel runs, on the
    gradient's rows: they are checked on the host first (the catch-up wrote out of bounds)."""
    opt = AdagradScratch(kernel="fused", host_row_check=check, wd=0.1,
                         weight_decay_mode="decoupled", learning_rate=0.1)
    weight = nd.ones((10, 4))
    state = opt.create_state(0, weight)
    opt.update(0, weight, _row_sparse([1, 3]), state)
    opt.update(0, weight, _row_sparse([2, 5]), state)
    opt.wd = 0.0
    before = weight.asnumpy()
    with pytest.raises(ValueError, match=HOST_REFUSAL):
        opt.update(0, weight, _row_sparse([1, 1]), state)
    np.testing.assert_array_equal(weight.asnumpy(), before)


def test_a_trainers_own_gradient_with_weight_decay_is_checked_on_the_host():
    """Under weight decay the rows are gathered before the kernel runs: a Trainer's own
    gradient with rows written by hand is refused at the step, nothing written."""
    _assert_a_bad_gradient_is_refused_at_the_step([2, 2], wd=0.01, weight_decay_mode="decoupled")
