"""Packed layers of the post-training methods: GPTQ codes, BiLLM residual signs, PB-LLM salient values.

Each `pack_*` function receives the arrays the method decided on for one linear (codes, signs,
masks, statistics) in float32 and returns the packed layer. The method then writes the layer's
`dequantize()` back into the model, so the calibrated model and the packed model are the same
function (the side data is rounded to float16 once, here).
"""

from __future__ import annotations

import torch

from methods.packed import STORAGE_DTYPE, PackedLinear, groups_of, register_kind, select
from methods.packing import pack_bits, pack_codes, packed_size, unpack_bits, unpack_codes, unpack_signs
from methods.ptq_layouts import index_bits


@register_kind
class PackedGPTQLinear(PackedLinear):
    """b-bit codes with a float16 scale (and zero point) per row and group.

    The group of input column j is `group_indices[j]` when that array is stored (act-order with
    dynamic groups), else j // group_size.
    """

    kind = "gptq"
    COMPONENTS = {"codes": "codes", "scales": "scales", "zero_points": "zero_points", "group_indices": "group_indices"}

    def __init__(self, in_features: int, out_features: int, bias: bool = False, bits: int = 2,
                 group_size: int | None = None, symmetric: bool = False, group_indices: bool = False):
        super().__init__(in_features, out_features, bias)
        self.bits = bits
        self.group_size = min(group_size or in_features, in_features)
        self.symmetric = symmetric
        self.has_group_indices = group_indices
        groups = groups_of(in_features, self.group_size)
        self.register_buffer("codes", torch.zeros(packed_size(out_features * in_features, bits), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=STORAGE_DTYPE))
        if not symmetric:
            self.register_buffer("zero_points", torch.zeros(out_features, groups, dtype=STORAGE_DTYPE))
        if group_indices:
            self.register_buffer("group_indices", torch.zeros(in_features, dtype=torch.int16))

    def extra_metadata(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "group_indices": self.has_group_indices}

    def column_groups(self) -> torch.Tensor:
        if self.has_group_indices:
            return self.group_indices.long()
        return torch.arange(self.in_features, device=self.codes.device) // self.group_size

    def dequantize(self) -> torch.Tensor:
        codes = unpack_codes(self.codes, self.out_features * self.in_features, self.bits)
        codes = codes.view(self.out_features, self.in_features).float()
        groups = self.column_groups()
        # Work in place, because each extra full-size temporary costs about as much time as the arithmetic.
        if self.symmetric:
            codes.sub_(2 ** (self.bits - 1))
        else:
            codes.sub_(self.zero_points.float().index_select(1, groups))
        return codes.mul_(self.scales.float().index_select(1, groups))


def pack_gptq(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, column_groups: torch.Tensor | None,
              bits: int, group_size: int, symmetric: bool) -> PackedGPTQLinear:
    """Pack GPTQ's codes (rows, columns) in the original column order, scales and zeros (rows, groups).

    `column_groups` is the group of each input column, or None when it is column // group_size.
    """
    rows, columns = codes.shape
    layer = PackedGPTQLinear(columns, rows, bits=bits, group_size=group_size, symmetric=symmetric,
                             group_indices=column_groups is not None)
    layer.codes.copy_(pack_codes(codes.to(torch.int32), bits))
    layer.scales.copy_(scales.to(STORAGE_DTYPE))
    if not symmetric:
        layer.zero_points.copy_(zeros.to(STORAGE_DTYPE))
    if column_groups is not None:
        layer.group_indices.copy_(column_groups.to(torch.int16))
    return layer


