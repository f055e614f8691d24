"""Finding decoder layers and their linears generically, and swapping modules in place."""

from __future__ import annotations

import logging
from typing import Callable

from torch import nn

logger = logging.getLogger(__name__)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the ModuleList of decoder layers (Llama, Qwen2, Gemma3 and similar models).

    The list is found by shape rather than by attribute path: the first ModuleList whose
    length equals `config.num_hidden_layers`.
    """
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    expected = getattr(text_config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len(module) == expected:
            return module
    raise ValueError(
        f"Could not find the decoder layers of {type(model).__name__}: no ModuleList of "
        f"num_hidden_layers={expected} modules. Only decoder-only transformer models are supported."
    )


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Return the nn.Linear modules inside one decoder layer, by name relative to the layer."""
    return {name: module for name, module in layer.named_modules() if isinstance(module, nn.Linear)}


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Return every nn.Linear inside the decoder layers, by its full name in `model`."""
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    found: dict[str, nn.Linear] = {}
    for index, layer in enumerate(layers):
        for name, linear in layer_linears(layer).items():
            found[f"{prefix}.{index}.{name}"] = linear
    return found


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name` with `module`."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def replace_decoder_linears(model: nn.Module, build: Callable[[str, nn.Linear], nn.Module]) -> int:
    """Replace every decoder linear with `build(name, linear)` and return how many were replaced."""
    targets = decoder_linears(model)
    for name, linear in targets.items():
        set_submodule(model, name, build(name, linear))
    if not targets:
        logger.warning("No decoder linear layers were found to replace; check the model architecture.")
    logger.info("Replaced %d decoder linear layers; embeddings, norms and lm_head are unchanged.", len(targets))
    return len(targets)


def replace_modules(model: nn.Module, build: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace every submodule for which `build(module)` returns a module; return how many were replaced."""
    replacements = {}
    for name, module in model.named_modules():
        replacement = build(module)
        if replacement is not None:
            replacements[name] = replacement
    for name, replacement in replacements.items():
        set_submodule(model, name, replacement)
    return len(replacements)
