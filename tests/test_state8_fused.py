"""The fused pass of the 8-bit update (float32 weights without a master: dequantize, step and
requantize a block in registers, the requantization of one block interleaved with the steps of
the next) keeps the reference's bits at the map's edges, under every option it covers."""

import numpy as np
import pytest
from mxnet import nd

from adagrad_gluon.optim import kernels
from adagrad_gluon.optim import quantized as q
from adagrad_gluon.optim.functional import Step
from adagrad_gluon.optim.options import AdagradOptions

CLIP = 1.5


def _edge_blocks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accumulator, gradient, weight), float32: a block each of zeros with zero gradients (its
    top stays 0; eps=0 meets a zero denominator), a top below 2**-64 (with gradients that keep
    it there), subnormal values, huge values, a NaN, an infinity, every code, NaN and infinite
    gradients, gradients at, beyond and within the clip (and -0.0), a NaN and an infinite
    weight; then whole blocks of ordinary values and a last block of 77 elements."""
    ordinary = rng.random(256) ** 4
    blocks = [  # (accumulator, gradient) per block
        (np.zeros(256), np.zeros(256)),
        (rng.random(256) * 1e-25, rng.standard_normal(256) * 1e-14),
        (rng.random(256) * 1e-41, np.zeros(256)),
        (rng.random(256) ** 8 * 1e30, rng.standard_normal(256) * 1e10),
        (np.r_[np.nan, rng.random(255)], rng.standard_normal(256)),
        (np.r_[np.inf, rng.random(255)], rng.standard_normal(256)),
        (q.TABLE * np.float32(3.0), rng.standard_normal(256)),
        (ordinary, np.r_[np.nan, np.inf, -np.inf, rng.standard_normal(253)]),
        (ordinary, np.r_[CLIP, -CLIP, 2 * CLIP, -2 * CLIP, -0.0, 0.0,
                         rng.standard_normal(250) * 3]),
        (ordinary, rng.standard_normal(256)),
        (ordinary, rng.standard_normal(256)),
        (rng.random(77), rng.standard_normal(77)),
    ]
    acc, grad = (np.concatenate(parts).astype(np.float32) for parts in zip(*blocks, strict=True))
    weight = rng.standard_normal(acc.size).astype(np.float32)
    weight[9 * 256 + 3], weight[9 * 256 + 4] = np.nan, np.inf
    return acc, grad, weight


def _steps(fused: bool, options: AdagradOptions, wd: float, arrays, steps: int = 3):
    """``steps`` fused or reference 8-bit steps; the weight, codes and scales after them."""
    acc, grad, weight = arrays
    codes, scales = q.quantize(acc)
    state = q.QuantizedAcc(nd.array(codes, dtype=np.uint8), nd.array(scales))
    w = nd.array(weight)
    run = q.fused_quantized_steps if fused else q.reference_quantized_steps
    for t in range(steps):
        g = nd.array(grad * np.float32(1 + t))  # the same NaN, infinities and zeros each step
        run([Step(w, g, state, None, 0.1, wd, False)], options)
    return [w.asnumpy(), state.codes.asnumpy(), state.scales.asnumpy()]


def _assert_bit_identical(options: AdagradOptions, wd: float, arrays) -> None:
    reference = _steps(False, options, wd, arrays)
    fused = _steps(True, options, wd, arrays)
    for name, a, b in zip(("weight", "codes", "scales"), reference, fused, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("mode", ["step", "l2", "decoupled"])
@pytest.mark.parametrize("placement", ["inside", "outside"])
@pytest.mark.parametrize("extras", [
    {},
    {"eps": 0.0, "clip_gradient": CLIP, "rescale_grad": 0.5, "maximize": True},
])
def test_fused_8bit_pass_is_bit_identical_at_the_edges_for_every_option(mode, placement,
                                                                         extras):
    options = AdagradOptions(weight_decay_mode=mode, eps_placement=placement, **extras)
    arrays = _edge_blocks(np.random.default_rng(3))
    for wd in (0.0, 0.01):  # wd == 0: the step without decay, whatever the mode
        _assert_bit_identical(options, wd, arrays)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_fused_8bit_pass_is_bit_identical_across_threads_and_pieces(threads):
    # 820 whole blocks and a partial one: several threads, pieces of 128 blocks each, every
    # piece's last block requantized after its loop
    previous = kernels.num_threads()
    kernels.set_num_threads(threads)
    try:
        _threads_and_pieces()
    finally:
        kernels.set_num_threads(previous)


def _threads_and_pieces() -> None:
    rng = np.random.default_rng(11)
    size = 820 * 256 + 80
    acc = (rng.random(size) ** 4 * 3).astype(np.float32)
    acc[rng.integers(0, size, 20)] = 0.0
    grad = rng.standard_normal(size).astype(np.float32)
    weight = rng.standard_normal(size).astype(np.float32)
    options = AdagradOptions(weight_decay_mode="decoupled", eps=1e-8)
    _assert_bit_identical(options, 0.01, (acc, grad, weight))


@pytest.mark.parametrize("mode", ["step", "decoupled"])
def test_maximize_keeps_the_sign_of_a_nan_gradient_in_the_block_scale(mode):
    """maximize negates the gradient; a NaN one keeps its sign, as the reference's does, so a
    block whose accumulator becomes NaN gets the reference's NaN scale, bit for bit (a flipped
    sign once spread to the whole block's weights in the next steps)."""
    options = AdagradOptions(weight_decay_mode=mode, maximize=True)
    acc, grad, weight = _edge_blocks(np.random.default_rng(3))
    block = slice(7 * 256, 8 * 256)  # NaN and infinite gradients
    arrays = (acc[block], grad[block], weight[block])
    reference, fused = (_steps(path, options, 0.0, arrays) for path in (False, True))
    np.testing.assert_array_equal(fused[2].view(np.uint32), reference[2].view(np.uint32))
    for a, b in zip(reference, fused, strict=True):
        np.testing.assert_array_equal(a, b)