@register_kind
class PackedBiLLMLinear(PackedLinear):
    """BiLLM: one sign per weight, residual signs of the salient columns, the group bitmap, statistics.

    Bit streams: `signs` over the whole matrix; `salient_residual_signs` over the salient columns
    and `group_bitmap` (1 = the high-magnitude group) over the other columns, each row-major over
    its sub-matrix. `row_statistics` (rows, blocks, 8) holds per row and block the mean and scale
    of the salient order-1 term, the salient order-2 term, the low group and the high group.
    """

    kind = "billm"
    COMPONENTS = {"signs": "signs", "salient_residual_signs": "salient_residual_signs", "group_bitmap": "group_bitmap",
                  "salient_column_bitmap": "salient_column_bitmap", "row_statistics": "row_statistics"}

    def __init__(self, in_features: int, out_features: int, bias: bool = False, block_size: int = 128,
                 salient_columns: int = 0):
        super().__init__(in_features, out_features, bias)
        self.block_size = block_size
        self.salient_columns = salient_columns
        rows, other = out_features, in_features - salient_columns
        self.register_buffer("signs", torch.zeros(packed_size(rows * in_features), dtype=torch.uint8))
        self.register_buffer("salient_residual_signs", torch.zeros(packed_size(rows * salient_columns), dtype=torch.uint8))
        self.register_buffer("group_bitmap", torch.zeros(packed_size(rows * other), dtype=torch.uint8))
        self.register_buffer("salient_column_bitmap", torch.zeros(packed_size(in_features), dtype=torch.uint8))
        blocks = groups_of(in_features, block_size)
        self.register_buffer("row_statistics", torch.zeros(rows, blocks, 8, dtype=STORAGE_DTYPE))

    def extra_metadata(self) -> dict:
        return {"block_size": self.block_size, "salient_columns": self.salient_columns}

    def dequantize(self) -> torch.Tensor:
        rows, columns = self.out_features, self.in_features
        signs = self.signs_matrix()
        salient = unpack_bits(self.salient_column_bitmap, columns)
        salient_index = salient.nonzero().squeeze(1)
        other_index = (~salient).nonzero().squeeze(1)
        blocks = torch.arange(columns, device=signs.device) // self.block_size
        statistics = self.row_statistics.float()  # (rows, blocks, 8)

        def statistic(position: int, column_blocks: torch.Tensor) -> torch.Tensor:
            return statistics[:, :, position].index_select(1, column_blocks)

        # Compute every column as a non-salient one (low or high group), then overwrite the salient columns.
        # A product with a sign is exact, so addcmul gives the same values as a multiply and an add.
        high = torch.zeros_like(signs, dtype=torch.bool)
        high.index_copy_(1, other_index, unpack_bits(self.group_bitmap, rows * other_index.numel()).view(rows, -1))
        means = select(high, statistic(6, blocks), statistic(4, blocks))
        scales = select(high, statistic(7, blocks), statistic(5, blocks))
        values = means.addcmul_(scales, signs)

        salient_blocks = blocks[salient_index]
        salient_signs = signs.index_select(1, salient_index)
        residual = unpack_signs(self.salient_residual_signs, rows * salient_index.numel()).view(rows, -1)
        salient_values = ((statistic(1, salient_blocks) * salient_signs + statistic(0, salient_blocks))
                          + (statistic(3, salient_blocks) * residual + statistic(2, salient_blocks)))
        return values.index_copy_(1, salient_index, salient_values)


def pack_billm(signs: torch.Tensor, residual_signs: torch.Tensor, high: torch.Tensor, salient: torch.Tensor,
               statistics: torch.Tensor, block_size: int) -> PackedBiLLMLinear:
    """Pack BiLLM's arrays: signs, residual signs and the high-group mask (rows, columns) as +1/-1 or
    booleans, the salient column mask (columns,) and the statistics (rows, blocks, 8)."""
    rows, columns = signs.shape
    layer = PackedBiLLMLinear(columns, rows, block_size=block_size, salient_columns=int(salient.sum()))
    layer.signs.copy_(pack_bits(signs >= 0))
    layer.salient_residual_signs.copy_(pack_bits(residual_signs[:, salient] >= 0))
    layer.group_bitmap.copy_(pack_bits(high[:, ~salient]))
    layer.salient_column_bitmap.copy_(pack_bits(salient))
    layer.row_statistics.copy_(statistics.to(STORAGE_DTYPE))
    return layer


