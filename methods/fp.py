"""The unquantized reference: the model as loaded, in its own dtype."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from methods.base import MethodConfig, Quantizer


@dataclass
class FullPrecisionConfig(MethodConfig):
    """No options: the reference runs the loaded weights unchanged."""


class FullPrecision(Quantizer):
    name = "fp"
    config_cls = FullPrecisionConfig

    def quantize(self, model: nn.Module, calibration=None) -> nn.Module:
        return model
