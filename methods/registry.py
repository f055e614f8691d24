"""The method registry: one list of names, imported lazily on first use."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from methods.base import ConfigError


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its canonical name, import target and one-line summary."""

    name: str
    target: str
    summary: str
    aliases: tuple[str, ...] = ()


# The single list of methods. Targets are "module:attribute" strings, so `--methods rtn`
# never imports the training or calibration code of other methods.
METHODS: tuple[MethodEntry, ...] = (
    MethodEntry("fp", "methods.fp:FullPrecision", "unquantized reference in the model's dtype", ("fp16",)),
    MethodEntry("rtn", "methods.rtn:SignRTN", "sign(W) times the per-row mean of |W|, no data"),
    MethodEntry(
        "binarymos",
        "methods.binarymos:BinaryMoS",
        "token-adaptive mixture of scaling experts, trained by distillation (QAT)",
    ),
    MethodEntry(
        "onebit",
        "methods.onebit:OneBit",
        "sign matrix with two rank-1 scale vectors and an output LayerNorm, distilled (QAT)",
    ),
    MethodEntry("gptq", "methods.gptq:GPTQ", "GPTQ low-bit (2-bit default) with groups and act-order (PTQ)"),
    MethodEntry("billm", "methods.billm:BiLLM", "salient columns with residual binarization, bell-shaped split (PTQ)"),
    MethodEntry("pbllm", "methods.pbllm:PBLLM", "partially binarized: salient weights at 8 bits, rest binarized (PTQ)"),
)


class UnknownMethodError(ConfigError):
    """Raised for a method name that is not registered."""


def _index() -> dict[str, MethodEntry]:
    index: dict[str, MethodEntry] = {}
    for entry in METHODS:
        for name in (entry.name, *entry.aliases):
            index[name] = entry
    return index


def available() -> list[str]:
    """Return the canonical names of all registered methods."""
    return [entry.name for entry in METHODS]


def resolve(name: str) -> MethodEntry:
    """Return the entry for a method name or alias, with a "did you mean" hint on a miss."""
    index = _index()
    key = name.strip().lower()
    if key in index:
        return index[key]
    close = difflib.get_close_matches(key, list(index), n=1, cutoff=0.6)
    hint = f" Did you mean '{index[close[0]].name}'?" if close else ""
    raise UnknownMethodError(
        f"Unknown method '{name}'.{hint} Available methods: {', '.join(available())} "
        "(run `bench list` for details)."
    )


def load(name: str):
    """Import and return the quantizer class registered under `name`."""
    entry = resolve(name)
    module_name, attribute = entry.target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute)


def create(name: str, overrides: dict | None = None):
    """Build a quantizer instance with its default config updated by `overrides`."""
    quantizer_cls = load(name)
    config = quantizer_cls.config_cls.from_dict(overrides or {})
    return quantizer_cls(config)
