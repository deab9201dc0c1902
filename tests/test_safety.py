"""Files that cannot hurt: the state file refuses anything but its own schema (no pickle), a
writer killed mid-save leaves the previous checkpoint intact, and the data parser turns any
malformed file into a clear error."""

import contextlib
import io
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mxnet import gluon

from adagrad_gluon.data import DataFileError, read_airfoil
from adagrad_gluon.state import FORMAT, VERSION, load_states, save_states

from .trainers import dense_trainer


def _trainer(prefix="safe_", step=False):
    return dense_trainer(prefix, step)


@pytest.fixture
def saved(tmp_path):
    trainer = _trainer(step=True)
    path = tmp_path / "states.npz"
    save_states(trainer, path)
    return path


def _meta(path):
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(str(npz["meta"])), {k: npz[k] for k in npz.files if k != "meta"}


def _rewrite(path, meta, arrays, **extra):
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays, **extra)


def test_round_trip_of_a_fresh_trainer(saved):
    load_states(_trainer(), saved)
    meta, arrays = _meta(saved)
    assert meta["format"] == FORMAT and meta["version"] == VERSION
    assert sorted(arrays) == ["acc/0", "acc/1"]


def test_a_pickled_object_array_is_refused_without_being_unpickled(tmp_path, saved):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    meta, arrays = _meta(saved)
    arrays["acc/0"] = np.array([Evil()], dtype=object)
    with open(saved, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)  # np.savez pickles objects
    with pytest.raises(OSError, match="not a readable adagrad_gluon state file"):
        load_states(_trainer(), saved)
    assert not marker.exists()


def test_a_trainer_pickle_is_not_a_state_file(tmp_path):
    trainer = _trainer()
    trainer.save_states(str(tmp_path / "pickle"))
    with pytest.raises(OSError, match="not a readable adagrad_gluon state file"):
        load_states(_trainer(), tmp_path / "pickle")


@pytest.mark.parametrize("change, match", [
    (lambda m, a: m.update(version=VERSION + 1), f"version {VERSION + 1}"),
    (lambda m, a: m.update(format="something"), "not an adagrad_gluon state file"),
    (lambda m, a: m["options"].update(eps=1e-7), "eps: saved 1e-07"),
    (lambda m, a: m["params"][0].update(name="other_bias"), "'other_bias' in the file"),
    (lambda m, a: m["params"][0].update(dtype="float16"), "float16 in the file"),
    (lambda m, a: m["params"][0].update(index=7), "parameter #7"),
    (lambda m, a: a.update({"acc/0": np.zeros(4, np.float32)}),
     r"acc/0 has shape \(4,\), expected \(3,\)"),
    (lambda m, a: a.update({"acc/0": np.zeros(3, np.int64)}), "acc/0 has dtype int64"),
    (lambda m, a: a.update({"acc/0": np.zeros(3, np.float16)}),
     "acc/0 has dtype float16, expected float32"),
    (lambda m, a: a.update({"acc/0": np.zeros(3, np.float64)}),
     "acc/0 has dtype float64, expected float32"),
    (lambda m, a: a.update({"acc/0": -np.ones(3, np.float32)}), "acc/0 holds negative"),
    (lambda m, a: a.update({"acc/0": np.full(3, np.nan, np.float32)}), "acc/0 holds NaN"),
    (lambda m, a: a.update({"extra": np.zeros(1)}), "unexpected arrays"),
    (lambda m, a: a.pop("acc/1"), r"the state of parameter #1 \(safe_weight\) is missing"),
    (lambda m, a: m["params"][0].update(index="0"), "a parameter entry must have index"),
    (lambda m, a: m["params"][0].pop("index"), "a parameter entry must have index"),
    (lambda m, a: m["params"][0].update(update_count=-2), "update_count .* >= 0, got -2"),
    (lambda m, a: m.update(params=5), "'params' must be a list"),
    (lambda m, a: m.pop("num_update"), "num_update must be an integer >= 0, got None"),
])
def test_schema_violations_are_refused(saved, change, match):
    meta, arrays = _meta(saved)
    change(meta, arrays)
    _rewrite(saved, meta, arrays)
    with pytest.raises(ValueError, match=match):
        load_states(_trainer(), saved)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"\x93NUMPY garbage"])
def test_garbage_and_truncated_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(OSError, match="bad.npz"):
        load_states(_trainer(), path)


def test_truncated_real_file_is_refused(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="not a readable"):
        load_states(_trainer(), saved)


