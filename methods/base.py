"""The contract every quantizer follows: a config dataclass plus a model transform."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn


class ConfigError(ValueError):
    """Raised for an invalid method or run configuration, before any model work."""


@dataclass
class MethodConfig:
    """Base for method configs. Every default is a field, so a stored config is complete."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MethodConfig":
        """Build a config from `values`, rejecting unknown keys with the list of valid ones."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"Unknown option(s) {', '.join(unknown)} for {cls.__name__}. "
                f"Valid options: {', '.join(sorted(names)) or '(none)'}."
            )
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ConfigError for values outside their valid range. Subclasses extend this."""


@dataclass
class TrainingDefaults:
    """Distillation settings of a method's official code; a profile may override some."""

    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    batch_size: int
    seqlen: int
    epochs: float
    warmup_steps: int | None = None  # when set, used instead of warmup_ratio


class Quantizer:
    """A registered method. Subclasses set the class attributes and implement `quantize`.

    `trains` marks quantization-aware methods that the runner distills after `quantize`;
    `calibrates` marks post-training methods that need calibration windows.
    `version` counts changes of the implementation that change its results: raising it gives
    the method new record keys and a new training directory, so nothing the earlier code made
    is reused, and the tables leave out a method's records of earlier versions.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    trains: ClassVar[bool] = False
    calibrates: ClassVar[bool] = False
    version: ClassVar[int] = 1
    training_defaults: ClassVar[TrainingDefaults | None] = None

    def __init__(self, config: MethodConfig):
        self.config = config

    def quantize(self, model: nn.Module, calibration=None) -> nn.Module:
        """Transform `model` in place and return it."""
        raise NotImplementedError

    def storage_report(self, model: nn.Module):
        """Return a `methods.storage.StorageReport` of the quantized `model` from the method's formula."""
        raise NotImplementedError

    def pack(self, model: nn.Module) -> int:
        """Replace the quantized layers of `model` with packed layers (methods.packed) in place.

        Return how many layers were packed. Called by methods.freezing.freeze after `quantize`
        (and distillation), so the evaluated model is the stored model.
        """
        raise ConfigError(f"{self.name} has no packed storage format.")

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Mark which parameters train during distillation and return them (QAT methods)."""
        raise NotImplementedError(f"{self.name} is not trained")

    def distillation_loss(self, student_out, teacher_out, input_ids):
        """Return (loss, parts) for one batch, where parts maps term names to floats."""
        raise NotImplementedError(f"{self.name} is not trained")
