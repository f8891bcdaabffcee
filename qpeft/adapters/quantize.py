"""Quantization of the intrinsic adapter parameters: circuit angles and λ.

Two integer grids, both exact under a save/load round trip:

* **circle** (circuit angles). Every parameterized gate of a real circuit is a
  rotation ``exp(-iθG/2)``, so a parameter that enters its gates with integer
  coefficients is periodic with period 4π. The circle ``[-2π, 2π)`` is cut into
  ``2**bits`` equal steps; the code of θ is the nearest step, wrapped onto the
  circle. No scale is stored: the step is ``4π / 2**bits``.
* **pow2** (λ, and the parameters of the comparison mappings, which are not
  angles). Symmetric uniform codes in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``
  with one scale per tensor, rounded *up to a power of two*. A power-of-two
  scale makes ``quantize(dequantize(codes))`` return the very same values, so a
  loaded adapter reproduces the saved one bit for bit.

:func:`fake_quantize` is the straight-through estimator used in training: the
forward value is the grid value, the gradient passes through unchanged.

>>> import torch
>>> theta = torch.tensor([0.1, 3.0, -7.0])
>>> codes = circle_codes(theta, bits=4)
>>> codes.tolist()
[0, 4, 7]
>>> circle_values(codes, bits=4).tolist() == fake_quantize(theta, 4, periodic=True).tolist()
True
"""

from __future__ import annotations

import math

import torch

from qpeft.errors import ConfigError

CIRCLE_PERIOD = 4 * math.pi
"""Period of a parameter that enters rotations ``exp(-iθG/2)`` with integer coefficients."""

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: object) -> int | None:
    """Validate a bit width (None: no quantization).

    >>> check_bits(4)
    4
    """
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(
            f"quantize_bits must be None or an integer from {MIN_BITS} to {MAX_BITS}, "
            f"got {bits!r}"
        )
    return bits


