"""Freezing: turn a quantized model into exactly what its artifact stores, before it is evaluated.

`freeze` packs the quantized layers (Quantizer.pack) and rounds every other parameter and
persistent buffer (embeddings, norms, lm_head) to float16 values, the precision the artifact
stores them in. Those kept tensors stay in the model's compute dtype in memory, because float32
matrix products are much faster than float16 ones on CPUs. A model reloaded from the artifact
is therefore the same function as the frozen model, bit for bit.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from methods.packed import STORAGE_DTYPE, PackedLinear

logger = logging.getLogger(__name__)


class FreezeError(ValueError):
    """Raised when a model cannot be stored in its packed format."""


def kept_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the state-dict entries of `model` outside packed layers, one name per shared tensor."""
    packed_prefixes = tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, PackedLinear))
    kept: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.startswith(packed_prefixes) or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        kept[name] = tensor
    return kept


@torch.no_grad()
def round_kept_to_storage(model: nn.Module) -> int:
    """Round every kept floating tensor to float16 values in place; return how many were rounded."""
    rounded = 0
    for name, tensor in kept_tensors(model).items():
        if not tensor.is_floating_point():
            continue
        stored = tensor.detach().to(STORAGE_DTYPE)
        if not torch.isfinite(stored).all():
            raise FreezeError(
                f"{name} has values outside the float16 range (max |x| = {tensor.abs().max().item():.4g}), "
                "so it cannot be stored in the packed format."
            )
        tensor.data.copy_(stored.to(tensor.dtype))
        rounded += 1
    return rounded


def freeze(quantizer, model: nn.Module) -> nn.Module:
    """Pack `model`'s quantized layers and round its kept tensors to float16, in place; return it."""
    packed = quantizer.pack(model)
    if packed == 0:
        raise FreezeError(f"{quantizer.name} packed no layer: was the model quantized with it first?")
    rounded = round_kept_to_storage(model)
    model.eval()
    logger.info("Froze %s: %d packed layers, %d kept tensors rounded to float16", quantizer.name, packed, rounded)
    return model
