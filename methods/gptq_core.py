"""GPTQ machinery shared by the post-training methods.

Notation: a linear's weight W is (rows, columns) = (out_features, in_features). Its Hessian is
H = 2 X X^T / n, where X (columns x tokens) holds the linear's calibration inputs and n is the
number of calibration windows, as GPTQ's reference code counts it. The scale of H cancels out
of every update below, so the choice of n only matters for comparing Hessians.

After damping, GPTQ factors the inverse Hessian as H^-1 = U^T U with U upper triangular (the
"factor" below). Quantizing column i with error e_i = (w_i - q_i) / U[i, i] then moves every
later column j by w_j -= e_i U[i, j], which is the optimal update of the remaining columns.

Two loops apply that update:
- `columnwise_feedback`: the GPTQ loop. Columns are quantized one at a time inside blocks of
  `block_size`. Each error updates the rest of its block at once, and the later blocks after
  the block ends.
- `blockwise_feedback`: BiLLM's variant. A whole block is quantized at once from its current
  weights, and its errors update only the later blocks, never the columns of the same block.

Group and block sizes that do not divide the number of columns end in a shorter last range.
"""

from __future__ import annotations

from typing import Callable

import torch

# (position, column, weight) -> quantized column. `position` is the column's index in the
# (possibly permuted) working weight. `weight` is the working weight, which the loop updates
# between blocks only, so its columns inside the current block keep their values from the
# start of the block.
ColumnQuantizer = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]

# (start, end, block) -> quantized block, for the columns start:end of the working weight.
BlockQuantizer = Callable[[int, int, torch.Tensor], torch.Tensor]


class HessianError(RuntimeError):
    """Raised when a damped Hessian is not positive definite."""


class HessianAccumulator:
    """Running H = 2 X X^T / n of one linear's inputs, in float32."""

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self.hessian = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.samples = 0

    @staticmethod
    def gram(inputs: torch.Tensor) -> torch.Tensor:
        """Return X X^T (columns x columns, float32) of inputs shaped (..., columns)."""
        rows = inputs.reshape(-1, inputs.shape[-1]).float()
        return rows.T @ rows

    def add_gram(self, gram: torch.Tensor, batch: int) -> None:
        """Add the Gram matrix of `batch` samples, as returned by `gram`."""
        self.hessian *= self.samples / (self.samples + batch)
        self.samples += batch
        self.hessian.add_(gram, alpha=2 / self.samples)

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Add inputs of shape (batch, ..., columns); each batch entry counts as one sample."""
        batch = inputs.shape[0] if inputs.dim() > 2 else 1
        self.add_gram(self.gram(inputs), batch)


def column_ranges(columns: int, size: int) -> list[tuple[int, int]]:
    """Split `columns` into (start, end) ranges of `size`; the last range may be shorter."""
    if size < 1:
        raise ValueError(f"Range size must be >= 1, got {size}.")
    return [(start, min(start + size, columns)) for start in range(0, columns, size)]


def mask_dead_columns(hessian: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Handle inputs that were always zero, in place, and return their boolean mask.

    Such a column has H[i, i] = 0, which makes H singular. Its weights never affect the output
    on the calibration data, so they are set to 0 and H[i, i] to 1.
    """
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    return dead


def damped_inverse_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """Return the upper Cholesky factor U of (H + damping * mean(diag H) * I)^-1.

    `hessian` is not modified. Raises HessianError when the damped Hessian is not positive
    definite.
    """
    damped = hessian.clone()
    damped.diagonal().add_(damping * damped.diagonal().mean())
    try:
        lower = torch.linalg.cholesky(damped)
        inverse = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as error:
        raise HessianError(
            f"The Hessian is not positive definite after damping {damping} ({error}). "
            "Increase the damping or use more calibration windows."
        ) from error


def act_order_permutation(hessian: torch.Tensor) -> torch.Tensor:
    """Return the column order of decreasing H[i, i] (GPTQ's act-order), stable on ties."""
    return torch.argsort(hessian.diagonal(), descending=True, stable=True)


def hessian_saliency(weight: torch.Tensor, factor_diagonal: torch.Tensor) -> torch.Tensor:
    """Return w^2 / U[j, j]^2 elementwise: the loss of zeroing each weight, up to a constant.

    `factor_diagonal` contains U[j, j] of the inverse-Hessian factor for the columns of `weight`.
    """
    return weight**2 / factor_diagonal.unsqueeze(0) ** 2


def columnwise_feedback(
    weight: torch.Tensor,
    factor: torch.Tensor,
    block_size: int,
    quantize_column: ColumnQuantizer,
) -> torch.Tensor:
    """Quantize `weight` column by column with GPTQ error feedback and return the result.

    `weight` (float32) is the working copy and is updated in place; `factor` is the output of
    `damped_inverse_factor` for the same column order.
    """
    quantized = torch.zeros_like(weight)
    for start, end in column_ranges(weight.shape[1], block_size):
        block = weight[:, start:end].clone()
        errors = torch.zeros_like(block)
        block_factor = factor[start:end, start:end]

        for offset in range(end - start):
            column = block[:, offset]
            quantized_column = quantize_column(start + offset, column, weight)
            error = (column - quantized_column) / block_factor[offset, offset]
            block[:, offset:] -= error.unsqueeze(1) * block_factor[offset, offset:].unsqueeze(0)
            errors[:, offset] = error
            quantized[:, start + offset] = quantized_column

        weight[:, start:end] = quantized[:, start:end]
        weight[:, end:] -= errors @ factor[start:end, end:]
    return quantized


def blockwise_feedback(
    weight: torch.Tensor,
    factor: torch.Tensor,
    block_size: int,
    quantize_block: BlockQuantizer,
    compensate: bool = True,
) -> torch.Tensor:
    """Quantize `weight` one whole block at a time; errors reach only the later blocks.

    For column i of a block, e_i = (w_i - q_i) / U[i, i]; after the block, the later columns
    receive W[:, end:] -= E U[block, end:]. With `compensate` False, no error is passed on.
    `weight` (float32) is updated in place and the quantized weight is returned.
    """
    quantized = torch.zeros_like(weight)
    for start, end in column_ranges(weight.shape[1], block_size):
        block = weight[:, start:end]
        quantized_block = quantize_block(start, end, block)
        if compensate:
            errors = (block - quantized_block) / factor.diagonal()[start:end].unsqueeze(0)
            weight[:, end:] -= errors @ factor[start:end, end:]
        quantized[:, start:end] = quantized_block
        weight[:, start:end] = quantized_block
    return quantized
