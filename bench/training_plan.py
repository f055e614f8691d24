"""Resolving the distillation settings of a method under a profile."""

from __future__ import annotations

import math

from bench.distill import TrainingSettings
from bench.profiles import Profile
from methods.base import ConfigError, Quantizer


def resolve_training(quantizer: Quantizer, profile: Profile, available_blocks: int | None = None) -> TrainingSettings:
    """Merge the method's official training defaults with the profile's overrides.

    Without `profile.train_steps`, the step count is the method's epochs over
    `available_blocks` training blocks, so the caller must count the blocks first.
    """
    defaults = quantizer.training_defaults
    if defaults is None:
        raise ConfigError(f"Method {quantizer.name} does not declare training defaults.")
    batch_size = profile.train_batch_size or defaults.batch_size
    seqlen = profile.train_seqlen or defaults.seqlen
    if profile.train_steps is not None:
        steps = profile.train_steps
    elif available_blocks is not None:
        steps = math.ceil(defaults.epochs * available_blocks / batch_size)
    else:
        raise ConfigError("Count the training blocks first: the profile sets no train_steps.")
    if steps < 1:
        raise ConfigError(f"The number of training steps must be >= 1, got {steps}.")
    if profile.warmup_ratio is not None:
        warmup = math.ceil(profile.warmup_ratio * steps)
    elif defaults.warmup_steps is not None:
        warmup = min(defaults.warmup_steps, steps)
    else:
        warmup = math.ceil(defaults.warmup_ratio * steps)
    return TrainingSettings(
        steps=steps,
        seqlen=seqlen,
        batch_size=batch_size,
        learning_rate=profile.learning_rate if profile.learning_rate is not None else defaults.learning_rate,
        warmup_steps=warmup,
        weight_decay=defaults.weight_decay,
        adam_beta1=defaults.adam_beta1,
        adam_beta2=defaults.adam_beta2,
        save_steps=profile.save_steps,
        seed=profile.seed,
    )
