"""The quantizer base of the post-training methods that run on the calibration engine.

A subclass implements `quantize_weight(weight, hessian) -> (quantized weight, layout)` for one
linear. This base runs the engine, writes each quantized weight back and keeps each linear's
layout for the storage report.

NOTE: the quantized weights are simulated. They are written back as dequantized floats in the
model's dtype until a packed storage format exists; the storage report counts the bits of the
method's packed layout (methods.ptq_layouts), not the bytes held in memory.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch
from torch import nn

from methods.base import Quantizer
from methods.calibration_engine import CalibrationStats, calibrate_sequentially, validate_calibration
from methods.modules import decoder_linears
from methods.storage import StorageReport, report_for_layers

logger = logging.getLogger(__name__)


class Layout(Protocol):
    def bit_counts(self) -> dict[str, int]: ...


class CalibratedQuantizer(Quantizer):
    """A post-training method that quantizes each decoder linear from its calibration Hessian."""

    calibrates = True

    def __init__(self, config):
        super().__init__(config)
        self.layouts: dict[str, Layout] = {}
        self.calibration_stats: CalibrationStats | None = None

    def quantize_weight(self, weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Return the quantized (dequantized float32) weight and its storage layout."""
        raise NotImplementedError

    @torch.no_grad()
    def quantize(self, model: nn.Module, calibration=None) -> nn.Module:
        windows = validate_calibration(calibration, self.name)

        def quantize_linear(name: str, linear: nn.Linear, hessian: torch.Tensor) -> None:
            quantized, layout = self.quantize_weight(linear.weight.detach(), hessian)
            linear.weight.copy_(quantized.to(linear.weight.dtype))
            self.layouts[name] = layout

        self.layouts = {}
        self.calibration_stats = calibrate_sequentially(
            model,
            windows,
            quantize_linear,
            true_sequential=self.config.true_sequential,
            description=f"{self.name} calibration",
        )
        return model

    def storage_report(self, model: nn.Module) -> StorageReport:
        linears = decoder_linears(model)
        missing = [name for name in linears if name not in self.layouts]
        if missing:
            raise RuntimeError(
                f"{self.name} has no storage layout for {len(missing)} decoder linear(s), such as "
                f"{missing[0]}: call quantize(model, calibration) with this quantizer first."
            )
        layouts_by_module = {id(linear): self.layouts[name] for name, linear in linears.items()}

        def layer_bits(module: nn.Module):
            layout = layouts_by_module.get(id(module))
            return None if layout is None else layout.bit_counts()

        return report_for_layers(model, layer_bits)
