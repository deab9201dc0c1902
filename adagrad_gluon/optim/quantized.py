"""The 8-bit blockwise accumulator of ``AdagradScratch(state_bits=8)``: its state type, the
quantization map, and the readable reference of its update.

Layout (as bitsandbytes' blockwise 8-bit optimizers store a state): the accumulator of a
float16/float32 weight of ``n`` elements is ``n`` uint8 codes (the weight's shape) plus one
float32 scale per block of :data:`BLOCK` = 256 consecutive elements (in C order; the last block
may be partial): ``n + 4 * ceil(n / 256)`` bytes, <= 1.016 bytes per element. float64 weights
keep their float64 accumulator (8-bit codes would throw away the precision they ask for).

The map. A block's scale is its largest accumulator value (its absmax: an accumulator is
``>= 0``); an element ``s`` is stored as the code ``c`` whose value ``TABLE[c] * scale`` is
nearest to it (ties up). ``TABLE`` holds tapered 8-bit floats in three regimes
(:data:`REGIMES`): 6 mantissa bits for ``[1/4, 1]`` (codes 127-255), 4 bits for ``[2**-6, 1/4)``
(codes 63-126) and 3 bits below, down to ``TABLE[1] = 2**-14 * 1.25`` (7.6e-5); code ``c`` of a
regime is the float32 whose bits are ``(c + base) << shift``, so the code of a ratio is integer
arithmetic on its bits, with no table and no search (the C++ kernel vectorizes it):

* ``TABLE[255] = 1``: the block's largest element, the one that sets its step sizes' floor,
  is stored exactly, and ``TABLE[0] = 0`` stores an exact zero (a fresh accumulator);
* positive values never round to 0: a small accumulator stored as 0 would turn its step into
  ``lr * g / sqrt(g * g + eps)``, the full ``lr`` the accumulated history was meant to shrink;
  below ``TABLE[1] * scale`` it is rounded up to that instead, which only makes its step
  smaller;
* the precision is highest near the top, where most of a block's elements are: an element
  ``s = r * scale`` is stored with a relative error of at most ``2**-(m + 1)`` for a regime of
  ``m`` mantissa bits: 0.78% for ``r >= 1/4``, 3.1% down to ``2**-6`` and 6.25% down to
  ``TABLE[1]``. The step divides by ``sqrt(s + eps)``, so its relative error is about half:
  0.4%, 1.6% and 3.1%.

bitsandbytes' ``create_dynamic_map`` (a signed, dynamic-exponent map for Adam's moments) spends
its codes on a range of 7 decades and on signs an accumulator never has, and finds a code by a
search through its table; these codes are unsigned, 255 of them for 4 decades.

One step on a block: dequantize (``TABLE[code] * scale``, float32), run the elementwise float32
update of :func:`~adagrad_gluon.optim.functional.adagrad_update` on it, take the new absmax as
the scale (the largest bit pattern: the largest value, or a NaN) and requantize (``ratio = (s
* f) * (1 / (scale * f))`` in float32, ``f = 2**64`` for a scale below ``2**-64`` so that the
reciprocal stays finite, else 1; the code from the ratio's bits).
A NaN or infinity in a block's accumulator (``nonfinite='propagate'``) makes the block's scale,
and so its accumulator, NaN. ``row_sparse`` gradients are updated lazily per block: the blocks
holding none of the gradient's rows keep their codes and scales bit for bit (the fused path
hands these steps to the reference, which dequantizes the whole tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from mxnet import nd

from .functional import Step, reference_steps
from .options import AdagradOptions

__all__ = ["BLOCK", "REGIMES", "ROWWISE_REFUSAL", "STATE_BITS", "TABLE", "QuantizedAcc",
           "accumulator_bytes", "check_state_bits", "dense", "dequantize",
           "fused_quantized_steps", "host_copy", "quantize", "reference_quantized_steps",
           "run_steps"]

BLOCK = 256
STATE_BITS = (8, 32)
# why state_bits=8 and rowwise=True are refused together
ROWWISE_REFUSAL = ("rowwise=True keeps one float32 accumulator per row (tiny already); the "
                   "8-bit accumulator (state_bits=8) is element-wise: use state_bits=32 with "
                   "rowwise=True")


# The map: tapered 8-bit floats. REGIMES lists, from the top, (mantissa bits, the lowest value's
# binary exponent: None for the last regime, which goes down to code 1); code 255 is 1.0, and the
# codes of each regime continue those of the one above.
REGIMES = ((6, -2), (4, -6), (3, None))


def _regimes() -> tuple[tuple[int, int, int, int], ...]:
    """Per regime: ``(shift, base, half, lowest bits)``: its code of a ratio ``r`` is
    ``((bits(r) + half) >> shift) - base`` for ``bits(r) >= lowest bits`` (0 for the last)."""
    code, top = 255, 127  # the code of the regime's top value, and its biased exponent (1.0)
    rows = []
    for mantissa, lowest in REGIMES:
        shift = 23 - mantissa
        base = (top << mantissa) - code
        low = 0 if lowest is None else (lowest + 127) << 23
        rows.append((shift, base, 1 << (shift - 1), low))
        if lowest is not None:
            code, top = (low >> shift) - base, lowest + 127
    return tuple(rows)


_REGIMES = _regimes()
# below this scale, a block's values and scale are multiplied by _TINY_FACTOR (exactly: a power
# of 2) before the reciprocal, so that 1 / scale stays finite
_TINY_SCALE, _TINY_FACTOR = np.float32(2.0 ** -64), np.float32(2.0 ** 64)


def _codes_of_bits(bits: np.ndarray) -> np.ndarray:
    """The codes (int64, not clipped) of positive ratios given as their bits (int64)."""
    codes = np.zeros(bits.shape, dtype=np.int64)
    for shift, base, half, low in reversed(_REGIMES):
        codes = np.where(bits >= low, ((bits + half) >> shift) - base, codes)
    return codes


def _table() -> np.ndarray:
    """``TABLE``: the 256 float32 values of the codes (``TABLE[0] = 0``, ``TABLE[255] = 1``)."""
    codes = np.arange(256, dtype=np.int64)
    bits = np.zeros(256, dtype=np.int64)
    for shift, base, _, low in reversed(_REGIMES):
        first = (low >> shift) - base if low else 1
        bits = np.where(codes >= first, (codes + base) << shift, bits)
    table = bits.astype(np.uint32).view(np.float32)
    table[0] = 0
    return table


TABLE = _table()


def check_state_bits(state_bits) -> int:
    """Return ``state_bits`` if it is 8 or 32 (an int, not a bool)."""
    if isinstance(state_bits, bool) or state_bits not in STATE_BITS \
            or not isinstance(state_bits, (int, np.integer)):
        raise ValueError(f"state_bits must be 8 (blockwise 8-bit accumulator) or 32 (float32), "
                         f"got {state_bits!r}")
    return int(state_bits)


def num_blocks(size: int) -> int:
    """The number of scales of an accumulator of ``size`` elements."""
    return -(-size // BLOCK)


def accumulator_bytes(size: int) -> int:
    """Bytes of an 8-bit accumulator of ``size`` elements: codes plus float32 scales."""
    return size + 4 * num_blocks(size)


def _padded(flat: np.ndarray) -> np.ndarray:
    """``flat`` as ``(blocks, BLOCK)``, the last block padded with zeros."""
    blocks = np.zeros((num_blocks(flat.size), BLOCK), dtype=flat.dtype)
    blocks.reshape(-1)[:flat.size] = flat
    return blocks


def quantize(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, scales)`` of a float32 accumulator: uint8 codes of its shape and one float32
    scale (the absmax) per block, by the module's map."""
    acc = np.asarray(acc, dtype=np.float32)
    blocks = _padded(acc.reshape(-1))
    # the largest bit pattern: for values >= 0 the largest value, and a NaN beats them all
    scales = blocks.view(np.uint32).max(axis=1, initial=0).view(np.float32)
    factors = np.where(scales < _TINY_SCALE, _TINY_FACTOR, np.float32(1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inverses = np.float32(1) / (scales * factors)
        ratio = (blocks * factors[:, None]) * inverses[:, None]
        positive = ratio > 0  # not for 0, nor for NaN (a block of zeros, NaN or infinity)
    bits = ratio.view(np.uint32).astype(np.int64)
    codes = np.where(positive, np.clip(_codes_of_bits(bits), 1, 255), 0)
    return codes.astype(np.uint8).reshape(-1)[:acc.size].reshape(acc.shape), scales


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 accumulator that ``codes`` and ``scales`` stand for."""
    codes = np.asarray(codes)
    with np.errstate(invalid="ignore"):  # 0 * inf: a block whose scale is infinite is NaN
        values = TABLE[_padded(codes.reshape(-1))] * scales[:, None]
    return values.reshape(-1)[:codes.size].reshape(codes.shape)


class QuantizedAcc:
    """An 8-bit accumulator: ``codes`` (uint8 NDArray, the weight's shape) and ``scales``
    (float32 NDArray, one per block of 256 elements), updated in place. ``dtype`` is the
    precision the update computes in (float32); ``asnumpy()`` gives the values it stands for.
    :func:`host_copy` holds numpy arrays instead (for the state files)."""

    __slots__ = ("codes", "scales")

    def __init__(self, codes, scales) -> None:
        self.codes, self.scales = codes, scales

    @classmethod
    def full(cls, shape: tuple, value: float, ctx) -> QuantizedAcc:
        """Every element ``value`` (>= 0): code 255 and scale ``value``, or all zeros."""
        size = int(np.prod(shape, dtype=np.int64))
        value = value if value > 0 else 0.0  # never -0.0: its bits would beat every value
        return cls(nd.full(shape, 255 if value > 0 else 0, ctx, dtype=np.uint8),
                   nd.full((num_blocks(size),), value, ctx, dtype=np.float32))

    @property
    def shape(self) -> tuple:
        """The weight's shape."""
        return tuple(self.codes.shape)

    @property
    def dtype(self) -> type:
        """float32: the precision the accumulator is updated in."""
        return np.float32

    @property
    def nbytes(self) -> int:
        """Bytes the state holds (:func:`accumulator_bytes`)."""
        return accumulator_bytes(int(np.prod(self.shape, dtype=np.int64)))

    def asnumpy(self) -> np.ndarray:
        """The dequantized float32 accumulator."""
        return dequantize(_numpy(self.codes), _numpy(self.scales))

    def to_nd(self, ctx) -> QuantizedAcc:
        """This state (numpy or NDArray arrays) as NDArrays on ``ctx``."""
        return QuantizedAcc(nd.array(self.codes, ctx=ctx, dtype=np.uint8),
                            nd.array(self.scales, ctx=ctx, dtype=np.float32))


def _numpy(array) -> np.ndarray:
    return array.asnumpy() if isinstance(array, nd.NDArray) else np.asarray(array)


def host_copy(acc):
    """An accumulator's arrays as numpy (a :class:`QuantizedAcc` of numpy arrays for an 8-bit
    one), for the state files."""
    if isinstance(acc, QuantizedAcc):
        return QuantizedAcc(_numpy(acc.codes), _numpy(acc.scales))
    return acc.asnumpy()


def dense(acc) -> nd.NDArray:
    """The accumulator as an NDArray of its values: an 8-bit one dequantized as
    :func:`dequantize` does, on its device (no copy to the host)."""
    if not isinstance(acc, QuantizedAcc):
        return acc
    ctx = acc.codes.context
    if acc.codes.size == 0:  # MXNet 1.x makes no empty array by its operators
        return nd.array(acc.asnumpy(), ctx=ctx, dtype=np.float32)
    codes = acc.codes.reshape((-1,))
    values = nd.take(nd.array(TABLE, ctx=ctx, dtype=np.float32), codes.astype(np.int32))
    scales = nd.repeat(acc.scales, BLOCK)[:codes.size]
    return (values * scales).reshape(acc.shape)


# -- the update ------------------------------------------------------------------------------

def _touched_blocks(step: Step, size: int) -> np.ndarray:
    """A boolean per block: whether it holds an element of the step's row_sparse rows."""
    rows = step.grad.indices.asnumpy().astype(np.int64)
    row_size = size // step.weight.shape[0] if size else 0
    touched = np.zeros(num_blocks(size), dtype=bool)
    if rows.size and row_size:
        first = rows * row_size // BLOCK
        last = ((rows + 1) * row_size - 1) // BLOCK
        for begin, end in zip(first, last, strict=True):
            touched[begin:end + 1] = True
    return touched


def reference_quantized_steps(steps: Sequence[Step], options: AdagradOptions) -> None:
    """The readable 8-bit update: per step, dequantize the accumulator, run
    :func:`~adagrad_gluon.optim.functional.reference_steps` on it (float32), requantize. A
    row_sparse step writes back only the blocks that hold its rows."""
    for step in steps:
        acc = dense(step.acc)
        reference_steps([step._replace(acc=acc)], options)
        codes, scales = quantize(acc.asnumpy())
        if step.row_sparse:
            touched = _touched_blocks(step, codes.size)
            elements = np.repeat(touched, BLOCK)[:codes.size].reshape(codes.shape)
            codes = np.where(elements, codes, step.acc.codes.asnumpy())
            scales = np.where(touched, scales, step.acc.scales.asnumpy())
        step.acc.codes[:] = codes
        step.acc.scales[:] = scales


def fused_quantized_steps(steps: Sequence[Step], options: AdagradOptions) -> None:
    """:func:`reference_quantized_steps` by the C++ operator ``adagrad_gluon_q8_update``,
    bit-identical to it: the dense steps in one multi-tensor call per kind (float16 weights with
    master copies apart), the row_sparse ones through the reference."""
    from . import kernels  # the kernels import the functional reference, as this module does

    groups: dict[bool, list[Step]] = {False: [], True: []}  # by: with master weights?
    for step in steps:
        if step.row_sparse:
            reference_quantized_steps([step], options)
        else:
            groups[step.master is not None].append(step)
    for with_masters, group in groups.items():
        if not group:
            continue
        arrays = [array for s in group for array in
                  (s.weight, s.grad, s.acc.codes, s.acc.scales)
                  + ((s.master,) if with_masters else ())]
        kernels.operator("adagrad_gluon_q8_update")(
            *arrays, **kernels.multi_attributes(group, options, with_masters))


def run_steps(run: Callable[[Sequence[Step], AdagradOptions], None], steps: Sequence[Step],
              options: AdagradOptions, fused: bool) -> None:
    """Run the steps with an 8-bit accumulator through the fused or reference 8-bit update,
    the others through ``run`` (the optimizer's path)."""
    plain = [step for step in steps if not isinstance(step.acc, QuantizedAcc)]
    quantized = [step for step in steps if isinstance(step.acc, QuantizedAcc)]
    if plain:
        run(plain, options)
    if quantized:
        (fused_quantized_steps if fused else reference_quantized_steps)(quantized, options)
