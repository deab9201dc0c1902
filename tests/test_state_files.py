"""State files that cannot hurt the reader: every malformed ``.npz`` (a zip bomb, a corrupt or
encrypted member, an absurd ``.npy`` header, a FIFO, hostile JSON) gets an ``OSError`` or
``ValueError`` naming the file, within a memory budget the trainer sets; a state file covers
every trained parameter (or the caller says ``partial=True``); checkpoints get ``open()``'s
permissions and clean up after killed writers."""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mxnet import autograd, nd

from adagrad_gluon.distributed import CheckpointError, checkpoint
from adagrad_gluon.state import (
    load_states,
    load_torch_state_dict,
    save_states,
)

from .trainers import dense_trainer


def _trainer(step=True, **kwargs):
    return dense_trainer("files_", step, **kwargs)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "states.npz"
    save_states(_trainer(), path)
    return path


def _members(path):
    """``{name: .npy bytes}`` of a file written by ``np.savez``."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npy_header(shape, dtype="<f4"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _zip(entries):
    """A zip archive written by hand, so that any field can lie: ``entries`` are dicts with
    ``name`` and ``data`` (the bytes as stored), and optionally ``method``, ``flags``,
    ``size`` (the declared uncompressed size), ``crc`` and ``version`` (needed to extract)."""
    out, central = io.BytesIO(), io.BytesIO()
    for entry in entries:
        name, data = entry["name"].encode(), entry["data"]
        method, flags = entry.get("method", zipfile.ZIP_STORED), entry.get("flags", 0)
        size, crc = entry.get("size", len(data)), entry.get("crc", zlib.crc32(data))
        version, offset = entry.get("version", 20), out.tell()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", version, flags, method, 0, 0x21,
                              crc, len(data), size, len(name), 0) + name + data)
        central.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, version, flags, method, 0,
                                  0x21,
                                  crc, len(data), size, len(name), 0, 0, 0, 0, 0, offset)
                      + name)
    start, count = out.tell(), len(entries)
    out.write(central.getvalue())
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count,
                          len(central.getvalue()), start, 0))
    return out.getvalue()


def _deflate(data):
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def _replace(path, name, **fields):
    """Rewrite ``path`` (an ``np.savez`` file) with member ``name`` changed as ``fields`` say
    (see :func:`_zip`; ``data`` given uncompressed is deflated when ``method`` is)."""
    entries = []
    for member, data in _members(path).items():
        entry = {"name": member, "data": data}
        if member == name:
            entry.update(fields)
            if entry.get("method") == zipfile.ZIP_DEFLATED and "size" not in fields:
                raw = entry["data"]
                entry.update(data=_deflate(raw), size=len(raw), crc=zlib.crc32(raw))
        entries.append(entry)
    path.write_bytes(_zip(entries))


def _bomb(path, name, like, gib=2):
    """A ~2 MB copy of the archive ``like`` whose member ``name`` inflates to ``gib`` GiB: the
    .npy of a float32 vector of zeros that long. Each MiB of zeros is deflated once and its
    (byte-aligned, dictionary-reset) block repeated."""
    total = gib * 2**30
    length = (total - len(_npy_header((total // 4,)))) // 4
    header = _npy_header((length,))
    assert len(header) + 4 * length == total
    chunk = b"\0" * 2**20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = header + chunk[len(header):]
    stream = compressor.compress(first) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream += block * (total // 2**20 - 1) + compressor.flush()
    crc = zlib.crc32(first)
    for _ in range(total // 2**20 - 1):
        crc = zlib.crc32(chunk, crc)
    entries = [{"name": member, "data": data} for member, data in _members(like).items()
               if member != name]
    entries.append({"name": name, "data": stream, "method": zipfile.ZIP_DEFLATED,
                    "size": total, "crc": crc})
    path.write_bytes(_zip(entries))
    assert path.stat().st_size < 3 * 2**20
    return path


# -- memory: a zip bomb is refused before it is inflated -------------------------------------

LOADER = r"""
import json, resource, sys
from adagrad_gluon.distributed import checkpoint
from tests.test_state_files import _trainer
from adagrad_gluon.state import load_states

