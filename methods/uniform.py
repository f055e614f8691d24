"""Uniform (affine) min-max quantization per row, as GPTQ and PB-LLM's salient part use it.

A row x gets a scale s and an integer zero point z with codes q = clamp(round(x / s) + z, 0, 2^b - 1)
and dequantized values s * (q - z). The range always contains 0: it spans
[min(x_min, 0), max(x_max, 0)]. A symmetric quantizer widens the range to [-m, m] with
m = max(|x_min|, x_max) and fixes z at 2^(b-1), so it stores no zero point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AffineParams:
    """Scale and zero point per row, both (rows, 1), and the largest code 2^bits - 1."""

    scale: torch.Tensor
    zero: torch.Tensor
    max_code: int


def fit_minmax(weight: torch.Tensor, bits: int, symmetric: bool = False) -> AffineParams:
    """Fit one scale and zero point per row of `weight` (rows, columns) from its min and max."""
    max_code = 2**bits - 1
    zeros = torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype)
    low = torch.minimum(weight.min(dim=1).values, zeros)
    high = torch.maximum(weight.max(dim=1).values, zeros)
    if symmetric:
        high = torch.maximum(low.abs(), high)
        low = torch.where(low < 0, -high, low)

    # An all-zero row would get scale 0; give it the range [-1, 1] instead.
    empty = (low == 0) & (high == 0)
    low = torch.where(empty, -1.0, low)
    high = torch.where(empty, 1.0, high)

    scale = (high - low) / max_code
    if symmetric:
        zero = torch.full_like(scale, (max_code + 1) / 2)
    else:
        zero = torch.round(-low / scale)
    return AffineParams(scale=scale.unsqueeze(1), zero=zero.unsqueeze(1), max_code=max_code)


def quantize_codes(values: torch.Tensor, params: AffineParams) -> torch.Tensor:
    """Return the integer codes (as floats) of `values` (rows, k) under per-row `params`."""
    return torch.clamp(torch.round(values / params.scale) + params.zero, 0, params.max_code)


def dequantize_codes(codes: torch.Tensor, params: AffineParams) -> torch.Tensor:
    """Return the values s * (q - z) of `codes` (rows, k) under per-row `params`."""
    return params.scale * (codes - params.zero)


def fake_quantize(values: torch.Tensor, params: AffineParams) -> torch.Tensor:
    """Quantize `values` (rows, k) with per-row `params` and return the dequantized floats."""
    return dequantize_codes(quantize_codes(values, params), params)
