"""One states-file schema: trainer files (``ag.save_states``) and distributed checkpoints are
the same format, read by one bounded reader, resumed under one rule (the numerics options and
the optimizer class must match; the learning rate may change); version 1 files of
adagrad_gluon 0.1 still load; only :mod:`adagrad_gluon.optim._gluon` touches MXNet's
private Trainer / Updater / Optimizer attributes."""

import json
import re
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import adagrad_gluon
from adagrad_gluon.distributed import CheckpointError, checkpoint
from adagrad_gluon.optim import state

PACKAGE = Path(adagrad_gluon.__file__).parent


def _trainer(step=True, dtype="float32", prefix="schema_", **options):
    net = gluon.nn.Dense(3, in_units=4, prefix=prefix)
    net.initialize()
    net.cast(dtype)
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch",
                            {"learning_rate": 0.1, **options})
    if step:
        with autograd.record():  # float16 Dense has no CPU kernel: the weights' sum
            loss = (net.weight.data() * 2).sum() + net.bias.data().sum()
        loss.backward()
        trainer.step(2)
    return trainer


def _states(trainer):
    return {index: [s.asnumpy() for s in (state if isinstance(state, tuple) else (state,))]
            for index, state in trainer._updaters[0].states.items()}


def _assert_same_states(a, b):
    assert sorted(a) == sorted(b)
    for index in a:
        for x, y in zip(a[index], b[index], strict=True):
            np.testing.assert_array_equal(x, y)


def _version_1(path):
    """Rewrite ``path`` as adagrad_gluon 0.1's save_states wrote it: the version 1 ``meta``
    (no optimizer class, scheduler, token or master flags), the same arrays."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "meta"}
        meta = json.loads(str(npz["meta"]))
    params = [{k: entry[k] for k in ("index", "name", "shape", "dtype", "update_count")}
              for entry in meta["params"]]
    old = {"format": "adagrad_gluon.states", "version": 1, "options": meta["options"],
           "num_update": meta["num_update"], "params": params}
    np.savez(path, meta=np.array(json.dumps(old)), **arrays)


@pytest.mark.parametrize("dtype, options", [("float32", {}),
                                            ("float16", {"multi_precision": True})])
def test_a_version_1_file_of_adagrad_gluon_0_1_loads(tmp_path, dtype, options):
    path = tmp_path / "v1.npz"
    trainer = _trainer(dtype=dtype, **options)
    state.save_states(trainer, path)
    _version_1(path)
    resumed = _trainer(step=False, dtype=dtype, **options)
    state.load_states(resumed, path)
    _assert_same_states(_states(resumed), _states(trainer))
    assert resumed._optimizer._all_index_update_counts[0] == {0: 1, 1: 1}


def test_a_version_1_file_is_still_checked_against_the_trainer(tmp_path):
    path = tmp_path / "v1.npz"
    state.save_states(_trainer(), path)
    _version_1(path)
    with pytest.raises(ValueError, match="eps: saved 1e-06, trainer 1e-05"):
        state.load_states(_trainer(step=False, eps=1e-5), path)


def test_trainer_files_and_checkpoints_are_one_format(tmp_path):
    """A checkpoint of a trainer's updater loads into a trainer (its entries are named by
    key), and a trainer file reads as a checkpoint."""
    trainer = _trainer()
    ckpt, trainer_file = tmp_path / "ckpt.npz", tmp_path / "trainer.npz"
    checkpoint.write_states(ckpt, trainer._updaters[0])
    state.save_states(trainer, trainer_file)
    resumed = _trainer(step=False)
    state.load_states(resumed, ckpt, check_names=False)
    _assert_same_states(_states(resumed), _states(trainer))
    for path in (ckpt, trainer_file):
        with np.load(path) as npz:
            meta = json.loads(str(npz["meta"]))
        assert (meta["format"], meta["version"]) == (state.FORMAT, state.VERSION)
    saved = checkpoint.read_states(trainer_file)
    assert saved.counts == {0: 1, 1: 1}
    np.testing.assert_array_equal(saved.states[1], trainer._updaters[0].states[1].asnumpy())


def test_a_trainer_file_resumes_with_another_learning_rate_not_other_numerics(tmp_path):
    path = tmp_path / "states.npz"
    state.save_states(_trainer(), path)
    resumed = _trainer(step=False, learning_rate=0.01, wd=0.1)
    state.load_states(resumed, path)
    assert resumed.learning_rate == 0.01 and resumed._optimizer.wd == 0.1
    with pytest.raises(ValueError, match="lr_decay: saved 0.0, trainer 0.5"):
        state.load_states(_trainer(step=False, lr_decay=0.5), path)


def test_a_scheduler_of_the_saved_class_continues(tmp_path):
    """Trainer files now keep the lr_scheduler's state too, as checkpoints did."""
    def scheduled():
        return _trainer(step=False, lr_scheduler=mx.lr_scheduler.FactorScheduler(
            step=1, factor=0.5, base_lr=0.1))

    trainer = scheduled()
    for _ in range(3):
        with autograd.record():
            loss = trainer._params[1].data().sum() + trainer._params[0].data().sum()
        loss.backward()
        trainer.step(1)
    path = tmp_path / "states.npz"
    state.save_states(trainer, path)
    resumed = scheduled()
    state.load_states(resumed, path)
    before, after = trainer._optimizer.lr_scheduler, resumed._optimizer.lr_scheduler
    assert vars(after) == vars(before) and after.base_lr < 0.1
    assert after(resumed._optimizer.num_update) == before(trainer._optimizer.num_update)


