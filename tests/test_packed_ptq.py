"""Packed post-training layers rebuild the weight their formula gives, edge cases included.

Each expected weight is written here directly from the layer's documented formula, on the
float16-rounded side data, with plain indexing and torch.where.
"""

from __future__ import annotations

import pytest
import torch

from methods.packed_ptq import pack_billm, pack_gptq, pack_pbllm

ROWS, COLUMNS, GROUP = 6, 20, 8
GROUPS = -(-COLUMNS // GROUP)


def half(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.half().float()


def column_groups() -> torch.Tensor:
    return torch.arange(COLUMNS) // GROUP


@pytest.mark.parametrize("salient_fraction", [0.0, 0.3, 1.0])
def test_pbllm_weight_matches_formula(salient_fraction):
    generator = torch.Generator().manual_seed(1)
    signs = torch.where(torch.rand(ROWS, COLUMNS, generator=generator) > 0.5, 1.0, -1.0)
    codes = torch.randint(0, 256, (ROWS, COLUMNS), generator=generator)
    binarized = torch.rand(ROWS, COLUMNS, generator=generator) >= salient_fraction
    means, scales = torch.randn(ROWS, GROUPS, generator=generator), torch.rand(ROWS, GROUPS, generator=generator)
    salient_scale, salient_zero = torch.rand(ROWS, generator=generator), torch.rand(ROWS, generator=generator) * 255
    for index_format in ("bitmap", "csr"):
        layer = pack_pbllm(signs, codes, binarized, means, scales, salient_scale, salient_zero, 8, GROUP, index_format)
        groups = column_groups()
        binary = half(scales)[:, groups] * signs + half(means)[:, groups]
        salient = half(salient_scale).unsqueeze(1) * (codes.float() - half(salient_zero).unsqueeze(1))
        assert torch.equal(layer.dequantize(), torch.where(binarized, binary, salient)), index_format


@pytest.mark.parametrize("salient_columns", [0, 3, COLUMNS])
def test_billm_weight_matches_formula(salient_columns):
    generator = torch.Generator().manual_seed(2)
    signs = torch.where(torch.rand(ROWS, COLUMNS, generator=generator) > 0.5, 1.0, -1.0)
    residual = torch.where(torch.rand(ROWS, COLUMNS, generator=generator) > 0.5, 1.0, -1.0)
    high = torch.rand(ROWS, COLUMNS, generator=generator) > 0.5
    salient = torch.zeros(COLUMNS, dtype=torch.bool)
    salient[torch.randperm(COLUMNS, generator=generator)[:salient_columns]] = True
    statistics = torch.randn(ROWS, GROUPS, 8, generator=generator)
    layer = pack_billm(signs, residual, high, salient, statistics, GROUP)
    mean1, scale1, mean2, scale2, mean_low, scale_low, mean_high, scale_high = half(statistics)[:, column_groups()].unbind(-1)
    salient_values = (scale1 * signs + mean1) + (scale2 * residual + mean2)
    other_values = torch.where(high, scale_high * signs + mean_high, scale_low * signs + mean_low)
    assert torch.equal(layer.dequantize(), torch.where(salient, salient_values, other_values))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3])
def test_gptq_weight_matches_formula(symmetric, bits):
    generator = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 2**bits, (ROWS, COLUMNS), generator=generator)
    scales, zeros = torch.rand(ROWS, GROUPS, generator=generator), torch.randint(0, 2**bits, (ROWS, GROUPS), generator=generator).float()
    layer = pack_gptq(codes, scales, zeros, None, bits, GROUP, symmetric)
    groups = column_groups()
    zero = torch.full((ROWS, COLUMNS), 2.0 ** (bits - 1)) if symmetric else zeros[:, groups]
    assert torch.equal(layer.dequantize(), half(scales)[:, groups] * (codes.float() - zero))
