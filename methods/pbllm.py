"""PB-LLM (Shang et al., 2024), post-training variant "GPTQ-PB": partially binarized weights.

A fraction of each decoder linear's weights is binarized with a mean-shifted sign per row
(methods.partial_binarization). The rest, the salient weights chosen by magnitude or Hessian
saliency, keep 8-bit per-row asymmetric min-max codes fitted on the whole row. The masks and
the binarization statistics are computed once per group from the weights before the loop, and
the columns are then quantized with GPTQ error feedback (methods.gptq_core), as in the
reference implementation.

Defaults follow the reference code: binarized fraction 0.9 (PB-LLM's 10% salient setting),
8-bit salient weights, one group per row, block size 128, damping 0.01, one Hessian pass per
layer. The salient metric defaults to "hessian", which the reference's LLaMA-7B runs pass
(its command-line default is "magnitude").

Each linear is stored as a methods.packed_ptq.PackedPBLLMLinear: see methods.ptq.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from methods.base import MethodConfig
from methods.gptq_core import (
    column_ranges,
    columnwise_feedback,
    damped_inverse_factor,
    hessian_saliency,
    mask_dead_columns,
)
from methods.partial_binarization import STATISTICS, binarization_statistics, binarized_mask, mean_shifted_sign
from methods.ptq import CalibratedQuantizer
from methods.ptq_layouts import PBLLMLayout
from methods.packed_ptq import pack_pbllm
from methods.primitives import binary_sign
from methods.uniform import dequantize_codes, fit_minmax, quantize_codes
from methods.validation import require_bool, require_choice, require_int, require_open_fraction, require_positive_float

SALIENT_METRICS = ("hessian", "magnitude")


@dataclass
class PBLLMConfig(MethodConfig):
    """Options of PB-LLM's post-training variant; the defaults are those of the reference code."""

    binarized_fraction: float = 0.9  # fraction of weights binarized; the rest are salient
    salient_bits: int = 8  # bits of the salient weights' min-max codes
    salient_metric: str = "hessian"  # "hessian": w^2 / [chol(H^-1)]_jj^2; "magnitude": |w|
    # "zeroed_salient": the reference's mean and scale over the whole row with the salient
    # weights as zeros, to reproduce its numbers; "binarized_only": over the binarized weights.
    binarization_statistics: str = "zeroed_salient"
    group_size: int | None = None  # input columns per salient threshold and statistics; None for the whole row
    block_size: int = 128  # columns per lazy-update block of the GPTQ loop
    damping: float = 0.01  # added to the Hessian diagonal, as a fraction of its mean
    true_sequential: bool = False  # the reference collects all Hessians of a layer in one pass

    def validate(self) -> None:
        require_open_fraction("pbllm", "binarized_fraction", self.binarized_fraction)
        require_int("pbllm", "salient_bits", self.salient_bits, minimum=2, maximum=16)
        require_choice("pbllm", "salient_metric", self.salient_metric, SALIENT_METRICS)
        require_choice("pbllm", "binarization_statistics", self.binarization_statistics, STATISTICS)
        if self.group_size is not None:
            require_int("pbllm", "group_size", self.group_size, minimum=1, hint="or None for the whole row")
        require_int("pbllm", "block_size", self.block_size, minimum=1)
        require_positive_float("pbllm", "damping", self.damping)
        require_bool("pbllm", "true_sequential", self.true_sequential)


def pbllm_quantize_weight(
    weight: torch.Tensor, hessian: torch.Tensor, config: PBLLMConfig
) -> tuple[torch.Tensor, PBLLMLayout]:
    """Partially binarize one linear's weight (rows, columns); return float32 weights and the layout."""
    work = weight.detach().float().clone()
    hessian = hessian.detach().float().clone()
    rows, columns = work.shape

    # As in the reference, the salient quantizer is fitted before dead columns are zeroed.
    salient_params = fit_minmax(work, config.salient_bits, symmetric=False)
    mask_dead_columns(hessian, work)
    factor = damped_inverse_factor(hessian, config.damping)

    group_size = config.group_size or columns
    binarized = torch.zeros_like(work, dtype=torch.bool)
    means, scales = [], []
    for start, end in column_ranges(columns, group_size):
        group = work[:, start:end]
        if config.salient_metric == "hessian":
            saliency = hessian_saliency(group, factor.diagonal()[start:end])
        else:
            saliency = group.abs()
        binarized[:, start:end] = binarized_mask(saliency, config.binarized_fraction)
        mean, scale = binarization_statistics(group, binarized[:, start:end], config.binarization_statistics)
        means.append(mean.squeeze(1))
        scales.append(scale.squeeze(1))

    signs = torch.ones_like(work)
    codes = torch.zeros_like(work)

    def quantize_column(position: int, column: torch.Tensor, _weight: torch.Tensor) -> torch.Tensor:
        group = position // group_size
        signs[:, position] = binary_sign(column - means[group])
        binary = mean_shifted_sign(column, means[group], scales[group])
        codes[:, position] = quantize_codes(column.unsqueeze(1), salient_params).squeeze(1)
        salient = dequantize_codes(codes[:, position : position + 1], salient_params).squeeze(1)
        return torch.where(binarized[:, position], binary, salient)

    quantized = columnwise_feedback(work, factor, config.block_size, quantize_column)
    layout = PBLLMLayout(
        rows=rows,
        columns=columns,
        salient_count=int((~binarized).sum()),
        salient_bits=config.salient_bits,
        groups=len(means),
    )
    packed = pack_pbllm(
        signs,
        codes,
        binarized,
        torch.stack(means, dim=1),
        torch.stack(scales, dim=1),
        salient_params.scale.squeeze(1),
        salient_params.zero.squeeze(1),
        salient_bits=config.salient_bits,
        group_size=group_size,
        index_format=layout.index_format,
    )
    return quantized, dataclasses.replace(layout, packed=packed)


class PBLLM(CalibratedQuantizer):
    name = "pbllm"
    config_cls = PBLLMConfig

    def quantize_weight(self, weight: torch.Tensor, hessian: torch.Tensor):
        return pbllm_quantize_weight(weight, hessian, self.config)
