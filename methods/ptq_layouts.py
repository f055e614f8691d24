"""Storage layouts of the post-training methods and the bits each one stores.

Each layout describes what the packed format of one quantized linear holds, and
`bit_counts()` returns its bits by component plus the number of weights it replaces under the
key "weights" (the contract of methods.storage.report_for_layers). Side data (scales, zero
points, means, group indices) is counted at methods.storage.FLOAT_BITS (16) bits each. The
counts include what the papers' headline numbers leave out: BiLLM's group bitmap and per-row
statistics, PB-LLM's salient indices, GPTQ's scales, zero points and act-order group indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from methods.storage import FLOAT_BITS

# CSR row pointers are int32, because a matrix may hold more than 65535 salient weights.
ROW_POINTER_BITS = 32


def index_bits(count: int) -> int:
    """Return the bits of an unsigned index into `count` positions (at least 1)."""
    return max(1, math.ceil(math.log2(count))) if count > 1 else 1


@dataclass(frozen=True)
class GPTQLayout:
    """b-bit codes for every weight plus a scale (and zero point) per row and group.

    With act-order and dynamic groups, the group of an input column no longer follows from its
    index, so one int16 group index per input column is stored as well.
    """

    rows: int
    columns: int
    bits: int
    group_size: int  # the columns per group; equal to `columns` for one group per row
    symmetric: bool
    group_indices: bool
    # The packed layer (methods.packed_ptq) holding these bits; None for a layout built by hand.
    packed: Any = field(default=None, compare=False, repr=False)

    @property
    def groups(self) -> int:
        return math.ceil(self.columns / self.group_size)

    def bit_counts(self) -> dict[str, int]:
        weights = self.rows * self.columns
        counts = {
            "weights": weights,
            "codes": self.bits * weights,
            "scales": FLOAT_BITS * self.rows * self.groups,
        }
        if not self.symmetric:
            counts["zero_points"] = FLOAT_BITS * self.rows * self.groups
        if self.group_indices:
            counts["group_indices"] = FLOAT_BITS * self.columns
        return counts


@dataclass(frozen=True)
class BiLLMLayout:
    """Per block of input columns, with k salient columns out of c:

    - a c-bit column bitmap marking the salient columns;
    - one sign per weight, plus a second (residual) sign per salient weight;
    - a group bitmap of one bit per non-salient weight (which side of the split it is on);
    - per row, a mean and a scale for each of 4 binarized parts: the salient columns at order 1
      and order 2, and the two non-salient groups.
    """

    rows: int
    block_columns: tuple[int, ...]  # width of each block
    salient_columns: tuple[int, ...]  # salient columns chosen in each block
    # The packed layer (methods.packed_ptq) holding these bits; None for a layout built by hand.
    packed: Any = field(default=None, compare=False, repr=False)

    STATISTICS_PER_ROW = 8  # (mean, scale) x 4 binarized parts

    def bit_counts(self) -> dict[str, int]:
        columns = sum(self.block_columns)
        salient = sum(self.salient_columns)
        return {
            "weights": self.rows * columns,
            "signs": self.rows * columns,
            "salient_residual_signs": self.rows * salient,
            "group_bitmap": self.rows * (columns - salient),
            "salient_column_bitmap": columns,
            "row_statistics": FLOAT_BITS * self.STATISTICS_PER_ROW * self.rows * len(self.block_columns),
        }


@dataclass(frozen=True)
class PBLLMLayout:
    """Signs for the binarized weights and b-bit codes for the salient ones, with:

    - the salient positions, as a bitmap over the matrix or in CSR form (a column index per
      salient weight plus int32 row pointers), whichever is smaller;
    - per row and group, the mean and scale of the binarized weights;
    - per row, the scale and zero point of the salient weights' quantizer.
    """

    rows: int
    columns: int
    salient_count: int
    salient_bits: int
    groups: int
    # The packed layer (methods.packed_ptq) holding these bits; None for a layout built by hand.
    packed: Any = field(default=None, compare=False, repr=False)

    @property
    def index_format(self) -> str:
        return "csr" if self._csr_bits() < self.rows * self.columns else "bitmap"

    def _csr_bits(self) -> int:
        return self.salient_count * index_bits(self.columns) + (self.rows + 1) * ROW_POINTER_BITS

    def bit_counts(self) -> dict[str, int]:
        weights = self.rows * self.columns
        return {
            "weights": weights,
            "signs": weights - self.salient_count,
            "salient_codes": self.salient_count * self.salient_bits,
            "salient_indices": min(self._csr_bits(), weights),
            "binary_statistics": FLOAT_BITS * 2 * self.rows * self.groups,
            "salient_scales": FLOAT_BITS * 2 * self.rows,
        }
