"""The unquantized reference: the model as loaded, in its own dtype."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from methods.base import MethodConfig, Quantizer
from methods.storage import StorageReport


@dataclass
class FullPrecisionConfig(MethodConfig):
    """No options: the reference runs the loaded weights unchanged."""


class FullPrecision(Quantizer):
    name = "fp"
    config_cls = FullPrecisionConfig

    def quantize(self, model: nn.Module, calibration=None) -> nn.Module:
        return model

    def storage_report(self, model: nn.Module):
        first = next(model.parameters())
        return StorageReport(kept_parameters=sum(p.numel() for p in model.parameters()), kept_bits=first.element_size() * 8)
