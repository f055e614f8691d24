"""GPTQ at 2 to 4 bits (Frantar et al., 2023), as its reference implementation runs on LLaMA.

Each decoder linear is quantized column by column with uniform min-max codes per row and
group, and every column's error is spread over the later columns through the inverse Hessian
(methods.gptq_core). Defaults are the usual 2-bit setting: groups of 128 columns, asymmetric,
act-order, true-sequential, damping 0.01, block size 128.

Groups follow the reference code. Without static groups, a group's scale and zero point are
fitted when the loop reaches its first column, on the current (error-updated) weights, in
act-order when act-order is on. With static groups, they are fitted once on the original
weights in the original column order. A group size that does not divide the number of input
columns leaves a shorter last group.

Each linear is stored as a methods.packed_ptq.PackedGPTQLinear: see methods.ptq.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import MethodConfig
from methods.gptq_core import (
    act_order_permutation,
    column_ranges,
    columnwise_feedback,
    damped_inverse_factor,
    mask_dead_columns,
)
from methods.ptq import CalibratedQuantizer
from methods.ptq_layouts import GPTQLayout
from methods.packed_ptq import pack_gptq
from methods.uniform import AffineParams, dequantize_codes, fit_minmax, quantize_codes
from methods.validation import require_bool, require_int, require_positive_float


@dataclass
class GPTQConfig(MethodConfig):
    """Options of GPTQ; the defaults are the common 2-bit, group-128 setting of the reference code."""

    bits: int = 2
    group_size: int | None = 128  # input columns per scale and zero point; None for one group per row
    symmetric: bool = False
    act_order: bool = True  # quantize columns in order of decreasing Hessian diagonal
    static_groups: bool = False  # fit every group's parameters before the loop, in the original order
    true_sequential: bool = True  # quantize q/k/v, then o, then gate/up, then down on updated inputs
    damping: float = 0.01  # added to the Hessian diagonal, as a fraction of its mean
    block_size: int = 128  # columns per lazy-update block

    def validate(self) -> None:
        require_int("gptq", "bits", self.bits, minimum=2, maximum=4)
        if self.group_size is not None:
            require_int("gptq", "group_size", self.group_size, minimum=1, hint="or None for one group per row")
        require_bool("gptq", "symmetric", self.symmetric)
        require_bool("gptq", "act_order", self.act_order)
        require_bool("gptq", "static_groups", self.static_groups)
        require_bool("gptq", "true_sequential", self.true_sequential)
        require_positive_float("gptq", "damping", self.damping)
        require_int("gptq", "block_size", self.block_size, minimum=1)


class _GroupParams:
    """Chooses the scale and zero point of each column during the GPTQ loop and records the codes."""

    def __init__(
        self,
        config: GPTQConfig,
        row_params: AffineParams,
        static: list[AffineParams] | None,
        order: torch.Tensor | None,
        shape: tuple[int, int],
        device: torch.device,
    ):
        self.config = config
        self.current = row_params
        self.static = static
        self.order = order
        self.fitted: list[AffineParams] = []  # dynamic groups, in the order the loop fits them
        self.codes = torch.zeros(shape, dtype=torch.int32, device=device)  # by position in the (permuted) loop

    def params_for(self, position: int, weight: torch.Tensor) -> AffineParams:
        group_size = self.config.group_size
        if group_size is None:
            return self.current
        if self.static is not None:
            column = int(self.order[position]) if self.order is not None else position
            return self.static[column // group_size]
        if position % group_size == 0:
            group = weight[:, position : position + group_size]
            self.current = fit_minmax(group, self.config.bits, self.config.symmetric)
            self.fitted.append(self.current)
        return self.current

    def quantize_column(self, position: int, column: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        params = self.params_for(position, weight)
        codes = quantize_codes(column.unsqueeze(1), params)
        self.codes[:, position] = codes.squeeze(1).to(torch.int32)
        return dequantize_codes(codes, params).squeeze(1)

    def group_params(self, columns: int) -> tuple[list[AffineParams], torch.Tensor | None]:
        """Return the parameters of every group and the group of each original column.

        The column groups are None when group = column // group_size is true (no act-order, static
        groups, or a single group), because then nothing needs to be stored.
        """
        if self.config.group_size is None:
            return [self.current], None
        if self.static is not None:
            return self.static, None
        if self.order is None or len(self.fitted) == 1:
            return self.fitted, None
        positions = torch.argsort(self.order)
        return self.fitted, positions // self.config.group_size


def _static_group_params(weight: torch.Tensor, config: GPTQConfig) -> list[AffineParams] | None:
    if not config.static_groups or config.group_size is None:
        return None
    return [
        fit_minmax(weight[:, start:end], config.bits, config.symmetric)
        for start, end in column_ranges(weight.shape[1], config.group_size)
    ]


def gptq_quantize_weight(
    weight: torch.Tensor, hessian: torch.Tensor, config: GPTQConfig
) -> tuple[torch.Tensor, GPTQLayout]:
    """Quantize one linear's weight (rows, columns) with its Hessian; return float32 weights and the layout.

    The layout's `packed` layer stores the codes, scales and zero points. Its side data is
    float16, so its `dequantize()` differs from the float32 weights returned here by that rounding.
    """
    work = weight.detach().float().clone()
    hessian = hessian.detach().float().clone()
    rows, columns = work.shape

    # The reference fits the per-row parameters before zeroing dead columns, and the static
    # groups after it; both happen before the act-order permutation.
    row_params = fit_minmax(work, config.bits, config.symmetric)
    mask_dead_columns(hessian, work)
    static = _static_group_params(work, config)

    order = act_order_permutation(hessian) if config.act_order else None
    if order is not None:
        work = work[:, order]
        hessian = hessian[order][:, order]
    params = _GroupParams(config, row_params, static, order, (rows, columns), work.device)

    factor = damped_inverse_factor(hessian, config.damping)
    quantized = columnwise_feedback(work, factor, config.block_size, params.quantize_column)
    codes = params.codes
    if order is not None:
        inverse = torch.argsort(order)
        quantized = quantized[:, inverse]
        codes = codes[:, inverse]

    group_size = min(config.group_size or columns, columns)
    groups, column_groups = params.group_params(columns)
    packed = pack_gptq(
        codes,
        torch.cat([group.scale for group in groups], dim=1),
        torch.cat([group.zero for group in groups], dim=1),
        column_groups,
        bits=config.bits,
        group_size=group_size,
        symmetric=config.symmetric,
    )
    layout = GPTQLayout(
        rows=rows,
        columns=columns,
        bits=config.bits,
        group_size=group_size,
        symmetric=config.symmetric,
        group_indices=config.act_order and not config.static_groups and group_size < columns,
        packed=packed,
    )
    return quantized, layout


class GPTQ(CalibratedQuantizer):
    name = "gptq"
    config_cls = GPTQConfig

    def quantize_weight(self, weight: torch.Tensor, hessian: torch.Tensor):
        return gptq_quantize_weight(weight, hessian, self.config)
