"""Bit packing shared by the packed formats: signs and bitmaps 8 per byte, b-bit codes in a bit stream.

Layout. A tensor is flattened in row-major (C) order and written as one stream of bits,
least significant bit first: element i of a bit tensor goes to bit (i % 8) of byte i // 8.
A b-bit code c_i occupies stream bits i*b .. i*b + b - 1, its least significant bit first.
The last byte is padded with zero bits, so n elements of b bits take ceil(n * b / 8) bytes.

Worked example, signs. The weights (0.3, -1.2, 0.0, 2.0, -0.1, -0.5, 0.7, 0.9, -2.0) give the
bits (1, 0, 1, 1, 0, 0, 1, 1, 0), with 1 for +1 (weight >= 0) and 0 for -1. Byte 0 contains
elements 0..7 with element 0 in bit 0: 0b11001101 = 0xCD = 205. Byte 1 contains element 8 in
bit 0 and seven padding zeros: 0x00.

Worked example, 2-bit codes. The codes (1, 3, 0, 2, 3) form the stream 1,0 | 1,1 | 0,0 | 0,1 |
1,1. Byte 0 holds codes 0..3 at bits 0-1, 2-3, 4-5 and 6-7: 1 + 3*4 + 0*16 + 2*64 = 141 = 0x8D.
Byte 1 holds code 4 at bits 0-1: 0x03.
"""

from __future__ import annotations

import torch

_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_size(count: int, bits: int = 1) -> int:
    """Return the bytes that `count` values of `bits` bits each take once packed."""
    return (count * bits + 7) // 8


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor (any shape) into a flat uint8 tensor, 8 elements per byte."""
    flat = bits.reshape(-1).to(torch.uint8)
    padding = (-flat.numel()) % 8
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    groups = flat.view(-1, 8) << _BIT_SHIFTS.to(flat.device)
    return groups.sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Return the first `count` bits of `packed` (uint8) as a flat boolean tensor."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"Packed bits must be uint8, got {packed.dtype}.")
    if packed.numel() < packed_size(count):
        raise ValueError(f"{packed.numel()} bytes hold fewer than the {count} bits requested.")
    bits = (packed.reshape(-1, 1) >> _BIT_SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:count].bool()


def pack_signs(values: torch.Tensor) -> torch.Tensor:
    """Pack the signs of `values`: bit 1 for +1 (value >= 0), bit 0 for -1."""
    return pack_bits(values >= 0)


def unpack_signs(packed: torch.Tensor, count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the first `count` signs of `packed` as a flat tensor of +1 and -1 in `dtype`."""
    return unpack_bits(packed, count).to(dtype) * 2 - 1


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes (any shape, each < 2^bits) into a flat uint8 bit stream."""
    if not 1 <= bits <= 16:
        raise ValueError(f"Code width must be 1 to 16 bits, got {bits}.")
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"Codes must lie in [0, {2**bits - 1}] for {bits} bits, got [{int(flat.min())}, {int(flat.max())}].")
    shifts = torch.arange(bits, dtype=torch.int32, device=flat.device)
    stream = (flat.unsqueeze(1) >> shifts) & 1
    return pack_bits(stream.bool())


def unpack_codes(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """Return the first `count` codes of `bits` bits from `packed` as a flat int32 tensor."""
    stream = unpack_bits(packed, count * bits).view(count, bits).to(torch.int32)
    weights = 2 ** torch.arange(bits, dtype=torch.int32, device=packed.device)
    return (stream * weights).sum(dim=1, dtype=torch.int32)
