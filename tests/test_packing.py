"""Bit packing: the documented layout, round trips over odd sizes, and input checks."""

from __future__ import annotations

import pytest
import torch

from methods.packing import (
    pack_bits,
    pack_codes,
    pack_signs,
    packed_size,
    unpack_bits,
    unpack_codes,
    unpack_signs,
)


def test_signs_worked_example():
    weights = torch.tensor([0.3, -1.2, 0.0, 2.0, -0.1, -0.5, 0.7, 0.9, -2.0])
    packed = pack_signs(weights)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [0b11001101, 0]


def test_two_bit_codes_worked_example():
    packed = pack_codes(torch.tensor([1, 3, 0, 2, 3]), bits=2)
    assert packed.tolist() == [0x8D, 0x03]


@pytest.mark.parametrize("count", [1, 7, 8, 9, 63, 64, 65, 1001])
def test_bits_round_trip_odd_sizes(count):
    generator = torch.Generator().manual_seed(count)
    bits = torch.rand(count, generator=generator) > 0.5
    packed = pack_bits(bits)
    assert packed.numel() == packed_size(count)
    assert torch.equal(unpack_bits(packed, count), bits)


def test_signs_round_trip_matrix():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(13, 7, generator=generator)
    weights[0, 0] = 0.0
    signs = unpack_signs(pack_signs(weights), weights.numel()).view(13, 7)
    expected = torch.where(weights >= 0, 1.0, -1.0)
    assert torch.equal(signs, expected)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8, 11, 16])
@pytest.mark.parametrize("count", [1, 5, 17, 300])
def test_codes_round_trip(bits, count):
    generator = torch.Generator().manual_seed(bits * 1000 + count)
    codes = torch.randint(0, 2**bits, (count,), generator=generator)
    packed = pack_codes(codes, bits)
    assert packed.numel() == packed_size(count, bits)
    assert torch.equal(unpack_codes(packed, count, bits), codes.to(torch.int32))


def test_codes_out_of_range_rejected():
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        pack_codes(torch.tensor([0, 4]), bits=2)


def test_unpack_rejects_short_input():
    with pytest.raises(ValueError, match="fewer"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 9)


def test_unpack_rejects_wrong_dtype():
    with pytest.raises(TypeError, match="uint8"):
        unpack_bits(torch.zeros(2, dtype=torch.int32), 9)


def test_select_matches_where_bit_for_bit():
    from methods.packed import select

    generator = torch.Generator().manual_seed(3)
    mask = torch.rand(37, 11, generator=generator) > 0.5
    where_true = torch.randn(37, 11, generator=generator)
    where_false = torch.randn(37, 11, generator=generator)
    where_true[0, :3] = torch.tensor([-0.0, float("inf"), float("nan")])
    mask[0, :3] = True
    expected = torch.where(mask, where_true, where_false)
    chosen = select(mask, where_true, where_false)
    assert torch.equal(chosen.view(torch.int32), expected.view(torch.int32))
    torch.testing.assert_close(select(mask, where_true.double(), where_false.double()), expected.double(),
                               rtol=0, atol=0, equal_nan=True)