kind, path = sys.argv[1], sys.argv[2]
trainer = _trainer()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# a regression fails fast with MemoryError instead of taking the machine's memory
limit = resource.getrlimit(resource.RLIMIT_AS)[1]
with open("/proc/self/statm") as statm:
    virtual = int(statm.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (virtual + 2**30, limit))
try:
    load_states(trainer, path) if kind == "state" else checkpoint.read_states(path)
    error = None
except BaseException as exc:
    error = {"type": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": error, "growth_kib": after - before}))
"""


def _load_in_subprocess(kind, path):
    """Load ``path`` in a fresh process (under an address-space limit 1 GiB above its size);
    its error and how much its peak resident memory grew during the load."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", LOADER, kind, str(path)], cwd=root,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["state", "checkpoint"])
def test_a_2mb_zip_bomb_is_refused_without_inflating_it(tmp_path, kind):
    """A 2 MB file whose member inflates to 2 GiB (the issue's load_states used 4.2 GB before
    refusing it): refused with ValueError/OSError naming the file while the peak memory grows
    by less than 64 MiB."""
    like = tmp_path / "like.npz"
    if kind == "state":
        save_states(_trainer(), like)
        name = "acc/0.npy"
    else:
        checkpoint.write_states(like, _trainer()._updaters[0])
        name = "acc/0.npy"
    bomb = _bomb(tmp_path / "bomb.npz", name, like)
    outcome = _load_in_subprocess(kind, bomb)
    error = outcome["error"]
    assert error is not None, "the bomb was loaded"
    assert {"ValueError", "OSError"} & set(error["type"]), error
    assert "bomb.npz" in error["message"]
    assert outcome["growth_kib"] < 64 * 1024, outcome


# -- malformed archives: a clear OSError / ValueError, whatever the damage ---------------------

def _meta(path):
    return json.loads(str(np.load(io.BytesIO(_members(path)["meta.npy"]))))


def _with_meta(path, meta_text):
    _replace(path, "meta.npy", data=_npy(np.array(meta_text)))