@register_kind
class PackedPBLLMLinear(PackedLinear):
    """PB-LLM: signs of the binarized weights, b-bit codes of the salient ones, and their positions.

    Positions are stored as a bitmap over the matrix (1 = binarized) or in CSR form (the column
    of each salient weight, packed at ceil(log2(columns)) bits, plus int32 row pointers),
    whichever the layout's formula found smaller. `signs` runs row-major over the binarized
    weights, `salient_codes` row-major over the salient ones. `binary_statistics` (rows, groups, 2)
    contains the mean and scale of the binarized weights, and `salient_scales` (rows, 2) the
    scale and zero point of the salient quantizer.

    NOTE: float16 represents every integer zero point exactly only up to 2048, so salient codes
    wider than 11 bits get a rounded zero point. The model is frozen with that rounded value.
    """

    kind = "pbllm"
    COMPONENTS = {"signs": "signs", "salient_codes": "salient_codes", "binarized_bitmap": "salient_indices",
                  "salient_column_indices": "salient_indices", "salient_row_pointers": "salient_indices",
                  "binary_statistics": "binary_statistics", "salient_scales": "salient_scales"}

    def __init__(self, in_features: int, out_features: int, bias: bool = False, salient_count: int = 0,
                 salient_bits: int = 8, group_size: int | None = None, index_format: str = "bitmap"):
        super().__init__(in_features, out_features, bias)
        if index_format not in ("bitmap", "csr"):
            raise ValueError(f"PB-LLM index format must be 'bitmap' or 'csr', got {index_format!r}.")
        self.salient_count = salient_count
        self.salient_bits = salient_bits
        self.group_size = min(group_size or in_features, in_features)
        self.index_format = index_format
        weights = out_features * in_features
        self.register_buffer("signs", torch.zeros(packed_size(weights - salient_count), dtype=torch.uint8))
        self.register_buffer("salient_codes", torch.zeros(packed_size(salient_count, salient_bits), dtype=torch.uint8))
        if index_format == "bitmap":
            self.register_buffer("binarized_bitmap", torch.zeros(packed_size(weights), dtype=torch.uint8))
        else:
            column_bits = index_bits(in_features)
            self.register_buffer("salient_column_indices", torch.zeros(packed_size(salient_count, column_bits), dtype=torch.uint8))
            self.register_buffer("salient_row_pointers", torch.zeros(out_features + 1, dtype=torch.int32))
        groups = groups_of(in_features, self.group_size)
        self.register_buffer("binary_statistics", torch.zeros(out_features, groups, 2, dtype=STORAGE_DTYPE))
        self.register_buffer("salient_scales", torch.zeros(out_features, 2, dtype=STORAGE_DTYPE))

    def extra_metadata(self) -> dict:
        return {"salient_count": self.salient_count, "salient_bits": self.salient_bits,
                "group_size": self.group_size, "index_format": self.index_format}

    def binarized_mask(self) -> torch.Tensor:
        rows, columns = self.out_features, self.in_features
        if self.index_format == "bitmap":
            return unpack_bits(self.binarized_bitmap, rows * columns).view(rows, columns)
        column_bits = index_bits(columns)
        salient_columns = unpack_codes(self.salient_column_indices, self.salient_count, column_bits).long()
        counts = (self.salient_row_pointers[1:] - self.salient_row_pointers[:-1]).long()
        salient_rows = torch.repeat_interleave(torch.arange(rows, device=counts.device), counts)
        mask = torch.ones(rows, columns, dtype=torch.bool, device=counts.device)
        mask[salient_rows, salient_columns] = False
        return mask

    def dequantize(self) -> torch.Tensor:
        rows, columns = self.out_features, self.in_features
        device = self.signs.device
        binarized = self.binarized_mask()
        # Element i is preceded by binarized_so_far[i] binarized weights (i included) and i + 1 minus that
        # many salient ones. Every position reads both compact streams, and `select` keeps the right one.
        binarized_so_far = binarized.reshape(-1).cumsum(0, dtype=torch.int32)
        sign_index = (binarized_so_far - 1).clamp_(min=0)
        code_index = torch.arange(rows * columns, dtype=torch.int32, device=device).sub_(binarized_so_far).clamp_(min=0)
        signs = _gather(unpack_signs(self.signs, rows * columns - self.salient_count), sign_index).view(rows, columns)
        codes = unpack_codes(self.salient_codes, self.salient_count, self.salient_bits).float()
        codes = _gather(codes, code_index).view(rows, columns)

        groups = torch.arange(columns, device=device) // self.group_size
        statistics = self.binary_statistics.float()  # (rows, groups, 2)
        # A product with a sign is exact, so addcmul gives the same values as a multiply and an add.
        binary = statistics[..., 0].index_select(1, groups).addcmul_(statistics[..., 1].index_select(1, groups), signs)
        scale, zero = self.salient_scales.float().unbind(dim=1)
        salient = codes.sub_(zero.unsqueeze(1)).mul_(scale.unsqueeze(1))
        return select(binarized, binary, salient)


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Return values[index], reading 0 from an empty `values` (a layer with no weights of that kind)."""
    if values.numel() == 0:
        values = values.new_zeros(1)
    return values.index_select(0, index)


def pack_pbllm(signs: torch.Tensor, codes: torch.Tensor, binarized: torch.Tensor, means: torch.Tensor,
               scales: torch.Tensor, salient_scale: torch.Tensor, salient_zero: torch.Tensor,
               salient_bits: int, group_size: int, index_format: str) -> PackedPBLLMLinear:
    """Pack PB-LLM's arrays: signs (+1/-1) and codes (rows, columns), the binarized mask, the
    binarization means and scales (rows, groups), and the salient scale and zero point (rows,)."""
    rows, columns = signs.shape
    salient_count = int((~binarized).sum())
    layer = PackedPBLLMLinear(columns, rows, salient_count=salient_count, salient_bits=salient_bits,
                              group_size=group_size, index_format=index_format)
    layer.signs.copy_(pack_bits(signs[binarized] >= 0))
    layer.salient_codes.copy_(pack_codes(codes[~binarized].to(torch.int32), salient_bits))
    if index_format == "bitmap":
        layer.binarized_bitmap.copy_(pack_bits(binarized))
    else:
        salient_rows, salient_columns = (~binarized).nonzero(as_tuple=True)
        layer.salient_column_indices.copy_(pack_codes(salient_columns.to(torch.int32), index_bits(columns)))
        counts = torch.bincount(salient_rows, minlength=rows)
        pointers = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        layer.salient_row_pointers.copy_(pointers.to(torch.int32))
    layer.binary_statistics.copy_(torch.stack([means, scales], dim=-1).to(STORAGE_DTYPE))
    layer.salient_scales.copy_(torch.stack([salient_scale, salient_zero], dim=-1).to(STORAGE_DTYPE))
    return layer

