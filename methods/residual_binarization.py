"""BiLLM's binary residual approximation and its per-block masks.

Residual binarization of the entries of x selected by a mask, per row: with mu the mean and
alpha = mean |x - mu| over the selected entries, b = alpha * sign(x - mu) + mu. Order 2
binarizes the residual x - b the same way and adds the result. A row with no selected entries
gets 0. Signs follow methods.primitives.binary_sign, so sign(0) = +1 (BiLLM's reference code
uses torch.sign, which maps 0 to 0; only entries exactly at the mean differ).

The masks of a block are searched on a saliency matrix s (w^2 / U[j, j]^2 for the Hessian
metric, w itself for the magnitude metric) and then applied to the real weights:
1. Salient columns: rank the columns by the sum of |s|; for k = 1 .. max_columns, binarize s
   on the top-k columns and on the rest, both at order 2, and keep the k with the lowest
   squared error against s.
2. Bell-shaped split: over quantiles of |s| with the salient columns zeroed (the zeros count in
   the quantiles), split the non-salient entries into |s| < p and |s| >= p, binarize each at
   order 1 (plus the salient columns at order 2), and keep the p with the lowest error.
Ties keep the smallest k and the first quantile, as the reference code's strict comparisons do.
The candidates' errors come from closed forms (methods.binarization_search), which equal the
errors of binarizing each candidate up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.binarization_search import rank_columns, salient_column_errors, split_errors
from methods.primitives import binary_sign


@dataclass(frozen=True)
class BlockMasks:
    """Boolean masks (rows, columns) of one block's three binarized parts."""

    salient: torch.Tensor  # the salient columns, binarized at order 2
    low: torch.Tensor  # non-salient entries with |s| below the split, order 1
    high: torch.Tensor  # non-salient entries with |s| at or above the split, order 1
    salient_columns: int


@dataclass(frozen=True)
class BinarizedTerm:
    """One order of a residual binarization: per-row mean and scale (rows, 1) and the signs."""

    mean: torch.Tensor
    scale: torch.Tensor
    signs: torch.Tensor  # +1 / -1 over the whole matrix; only the masked entries are used


def residual_terms(values: torch.Tensor, mask: torch.Tensor, order: int) -> tuple[torch.Tensor, list[BinarizedTerm]]:
    """Binarize the masked entries of `values` per row with `order` residual terms.

    Returns the approximation (0 outside the mask) and the terms it is the sum of, so a packed
    format can store the signs and statistics that reproduce it.
    """
    weights = mask.to(values.dtype)
    count = weights.sum(dim=-1, keepdim=True).clamp_min(1)
    target = values * weights
    approximation = torch.zeros_like(target)
    terms = []
    for _ in range(order):
        residual = target - approximation
        mean = residual.sum(dim=-1, keepdim=True) / count
        centered = residual - mean
        scale = (centered.abs() * weights).sum(dim=-1, keepdim=True) / count
        signs = binary_sign(centered)
        approximation = approximation + (scale * signs + mean) * weights
        terms.append(BinarizedTerm(mean=mean, scale=scale, signs=signs))
    return approximation, terms


def residual_binarize(values: torch.Tensor, mask: torch.Tensor, order: int) -> torch.Tensor:
    """Binarize the masked entries of `values` (rows, columns) per row with `order` residual terms.

    `mask` broadcasts against `values` and may carry leading candidate dimensions, for example
    (candidates, 1, columns). The result has the broadcast shape and is 0 outside the mask.
    """
    return residual_terms(values, mask, order)[0]


def search_salient_columns(saliency: torch.Tensor, max_columns: int) -> torch.Tensor:
    """Return the boolean column mask (columns,) of the best number of salient columns."""
    columns = saliency.shape[1]
    ranked = rank_columns(saliency, min(max_columns, columns))
    best_count = int(torch.argmin(salient_column_errors(saliency, ranked))) + 1
    column_mask = torch.zeros(columns, dtype=torch.bool, device=saliency.device)
    column_mask[ranked[:best_count]] = True
    return column_mask


def search_split(
    saliency: torch.Tensor, column_mask: torch.Tensor, quantiles: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the (low, high) masks (rows, columns) of the best split of the non-salient entries.

    `column_mask` marks the salient columns; `quantiles` are the fractions at which split points
    of |s| are tried.
    """
    others = (~column_mask).unsqueeze(0).expand_as(saliency)
    magnitude = (saliency * others).abs()
    thresholds = torch.quantile(magnitude.flatten(), quantiles.to(device=magnitude.device, dtype=magnitude.dtype))
    best = thresholds[int(torch.argmin(split_errors(saliency, column_mask, thresholds)))]
    return (magnitude < best) & others, (magnitude >= best) & others


def select_block_masks(saliency: torch.Tensor, max_salient_columns: int, quantiles: torch.Tensor) -> BlockMasks:
    """Search the salient columns, then the split of the rest, of one block's saliency matrix."""
    column_mask = search_salient_columns(saliency, max_salient_columns)
    salient = column_mask.unsqueeze(0).expand_as(saliency)
    low, high = search_split(saliency, column_mask, quantiles)
    return BlockMasks(salient=salient, low=low, high=high, salient_columns=int(column_mask.sum()))


@dataclass(frozen=True)
class BinarizedBlock:
    """The signs, masks and statistics a packed format stores of one binarized block, (rows, columns) unless noted."""

    signs: torch.Tensor  # the order-1 sign of every entry, from the part it belongs to
    residual_signs: torch.Tensor  # the order-2 sign; used on the salient columns only
    high: torch.Tensor  # True for the non-salient entries of the high-magnitude group
    salient_columns: torch.Tensor  # (columns,) boolean
    statistics: torch.Tensor  # (rows, 8): mean and scale of salient order 1, order 2, low, high


def binarize_block_parts(block: torch.Tensor, masks: BlockMasks) -> tuple[torch.Tensor, BinarizedBlock]:
    """Binarize a block like `binarize_block` and also return the signs and statistics it used."""
    salient, (first, second) = residual_terms(block, masks.salient, 2)
    low, (low_term,) = residual_terms(block, masks.low, 1)
    high, (high_term,) = residual_terms(block, masks.high, 1)
    signs = torch.where(masks.salient, first.signs, torch.where(masks.high, high_term.signs, low_term.signs))
    statistics = torch.cat(
        [first.mean, first.scale, second.mean, second.scale, low_term.mean, low_term.scale,
         high_term.mean, high_term.scale],
        dim=1,
    )
    parts = BinarizedBlock(
        signs=signs,
        residual_signs=second.signs,
        high=masks.high,
        salient_columns=masks.salient[0].clone(),
        statistics=statistics,
    )
    return salient + low + high, parts


def binarize_block(block: torch.Tensor, masks: BlockMasks) -> torch.Tensor:
    """Binarize a block of real weights with its masks: salient columns at order 2, the two groups at order 1."""
    return binarize_block_parts(block, masks)[0]
