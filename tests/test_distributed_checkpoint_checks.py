"""A distributed checkpoint is checked against the trainer before anything is restored: keys,
shapes (sizes, on the servers), dtypes and coverage; real one-worker parameter-server jobs on
127.0.0.1."""

from __future__ import annotations

import io
import re
import sys
import textwrap

import mxnet as mx
import pytest
from mxnet import nd

from adagrad_gluon import AdagradScratch
from adagrad_gluon.distributed import LaunchError, checkpoint, launch, worker
from adagrad_gluon.optim import npz

PYTHON = sys.executable
JOB_TIMEOUT = 90.0

SCRIPT = """\
import sys
from mxnet import gluon
from adagrad_gluon.distributed import create_kvstore, prepare_trainer

kvstore = create_kvstore()
net = gluon.nn.Dense(1, in_units=2)  # bias (1,): key 0, weight (1, 2): key 1
net.initialize()
trainer = prepare_trainer(gluon.Trainer(net.collect_params(), "adagrad_scratch",
                                        kvstore=kvstore, update_on_kvstore={on_kvstore}), 4)
trainer.load_states(sys.argv[1])
"""


def _bad_states(path, shapes):
    """A states file as :func:`checkpoint.write_states` writes it, for keys of ``shapes``."""
    updater = mx.optimizer.get_updater(AdagradScratch())
    for key, shape in shapes.items():
        updater(key, nd.ones(shape), nd.ones(shape))
    checkpoint.write_states(path, updater)


def _run(tmp_path, on_kvstore):
    script = tmp_path / "resume.py"
    script.write_text(textwrap.dedent(SCRIPT.format(on_kvstore=on_kvstore)))
    out = io.StringIO()
    with pytest.raises(LaunchError) as raised:
        launch([PYTHON, str(script), str(tmp_path)], 1, 1, timeout=JOB_TIMEOUT, out=out)
    return str(raised.value) + out.getvalue()


@pytest.mark.parametrize("shapes, match", [
    ({0: (1,), 1: (3,)}, r"parameter #1 \(\w+weight\) is \(3,\) float32 in the file but "
                         r"\(1, 2\) float32 in the trainer"),
    ({0: (1,), 1: (1, 2), 2: (4,)}, "state for parameter #2, but the trainer has 2 parameters"),
    ({1: (1, 2)}, "holds no state for 1 of the trainer's parameters"),
])
def test_worker_checkpoint_of_other_parameters_is_refused(tmp_path, shapes, match):
    _bad_states(checkpoint.worker_file(tmp_path), shapes)
    output = _run(tmp_path, on_kvstore=False)
    assert "ValueError" in output and re.search(match, output), output


@pytest.mark.parametrize("shapes, match", [
    ({0: (1,), 1: (3,)}, r"hold 3 elements for key 1 \(\w+weight\), but it has shape \(1, 2\)"),
    ({0: (1,), 1: (2,), 2: (4,)}, "state for key 2, but the trainer has 2 parameters"),
])
def test_server_checkpoint_of_other_parameters_is_refused(tmp_path, shapes, match):
    _bad_states(checkpoint.server_file(tmp_path, 0, 1), shapes)
    output = _run(tmp_path, on_kvstore=True)
    assert "ValueError" in output and re.search(match, output), output


def test_reading_the_server_files_reads_no_array(tmp_path, monkeypatch):
    """Worker 0 compares tokens and checks compatibility from ``meta`` alone."""
    _bad_states(checkpoint.server_file(tmp_path, 0, 1), {0: (1,), 1: (2,)})
    read = []
    original = npz.NpzReader.read
    monkeypatch.setattr(npz.NpzReader, "read",
                        lambda self, name: read.append(name) or original(self, name))
    monkeypatch.setattr(worker, "num_servers", lambda: 1)
    (saved,) = worker._read_server_files(tmp_path)
    assert read == ["meta"] and saved.arrays == {} and sorted(saved.params) == [0, 1]
    assert checkpoint.read_states(checkpoint.server_file(tmp_path, 0, 1),
                                  arrays=False).token == ""
    assert read == ["meta", "meta"]
    assert sorted(checkpoint.read_states(checkpoint.server_file(tmp_path, 0, 1)).arrays) == [
        "acc/0", "acc/1"]
