"""The quantizer base of the post-training methods that run on the calibration engine.

A subclass implements `quantize_weight(weight, hessian) -> (quantized weight, layout)` for one
linear. This base runs the engine, writes each quantized weight back and keeps each linear's
layout for the storage report.

Each layout carries the packed layer of its linear (methods.packed_ptq). `quantize` writes that
layer's dequantized weight back into the nn.Linear, so later layers calibrate on the weights
that are stored, with their float16 side data. `pack` then swaps every linear for its packed
layer, which holds only the packed bits and side data.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Protocol

import torch
from torch import nn

from methods.base import Quantizer
from methods.calibration_engine import CalibrationStats, calibrate_sequentially, validate_calibration
from methods.modules import decoder_linears, set_submodule
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
        """Return the quantized (dequantized float32) weight and its storage layout with the packed layer."""
        raise NotImplementedError

    @torch.no_grad()
    def quantize(self, model: nn.Module, calibration=None) -> nn.Module:
        windows = validate_calibration(calibration, self.name)

        def quantize_linear(name: str, linear: nn.Linear, hessian: torch.Tensor) -> None:
            _, layout = self.quantize_weight(linear.weight.detach(), hessian)
            linear.weight.copy_(layout.packed.dequantize().to(linear.weight.dtype))
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

    def _require_layouts(self, linears: dict[str, nn.Module]) -> None:
        missing = [name for name in linears if name not in self.layouts]
        if missing:
            raise RuntimeError(
                f"{self.name} has no storage layout for {len(missing)} decoder linear(s), such as "
                f"{missing[0]}: call quantize(model, calibration) with this quantizer first."
            )

    @torch.no_grad()
    def pack(self, model: nn.Module) -> int:
        linears = decoder_linears(model)
        self._require_layouts(linears)
        for name, linear in linears.items():
            packed = copy.deepcopy(self.layouts[name].packed)
            packed.set_bias(linear.bias)
            set_submodule(model, name, packed)
        return len(linears)

    def storage_report(self, model: nn.Module) -> StorageReport:
        linears = decoder_linears(model)
        self._require_layouts(linears)
        layouts_by_module = {id(linear): self.layouts[name] for name, linear in linears.items()}

        def layer_bits(module: nn.Module):
            layout = layouts_by_module.get(id(module))
            return None if layout is None else layout.bit_counts()

        return report_for_layers(model, layer_bits)
