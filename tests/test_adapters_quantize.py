"""The integer grids of adapter quantization."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qpeft.adapters.quantize import (
    CIRCLE_PERIOD,
    circle_codes,
    code_range,
    decode,
    encode,
    fake_quantize,
    pack_codes,
    packed_size,
    pow2_codes,
    pow2_scale,
    pow2_values,
    quantized_values,
    unpack_codes,
)
from qpeft.errors import ConfigError

angles = st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=20)
bits = st.integers(2, 16)


@given(values=angles, bits=bits)
def test_circle_codes_are_nearest_grid_points_on_the_4pi_circle(values, bits):
    x = torch.tensor(values, dtype=torch.float64)
    codes = circle_codes(x, bits)
    low, high = code_range(bits, periodic=True)
    assert codes.min() >= low and codes.max() <= high
    grid = quantized_values(x, bits, periodic=True)
    step = CIRCLE_PERIOD / 2**bits
    # same point of the circle, at most half a step away
    distance = torch.remainder(grid - x + CIRCLE_PERIOD / 2, CIRCLE_PERIOD) - CIRCLE_PERIOD / 2
    assert distance.abs().max() <= step / 2 + 1e-9


@given(values=angles, bits=bits, periodic=st.booleans())
def test_quantization_is_idempotent_and_encode_decode_exact(values, bits, periodic):
    x = torch.tensor(values, dtype=torch.float32)
    grid = quantized_values(x, bits, periodic)
    assert torch.equal(quantized_values(grid, bits, periodic), grid)
    stored = encode(x, bits, periodic)
    assert torch.equal(decode(stored, bits, periodic), grid)
    low, _ = code_range(bits, periodic)
    packed = pack_codes(stored["codes"] - low, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(len(values), bits)
    assert torch.equal(unpack_codes(packed, bits, len(values)) + low, stored["codes"])


@given(values=angles, bits=bits)
def test_pow2_scale_is_a_power_of_two_that_covers_the_range(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    scale = pow2_scale(x, bits).item()
    assert math.log2(scale) == round(math.log2(scale))
    largest = 2 ** (bits - 1) - 1
    assert x.abs().max().item() <= largest * scale
    if x.abs().max() > 0 and scale > 2.0**-149:  # 2⁻¹⁴⁹: float32's smallest positive number
        assert x.abs().max().item() > largest * scale / 2  # the smallest such power


def test_pow2_scale_of_subnormal_values_stays_representable():
    x = torch.tensor([1.4e-45, -1.4e-45], dtype=torch.float32)  # ±2⁻¹⁴⁹
    scale = pow2_scale(x, 3)
    assert scale.item() == 2.0**-149 and scale.dtype == torch.float32
    assert torch.equal(pow2_values(*pow2_codes(x, 3)), x)
    x = torch.tensor([5e-324, -5e-324], dtype=torch.float64)  # ±2⁻¹⁰⁷⁴
    scale = pow2_scale(x, 8)
    assert scale.item() == 2.0**-1074 and scale.dtype == torch.float64
    assert torch.equal(pow2_values(*pow2_codes(x, 8), torch.float64), x)


def test_straight_through_gradient():
    x = torch.tensor([0.4, -2.0, 5.0], requires_grad=True)
    for periodic in (True, False):
        y = fake_quantize(x, 3, periodic)
        (gradient,) = torch.autograd.grad((y * torch.tensor([1.0, 2.0, 3.0])).sum(), x)
        assert gradient.tolist() == [1.0, 2.0, 3.0]
    assert fake_quantize(x, None, True) is x


def test_zero_tensor_and_bad_bits():
    stored = encode(torch.zeros(4), 4, periodic=False)
    assert stored["scale"].item() == 1.0 and not stored["codes"].any()
    from qpeft.adapters.quantize import check_bits

    for bad in (1, 17, 4.0, True):
        with pytest.raises(ConfigError):
            check_bits(bad)
