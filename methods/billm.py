"""BiLLM (Huang et al., 2024): post-training binarization with salient columns and a bell-shaped split.

Each decoder linear is processed in blocks of 128 input columns. Per block, masks are searched
on a saliency matrix (methods.residual_binarization): a few salient columns get a second-order
residual binarization, and the other weights are split by magnitude into two groups binarized
separately. The block is binarized at once from its current weights, and its error is passed
to the later blocks through the inverse Hessian (methods.gptq_core.blockwise_feedback). As in
the reference implementation, there is no column-by-column update inside a block.

Defaults follow the reference code and its published runs: block size 128, damping 0.01, the
Hessian saliency metric, up to 49 salient columns per block, split points at the 81 quantiles
from 10% to 90%, one Hessian pass per layer (not true-sequential).

Each linear is stored as a methods.packed_ptq.PackedBiLLMLinear: see methods.ptq.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import ConfigError, MethodConfig
from methods.gptq_core import blockwise_feedback, damped_inverse_factor, hessian_saliency, mask_dead_columns
from methods.ptq import CalibratedQuantizer
from methods.ptq_layouts import BiLLMLayout
from methods.packed_ptq import pack_billm
from methods.residual_binarization import binarize_block_parts, select_block_masks
from methods.validation import require_bool, require_choice, require_int, require_open_fraction, require_positive_float

SALIENT_METRICS = ("hessian", "magnitude")


@dataclass
class BiLLMConfig(MethodConfig):
    """Options of BiLLM; the defaults are those of the reference code's published runs."""

    block_size: int = 128  # input columns per block, which is also the group of the masks
    damping: float = 0.01  # added to the Hessian diagonal, as a fraction of its mean
    salient_metric: str = "hessian"  # "hessian": w^2 / [chol(H^-1)]_jj^2; "magnitude": w
    max_salient_columns: int = 49  # salient columns tried per block: 1 .. this (capped at the block width)
    split_quantile_low: float = 0.10  # lowest quantile of |s| tried as the split point
    split_quantile_high: float = 0.90  # highest quantile tried
    split_quantile_count: int = 81  # quantiles tried, evenly spaced from low to high
    error_compensation: bool = True  # pass each block's error to the later blocks
    true_sequential: bool = False  # the reference collects all Hessians of a layer in one pass

    def validate(self) -> None:
        require_int("billm", "block_size", self.block_size, minimum=1)
        require_positive_float("billm", "damping", self.damping)
        require_choice("billm", "salient_metric", self.salient_metric, SALIENT_METRICS)
        require_int("billm", "max_salient_columns", self.max_salient_columns, minimum=1)
        require_open_fraction("billm", "split_quantile_low", self.split_quantile_low)
        require_open_fraction("billm", "split_quantile_high", self.split_quantile_high)
        if self.split_quantile_low > self.split_quantile_high:
            raise ConfigError(
                f"billm split_quantile_low ({self.split_quantile_low}) must not exceed "
                f"split_quantile_high ({self.split_quantile_high})."
            )
        require_int("billm", "split_quantile_count", self.split_quantile_count, minimum=1)
        require_bool("billm", "error_compensation", self.error_compensation)
        require_bool("billm", "true_sequential", self.true_sequential)

    def split_quantiles(self) -> torch.Tensor:
        return torch.linspace(self.split_quantile_low, self.split_quantile_high, self.split_quantile_count)


def billm_quantize_weight(
    weight: torch.Tensor, hessian: torch.Tensor, config: BiLLMConfig
) -> tuple[torch.Tensor, BiLLMLayout]:
    """Binarize one linear's weight (rows, columns) with its Hessian; return float32 weights and the layout."""
    work = weight.detach().float().clone()
    hessian = hessian.detach().float().clone()
    mask_dead_columns(hessian, work)
    factor = damped_inverse_factor(hessian, config.damping)
    quantiles = config.split_quantiles()
    block_columns: list[int] = []
    salient_columns: list[int] = []
    parts = []

    def quantize_block(start: int, end: int, block: torch.Tensor) -> torch.Tensor:
        if config.salient_metric == "hessian":
            saliency = hessian_saliency(block, factor.diagonal()[start:end])
        else:
            saliency = block
        masks = select_block_masks(saliency, config.max_salient_columns, quantiles)
        block_columns.append(end - start)
        salient_columns.append(masks.salient_columns)
        quantized_block, block_parts = binarize_block_parts(block, masks)
        parts.append(block_parts)
        return quantized_block

    quantized = blockwise_feedback(
        work, factor, config.block_size, quantize_block, compensate=config.error_compensation
    )
    packed = pack_billm(
        signs=torch.cat([part.signs for part in parts], dim=1),
        residual_signs=torch.cat([part.residual_signs for part in parts], dim=1),
        high=torch.cat([part.high for part in parts], dim=1),
        salient=torch.cat([part.salient_columns for part in parts]),
        statistics=torch.stack([part.statistics for part in parts], dim=1),
        block_size=config.block_size,
    )
    layout = BiLLMLayout(
        rows=work.shape[0], block_columns=tuple(block_columns), salient_columns=tuple(salient_columns), packed=packed
    )
    return quantized, layout


class BiLLM(CalibratedQuantizer):
    name = "billm"
    config_cls = BiLLMConfig

    def quantize_weight(self, weight: torch.Tensor, hessian: torch.Tensor):
        return billm_quantize_weight(weight, hessian, self.config)