MALFORMED = {
    # name: (how to damage the saved file, the error, what its message says)
    "bad deflate stream": (
        lambda p: _replace(p, "acc/0.npy", method=zipfile.ZIP_DEFLATED,
                           data=b"\xff" * 40, size=140, crc=0),
        OSError, "not a readable adagrad_gluon state file: acc/0"),
    "truncated deflate stream": (
        lambda p: _replace(p, "acc/0.npy", method=zipfile.ZIP_DEFLATED,
                           data=_deflate(_npy(np.zeros(3, np.float32)))[:20],
                           size=len(_npy(np.zeros(3, np.float32)))),
        OSError, "not a readable adagrad_gluon state file: acc/0"),
    "unsupported compression method": (
        lambda p: _replace(p, "acc/0.npy", method=12),
        OSError, "compression method 12"),
    "encrypted member": (
        lambda p: _replace(p, "acc/0.npy", flags=1),
        OSError, "'acc/0' is encrypted"),
    # zipfile raises NotImplementedError for these (found by the Hypothesis test below)
    "compressed patched data": (
        lambda p: _replace(p, "acc/0.npy", flags=0x20),
        OSError, "'acc/0' uses zip features this reader does not support"),
    "strong encryption": (
        lambda p: _replace(p, "meta.npy", flags=0x40),
        OSError, "'meta' uses zip features this reader does not support"),
    "a newer zip version": (
        lambda p: _replace(p, "acc/0.npy", version=64),
        OSError, "not a readable adagrad_gluon state file: zip file version 6.4"),
    "wrong CRC": (
        lambda p: _replace(p, "acc/0.npy", crc=1234),
        OSError, "acc/0: Bad CRC-32"),
    "a member twice": (
        lambda p: p.write_bytes(_zip([{"name": n, "data": d} for n, d in
                                      [*_members(p).items(), ("acc/0.npy", b"")]])),
        OSError, "holds 'acc/0' twice"),
    "huge declared shape": (
        lambda p: _replace(p, "acc/0.npy",
                           data=_npy_header((10**12,)) + np.zeros(3, np.float32).tobytes()),
        ValueError, r"acc/0 has shape \(1000000000000,\), expected \(3,\)"),
    "shape and size disagree": (
        lambda p: _replace(p, "acc/0.npy", data=_npy_header((3,)) + b"\0" * 4),
        OSError, r"declares shape \(3,\) of float32 \(12 bytes\) but holds 4 bytes"),
    "huge .npy header": (
        lambda p: _replace(p, "acc/0.npy", data=b"\x93NUMPY\x02\x00" + struct.pack(
            "<L", 2**31) + b" " * 100),
        OSError, "header longer than 4096"),
    "unparsable .npy header": (
        lambda p: _replace(p, "acc/0.npy", data=b"\x93NUMPY\x01\x00\x10\x00" + b"(" * 16),
        OSError, "invalid .npy header"),
    "deeply nested JSON in meta": (
        lambda p: _with_meta(p, "[" * 5000 + "]" * 5000),
        ValueError, "'meta' entry is not readable JSON"),
    "options as a list": (
        lambda p: _with_meta(p, json.dumps({**_meta(p), "options": [1, 2]})),
        ValueError, "'options' must be a dict, got \\[1, 2\\]"),
    "meta as a list": (
        lambda p: _with_meta(p, json.dumps([_meta(p)])),
        ValueError, "not an adagrad_gluon state file"),
    "meta too large": (
        lambda p: _with_meta(p, json.dumps({**_meta(p), "pad": "x" * 10**6})),
        ValueError, "meta holds .* bytes, more than"),
    "meta as numbers": (
        lambda p: _replace(p, "meta.npy", data=_npy(np.zeros(3))),
        ValueError, "meta has dtype float64, expected str"),
}


