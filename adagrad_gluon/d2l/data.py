"""The NASA airfoil self-noise data (``get_data_ch10``): find, verify, parse, batch.

The file (59 KB, CC BY 4.0) ships with the package in ``adagrad_gluon/d2l/data_files/``, so the
chapter runs offline. Where the file comes from, in order:

1. ``data_dir=`` if given;
2. the directory in the environment variable ``ADAGRAD_GLUON_DATA_DIR`` if set;
3. the copy shipped with the package (:data:`SHIPPED_FILE`), if it passes its checksum;
4. the cache directory (:func:`cache_dir`), downloading the file into it with pooch
   if it is not there yet (only when the shipped copy is missing or corrupt; a corrupt one
   also gives a :class:`DataFileWarning`).

Every file is checked against its SHA-1 before use (the d2l data hub's copy with CRLF line
endings, or the same rows with LF endings). An explicit directory that lacks the file, a file
that fails the checksum or does not parse, and a failed download raise :class:`DataFileError`
naming the file and how to provide it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from mxnet import nd

from ..cache import CACHE_DIR_ENV, cache_root
from ..validation import check_positive_int

FILE_NAME = "airfoil_self_noise.dat"
URL = "http://d2l-data.s3-accelerate.amazonaws.com/airfoil_self_noise.dat"
SHA1_CRLF = "76e5be1548fd8222e5074cf0faae75edff8cf93f"  # as the d2l data hub serves it
SHA1_LF = "d9dfd00ed1ff52487b87aceb5ff20462d8e0801c"  # the same rows with LF line endings
KNOWN_SHA1 = (SHA1_CRLF, SHA1_LF)
NUM_ROWS, NUM_COLUMNS = 1503, 6
DATA_DIR_ENV = "ADAGRAD_GLUON_DATA_DIR"
SHIPPED_FILE = Path(__file__).resolve().parent / "data_files" / FILE_NAME  # in the wheel too

_HOW_TO_PROVIDE = (
    f"download {URL} (SHA-1 {SHA1_CRLF}) and pass its directory as data_dir= "
    f"or in the environment variable {DATA_DIR_ENV}"
)


class DataFileError(OSError):
    """The airfoil data file is missing, corrupt or cannot be downloaded."""


class DataFileWarning(UserWarning):
    """The copy of the data shipped with the package is corrupt; the cache or a download
    is used instead."""


def cache_dir() -> Path:
    """Where a downloaded file is kept: ``$ADAGRAD_GLUON_CACHE_DIR``; else the ``data/``
    directory of a source checkout (beside ``adagrad_gluon/``); else the user cache directory."""
    if os.environ.get(CACHE_DIR_ENV):
        return cache_root()
    checkout_data = Path(__file__).resolve().parents[2] / "data"
    if (checkout_data / "README.md").is_file():
        return checkout_data
    return cache_root()


def sha1_of(path: Path) -> str:
    """The SHA-1 hex digest of the file at ``path``."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path) -> Path:
    actual = sha1_of(path)
    if actual not in KNOWN_SHA1:
        raise DataFileError(
            f"{path} is not the airfoil data file: its SHA-1 is {actual}, expected "
            f"{SHA1_CRLF} (or {SHA1_LF} with LF line endings); {_HOW_TO_PROVIDE}"
        )
    return path


def _from_directory(directory: str | os.PathLike, source: str) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFileError(f"{source}: {directory} is not a directory; {_HOW_TO_PROVIDE}")
    path = directory / FILE_NAME
    if not path.is_file():
        raise DataFileError(f"{source}: {path} does not exist; {_HOW_TO_PROVIDE}")
    return _verified(path)


def _shipped_problem() -> str | None:
    """Why the shipped copy cannot be used (missing, or its SHA-1), or None if it is intact."""
    if not SHIPPED_FILE.is_file():
        return f"the copy shipped with the package, {SHIPPED_FILE}, is missing"
    actual = sha1_of(SHIPPED_FILE)
    if actual not in KNOWN_SHA1:
        return (f"the copy shipped with the package, {SHIPPED_FILE}, is corrupt: its SHA-1 "
                f"is {actual}, expected {SHA1_CRLF}")
    return None


def _download(directory: Path, why: str) -> Path:
    import pooch

    try:
        fetched = pooch.retrieve(
            URL, known_hash=f"sha1:{SHA1_CRLF}", fname=FILE_NAME, path=directory,
            progressbar=False,
        )
    except Exception as exc:  # network errors, HTTP errors, hash mismatch, unwritable cache
        raise DataFileError(
            f"{why}, and could not download {URL} into {directory / FILE_NAME}: {exc}; "
            f"reinstall adagrad-gluon, or {_HOW_TO_PROVIDE}"
        ) from exc
    return Path(fetched)


