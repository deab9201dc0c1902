"""Optimizer state in and out of a ``gluon.Trainer`` that uses ``adagrad_scratch``.

Two formats:

* :func:`save_states` / :func:`load_states`: a safe ``.npz`` file (no pickle) with an
  explicit schema: ``meta`` (JSON: format name, version, the optimizer's options, update
  counts, parameter names, shapes and dtypes) and one array per accumulator (``acc/<index>``)
  and float32 master weight (``master/<index>``), for every parameter the trainer updates.
  Loading checks all of it against the trainer and refuses a mismatch with a ``ValueError``
  that names it: resuming under other numerics (another ``eps`` placement, preset, ...) is
  never silent. It reads through :class:`NpzReader`, which checks names, sizes and ``.npy``
  headers against the trainer before it decompresses anything, so that no file can exhaust
  memory or hang the reader. Writes are atomic: a temporary file renamed over the target.
* :func:`to_torch_state_dict` / :func:`load_torch_state_dict`: PyTorch's
  ``torch.optim.Adagrad`` ``state_dict`` layout (``state[i] = {'step', 'sum'}`` and one param
  group), to move a half-trained model between frameworks.

``Trainer.save_states`` / ``load_states`` work too (they pickle the whole optimizer, and
``load_states`` replaces the trainer's optimizer, options included, with the saved one).
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import re
import stat
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError

import numpy as np
import numpy.lib.format as npformat
from mxnet import gluon, nd

from .optimizer import AdagradScratch, accumulator_dtype

FORMAT = "adagrad_gluon.states"
VERSION = 1
OPTION_NAMES = ("compat", "eps", "eps_placement", "initial_accumulator_value", "lr_decay",
                "weight_decay_mode", "maximize", "multi_precision")


def optimizer_options(optimizer: AdagradScratch) -> dict[str, object]:
    """The options that decide what the saved numbers mean."""
    return {name: getattr(optimizer, name) for name in OPTION_NAMES}


def trainer_updaters(trainer: gluon.Trainer) -> tuple[AdagradScratch, list]:
    """The ``adagrad_scratch`` optimizer of ``trainer`` and the updaters that hold its states:
    one per device, or the kvstore's when the trainer updates on the kvstore. Initialises the
    trainer's kvstore and parameters if needed. ``TypeError`` for another optimizer,
    ``ValueError`` when the states live on parameter servers."""
    if not isinstance(trainer, gluon.Trainer):
        raise TypeError(f"expected a gluon.Trainer, got {type(trainer).__name__}")
    if not isinstance(trainer._optimizer, AdagradScratch):
        raise TypeError(f"the trainer's optimizer is {type(trainer._optimizer).__name__}, "
                        f"not adagrad_scratch")
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    if trainer._update_on_kvstore:
        kvstore = trainer._kvstore
        if "dist" in kvstore.type:
            raise ValueError("with a distributed kvstore and update_on_kvstore=True the states "
                             "live on the servers: use adagrad_gluon.distributed's checkpoints")
        return trainer._optimizer, [kvstore._updater]
    return trainer._optimizer, trainer._updaters


def _split(state) -> tuple[nd.NDArray | None, nd.NDArray]:
    return (state[0], state[1]) if isinstance(state, (tuple, list)) else (None, state)


def _device_ids(trainer: gluon.Trainer) -> list[int]:
    return sorted({ctx.device_id for ctx in trainer._contexts})


def _trained(trainer: gluon.Trainer) -> list[int]:
    """Indices of the trainer's parameters that the optimizer updates (``grad_req`` not
    ``'null'``): each has a state from its first update on."""
    return [i for i, param in enumerate(trainer._params) if param.grad_req != "null"]


def _collect(trainer: gluon.Trainer):
    """``(optimizer, {index: (master, acc, update count)})`` for every parameter with a state
    and every trained one: a state not created yet (before the first update) is the one the
    first update would create, with no update counted (the trainer is left as it was)."""
    optimizer, updaters = trainer_updaters(trainer)
    counts = optimizer._all_index_update_counts.get(_device_ids(trainer)[0], {})
    created = updaters[0].states
    states = {}
    for index in sorted(set(map(int, created)) | set(_trained(trainer))):
        state = created[index] if index in created else optimizer.create_state_multi_precision(
            index, trainer._params[index].list_data()[0])
        master, acc = _split(state)
        states[index] = (master, acc, int(counts.get(index, optimizer.begin_num_update)))
    return optimizer, states


def _install(trainer: gluon.Trainer, optimizer: AdagradScratch, index: int,
             master: np.ndarray | None, acc: np.ndarray, count: int) -> None:
    """Give parameter ``index`` this state (on every context) and this update count."""
    param = trainer._params[index]
    _, updaters = trainer_updaters(trainer)
    for updater, ctx in zip(updaters, param.list_ctx(), strict=False):
        acc_nd = nd.array(acc, ctx=ctx, dtype=acc.dtype)
        state = acc_nd if master is None else (nd.array(master, ctx=ctx, dtype=master.dtype),
                                               acc_nd)
        updater.states[index] = state
        updater.states_synced[index] = True
    for device_id in _device_ids(trainer):
        optimizer._all_index_update_counts.setdefault(device_id, {})[index] = count
    optimizer.num_update = max(optimizer.num_update, count)


# -- writing: atomically, with open()'s mode, cleaning up after killed writers -----------------

# mkstemp's names for the temporaries of atomic_write: ".<target name>.<8 characters>.tmp"
_TEMP_SUFFIX = r"[a-z0-9_]{8}\.tmp"
STALE_TEMP_SECONDS = 60.0


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (setting it to
    read it would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_mode(path: Path) -> int:
    """The permissions ``open(path, "wb")`` would leave: the existing file's, else
    ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _remove_if_stale(candidate: Path, cutoff: float) -> bool:
    """Delete ``candidate`` if it is a regular file of ours, unmodified since ``cutoff`` and
    not locked by a live writer; ``True`` if it was deleted."""
    try:
        fd = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid()
                or info.st_mtime > cutoff):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a writer holds it
        candidate.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str | os.PathLike,
                             older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` calls for ``path`` left behind
    when they were killed, and return their paths.

    Only files named like ``path``'s temporaries (``.<name>.XXXXXXXX.tmp`` beside it), owned
    by this user, unmodified for ``older_than`` seconds and not locked are removed: a live
    writer holds an exclusive ``flock`` on its temporary until the rename (the lock dies with
    its process), and the age covers the instant between creating the file and locking it."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + _TEMP_SUFFIX)
    cutoff = time.time() - older_than
    return [candidate for candidate in path.parent.iterdir()
            if pattern.fullmatch(candidate.name) and _remove_if_stale(candidate, cutoff)]


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``:
    a reader (or a crash) sees the old file or the new one, never half of one.

    The file gets the permissions ``open()`` would give it (the old file's, or
    ``0o666 & ~umask`` for a new one); temporaries that killed writes of ``path`` left behind
    are deleted first (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(fd, fcntl.LOCK_EX)  # until closed, after the rename: see above
            os.fchmod(fd, _open_mode(path))
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- reading: a bounded .npz reader (shared with adagrad_gluon.distributed.checkpoint) ---------

NPY_HEADER_BYTES = 4096  # at most this much .npy header (magic, length and dict) per member
_CHUNK_BYTES = 1 << 20
_KIND_NAMES = {"f": "float", "i": "integer", "u": "unsigned integer", "U": "str"}
_NPY_HEADER_READERS = {(1, 0): (2, npformat.read_array_header_1_0),
                       (2, 0): (4, npformat.read_array_header_2_0)}


class StateFileError(OSError):
    """A file is not a readable ``.npz`` of the expected kind: not a zip archive, truncated,
    corrupt, compressed or encrypted in a way not read, or holding pickled objects."""


@dataclass(frozen=True)
class Member:
    """What one ``.npz`` member may hold: a dtype of one of the numpy ``kinds`` (e.g. ``"f"``,
    ``"iu"``, ``"U"``), exactly ``dtype`` and ``shape`` if given, and at most ``max_bytes`` of
    data (any amount if ``None``)."""

    kinds: str
    max_bytes: int | None = None
    shape: tuple[int, ...] | None = None
    dtype: np.dtype | None = None


def _open_regular_file(path: Path, what: str) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file; a FIFO or device is refused
    without blocking on it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateFileError(f"{path} is not a readable {what}: not a regular file")
    return os.fdopen(fd, "rb")


# zip flag bits zipfile cannot read: compressed patched data (5), strong encryption (6)
_UNSUPPORTED_FLAGS = 0x20 | 0x40


class NpzReader:
    """A ``.npz`` file read within limits: no file makes the reader exhaust memory, hang, or
    fail with anything but ``OSError`` / ``ValueError`` naming the file. Use it as a context
    manager.

    ``path`` must be a regular file. Its zip directory is checked on opening: each name
    appears once; every member is stored or deflated, not encrypted; all members together
    declare at most ``max_expansion`` times the file's size, if given (for readers that cannot
    know the sizes in advance). :meth:`read` then checks the member against ``spec(name)``
    (its :class:`Member`, ``None`` for a name not expected) before decompressing anything: its
    declared size, then its ``.npy`` header's dtype and shape; then it reads exactly the bytes
    that header declares. Big-endian arrays are converted to native byte order (lossless).

    A malformed file raises :class:`StateFileError` (an ``OSError``: "<path> is not a readable
    <what>: <reason>"); a member that ``spec`` does not allow raises ``ValueError``.
    """

    def __init__(self, path: str | os.PathLike, spec: Callable[[str], Member | None], *,
                 what: str, max_expansion: float | None = None) -> None:
        self.path, self.what, self._spec = Path(path), what, spec
        self._file = _open_regular_file(self.path, what)
        try:
            self._archive = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError) as exc:
            self._file.close()
            raise self._unreadable(exc) from exc
        try:
            self._infos = self._check_directory(max_expansion)
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self._archive.close()
        self._file.close()

    @property
    def names(self) -> list[str]:
        """The arrays in the file (member names without ``.npy``)."""
        return list(self._infos)

    def _unreadable(self, reason) -> StateFileError:
        return StateFileError(f"{self.path} is not a readable {self.what}: {reason}")

    def _check_directory(self, max_expansion: float | None) -> dict[str, zipfile.ZipInfo]:
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in self._archive.infolist():
            name = info.filename.removesuffix(".npy")
            if name in infos:
                raise self._unreadable(f"it holds {name!r} twice")
            if info.flag_bits & 1:
                raise self._unreadable(f"{name!r} is encrypted")
            if info.flag_bits & _UNSUPPORTED_FLAGS:
                raise self._unreadable(f"{name!r} uses zip features this reader does not "
                                       f"support (flag bits {info.flag_bits:#x})")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise self._unreadable(f"{name!r} uses compression method {info.compress_type}"
                                       f" (only stored and deflated members are read)")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise self._unreadable(f"{name!r} is stored, but its two sizes differ")
            infos[name] = info
        total = sum(info.file_size for info in infos.values())
        if max_expansion is not None and total > max_expansion * os.fstat(
                self._file.fileno()).st_size:
            raise self._unreadable(f"its arrays would expand to {total} bytes, more than "
                                   f"{max_expansion:g} times the file's size")
        return infos

    def read(self, name: str) -> np.ndarray:
        """The array ``name``, checked as described above."""
        member, info = self._spec(name), self._infos.get(name)
        if info is None:
            raise ValueError(f"{self.path} has no {name!r} array")
        if member is None or not info.filename.endswith(".npy"):
            raise ValueError(f"{self.path}: unexpected array {name!r}")
        if member.max_bytes is not None and info.file_size > member.max_bytes + NPY_HEADER_BYTES:
            raise ValueError(f"{self.path}: {name} holds {info.file_size} bytes, more than the "
                             f"{member.max_bytes} bytes of data (plus a header) it may have")
        try:
            with self._archive.open(info) as stream:
                return self._read_array(name, member, info.file_size, stream)
        except StateFileError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError,
                NotImplementedError) as exc:  # corrupt, truncated, or features zipfile lacks
            raise self._unreadable(f"{name}: {exc}") from exc

    def _read_header(self, name: str, stream) -> tuple[tuple[int, ...], bool, np.dtype, int]:
        """``(shape, fortran_order, dtype, header bytes)`` of the member open in ``stream``."""
        magic = stream.read(npformat.MAGIC_LEN)
        try:
            width, parse = _NPY_HEADER_READERS[npformat.read_magic(io.BytesIO(magic))]
        except (ValueError, KeyError) as exc:
            raise self._unreadable(f"{name} is not a .npy array of format 1.0 or 2.0") from exc
        prefix = stream.read(width)
        length = int.from_bytes(prefix, "little")
        size = npformat.MAGIC_LEN + width + length
        if len(prefix) < width or size > NPY_HEADER_BYTES:
            raise self._unreadable(f"{name} has a .npy header longer than {NPY_HEADER_BYTES}")
        try:
            shape, fortran_order, dtype = parse(io.BytesIO(prefix + stream.read(length)))
        except (ValueError, TypeError, SyntaxError, RecursionError, TokenError) as exc:
            raise self._unreadable(f"{name} has an invalid .npy header: {exc}") from exc
        return shape, fortran_order, dtype, size

    def _check_header(self, name: str, member: Member, shape: tuple, dtype: np.dtype) -> None:
        if dtype.hasobject:
            raise self._unreadable(f"{name} holds pickled Python objects (never unpickled)")
        native = dtype.newbyteorder("=")
        if dtype.kind not in member.kinds or dtype.itemsize == 0 or (
                member.dtype is not None and native != member.dtype):
            wanted = (np.dtype(member.dtype).name if member.dtype is not None
                      else " or ".join(_KIND_NAMES[kind] for kind in member.kinds))
            raise ValueError(f"{self.path}: {name} has dtype {dtype.name}, expected {wanted}")
        if member.shape is not None and shape != tuple(member.shape):
            raise ValueError(f"{self.path}: {name} has shape {shape}, expected "
                             f"{tuple(member.shape)}")

    def _read_array(self, name: str, member: Member, size: int, stream) -> np.ndarray:
        shape, fortran_order, dtype, header = self._read_header(name, stream)
        self._check_header(name, member, shape, dtype)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if min(shape, default=0) < 0 or nbytes != size - header:
            raise self._unreadable(f"{name} declares shape {shape} of {dtype.name} "
                                   f"({nbytes} bytes) but holds {size - header} bytes")
        array = np.empty(count, dtype.newbyteorder("="))
        raw = array.view(np.uint8)
        done = 0
        while done < nbytes:
            chunk = stream.read(min(_CHUNK_BYTES, nbytes - done))
            if not chunk:
                raise self._unreadable(f"{name} is truncated")
            raw[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
            done += len(chunk)
        if not dtype.isnative:
            array.byteswap(inplace=True)
        return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def save_states(trainer: gluon.Trainer, path: str | os.PathLike) -> None:
    """Write the trainer's ``adagrad_scratch`` states to ``path`` (``.npz``, atomically)."""
    optimizer, states = _collect(trainer)
    arrays: dict[str, np.ndarray] = {}
    params = []
    for index, (master, acc, count) in states.items():
        param = trainer._params[index]
        arrays[f"acc/{index}"] = acc.asnumpy()
        if master is not None:
            arrays[f"master/{index}"] = master.asnumpy()
        params.append({"index": index, "name": param.name, "shape": list(param.shape),
                       "dtype": np.dtype(param.dtype).name, "update_count": count})
    meta = {"format": FORMAT, "version": VERSION, "options": optimizer_options(optimizer),
            "num_update": optimizer.num_update, "params": params}
    atomic_write(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays))


# 'meta' is a 0-d str array (4 bytes a character): room for the options and, per parameter, an
# entry with its name
META_BYTES = 4 * 16384
META_BYTES_PER_PARAM = 4 * 1024


def _has_master(optimizer: AdagradScratch, param) -> bool:
    return bool(optimizer.multi_precision) and np.dtype(param.dtype) == np.float16


def _array_member(shape: tuple, dtype) -> Member:
    dtype = np.dtype(dtype)
    return Member("f", math.prod(shape) * dtype.itemsize, tuple(shape), dtype)


def _members(trainer: gluon.Trainer, optimizer: AdagradScratch) -> dict[str, Member]:
    """What a state file for ``trainer`` may hold: ``meta``, then for each parameter its
    accumulator and, for float16 weights with ``multi_precision``, its float32 master weight."""
    members = {"meta": Member("U", META_BYTES + META_BYTES_PER_PARAM * len(trainer._params),
                              shape=())}
    for index, param in enumerate(trainer._params):
        members[f"acc/{index}"] = _array_member(param.shape, accumulator_dtype(param.dtype))
        if _has_master(optimizer, param):
            members[f"master/{index}"] = _array_member(param.shape, np.float32)
    return members


def parse_json(source: str, text: str):
    """``json.loads(text)``; ``ValueError`` naming ``source`` if it is not JSON or nested too
    deeply to parse."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{source} is not readable JSON: {exc}") from exc


def _read_meta(path: Path, npz: NpzReader) -> dict:
    """The checked ``meta`` entry: its format, version and the types of its fields."""
    if "meta" not in npz.names:
        raise ValueError(f"{path} has no 'meta' entry: not an adagrad_gluon state file")
    meta = parse_json(f"{path}: its 'meta' entry", str(npz.read("meta")))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an adagrad_gluon state file (format {meta!r:.80})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} has state format version {meta.get('version')!r:.80}; "
                         f"this adagrad_gluon reads version {VERSION}")
    for field, kind in (("options", dict), ("params", list)):
        if not isinstance(meta.get(field), kind):
            raise ValueError(f"{path}: {field!r} must be a {kind.__name__}, got "
                             f"{meta.get(field)!r:.80}")
    return meta


def check_state_array(source: str, array, *, shape: tuple | None = None, dtype=None,
                      accumulator: bool = False) -> np.ndarray:
    """``array`` as a numpy array if it is a finite float array (of ``shape`` and ``dtype``,
    if given; ``>= 0`` if it is an ``accumulator``); else ``ValueError`` naming ``source``."""
    array = np.asarray(array)
    if array.dtype.kind != "f" or (dtype is not None and array.dtype != np.dtype(dtype)):
        wanted = np.dtype(dtype).name if dtype is not None else "a float dtype"
        raise ValueError(f"{source} has dtype {array.dtype.name}, expected {wanted}")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{source} has shape {array.shape}, expected {tuple(shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{source} holds NaN or infinite values")
    if accumulator and (array < 0).any():
        raise ValueError(f"{source} holds negative values: not a sum of squared gradients")
    return array


def _check_count(source: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{source} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_entry(path: Path, entry, num_params: int) -> dict:
    """One ``meta['params']`` entry, with the types the schema says."""
    fields = {"index": int, "name": str, "shape": list, "dtype": str, "update_count": int}
    if not isinstance(entry, dict) or any(
            not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
            for k, t in fields.items()):
        raise ValueError(f"{path}: a parameter entry must have {', '.join(fields)} of types "
                         f"{', '.join(t.__name__ for t in fields.values())}; got {entry!r:.200}")
    if not 0 <= entry["index"] < num_params:
        raise ValueError(f"{path}: state for parameter #{entry['index']}, but the trainer has "
                         f"{num_params} parameters")
    _check_count(f"{path}: update_count of parameter #{entry['index']}", entry["update_count"])
    return entry


def _check_options(path: Path, saved: dict, optimizer: AdagradScratch) -> None:
    current = optimizer_options(optimizer)
    differ = {k: (saved.get(k), current[k]) for k in OPTION_NAMES if saved.get(k) != current[k]}
    if differ:
        listing = ", ".join(f"{k}: saved {a!r:.80}, trainer {b!r}"
                            for k, (a, b) in differ.items())
        raise ValueError(f"{path} was saved under other optimizer options ({listing}); create "
                         f"the trainer with the saved options to resume")


def _check_params(path: Path, entries: list, trainer: gluon.Trainer, check_names: bool,
                  partial: bool) -> dict[int, dict]:
    """``{index: entry}`` of the file's parameter entries, each matching the trainer's
    parameter, none twice, and (unless ``partial``) one for every trained parameter."""
    checked: dict[int, dict] = {}
    for entry in entries:
        index = _check_entry(path, entry, len(trainer._params))["index"]
        param = trainer._params[index]
        if index in checked:
            raise ValueError(f"{path}: parameter #{index} ({param.name}) has two entries")
        if check_names and entry["name"] != param.name:
            raise ValueError(f"{path}: parameter #{index} is {entry['name']!r} in the file but "
                             f"{param.name!r} in the trainer (check_names=False to accept)")
        if tuple(entry["shape"]) != tuple(param.shape) or entry["dtype"] != np.dtype(
                param.dtype).name:
            raise ValueError(f"{path}: parameter #{index} ({param.name}) is "
                             f"{tuple(entry['shape'])} {entry['dtype']} in the file but "
                             f"{tuple(param.shape)} {np.dtype(param.dtype).name} in the trainer")
        checked[index] = entry
    missing = [trainer._params[i].name for i in _trained(trainer) if i not in checked]
    if missing and not partial:
        raise ValueError(f"{path} holds no state for {len(missing)} of the trainer's "
                         f"parameters: {', '.join(missing)} (partial=True loads the others "
                         f"and leaves these as they are)")
    return checked


def _read_arrays(path: Path, npz: NpzReader, entries: dict[int, dict], trainer: gluon.Trainer,
                 optimizer: AdagradScratch) -> dict[str, np.ndarray]:
    """The arrays of the parameters in ``entries``, each checked; no other array may be in
    the file."""
    expected = {f"acc/{index}" for index in entries} | {
        f"master/{index}" for index in entries if _has_master(optimizer, trainer._params[index])}
    unexpected = set(npz.names) - expected - {"meta"}
    if unexpected:
        raise ValueError(f"{path}: unexpected arrays {sorted(unexpected)}")
    for key in sorted(expected - set(npz.names)):
        index = int(key.partition("/")[2])
        raise ValueError(f"{path}: the state of parameter #{index} "
                         f"({trainer._params[index].name}) is missing")
    return {key: check_state_array(f"{path}: {key}", npz.read(key),
                                   accumulator=key.startswith("acc/"))
            for key in sorted(expected)}


def load_states(trainer: gluon.Trainer, path: str | os.PathLike, *,
                check_names: bool = True, partial: bool = False) -> None:
    """Restore states written by :func:`save_states` into ``trainer``.

    Refuses (``ValueError``, naming what differs) a file saved under other optimizer options,
    for other parameters (names, shapes, dtypes), with arrays of the wrong shape or dtype,
    with two entries for one parameter, or without the state of every parameter the trainer
    updates: ``partial=True`` loads such a file's states and leaves the other parameters' as
    they are. ``check_names=False`` accepts parameters whose names differ only because Gluon
    numbered them differently (``dense0_weight`` vs ``dense3_weight``).

    The file is read within limits computed from the trainer (see :class:`NpzReader`): one
    that is not a regular file, not a zip archive, truncated, corrupt or made to exhaust
    memory raises ``OSError`` (:class:`StateFileError`) or ``ValueError`` naming it. Nothing
    is installed unless all of it is valid.
    """
    path = Path(path)
    optimizer, _ = trainer_updaters(trainer)
    with NpzReader(path, _members(trainer, optimizer).get, what="adagrad_gluon state file") \
            as npz:
        meta = _read_meta(path, npz)
        _check_options(path, meta["options"], optimizer)
        num_update = _check_count(f"{path}: num_update", meta.get("num_update"))
        entries = _check_params(path, meta["params"], trainer, check_names, partial)
        arrays = _read_arrays(path, npz, entries, trainer, optimizer)
    for index, entry in entries.items():
        _install(trainer, optimizer, index, arrays.get(f"master/{index}"),
                 arrays[f"acc/{index}"], entry["update_count"])
    # the largest update count, as the optimizer keeps it; a partial load keeps the counts of
    # the parameters it left
    kept = [count for counts in optimizer._all_index_update_counts.values()
            for index, count in counts.items() if index not in entries]
    optimizer.num_update = max([num_update, *kept]) if partial else num_update


def _torch_order(trainer: gluon.Trainer, params) -> list[int]:
    """Trainer index of each PyTorch parameter index."""
    if params is None:
        return list(range(len(trainer._params)))
    position = {id(p): i for i, p in enumerate(trainer._params)}
    missing = [getattr(p, "name", p) for p in params if id(p) not in position]
    if missing:
        raise ValueError(f"params must be the trainer's Parameters; not in it: {missing}")
    return [position[id(p)] for p in params]


def to_torch_state_dict(trainer: gluon.Trainer, params=None) -> dict:
    """The trainer's optimizer state in ``torch.optim.Adagrad``'s ``state_dict`` layout.

    ``params`` lists the trainer's Parameters in the order of the PyTorch model's
    ``parameters()``; by default the trainer's own order (``gluon.Trainer`` sorts by name, so
    a Dense layer's bias comes before its weight, unlike ``torch.nn.Linear``). Values are torch
    tensors if torch is importable, numpy arrays otherwise. Warns if the optimizer's numerics
    are not PyTorch's (eps outside the root, L2 weight decay).
    """
    optimizer, states = _collect(trainer)
    order = _torch_order(trainer, params)
    if optimizer.eps_placement != "outside" or (optimizer.wd and
                                                optimizer.weight_decay_mode != "l2"):
        warnings.warn("exporting adagrad_scratch state whose numerics differ from PyTorch's "
                      "(use compat='pytorch' for an exact match); the accumulator and step "
                      "count mean the same", stacklevel=2)
    try:
        import torch

        def tensor(a):
            return torch.from_numpy(np.array(a))
    except ImportError:
        def tensor(a):
            return np.array(a)
    state = {}
    for i, index in enumerate(order):
        if index in states:
            _, acc, count = states[index]
            state[i] = {"step": tensor(np.float32(count)), "sum": tensor(acc.asnumpy())}
    group = {"lr": optimizer.lr, "lr_decay": optimizer.lr_decay, "weight_decay": optimizer.wd,
             "initial_accumulator_value": optimizer.initial_accumulator_value,
             "eps": optimizer.eps, "foreach": None, "maximize": optimizer.maximize,
             "differentiable": False, "fused": None,
             "params": list(range(len(order)))}
    return {"state": state, "param_groups": [group]}


def _numpy(value) -> np.ndarray:
    """A torch tensor (on any device) or array-like as a numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _torch_step(source: str, value) -> int:
    """A ``step`` as an int: an integer, or a float holding an integer (PyTorch keeps ``step``
    in a float tensor), >= 0; not a bool or a string."""
    step = _numpy(value)
    if (step.shape != () or step.dtype.kind not in "iuf" or not np.isfinite(step) or step < 0
            or step != np.floor(step)):
        raise ValueError(f"{source} must be an integer >= 0, got {value!r:.80}")
    return int(step)


def _cast(source: str, array: np.ndarray, dtype) -> np.ndarray:
    """``array`` as ``dtype``; ``ValueError`` if a value overflows it."""
    with np.errstate(over="ignore"):
        cast = array.astype(dtype)
    if not np.isfinite(cast).all():
        raise ValueError(f"{source} holds values beyond {np.dtype(dtype).name}'s range "
                         f"(largest {np.finfo(dtype).max:g})")
    return cast


# torch's name -> ours, for the options whose difference changes what the state means
_TORCH_OPTIONS = {"eps": "eps", "lr_decay": "lr_decay", "weight_decay": "wd",
                  "initial_accumulator_value": "initial_accumulator_value"}


def load_torch_state_dict(trainer: gluon.Trainer, state_dict: dict, params=None) -> None:
    """Load a ``torch.optim.Adagrad`` ``state_dict`` (one param group) into ``trainer``.

    ``params`` as in :func:`to_torch_state_dict`. Each ``sum`` must be a finite, non-negative
    float array of the matching parameter's shape and each ``step`` an integer >= 0 (it
    becomes that parameter's update count, so ``lr_decay`` continues where PyTorch left off);
    anything else raises ``ValueError``. Warns if the state was made under other options
    (``eps``, ``lr_decay``, ``weight_decay``, ``initial_accumulator_value``) than the
    trainer's optimizer has.
    """
    optimizer, _ = trainer_updaters(trainer)
    order = _torch_order(trainer, params)
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        raise ValueError("expected a torch.optim.Adagrad state_dict: a dict whose 'state' is a "
                         "dict of {parameter number: {'step', 'sum'}}")
    groups = state_dict.get("param_groups") or [{}]
    differ = {theirs: (groups[0][theirs], getattr(optimizer, ours))
              for theirs, ours in _TORCH_OPTIONS.items()
              if theirs in groups[0] and groups[0][theirs] != getattr(optimizer, ours)}
    if differ:
        listing = ", ".join(f"{k}: saved {a!r}, trainer {b!r}" for k, (a, b) in differ.items())
        warnings.warn(f"the PyTorch state was made under other options ({listing}); training "
                      f"continues with the trainer's", stacklevel=2)
    updates = []
    for key, entry in state_dict["state"].items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) \
                or not 0 <= key < len(order):
            raise ValueError(f"state_dict has state for parameter {key!r}, but the trainer has "
                             f"parameters 0..{len(order) - 1}")
        if not isinstance(entry, dict) or not {"sum", "step"} <= set(entry):
            raise ValueError(f"state_dict state #{key} must be a dict with 'sum' and 'step'")
        index = order[key]
        param = trainer._params[index]
        source = f"state_dict 'sum' of parameter #{key} ({param.name})"
        acc = check_state_array(source, _numpy(entry["sum"]), shape=param.shape,
                                accumulator=True)
        master = None
        if _has_master(optimizer, param):
            master = param.data().astype(np.float32).asnumpy()
        updates.append((index, master, _cast(source, acc, accumulator_dtype(param.dtype)),
                        _torch_step(f"state_dict 'step' of parameter #{key}", entry["step"])))
    for update in updates:  # all checked before any is installed
        _install(trainer, optimizer, *update)


__all__ = ["save_states", "load_states", "to_torch_state_dict", "load_torch_state_dict",
           "optimizer_options", "StateFileError"]