WRITER = r"""
import io, os, sys, time
import numpy as np
from mxnet import gluon, nd
import adagrad_gluon
from adagrad_gluon.state import save_states

path, size, fraction = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
net = gluon.nn.Dense(size, in_units=64, prefix="big_")
net.initialize()
trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch", {"learning_rate": 0.1})
trainer._init_kvstore()


def save(version):
    for index, param in enumerate(trainer._params):
        trainer._updaters[0].states[index] = nd.full(param.shape, version)
    save_states(trainer, path)


save(1)  # a complete checkpoint
real_savez = np.savez


def savez_then_stall(file, **arrays):
    # write only `fraction` of the next checkpoint, make it durable, then wait to be killed
    buffer = io.BytesIO()
    real_savez(buffer, **arrays)
    data = buffer.getvalue()
    file.write(data[: int(len(data) * fraction)])
    file.flush()
    os.fsync(file.fileno())
    print("MID", flush=True)
    time.sleep(600)


np.savez = savez_then_stall
save(2)
"""


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.99])
def test_a_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path, fraction):
    """SIGKILL a process while it rewrites a ~25 MB checkpoint, with a given fraction of the
    new file written: the checkpoint is still the complete previous version."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "ckpt.npz"
    proc = subprocess.Popen([sys.executable, str(script), str(path), "100000", str(fraction)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "MID", "the writer did not reach its 2nd save"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    partial = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(partial) == 1  # the killed save's temporary file: it was killed mid-save
    net = gluon.nn.Dense(100000, in_units=64, prefix="big_")
    net.initialize()
    reader = gluon.Trainer(net.collect_params(), "adagrad_scratch", {"learning_rate": 0.1})
    load_states(reader, path)
    for index in (0, 1):
        np.testing.assert_array_equal(reader._updaters[0].states[index].asnumpy(), 1.0)


# -- the data parser -------------------------------------------------------------------------

cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.text(alphabet="0123456789.eE+-xabc ,;", max_size=8),
)
rows = st.lists(cells, min_size=0, max_size=8).map("\t".join)
files = st.lists(rows, min_size=0, max_size=6).map("\r\n".join).map(str.encode)


@settings(max_examples=200, deadline=None)
@given(content=st.one_of(files, st.binary(max_size=200)))
def test_any_file_parses_or_raises_a_clear_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "data.dat"
    path.write_bytes(content)
    try:
        data = read_airfoil(path)
    except DataFileError as exc:
        assert str(path) in str(exc)
    else:
        assert data.ndim == 2 and data.shape[1] == 6 and data.shape[0] >= 1
        assert np.isfinite(data).all() and data.dtype == np.float32


def test_a_huge_file_is_refused_by_its_checksum_without_parsing(tmp_path):
    from adagrad_gluon.data import get_data_ch10

    big = tmp_path / "airfoil_self_noise.dat"
    with open(big, "wb") as f:
        f.write(b"1\t2\t3\t4\t5\t6\r\n" * 2_000_000)  # 26 MB
    with pytest.raises(DataFileError, match="SHA-1"):
        get_data_ch10(data_dir=tmp_path)


# -- the command line ------------------------------------------------------------------------

FLAGS = ["compare", "trajectory", "sweep", "remedy", "--lr", "--epochs", "--batch-size", "--n",
         "--seed", "--data-dir", "--out", "--quiet", "--eta", "--steps", "--lrs", "--gamma",
         "--rmsprop-lr", "-h", "--", "-"]
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1e309", "1e300", "1e-320", "1e-39", "3.4e38", "nan", "inf",
                     "-inf", "0.5", "1504", "2**40", "", " ", "1,,2", "0.1,0.1",
                     "/nonexistent", "x" * 300, "\x00", "é"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(argv=st.lists(st.one_of(st.sampled_from(FLAGS), VALUES), max_size=6))
@example(argv=["compare", "\n"])  # found by this test: a newline in a quoted argument
@example(argv=["sweep", "--lrs", "1,\x1e2"])
@example(argv=["compare", "--lr", "1e300"])  # inf in float32: a traceback after training
@example(argv=["sweep", "--lrs", "1e-320"])  # 0 in float32: MXNetError on the first update
@example(argv=["compare", "--data-dir", "x" * 300])  # found by this test: name too long, OSError
@example(argv=["compare", "--out", "x" * 300])
def test_any_command_line_parses_or_fails_in_one_line(argv):
    """Argument handling alone (no training): every argv either parses into checked values
    or ends with exit code 2 (0 for --help) and a one-line message, never a traceback."""
    from adagrad_gluon.cli import build_parser

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        err = err.getvalue()
        if exc.code == 0:
            return
        assert exc.code == 2
        # one line: a single newline at the end (str.splitlines would also split on the
        # control characters, e.g. '\x1e', that the fuzzer puts into the quoted arguments)
        assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err
        return
    for name in ("lr", "eta", "gamma"):
        value = getattr(args, name, None)
        assert value is None or np.isfinite(value)
    # the learning rates of the float32 training stay in float32's normal range
    tiny, huge = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    for rate in [getattr(args, "lr", None), getattr(args, "rmsprop_lr", None),
                 *getattr(args, "lrs", [])]:
        assert rate is None or tiny <= rate <= huge
    assert getattr(args, "epochs", 1) >= 1 and getattr(args, "batch_size", 1) >= 1