def airfoil_path(data_dir: str | os.PathLike | None = None) -> Path:
    """The verified path of the airfoil data file (see the module docstring for the order)."""
    if data_dir is not None:
        return _from_directory(data_dir, "data_dir")
    if os.environ.get(DATA_DIR_ENV):
        return _from_directory(os.environ[DATA_DIR_ENV], DATA_DIR_ENV)
    problem = _shipped_problem()
    if problem is None:
        return SHIPPED_FILE
    if SHIPPED_FILE.is_file():
        warnings.warn(f"{problem}; using the cache or a download instead", DataFileWarning,
                      stacklevel=2)
    directory = cache_dir()
    cached = directory / FILE_NAME
    if cached.is_file() and sha1_of(cached) in KNOWN_SHA1:
        return cached
    return _download(directory, problem)  # pooch replaces a partial or corrupt cached file


def read_airfoil(path: str | os.PathLike) -> np.ndarray:
    """Parse the airfoil file: ``(rows, 6)`` float32, tab-separated, no header; blank lines
    are skipped. Anything else raises :class:`DataFileError` naming the file and the line.

    Parsed in Python, not with ``np.loadtxt``: numpy 1.23's tokenizer (the numpy mxnet 1.9.1
    needs) can write past its buffer on malformed input and crash the process later (found
    by ``tests/test_safety.py``'s fuzzing under valgrind).
    """
    try:
        text = Path(path).read_bytes().decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path} is not ASCII text: {exc}") from exc
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != NUM_COLUMNS:
            raise DataFileError(f"{path}, line {number}: {len(cells)} tab-separated columns, "
                                f"expected {NUM_COLUMNS}")
        try:
            rows.append([float(cell) for cell in cells])
        except ValueError as exc:
            raise DataFileError(f"{path}, line {number} does not parse as numbers: {exc}") \
                from exc
    if not rows:
        raise DataFileError(f"{path} holds no rows of {NUM_COLUMNS} numbers")
    data = np.array(rows, dtype=np.float32)
    if not np.isfinite(data).all():
        raise DataFileError(f"{path} contains non-finite values (or values beyond float32)")
    return data


class ArrayLoader:
    """Shuffled mini-batches ``(X, y)`` of in-memory arrays, as d2l's ``load_array`` gives.

    Each pass draws a fresh permutation from numpy's global RNG (as Gluon's ``DataLoader``
    does), so ``np.random.seed`` fixes the batch order; the last batch may be smaller.
    Batches are slices of one shuffled copy, which is much cheaper than a ``DataLoader``.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, batch_size: int,
                 shuffle: bool = True):
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features = nd.array(features, dtype=np.float32)
        self.labels = nd.array(labels, dtype=np.float32)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.shuffle = shuffle

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[nd.NDArray, nd.NDArray]]:
        X, y = self.features, self.labels
        if self.shuffle:
            order = nd.array(np.random.permutation(len(y)), dtype=np.int64)
            X, y = nd.take(X, order), nd.take(y, order)
        for start in range(0, len(self.labels), self.batch_size):
            yield X[start:start + self.batch_size], y[start:start + self.batch_size]

    def full_batch(self) -> tuple[nd.NDArray, nd.NDArray]:
        """All examples at once, in their original order (for evaluating the loss)."""
        return self.features, self.labels


def load_array(data_arrays: tuple[np.ndarray, np.ndarray], batch_size: int,
               is_train: bool = True) -> ArrayLoader:
    """d2l's ``load_array``: mini-batches of ``(features, labels)``, shuffled if ``is_train``."""
    return ArrayLoader(*data_arrays, batch_size=batch_size, shuffle=is_train)


def get_data_ch10(batch_size: int = 10, n: int = 1500,
                  data_dir: str | os.PathLike | None = None) -> tuple[ArrayLoader, int]:
    """The airfoil data as the chapter uses it: ``(data_iter, feature_dim)``.

    Every column is standardized (zero mean, unit standard deviation, over all 1503 rows, as
    d2l does), the first ``n`` rows are kept, the first five columns are the features and the
    last (the sound pressure level) the label. ``feature_dim`` is 5.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    n = check_positive_int("n", n)
    if n > NUM_ROWS:
        raise ValueError(f"n must be between 1 and {NUM_ROWS} (the rows in the file), got {n}")
    data = read_airfoil(airfoil_path(data_dir))
    data = (data - data.mean(axis=0)) / data.std(axis=0)
    return load_array((data[:n, :-1], data[:n, -1]), batch_size), data.shape[1] - 1

