"""The fields of the states-file schema (:mod:`adagrad_gluon.optim.state` reads and writes the
files): the format's name and versions, the options that must match to resume, and the checks
of ``meta`` and of its parameter entries."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..validation import check_count
from .npz import Member
from .optimizer import accumulator_dtype
from .quantized import check_state_bits, num_blocks

FORMAT = "adagrad_gluon.states"
VERSION = 2
READABLE_VERSIONS = (1, 2)
# the options that decide what the saved numbers mean: a resumed run must share them
OPTION_NAMES = ("compat", "eps", "eps_placement", "initial_accumulator_value", "lr_decay",
                "weight_decay_mode", "maximize", "multi_precision", "rowwise", "state_bits")
# options newer than some files: their value in a file that does not name them
OPTION_DEFAULTS = {"rowwise": False, "state_bits": 32}
WEIGHT_DTYPES = ("float16", "float32", "float64")
SCALARS = (bool, int, float, str, type(None))


def optimizer_options(optimizer) -> dict[str, object]:
    """The options that decide what the saved numbers mean (:data:`OPTION_NAMES`; ``None``
    for one an optimizer does not have)."""
    return {name: getattr(optimizer, name, None) for name in OPTION_NAMES}


def class_path(obj) -> str:
    """``module.QualName`` of ``obj``'s class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def scalar_attributes(obj) -> dict:
    """``obj``'s public attributes that JSON can hold (e.g. an ``lr_scheduler``'s state)."""
    return {k: v for k, v in sorted(vars(obj).items())
            if not k.startswith("_") and isinstance(v, SCALARS)}


def _array_member(shape: tuple, dtype) -> Member:
    dtype = np.dtype(dtype)
    return Member("f", math.prod(shape) * dtype.itemsize, tuple(shape), dtype)


@dataclass(frozen=True)
class Entry:
    """One parameter's (a server's: key's) entry in ``meta['params']``."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # the weight's
    update_count: int
    master: bool  # whether a float32 master weight is saved next to the accumulator
    # lazy weight decay (optim/lazy_decay.py): the log_sum, with the row marks 'decay/<index>'
    decay: float | None = None
    state_bits: int = 32  # 8: the accumulator is saved as codes/<index> and scales/<index>

    @classmethod
    def from_meta(cls, path: Path, raw) -> Entry:
        """The entry ``raw`` (from the JSON), checked; ``ValueError`` naming ``path``."""
        fields = {"index": int, "name": str, "shape": list, "dtype": str, "update_count": int,
                  "master": bool}
        if not isinstance(raw, dict) or not all(
                isinstance(raw.get(k), t) and (t is bool or not isinstance(raw.get(k), bool))
                for k, t in fields.items()):
            raise ValueError(f"{path}: a parameter entry must have {', '.join(fields)} of types "
                             f"{', '.join(t.__name__ for t in fields.values())}; "
                             f"got {raw!r:.200}")
        index = check_count(f"{path}: a parameter's index", raw["index"])
        shape = [check_count(f"{path}: shape of parameter #{index}", n) for n in raw["shape"]]
        if raw["dtype"] not in WEIGHT_DTYPES:
            raise ValueError(f"{path}: dtype of parameter #{index} must be one of "
                             f"{', '.join(WEIGHT_DTYPES)}, got {raw['dtype']!r:.80}")
        count = check_count(f"{path}: update_count of parameter #{index}", raw["update_count"])
        try:
            bits = check_state_bits(raw.get("state_bits", 32))
        except ValueError as exc:
            raise ValueError(f"{path}: parameter #{index}: {exc}") from None
        if bits == 8 and raw["dtype"] == "float64":
            raise ValueError(f"{path}: parameter #{index} is float64, whose accumulator is "
                             f"never 8-bit")
        return cls(index, raw["name"], tuple(shape), raw["dtype"], count, raw["master"],
                   _check_decay(path, index, raw.get("decay"), shape), bits)

    def members(self, rowwise: bool = False) -> dict[str, Member]:
        """The arrays the entry says the file holds, each of exactly its shape and dtype (the
        accumulator of a ``rowwise`` optimizer has one value per row: ``shape[:1]``; an 8-bit
        one, never row-wise, has codes of the weight's shape and a scale per block)."""
        if self.state_bits == 8:
            size = math.prod(self.shape)
            members = {f"codes/{self.index}": Member("u", size, self.shape, np.dtype(np.uint8)),
                       f"scales/{self.index}": _array_member((num_blocks(size),), np.float32)}
        else:
            acc_shape = self.shape[:1] if rowwise else self.shape
            members = {f"acc/{self.index}": _array_member(acc_shape,
                                                          accumulator_dtype(self.dtype))}
        if self.master:
            members[f"master/{self.index}"] = _array_member(self.shape, np.float32)
        if self.decay is not None:
            members[f"decay/{self.index}"] = _array_member(self.shape[:1], np.float64)
        return members


def _check_decay(path: Path, index: int, decay, shape: list[int]) -> float | None:
    """An entry's optional ``decay`` (lazy weight decay's ``log_sum``): None, or a finite
    number <= 0 of a parameter with rows."""
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) \
            or not math.isfinite(decay) or decay > 0 or not shape:
        raise ValueError(f"{path}: 'decay' of parameter #{index} must be null or a finite "
                         f"number <= 0 (a sum of log(1 - lr * wd)) of a parameter with rows, "
                         f"got {decay!r:.80}")
    return float(decay)


def _upgrade_version_1(meta: dict) -> dict:
    """A version 1 ``meta`` (adagrad_gluon 0.1's ``save_states``) in version 2's fields: no
    optimizer class (an ``adagrad_scratch`` one), scheduler or token; a master weight where
    the weight is float16 and the options say ``multi_precision``."""
    multi_precision = isinstance(meta.get("options"), dict) and \
        meta["options"].get("multi_precision") is True
    params = meta.get("params")
    if isinstance(params, list):
        params = [{"master": multi_precision and entry.get("dtype") == "float16", **entry}
                  if isinstance(entry, dict) else entry for entry in params]
    return {"optimizer": None, "scheduler": None, "token": "", **meta, "params": params}


def _is_scheduler(value) -> bool:
    return value is None or (isinstance(value, dict) and isinstance(value.get("class"), str)
                             and isinstance(value.get("attributes"), dict))


def check_meta(path: Path, what: str, meta) -> dict:
    """The parsed ``meta``, checked: its format, version and the types of its fields (a
    version 1 ``meta`` is upgraded); ``ValueError`` naming ``path`` and ``what`` it should
    be."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {what} (format {meta!r:.80})")
    if meta.get("version") not in READABLE_VERSIONS or isinstance(meta.get("version"), bool):
        raise ValueError(f"{path} has state format version {meta.get('version')!r:.80}; this "
                         f"adagrad_gluon reads versions {READABLE_VERSIONS[0]} to {VERSION}")
    if meta["version"] == 1:
        meta = _upgrade_version_1(meta)
    for name, kind in (("options", dict), ("params", list), ("token", str)):
        if not isinstance(meta.get(name), kind):
            raise ValueError(f"{path}: {name!r} must be a {kind.__name__}, got "
                             f"{meta.get(name)!r:.80}")
    if not isinstance(meta.get("optimizer"), str) and meta["version"] != 1:
        raise ValueError(f"{path}: 'optimizer' must be a class name, got "
                         f"{meta.get('optimizer')!r:.80}")
    if not _is_scheduler(meta.get("scheduler")):
        raise ValueError(f"{path}: 'scheduler' must be null or an object with a class and "
                         f"attributes, got {meta.get('scheduler')!r:.80}")
    return meta