def pack_codes(unsigned: torch.Tensor, bits: int) -> torch.Tensor:
    """Store integers in ``[0, 2**bits)`` as a stream of ``bits``-bit fields in uint8.

    Bits are written least significant first and the stream is padded to
    whole bytes: ``n`` values take ``ceil(n·bits/8)`` bytes. (A signed code is
    stored as ``code - smallest legal code``, see :func:`code_range`.)

    >>> import torch
    >>> packed = pack_codes(torch.tensor([0, 15, 8]), bits=4)
    >>> packed.dtype, packed.numel()
    (torch.uint8, 2)
    >>> unpack_codes(packed, bits=4, count=3).tolist()
    [0, 15, 8]
    """
    unsigned = unsigned.reshape(-1).to(torch.int64).cpu()
    weights = torch.arange(bits, dtype=torch.int64)
    stream = ((unsigned[:, None] >> weights) & 1).reshape(-1)
    stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
    return (stream.reshape(-1, 8) << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` int64 values in ``[0, 2**bits)``."""
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1).reshape(-1)
    fields = stream[: count * bits].reshape(count, bits)
    return (fields << torch.arange(bits)).sum(dim=1)


def packed_size(count: int, bits: int) -> int:
    """Bytes that :func:`pack_codes` uses for ``count`` codes."""
    return -(-count * bits // 8)


def circle_step(bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The angle step ``4π / 2**bits`` as a scalar tensor of ``dtype``."""
    return torch.tensor(CIRCLE_PERIOD / 2**bits, dtype=dtype)


def circle_codes(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes in ``[-2**(bits-1), 2**(bits-1))`` of angles on the 4π circle (int64)."""
    half = 2 ** (bits - 1)
    step = circle_step(bits, values.dtype).to(values.device)
    nearest = torch.round(values.detach() / step).to(torch.int64)
    return torch.remainder(nearest + half, 2**bits) - half


def circle_values(codes: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32):
    """Angles of circle codes: ``code · 4π / 2**bits``."""
    return codes.to(dtype) * circle_step(bits, dtype).to(codes.device)


def pow2_scale(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row power-of-two scale (last axis reduced, kept), the smallest with
    ``max|x| / scale ≤ 2**(bits-1) - 1``.

    An all-zero row gets scale 1; rows so small that the power falls below
    the dtype's smallest positive number get that number (2⁻¹⁴⁹ in float32).
    """
    largest = 2 ** (bits - 1) - 1
    amax = values.detach().abs().amax(dim=-1, keepdim=True)
    # amax / largest = (m / largest)·2^e with amax = m·2^e, m in [0.5, 1):
    # m / largest never underflows (max|x| / largest of a subnormal would);
    # float64 keeps it exact enough to tell a power of two (not on MPS)
    mantissa, exponent = torch.frexp(amax)
    work = torch.float32 if values.device.type == "mps" else torch.float64
    ratio, shift = torch.frexp(mantissa.to(work) / largest)
    # ratio·2^shift·2^e with ratio in [0.5, 1): the smallest power of two at
    # least that is 2^(shift+e-1) when ratio == 0.5 exactly, else 2^(shift+e)
    exponent = exponent + shift.to(exponent.dtype) - (ratio == 0.5).to(exponent.dtype)
    info = torch.finfo(values.dtype)
    exponent = exponent.clamp(min=round(math.log2(info.tiny * info.eps)))
    scale = torch.ldexp(torch.ones_like(amax), exponent)
    return torch.where(amax > 0, scale, torch.ones_like(amax))


def pow2_codes(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scale)``: int64 codes and the per-row power-of-two scale."""
    largest = 2 ** (bits - 1) - 1
    scale = pow2_scale(values, bits)
    codes = torch.clamp(torch.round(values.detach() / scale), -largest, largest)
    return codes.to(torch.int64), scale


def pow2_values(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32):
    """Values of pow2 codes: ``code · scale``."""
    return codes.to(dtype) * scale.to(dtype)


def quantized_values(values: torch.Tensor, bits: int, periodic: bool) -> torch.Tensor:
    """The grid values of ``values`` (no gradient)."""
    if periodic:
        return circle_values(circle_codes(values, bits), bits, values.dtype)
    codes, scale = pow2_codes(values, bits)
    return pow2_values(codes, scale, values.dtype)


def fake_quantize(values: torch.Tensor, bits: int | None, periodic: bool) -> torch.Tensor:
    """Straight-through quantization: grid values forward, identity gradient backward.

    The result is ``grid + (x - x.detach())``, whose value is exactly the grid
    value (``x - x`` is an exact zero), so training, saving and loading all see
    the same numbers.

    >>> import torch
    >>> x = torch.tensor([0.3, -0.2], requires_grad=True)
    >>> y = fake_quantize(x, 4, periodic=False)
    >>> y.detach().tolist(), torch.autograd.grad(y.sum(), x)[0].tolist()
    ([0.3125, -0.1875], [1.0, 1.0])
    """
    if bits is None:
        return values
    grid = quantized_values(values, bits, periodic)
    return grid + (values - values.detach())


def encode(values: torch.Tensor, bits: int, periodic: bool) -> dict[str, torch.Tensor]:
    """The numbers a saved adapter stores for ``values``: ``{"codes": int64}`` (packed
    to ``bits`` bits each by :func:`pack_codes` when written), plus
    ``{"scale": float32}`` for the pow2 grid.

    >>> import torch
    >>> sorted(encode(torch.tensor([0.5, -1.0]), 4, periodic=False))
    ['codes', 'scale']
    """
    if periodic:
        return {"codes": circle_codes(values, bits)}
    codes, scale = pow2_codes(values, bits)
    return {"codes": codes, "scale": scale.to(torch.float32)}


def decode(tensors: dict[str, torch.Tensor], bits: int, periodic: bool,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`encode` (the grid values)."""
    if periodic:
        return circle_values(tensors["codes"], bits, dtype)
    return pow2_values(tensors["codes"], tensors["scale"], dtype)


def code_range(bits: int, periodic: bool) -> tuple[int, int]:
    """Smallest and largest legal code."""
    half = 2 ** (bits - 1)
    return (-half, half - 1) if periodic else (-(half - 1), half - 1)


__all__ = [
    "CIRCLE_PERIOD", "check_bits", "circle_codes", "circle_values", "code_range", "decode",
    "encode", "fake_quantize", "pack_codes", "packed_size", "pow2_codes", "pow2_scale",
    "pow2_values", "quantized_values", "unpack_codes",
]
