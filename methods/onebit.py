"""OneBit: a sign matrix with two full-precision scale vectors and a LayerNorm on the output.

Each decoder linear becomes

    y = LayerNorm_noaffine(((x * g) sign(W)^T) * h) + b

with g over the input features and h over the output features. The scale vectors start from
a non-negative rank-1 factorisation of |W| (NMF, as the official start checkpoint does) and the
latent weight restarts at sign(W) * 0.01. The output LayerNorm changes the function, so OneBit
is a module replacement, not a weight-only quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import ConfigError, MethodConfig, Quantizer, TrainingDefaults
from methods.losses import logits_kl_batchmean, normalized_hidden_distance_sum
from methods.modules import replace_decoder_linears, replace_modules
from methods.packed import PackedOneBitLinear
from methods.primitives import SignCache, TanhSignSTE, binary_sign, rank1_nmf_scales, rank1_svd_scales
from methods.storage import FLOAT_BITS, report_for_layers


@dataclass
class OneBitConfig(MethodConfig):
    """Options of OneBit; the defaults are those of the official scripts."""

    scale_init: str = "nmf"  # "nmf" (official) or "svd"; both give a non-negative rank-1 fit of |W|
    nmf_iterations: int = 200
    latent_init: float = 0.01  # the latent weight restarts as sign(W) * latent_init
    kd_alpha: float = 1.0  # share of the KL term; 1 - kd_alpha weights the cross-entropy
    kd_loss_scale: float = 0.01  # multiplies the KL term
    kd_beta: float = 1.0  # weight of the normalised hidden-state distance

    def validate(self) -> None:
        if self.scale_init not in ("nmf", "svd"):
            raise ConfigError(f"onebit scale_init must be 'nmf' or 'svd', got '{self.scale_init}'.")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"onebit kd_alpha must be in [0, 1], got {self.kd_alpha}.")
        if self.latent_init <= 0:
            raise ConfigError(f"onebit latent_init must be > 0, got {self.latent_init}.")
        if self.nmf_iterations < 1:
            raise ConfigError(f"onebit nmf_iterations must be >= 1, got {self.nmf_iterations}.")


class OneBitLinear(nn.Module):
    """A binarized linear with input scale g, output scale h and a non-affine output LayerNorm."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.in_scale = nn.Parameter(torch.ones(in_features))
        self.out_scale = nn.Parameter(torch.ones(out_features))
        self.norm = nn.LayerNorm(out_features, elementwise_affine=False)
        self.sign_cache = SignCache()

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: OneBitConfig) -> "OneBitLinear":
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.to(device=weight.device, dtype=weight.dtype)
        if config.scale_init == "nmf":
            out_scale, in_scale = rank1_nmf_scales(weight, iterations=config.nmf_iterations)
        else:
            out_scale, in_scale = rank1_svd_scales(weight)
        with torch.no_grad():
            layer.weight.copy_(binary_sign(weight) * config.latent_init)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
            layer.in_scale.copy_(in_scale)
            layer.out_scale.copy_(out_scale)
        return layer

    def train(self, mode: bool = True):
        self.sign_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.sign_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        signs = TanhSignSTE.apply(self.weight) if torch.is_grad_enabled() else self.sign_cache.get(self.weight)
        output = self.norm(F.linear(x * self.in_scale, signs) * self.out_scale)
        if self.bias is not None:
            output = output + self.bias
        return output

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class OneBit(Quantizer):
    name = "onebit"
    config_cls = OneBitConfig
    trains = True
    # Official LLaMA-7B script: AdamW (0.9, 0.98), weight decay 0.01, lr 4e-4, 500 warm-up
    # steps, cosine schedule, global batch 128 of 2048 tokens, at most 50 epochs.
    training_defaults = TrainingDefaults(
        learning_rate=4e-4,
        warmup_ratio=0.0,
        warmup_steps=500,
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.98,
        batch_size=128,
        seqlen=2048,
        epochs=50.0,
    )

    def quantize(self, model: nn.Module, calibration=None) -> nn.Module:
        replace_decoder_linears(model, lambda name, linear: OneBitLinear.from_linear(linear, self.config))
        return model

    @torch.no_grad()
    def pack(self, model: nn.Module) -> int:
        return replace_modules(model, lambda module: PackedOneBitLinear.from_module(module) if isinstance(module, OneBitLinear) else None)

    def storage_report(self, model: nn.Module):
        def layer_bits(module):
            if not isinstance(module, OneBitLinear):
                return None
            rows, cols = module.out_features, module.in_features
            return {
                "weights": rows * cols,
                "signs": rows * cols,
                "scales": FLOAT_BITS * (rows + cols),
                "bias": FLOAT_BITS * rows if module.bias is not None else 0,
            }

        return report_for_layers(model, layer_bits)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        # Full fine-tuning except the token embedding, which is frozen; lm_head trains only when
        # it is a separate matrix, because a tied lm_head is the embedding itself.
        model.requires_grad_(True)
        embedding = model.get_input_embeddings()
        embedding.requires_grad_(False)
        output = model.get_output_embeddings()
        if output is not None and output.weight is embedding.weight:
            output.requires_grad_(False)
        return [parameter for parameter in model.parameters() if parameter.requires_grad]

    def distillation_loss(self, student_out, teacher_out, input_ids):
        config = self.config
        # NOTE: the KL term uses the "batchmean" reduction (summed over positions); the official
        # scripts scale it by kd_loss_scale = 0.01, which suggests the same summed reduction.
        kl = logits_kl_batchmean(student_out.logits, teacher_out.logits)
        # Hidden states 0..L-1: the embedding output and every layer output but the last.
        hidden = normalized_hidden_distance_sum(student_out.hidden_states[:-1], teacher_out.hidden_states[:-1])
        loss = config.kd_alpha * config.kd_loss_scale * kl + config.kd_beta * hidden
        parts = {"kl": kl.item(), "hidden_distance": hidden.item()}
        if config.kd_alpha < 1.0:
            logits = student_out.logits[:, :-1].float()
            cross_entropy = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))
            loss = loss + (1.0 - config.kd_alpha) * cross_entropy
            parts["cross_entropy"] = cross_entropy.item()
        return loss, parts
