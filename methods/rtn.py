"""Plain sign binarization (round to nearest, 1 bit): W ~ sign(W) * mean(|W|) per output row."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import MethodConfig, Quantizer
from methods.modules import decoder_linears, set_submodule
from methods.packed import PackedSignLinear
from methods.primitives import binary_sign, row_mean_abs
from methods.storage import FLOAT_BITS, report_for_layers


@dataclass
class SignRTNConfig(MethodConfig):
    """No options: one float scale per output row, no calibration data."""


class SignRTN(Quantizer):
    name = "rtn"
    config_cls = SignRTNConfig

    @torch.no_grad()
    def quantize(self, model: nn.Module, calibration=None) -> nn.Module:
        # The binarized weight is written back as dense floats; `pack` stores it as signs and scales.
        for linear in decoder_linears(model).values():
            weight = linear.weight
            weight.copy_(binary_sign(weight) * row_mean_abs(weight))
        return model

    @torch.no_grad()
    def pack(self, model: nn.Module) -> int:
        linears = decoder_linears(model)
        for name, linear in linears.items():
            set_submodule(model, name, PackedSignLinear.from_binarized_linear(linear))
        return len(linears)

    def storage_report(self, model: nn.Module):
        linears = {id(linear) for linear in decoder_linears(model).values()}

        def layer_bits(module):
            if id(module) not in linears:
                return None
            rows, cols = module.out_features, module.in_features
            return {"weights": rows * cols, "signs": rows * cols, "scales": FLOAT_BITS * rows}

        return report_for_layers(model, layer_bits)