@pytest.mark.parametrize("damage, error, match", MALFORMED.values(), ids=list(MALFORMED))
def test_a_malformed_state_file_gets_a_clear_error(saved, damage, error, match):
    damage(saved)
    with pytest.raises(error, match=match) as caught:
        load_states(_trainer(step=False), saved)
    assert "states.npz" in str(caught.value)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "states.npz"
    os.mkfifo(fifo)

    def timeout(signum, frame):
        raise TimeoutError("load_states blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    try:
        with pytest.raises(OSError, match="states.npz is not a readable .*not a regular file"):
            load_states(_trainer(step=False), fifo)
        with pytest.raises(CheckpointError, match="states.npz .*not a regular file"):
            checkpoint.read_states(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_big_endian_arrays_are_converted(saved):
    """The reader accepts big-endian arrays (np.savez on a big-endian machine) and converts
    them to native order, losslessly."""
    trainer = _trainer()
    save_states(trainer, saved)
    for member, data in _members(saved).items():
        if member != "meta.npy":
            array = np.load(io.BytesIO(data))
            _replace(saved, member, data=_npy(array.astype(">f4")))
    resumed = _trainer(step=False)
    load_states(resumed, saved)
    for index in (0, 1):
        np.testing.assert_array_equal(resumed._updaters[0].states[index].asnumpy(),
                                      trainer._updaters[0].states[index].asnumpy())


def test_a_deflated_file_within_the_budget_loads(saved):
    """np.savez_compressed's files are read too (deflate is not refused as such)."""
    trainer = _trainer()
    save_states(trainer, saved)
    with zipfile.ZipFile(saved) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(saved, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    resumed = _trainer(step=False)
    load_states(resumed, saved)
    np.testing.assert_array_equal(resumed._updaters[0].states[1].asnumpy(),
                                  trainer._updaters[0].states[1].asnumpy())


@pytest.fixture
def states_file(tmp_path):
    path = tmp_path / "states.npz"
    checkpoint.write_states(path, _trainer()._updaters[0])
    return path


def _with_checkpoint_meta(path, change):
    meta = _meta(path)
    change(meta)
    _with_meta(path, json.dumps(meta))


# the same damage as to a state file, to a checkpoint (one schema: the same members)
CHECKPOINT_MALFORMED = {
    "bad deflate stream": (
        lambda p: _replace(p, "acc/0.npy", method=zipfile.ZIP_DEFLATED,
                           data=b"\xff" * 40, size=140, crc=0), "acc/0"),
    "encrypted member": (lambda p: _replace(p, "meta.npy", flags=1), "'meta' is encrypted"),
    "unsupported compression method": (
        lambda p: _replace(p, "meta.npy", method=14), "compression method 14"),
    "huge declared shape": (
        lambda p: _replace(p, "acc/0.npy", data=_npy_header((10**12,)) + b"\0" * 12),
        r"acc/0 has shape \(1000000000000,\), expected \(3,\)"),
    "huge declared shape in meta and array": (
        lambda p: (_with_checkpoint_meta(p, lambda m: m["params"][0].update(shape=[10**12])),
                   _replace(p, "acc/0.npy", data=_npy_header((10**12,)) + b"\0" * 12)),
        r"declares shape \(1000000000000,\)"),
    "deeply nested JSON in meta": (
        lambda p: _with_meta(p, "[" * 5000 + "]" * 5000), "'meta' entry is not readable JSON"),
    "options as a list": (
        lambda p: _with_checkpoint_meta(p, lambda m: m.update(options=[])),
        "'options' must be a dict"),
    "scheduler as a number": (
        lambda p: _with_checkpoint_meta(p, lambda m: m.update(scheduler=7)),
        "'scheduler' must be null or an object with a class and attributes"),
    "keys as floats": (
        lambda p: _with_checkpoint_meta(p, lambda m: m["params"][0].update(index=0.0)),
        "a parameter entry must have index"),
    "an unexpected array": (
        lambda p: p.write_bytes(_zip([{"name": n, "data": d} for n, d in
                                      [*_members(p).items(), ("extra.npy", _npy([1.0]))]])),
        r"unexpected arrays \['extra'\]"),
}


@pytest.mark.parametrize("damage, match", CHECKPOINT_MALFORMED.values(),
                         ids=list(CHECKPOINT_MALFORMED))
def test_a_malformed_checkpoint_gets_a_checkpoint_error(states_file, damage, match):
    damage(states_file)
    with pytest.raises(CheckpointError, match=match) as caught:
        checkpoint.read_states(states_file)
    assert "states.npz" in str(caught.value)


def _mutations():
    return st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                    min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(mutations=_mutations(), deflate=st.booleans(), cut=st.floats(0, 1))
def test_any_damaged_file_loads_or_raises_a_clear_error(tmp_path_factory, mutations, deflate,
                                                         cut):
    """Random bytes changed in (and maybe the tail cut off) a state file and a checkpoint,
    stored or deflated: each loads, or raises ValueError / OSError, never anything else."""
    directory = tmp_path_factory.mktemp("damaged")
    trainer = _trainer()
    files = [directory / "states.npz", directory / "ckpt.npz"]
    save_states(trainer, files[0])
    checkpoint.write_states(files[1], trainer._updaters[0])
    for path in files:
        if deflate:
            members = _members(path)
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, data in members.items():
                    archive.writestr(name, data)
        data = bytearray(path.read_bytes())
        for position, value in mutations:
            data[int(position * len(data))] = value
        path.write_bytes(bytes(data[: max(1, int(len(data) * (1 - cut / 4)))]))
    try:
        load_states(_trainer(step=False), files[0])
    except (ValueError, OSError) as exc:
        assert "states.npz" in str(exc)
    try:
        checkpoint.read_states(files[1])
    except CheckpointError as exc:
        assert "ckpt.npz" in str(exc)


# -- coverage: a state file holds every trained parameter, once -------------------------------

def _drop(path, index):
    """Remove parameter ``index``'s entry and array from the state file at ``path``."""
    meta = _meta(path)
    meta["params"] = [e for e in meta["params"] if e["index"] != index]
    entries = [{"name": n, "data": d} for n, d in _members(path).items()
               if n != f"acc/{index}.npy"]
    path.write_bytes(_zip(entries))
    _with_meta(path, json.dumps(meta))


def test_a_file_missing_a_parameter_is_refused_unless_partial(saved):
    _drop(saved, 1)
    trainer = _trainer()
    before = {i: s.asnumpy() for i, s in trainer._updaters[0].states.items()}
    with pytest.raises(ValueError, match=r"no state for 1 of the trainer's parameters: "
                                         r"files_weight \(partial=True"):
        load_states(trainer, saved)
    np.testing.assert_array_equal(trainer._updaters[0].states[0].asnumpy(), before[0])

    trainer._updaters[0].states[0] = nd.full((3,), 9.0)
    load_states(trainer, saved, partial=True)
    assert trainer._updaters[0].states[0].asnumpy().tolist() != [9.0] * 3  # loaded
    np.testing.assert_array_equal(trainer._updaters[0].states[1].asnumpy(), before[1])  # kept


def test_a_file_with_no_parameters_is_refused(saved):
    _drop(saved, 0)
    _drop(saved, 1)
    with pytest.raises(ValueError, match="no state for 2 .*files_bias, files_weight"):
        load_states(_trainer(), saved)


def test_a_duplicated_parameter_is_refused_even_when_partial(saved):
    meta = _meta(saved)
    meta["params"].append(meta["params"][0])
    _with_meta(saved, json.dumps(meta))
    for partial in (False, True):
        with pytest.raises(ValueError, match=r"parameter #0 \(files_bias\) has two entries"):
            load_states(_trainer(), saved, partial=partial)


def test_partial_load_keeps_the_largest_update_count(saved):
    _drop(saved, 1)  # the file: bias after 1 update
    trainer = _trainer()
    for _ in range(3):  # weight and bias at 4 updates
        with autograd.record():
            loss = trainer._params[1].data().sum()
        loss.backward()
        trainer.step(1, ignore_stale_grad=True)
    load_states(trainer, saved, partial=True)
    counts = trainer._optimizer._all_index_update_counts[0]
    assert counts[0] == 1 and counts[1] == 4 and trainer._optimizer.num_update == 4


def test_a_trainer_saved_before_its_first_step_round_trips(tmp_path):
    """The states a fresh trainer would create are saved, so the file covers every parameter
    (it used to hold none, and loaded as a silent no-op)."""
    path = tmp_path / "fresh.npz"
    fresh = _trainer(step=False)
    fresh._optimizer.initial_accumulator_value = 0.5
    save_states(fresh, path)
    assert not fresh._updaters[0].states  # saving did not change the trainer
    assert sorted(e["index"] for e in _meta(path)["params"]) == [0, 1]
    other = _trainer(step=False)
    other._optimizer.initial_accumulator_value = 0.5
    load_states(other, path)
    assert other._updaters[0].states[1].asnumpy().tolist() == [[0.5] * 4] * 3


def test_a_frozen_parameter_need_not_be_in_the_file(tmp_path):
    path = tmp_path / "frozen.npz"
    trainer = _trainer(step=False)
    trainer._params[0].grad_req = "null"
    save_states(trainer, path)
    assert [e["index"] for e in _meta(path)["params"]] == [1]
    other = _trainer(step=False)
    other._params[0].grad_req = "null"
    load_states(other, path)


# -- load_torch_state_dict: sum and step ------------------------------------------------------

def _torch_state(step=3, total=None):
    return {"state": {0: {"step": step, "sum": np.ones(3) if total is None else total},
                      1: {"step": 3, "sum": np.ones((3, 4))}},
            "param_groups": [{}]}


@pytest.mark.parametrize("state, match", [
    (_torch_state(total=np.full(3, 1e300)), "beyond float32's range"),
    (_torch_state(step="5"), "'step' of parameter #0 must be an integer >= 0, got '5'"),
    (_torch_state(step=True), "got True"),
    (_torch_state(step=5.5), "got 5.5"),
    (_torch_state(step=-1), "got -1"),
    (_torch_state(step=np.inf), "got inf"),
    (_torch_state(step=np.array([1, 2])), "must be an integer"),
])
def test_torch_state_dict_with_bad_sum_or_step_is_refused(state, match):
    trainer = _trainer()
    before = trainer._updaters[0].states[0].asnumpy()
    with pytest.raises(ValueError, match=match):
        load_torch_state_dict(trainer, state)
    np.testing.assert_array_equal(trainer._updaters[0].states[0].asnumpy(), before)


@pytest.mark.parametrize("step", [5, np.int64(5), 5.0, np.float32(5.0)])
def test_torch_step_holding_an_integer_loads(step):
    trainer = _trainer()
    load_torch_state_dict(trainer, _torch_state(step=step))
    assert trainer._optimizer._all_index_update_counts[0][0] == 5


def test_torch_float_tensor_step_loads():
    torch = pytest.importorskip("torch")  # optional: pip install torch==2.13.0 (CI does)
    trainer = _trainer()
    state = _torch_state(total=torch.ones(3, dtype=torch.float64))
    state["state"][0]["step"] = torch.tensor(7.0)
    load_torch_state_dict(trainer, state)
    assert trainer._optimizer._all_index_update_counts[0][0] == 7


# -- writing: permissions and temporaries left by killed writers ------------------------------

@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_a_new_checkpoint_gets_the_umask_mode(tmp_path, umask_027):
    path = tmp_path / "states.npz"
    save_states(_trainer(), path)
    assert path.stat().st_mode & 0o777 == 0o640
    checkpoint.write_states(tmp_path / "ckpt.npz", _trainer()._updaters[0])
    assert (tmp_path / "ckpt.npz").stat().st_mode & 0o777 == 0o640


def test_a_rewritten_checkpoint_keeps_its_mode(tmp_path, umask_027):
    path = tmp_path / "states.npz"
    path.write_bytes(b"old")
    path.chmod(0o604)
    save_states(_trainer(), path)
    assert path.stat().st_mode & 0o777 == 0o604


STALLED_WRITER = r"""
import sys, time
from adagrad_gluon.state import atomic_write


def stall(file):
    file.write(b"partial")
    file.flush()
    print("MID", flush=True)
    time.sleep(600)


atomic_write(sys.argv[1], stall)
"""


def _age(path, seconds=3600):
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_stale_temporaries_are_removed_by_the_next_save(tmp_path):
    """A writer killed mid-save leaves ``.<name>.XXXXXXXX.tmp``; the next save of the same
    target removes it once it is old and unlocked, and leaves everything else."""
    path = tmp_path / "ckpt.npz"
    writer = subprocess.Popen([sys.executable, "-c", STALLED_WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "MID"
        [live] = tmp_path.glob(".ckpt.npz.*.tmp")
        _age(live)
        save_states(_trainer(), path)
        assert live.exists()  # old, but its writer is alive and holds its lock
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        writer.stdout.close()
    others = [tmp_path / name for name in (".other.npz.abcd1234.tmp", ".ckpt.npz.keep",
                                           "ckpt.npz.abcd1234.tmp", ".ckpt.npz.ab.cd123.tmp")]
    fresh = tmp_path / ".ckpt.npz.fresh123.tmp"
    for other in [*others, fresh]:
        other.write_bytes(b"x")
        _age(other)
    fresh.touch()  # just created: maybe a writer that has not locked it yet

    save_states(_trainer(), path)  # the killed writer's lock died with it
    assert not live.exists()
    assert all(p.exists() for p in [*others, fresh])
    load_states(_trainer(), path)
