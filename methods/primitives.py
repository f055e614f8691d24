"""Sign, straight-through estimators and rank-1 scale initialisations shared by the methods.

Every sign here maps 0 to +1, so a stored bit (1 for +1, 0 for -1) always matches the value
the forward pass used.
"""

from __future__ import annotations

import torch


def binary_sign(weight: torch.Tensor) -> torch.Tensor:
    """Return +1 where weight >= 0 and -1 elsewhere, in the weight's dtype."""
    return torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)


class SignCache:
    """sign(W) of a weight, built once for the many forward passes of an evaluation.

    The owning module clears the cache whenever it switches between training and evaluation
    mode or loads a state dict. A changed version counter also rebuilds it, but that alone is
    not enough: fused optimizers (`torch.optim.AdamW(fused=True)`) update parameters in place
    without bumping their version.
    """

    def __init__(self):
        self._key = None
        self._signs = None

    def clear(self) -> None:
        self._key = None
        self._signs = None

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
        if key != self._key:
            self._signs = binary_sign(weight.detach())
            self._key = key
        return self._signs


class ClippedSignSTE(torch.autograd.Function):
    """sign(w) forward; the gradient passes straight through where |w| < 1 and is 0 elsewhere."""

    @staticmethod
    def forward(ctx, weight):
        ctx.save_for_backward(weight)
        return binary_sign(weight)

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        return grad_output * (weight.abs() < 1).to(grad_output.dtype)


class TanhSignSTE(torch.autograd.Function):
    """sign(w) forward; the backward pass multiplies the gradient by 1.001 - tanh(w)^2."""

    @staticmethod
    def forward(ctx, weight):
        ctx.save_for_backward(weight)
        return binary_sign(weight)

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        return grad_output * (1.001 - torch.tanh(weight) ** 2)


def rank1_svd_scales(
    weight: torch.Tensor, max_iterations: int = 500, tolerance: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the best rank-1 approximation of |W| into (out_scale, in_scale).

    |W| ~ out_scale[:, None] * in_scale[None, :], with the leading singular value shared as its
    square root between the two vectors, in float32. The leading singular triplet comes from
    power iteration started at the positive column means. Because |W| is non-negative, the
    leading singular vectors are non-negative and the iteration converges to them; it is
    orders of magnitude faster than a full `torch.linalg.svd` on CPU and agrees with it to
    float32 precision (tested).
    """
    magnitude = weight.detach().abs().float()
    right = magnitude.mean(dim=0)
    right = right / right.norm()
    sigma = torch.zeros((), dtype=magnitude.dtype, device=magnitude.device)
    for _ in range(max_iterations):
        left = magnitude @ right
        left = left / left.norm()
        product = magnitude.T @ left
        new_sigma = product.norm()
        right = product / new_sigma
        if (new_sigma - sigma).abs() <= tolerance * new_sigma:
            break
        sigma = new_sigma
    root = new_sigma.sqrt()
    return left * root, right * root


def rank1_nmf_scales(
    weight: torch.Tensor, iterations: int = 200, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit |W| ~ a b^T with a, b >= 0 by multiplicative updates (rank-1 NMF, Frobenius loss).

    Starts from seeded random positive vectors, as a random-init NMF does, and returns
    (out_scale a, in_scale b) in float32.
    """
    magnitude = weight.detach().abs().float()
    generator = torch.Generator().manual_seed(seed)
    rows, cols = magnitude.shape
    mean = magnitude.mean().sqrt()
    a = torch.rand(rows, generator=generator).to(magnitude.device) * mean + 1e-6
    b = torch.rand(cols, generator=generator).to(magnitude.device) * mean + 1e-6
    for _ in range(iterations):
        a = a * (magnitude @ b) / (a * (b @ b) + 1e-12)
        b = b * (magnitude.T @ a) / (b * (a @ a) + 1e-12)
    # Balance the two norms so neither vector carries the whole magnitude.
    balance = (a.norm() / b.norm()).sqrt()
    return a / balance, b * balance


def row_mean_abs(weight: torch.Tensor) -> torch.Tensor:
    """Return the per-row mean of |W| as a column vector (out, 1)."""
    return weight.abs().mean(dim=1, keepdim=True)
