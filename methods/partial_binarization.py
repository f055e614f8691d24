"""PB-LLM's partial binarization: which weights stay salient, and the binarization of the rest.

The salient weights are the (1 - f) fraction with the highest saliency in a group of columns,
where f is the binarized fraction. An entry is binarized when its saliency is at most the value
at index floor(f * n) of the group's sorted saliencies, so ties at the threshold are binarized.

The binarized weights use a mean-shifted sign per row: q = alpha * sign(w - mu) + mu. The
reference implementation computes mu and alpha over the whole row of W * mask, so the salient
positions enter as zeros ("zeroed_salient"). "binarized_only" computes them over the binarized
entries alone, which is the statistic the method describes.
"""

from __future__ import annotations

import torch

from methods.primitives import binary_sign

STATISTICS = ("zeroed_salient", "binarized_only")


def binarized_mask(saliency: torch.Tensor, binarized_fraction: float) -> torch.Tensor:
    """Return True for the entries of `saliency` that are binarized, False for the salient ones."""
    flat = saliency.flatten()
    index = min(int(flat.numel() * binarized_fraction), flat.numel() - 1)
    threshold = torch.kthvalue(flat, index + 1).values
    return saliency <= threshold


def binarization_statistics(
    weight: torch.Tensor, binarized: torch.Tensor, statistics: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the per-row mean and scale (rows, 1) of the binarized entries of `weight`."""
    mask = binarized.to(weight.dtype)
    masked = weight * mask
    if statistics == "zeroed_salient":
        mean = masked.mean(dim=1, keepdim=True)
        scale = (masked - mean).abs().mean(dim=1, keepdim=True)
        return mean, scale
    if statistics == "binarized_only":
        count = mask.sum(dim=1, keepdim=True).clamp_min(1)
        mean = masked.sum(dim=1, keepdim=True) / count
        scale = ((weight - mean).abs() * mask).sum(dim=1, keepdim=True) / count
        return mean, scale
    raise ValueError(f"Unknown binarization statistics {statistics!r}; use one of {', '.join(STATISTICS)}.")


def mean_shifted_sign(values: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Return scale * sign(values - mean) + mean, with sign(0) = +1."""
    return scale * binary_sign(values - mean) + mean
