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
_TABLES: dict[tuple, torch.Tensor] = {}


def _byte_table(bits: int, dtype: torch.dtype, device: torch.device, signed: bool = False) -> torch.Tensor:
    """Return the (256, 8 // bits) table of the codes each byte value holds, lowest bits first.

    With `signed`, a 1-bit code c is given as 2c - 1, so the table maps a byte to eight signs.
    Unpacking is then one `index_select` per stream, about ten times faster than shifting
    every bit on the CPU.
    """
    key = (bits, dtype, device, signed)
    table = _TABLES.get(key)
    if table is None:
        shifts = torch.arange(0, 8, bits)
        table = (torch.arange(256).unsqueeze(1) >> shifts) & (2**bits - 1)
        if signed:
            table = table * 2 - 1
        table = table.to(dtype=dtype, device=device)
        _TABLES[key] = table
    return table


def _check_packed(packed: torch.Tensor, count: int, bits: int) -> None:
    if packed.dtype != torch.uint8:
        raise TypeError(f"Packed bits must be uint8, got {packed.dtype}.")
    if packed.numel() < packed_size(count, bits):
        raise ValueError(f"{packed.numel()} bytes hold fewer than the {count * bits} bits requested.")


def _lookup(packed: torch.Tensor, count: int, bits: int, dtype: torch.dtype, signed: bool = False) -> torch.Tensor:
    """Unpack `count` codes of a width that divides 8 through the byte table."""
    used = packed.reshape(-1)[: packed_size(count, bits)]
    table = _byte_table(bits, dtype, packed.device, signed)
    return table.index_select(0, used.long()).reshape(-1)[:count]


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
    _check_packed(packed, count, 1)
    return _lookup(packed, count, 1, torch.bool)


def pack_signs(values: torch.Tensor) -> torch.Tensor:
    """Pack the signs of `values`: bit 1 for +1 (value >= 0), bit 0 for -1."""
    return pack_bits(values >= 0)


def unpack_signs(packed: torch.Tensor, count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the first `count` signs of `packed` as a flat tensor of +1 and -1 in `dtype`."""
    _check_packed(packed, count, 1)
    return _lookup(packed, count, 1, dtype, signed=True)


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
    if not 1 <= bits <= 16:
        raise ValueError(f"Code width must be 1 to 16 bits, got {bits}.")
    _check_packed(packed, count, bits)
    if 8 % bits == 0:
        return _lookup(packed, count, bits, torch.int32)
    # A code of at most 16 bits spans at most 3 bytes: read them as one integer and shift.
    first_bit = torch.arange(count, dtype=torch.int64, device=packed.device) * bits
    padded = torch.cat([packed.reshape(-1)[: packed_size(count, bits)], packed.new_zeros(2)]).long()
    byte = first_bit >> 3
    window = padded[byte] | (padded[byte + 1] << 8) | (padded[byte + 2] << 16)
    return ((window >> (first_bit & 7)) & (2**bits - 1)).to(torch.int32)
