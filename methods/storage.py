"""Storage accounting: bits stored by component and bits per weight in two conventions.

- `bits_per_weight_linear`: bits of the quantized linear layers (signs, codes, scales, router,
  salient values and their indices, every side array) over the weights of those layers.
- `bits_per_weight_model`: all bits of the model (quantized layers plus the layers kept in
  floating point, counted at `kept_bits` each) over all parameters of the original model.

Counts come from a method's storage formula, or from the tensors of a stored artifact
(bench.artifacts.measured_storage). Side data is counted at 16 bits, the precision the packed
format stores it in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import nn

FLOAT_BITS = 16


@dataclass
class StorageReport:
    """Bits by component for the quantized linears, and the weights they replace."""

    components: dict[str, int] = field(default_factory=dict)  # component name -> bits
    quantized_weights: int = 0  # number of weights in the quantized linear layers
    kept_parameters: int = 0  # parameters left in floating point (embeddings, norms, lm_head)
    kept_bits: int = FLOAT_BITS
    source: str = "formula"  # "formula": from the method's formula; "artifact": measured on a stored artifact

    def add(self, component: str, bits: int) -> None:
        self.components[component] = self.components.get(component, 0) + int(bits)

    @property
    def quantized_bits(self) -> int:
        return sum(self.components.values())

    @property
    def bits_per_weight_linear(self) -> float:
        return self.quantized_bits / self.quantized_weights if self.quantized_weights else float("nan")

    @property
    def total_bytes(self) -> float:
        return (self.quantized_bits + self.kept_parameters * self.kept_bits) / 8

    @property
    def bits_per_weight_model(self) -> float:
        total = self.quantized_weights + self.kept_parameters
        return (self.quantized_bits + self.kept_parameters * self.kept_bits) / total if total else float("nan")

    def to_dict(self) -> dict:
        return {
            "components_bits": dict(self.components),
            "quantized_weights": self.quantized_weights,
            "kept_parameters": self.kept_parameters,
            "kept_bits": self.kept_bits,
            "bits_per_weight_linear": self.bits_per_weight_linear,
            "bits_per_weight_model": self.bits_per_weight_model,
            "total_bytes": self.total_bytes,
            "source": self.source,
        }


def unique_parameter_count(model: nn.Module) -> int:
    """Count parameters once each, so a tied embedding and lm_head count once."""
    return sum(parameter.numel() for parameter in model.parameters())


def report_for_layers(model: nn.Module, layer_bits) -> StorageReport:
    """Build a report from `layer_bits(module) -> Counter | None` over every module of `model`.

    `layer_bits` returns the bits by component of a quantized layer and the number of original
    weights it replaces under the key "weights", or None for modules it does not handle.
    """
    report = StorageReport()
    quantized_parameter_ids = set()
    for module in model.modules():
        counts = layer_bits(module)
        if counts is None:
            continue
        counts = Counter(counts)
        report.quantized_weights += counts.pop("weights")
        for component, bits in counts.items():
            report.add(component, bits)
        quantized_parameter_ids.update(id(parameter) for parameter in module.parameters())
    report.kept_parameters = sum(
        parameter.numel() for parameter in model.parameters() if id(parameter) not in quantized_parameter_ids
    )
    return report
