"""Run profiles: named sets of evaluation, training and calibration settings.

Precedence, lowest first: the profile, then a config file (`--config`), then CLI flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from methods.base import ConfigError


@dataclass(frozen=True)
class Profile:
    """Every knob a profile sets. None means "use the method's official default"."""

    name: str
    # Perplexity
    ppl_datasets: tuple[str, ...] = ("wikitext2", "c4")
    ppl_seqlen: int = 2048
    ppl_windows: int | None = None  # None: every window
    eval_batch_size: int = 1
    # Distillation (QAT methods)
    train_datasets: tuple[str, ...] = ("c4_train", "wikipedia")
    train_steps: int | None = None  # None: the method's epochs over the training text
    train_seqlen: int | None = None
    train_batch_size: int | None = None
    learning_rate: float | None = None
    warmup_ratio: float | None = None
    save_steps: int = 500
    # Calibration (PTQ methods)
    calibration_windows: int = 128
    calibration_seqlen: int = 2048
    # Zero-shot
    zeroshot_limit: int | None = None  # None: every example
    zeroshot_batch_size: int = 8
    # Latency (batch 1): prompt length, greedy tokens decoded, untimed and timed passes
    latency_prompt_tokens: int = 512
    latency_decode_tokens: int = 32
    latency_warmup: int = 2
    latency_repeats: int = 5
    seed: int = 0

    def with_overrides(self, overrides: dict[str, Any]) -> "Profile":
        names = {f.name for f in dataclasses.fields(self)} - {"name"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"Unknown profile setting(s) {', '.join(unknown)}. Valid settings: {', '.join(sorted(names))}."
            )
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    # Fits the main job on 2 CPU cores in tens of minutes: short distillation at a learning rate
    # far above the official 2e-5, which belongs to runs of tens of thousands of steps.
    "quick": Profile(
        name="quick",
        ppl_seqlen=512,
        ppl_windows=8,
        train_steps=64,
        train_seqlen=512,
        train_batch_size=1,
        learning_rate=1e-3,
        warmup_ratio=0.03,
        save_steps=16,
        calibration_windows=16,
        calibration_seqlen=512,
        zeroshot_limit=200,
    ),
    # The CI regression check (`bench check`): every method on a few short windows and a small
    # fixed sample of each zero-shot task, so that a run takes minutes on 2 CPU cores. The
    # numbers only guard against changes in behaviour; they do not measure quality.
    "ci": Profile(
        name="ci",
        ppl_seqlen=256,
        ppl_windows=2,
        train_steps=6,
        train_seqlen=256,
        train_batch_size=1,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        save_steps=1000,
        calibration_windows=4,
        calibration_seqlen=256,
        zeroshot_limit=20,
    ),
    "full": Profile(
        name="full",
        ppl_seqlen=2048,
        train_steps=2000,
        train_seqlen=2048,
        train_batch_size=1,
        learning_rate=2e-4,
        warmup_ratio=0.03,
        save_steps=100,
    ),
    # The BinaryMoS paper's protocol: seqlen 2048, every window, C4 + WikiText-2 training text,
    # each method's official optimiser settings and epochs. Meant for GPUs.
    "paper": Profile(
        name="paper",
        train_datasets=("c4_train", "wikitext2_train"),
        save_steps=1000,
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        close = difflib.get_close_matches(name, list(PROFILES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown profile '{name}'.{hint} Available profiles: {', '.join(PROFILES)}.")
    return PROFILES[name]


@dataclass
class ConfigFile:
    """Contents of a `--config` file: a base profile, setting overrides and method options."""

    profile: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_config_file(path: str | Path) -> ConfigFile:
    """Read a TOML or YAML run config with optional keys `profile`, `settings` and `methods`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} not found.")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"Config file {path} could not be parsed: {error}") from error
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must contain a mapping at the top level.")
    unknown = sorted(set(data) - {"profile", "settings", "methods"})
    if unknown:
        raise ConfigError(f"Config file {path} has unknown key(s) {', '.join(unknown)}; use profile, settings, methods.")
    return ConfigFile(data.get("profile"), dict(data.get("settings") or {}), dict(data.get("methods") or {}))
