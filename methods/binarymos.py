"""BinaryMoS: binary weights with a token-adaptive mixture of scaling experts (NeurIPS 2024).

Each decoder linear keeps a latent weight whose sign is used in the forward pass, plus E
experts of input and output scale vectors. A bias-free router mixes the experts per token:

    g = softmax(W_r x)            (in float32)
    s_in = g S_in,  s_out = g S_out
    y = ((x * s_in) sign(W)^T) * s_out + b

At initialisation every expert holds the rank-1 SVD scales of |W|, so the layer equals a
rank-1 binarized linear whatever the router outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import ConfigError, MethodConfig, Quantizer, TrainingDefaults
from methods.losses import hidden_mse_sum, logits_kl_batchmean
from methods.modules import replace_decoder_linears, replace_modules
from methods.packed import PackedBinaryMoSLinear
from methods.primitives import ClippedSignSTE, SignCache, binary_sign, rank1_svd_scales
from methods.storage import FLOAT_BITS, report_for_layers


@dataclass
class BinaryMoSConfig(MethodConfig):
    """Options of BinaryMoS; the defaults are those of the official training script."""

    num_experts: int = 4
    hidden_loss_weight: float = 10.0  # weight of the summed hidden-state MSE ("l2l_loss_scale")

    def validate(self) -> None:
        if self.num_experts < 1:
            raise ConfigError(f"binarymos num_experts must be >= 1, got {self.num_experts}.")
        if self.hidden_loss_weight < 0:
            raise ConfigError(f"binarymos hidden_loss_weight must be >= 0, got {self.hidden_loss_weight}.")


class ScaledBinaryMatmul(torch.autograd.Function):
    """((x * s_in) sign(W)^T) * s_out with the clipped straight-through gradient for W.

    One autograd node instead of five: the sign matrix is built once per forward and reused in
    the backward pass, and the clip mask is applied in place on the weight gradient. Gradients
    equal those of the composed formula (tested).
    """

    @staticmethod
    def forward(ctx, x, weight, in_scale, out_scale):
        signs = binary_sign(weight)
        scaled_input = x * in_scale
        unscaled = F.linear(scaled_input, signs)
        ctx.save_for_backward(x, weight, signs, in_scale, out_scale, scaled_input, unscaled)
        return unscaled * out_scale

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, signs, in_scale, out_scale, scaled_input, unscaled = ctx.saved_tensors
        grad_unscaled = grad_output * out_scale
        grad_out_scale = grad_output * unscaled
        grad_scaled_input = grad_unscaled @ signs
        grad_x = grad_scaled_input * in_scale
        grad_in_scale = grad_scaled_input * x
        grad_weight = grad_unscaled.reshape(-1, grad_unscaled.shape[-1]).T @ scaled_input.reshape(
            -1, scaled_input.shape[-1]
        )
        grad_weight.masked_fill_(weight.abs() >= 1, 0.0)
        return grad_x, grad_weight, grad_in_scale, grad_out_scale


class BinaryMoSLinear(nn.Module):
    """A binarized linear layer with E scaling experts mixed per token by a router."""

    def __init__(self, in_features: int, out_features: int, num_experts: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.num_experts = num_experts
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.router = nn.Linear(in_features, num_experts, bias=False)
        self.in_scale = nn.Parameter(torch.zeros(num_experts, in_features))
        self.out_scale = nn.Parameter(torch.zeros(num_experts, out_features))
        self.sign_cache = SignCache()

    @classmethod
    def from_linear(cls, linear: nn.Linear, num_experts: int) -> "BinaryMoSLinear":
        """Build the layer from a trained linear: latent weight = W, every expert = rank-1 SVD scales."""
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, num_experts, bias=linear.bias is not None)
        layer.to(device=weight.device, dtype=weight.dtype)
        out_scale, in_scale = rank1_svd_scales(weight)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
            layer.in_scale.copy_(in_scale.expand(num_experts, -1))
            layer.out_scale.copy_(out_scale.expand(num_experts, -1))
        return layer

    def expert_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Return the router's softmax over experts per token, computed in float32."""
        return F.softmax(self.router(x).float(), dim=-1).to(x.dtype)

    def train(self, mode: bool = True):
        self.sign_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.sign_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.expert_weights(x)
        in_scale = gates @ self.in_scale
        out_scale = gates @ self.out_scale
        if torch.is_grad_enabled():
            output = ScaledBinaryMatmul.apply(x, self.weight, in_scale, out_scale)
        else:
            output = F.linear(x * in_scale, self.sign_cache.get(self.weight)) * out_scale
        if self.bias is not None:
            output = output + self.bias
        return output

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer formula composed from autograd operations, as the official code writes it."""
        gates = self.expert_weights(x)
        signs = ClippedSignSTE.apply(self.weight)
        output = F.linear(x * (gates @ self.in_scale), signs) * (gates @ self.out_scale)
        return output + self.bias if self.bias is not None else output

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, num_experts={self.num_experts}"


class BinaryMoS(Quantizer):
    name = "binarymos"
    config_cls = BinaryMoSConfig
    trains = True
    # Version 2: the router's initial weights are drawn from the seeded global generator.
    version = 2
    # Official defaults: HF Trainer with AdamW, cosine schedule, 3 epochs of 2048-token blocks.
    training_defaults = TrainingDefaults(
        learning_rate=2e-5,
        warmup_ratio=0.03,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        batch_size=4,
        seqlen=2048,
        epochs=3.0,
    )

    def quantize(self, model: nn.Module, calibration=None) -> nn.Module:
        experts = self.config.num_experts
        replace_decoder_linears(model, lambda name, linear: BinaryMoSLinear.from_linear(linear, experts))
        return model

    @torch.no_grad()
    def pack(self, model: nn.Module) -> int:
        return replace_modules(model, lambda module: PackedBinaryMoSLinear.from_module(module) if isinstance(module, BinaryMoSLinear) else None)

    def storage_report(self, model: nn.Module):
        def layer_bits(module):
            if not isinstance(module, BinaryMoSLinear):
                return None
            rows, cols, experts = module.out_features, module.in_features, module.num_experts
            return {
                "weights": rows * cols,
                "signs": rows * cols,
                "scales": FLOAT_BITS * experts * (rows + cols),
                "router": FLOAT_BITS * experts * cols,
                "bias": FLOAT_BITS * rows if module.bias is not None else 0,
            }

        return report_for_layers(model, layer_bits)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        # Latent weights, scales and routers train; embeddings, norms and lm_head stay frozen.
        model.requires_grad_(False)
        trainable = []
        for module in model.modules():
            if isinstance(module, BinaryMoSLinear):
                module.requires_grad_(True)
                trainable.extend(module.parameters())
        return trainable

    def distillation_loss(self, student_out, teacher_out, input_ids):
        kl = logits_kl_batchmean(student_out.logits, teacher_out.logits)
        mse = hidden_mse_sum(student_out.hidden_states[1:], teacher_out.hidden_states[1:])
        loss = kl + self.config.hidden_loss_weight * mse
        return loss, {"kl": kl.item(), "hidden_mse": mse.item()}
