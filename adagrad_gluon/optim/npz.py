"""A bounded, pickle-free ``.npz`` reader (:class:`NpzReader`) and the checks of what it reads:
no file makes a reader exhaust memory, hang, or fail with anything but ``OSError`` /
``ValueError`` naming the file."""

from __future__ import annotations

import io
import json
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError

import numpy as np
import numpy.lib.format as npformat

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


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(source: str, text: str):
    """``json.loads(text)``; ``ValueError`` naming ``source`` if it is not JSON (``NaN`` and
    ``Infinity`` are not) or nested too deeply to parse."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{source} is not readable JSON: {exc}") from exc


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


__all__ = ["Member", "NpzReader", "StateFileError", "check_state_array", "parse_json"]