def test_the_old_checkpoint_format_gets_a_clear_error(tmp_path):
    old = tmp_path / "server-0-of-1.npz"
    np.savez(old, format=np.array("adagrad_gluon.optimizer_states"), version=np.array(1),
             keys=np.array([0]))
    with pytest.raises(CheckpointError, match="retired 'adagrad_gluon.optimizer_states' format"):
        checkpoint.read_states(old)


def test_a_checkpoint_declaring_more_than_it_can_hold_is_refused(tmp_path):
    """A server does not know the shapes in advance: the arrays together may claim at most
    MAX_EXPANSION times the file's size (checked on the zip directory, before reading)."""
    path = tmp_path / "ckpt.npz"
    checkpoint.write_states(path, _trainer()._updaters[0])
    with np.load(path) as npz:
        fields = {k: npz[k] for k in npz.files}
    meta = json.loads(str(fields["meta"]))
    meta["params"][1]["shape"] = [3, 4000]
    fields["acc/1"] = np.zeros((3, 4000), np.float32)
    np.savez_compressed(path, **{**fields, "meta": np.array(json.dumps(meta))})
    with pytest.raises(CheckpointError, match=f"more than {checkpoint.MAX_EXPANSION} times"):
        checkpoint.read_states(path)


# MXNet's private attributes of Trainer, Updater, Optimizer, Parameter and KVStore (Trainer's
# _params aside: d2l/diagnostics.py reads it, outside this change)
PRIVATE = re.compile(
    r"\.(_optimizer|_updaters?|_kv_initialized|_init_kvstore|_init_params|_params_to_init|"
    r"_update_on_kvstore|_kvstore|_kvstore_params|_contexts|_scale|_contains_sparse_\w+|"
    r"_all_index_update_counts|_barrier|_set_updater|_send_command_to_servers|"
    r"states_synced|_deferred_init|_data)\b")
# the optimizer's own base-class counters are its own business
OWN = {"optim/_gluon.py", "optim/optimizer.py"}


def test_only_the_gluon_module_touches_mxnet_internals():
    offenders = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
                 for path in sorted(PACKAGE.rglob("*.py"))
                 if str(path.relative_to(PACKAGE)) not in OWN
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if PRIVATE.search(line.split("#")[0]) and '"""' not in line
                 and "``" not in line]
    assert not offenders, "\n".join(offenders)


def test_a_file_sets_only_the_scheduler_attributes_it_already_has(tmp_path):
    path = tmp_path / "states.npz"
    options = {"lr_scheduler": mx.lr_scheduler.FactorScheduler(step=1, factor=0.5)}
    state.save_states(_trainer(step=False, **options), path)
    with np.load(path) as npz:
        meta = json.loads(str(npz["meta"]))
        arrays = {k: npz[k] for k in npz.files if k != "meta"}
    meta["scheduler"]["attributes"].update(count=7, planted=1, _private=2, base_lr=[1])
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    resumed = _trainer(step=False, lr_scheduler=mx.lr_scheduler.FactorScheduler(step=1,
                                                                                 factor=0.5))
    state.load_states(resumed, path)
    scheduler = resumed._optimizer.lr_scheduler
    assert scheduler.count == 7 and scheduler.base_lr == 0.1
    assert not hasattr(scheduler, "planted") and not hasattr(scheduler, "_private")
