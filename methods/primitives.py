"""Sign, straight-through estimators and rank-1 scale initialisations shared by the methods.

Every sign here maps 0 to +1, so a stored bit (1 for +1, 0 for -1) always matches the value
the forward pass used.
"""

from __future__ import annotations

import torch


def binary_sign(weight: torch.Tensor) -> torch.Tensor:
    """Return +1 where weight >= 0 and -1 elsewhere, in the weight's dtype."""
    return torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)


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


def rank1_svd_scales(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the best rank-1 approximation of |W| into (out_scale, in_scale).

    |W| ~ out_scale[:, None] * in_scale[None, :], with the singular value shared as its square
    root between the two vectors. The SVD runs in float32. The leading singular vectors of a
    non-negative matrix can be taken non-negative, so both vectors are returned with a
    positive sum.
    """
    magnitude = weight.detach().abs().float()
    u, s, vh = torch.linalg.svd(magnitude, full_matrices=False)
    root = s[0].sqrt()
    out_scale = u[:, 0] * root
    in_scale = vh[0, :] * root
    if out_scale.sum() < 0:
        out_scale, in_scale = -out_scale, -in_scale
    return out_scale, in_scale


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
