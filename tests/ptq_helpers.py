"""Shared pieces of the post-training method tests: a tiny Llama and real layer activations.

`real_layer_activations` runs its own copy of the default model (SmolLM2-135M) on real C4
calibration windows once per test session, so tests that change a shared model cannot affect it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from methods.calibration_engine import _run_layer, capture_layer_inputs
from methods.gptq_core import HessianAccumulator
from methods.modules import decoder_layers, layer_linears
from methods.primitives import binary_sign, row_mean_abs

REAL_LAYER = 2  # a middle layer of the default model, reached through two real layers
REAL_WINDOWS = 4
REAL_SEQLEN = 256


def small_llama(seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def token_windows(count: int = 3, seqlen: int = 12, vocab: int = 96, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count, seqlen), generator=generator)


@torch.no_grad()
def direct_hessians(model: nn.Module, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return 2 X X^T / n of every decoder linear's inputs, from full forward passes of `model`."""
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(layers):
        for name, linear in layer_linears(layer).items():
            full_name = f"{prefix}.{index}.{name}"

            def hook(_module, args, full_name=full_name):
                rows = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[full_name] = sums.get(full_name, 0) + rows.T @ rows

            handles.append(linear.register_forward_pre_hook(hook))
    for window in windows:
        model(window.unsqueeze(0), use_cache=False)
    for handle in handles:
        handle.remove()
    return {name: (2 * total / windows.shape[0]).float() for name, total in sums.items()}


def output_error(weight: torch.Tensor, quantized: torch.Tensor, inputs: torch.Tensor) -> float:
    """Return ||W X - Q X|| / ||W X|| over the rows of `inputs` (tokens, columns)."""
    reference = inputs @ weight.T
    return float((reference - inputs @ quantized.T).norm() / reference.norm())


def sign_rtn(weight: torch.Tensor) -> torch.Tensor:
    """The `rtn` method's weight: sign(W) times the per-row mean of |W|."""
    return binary_sign(weight) * row_mean_abs(weight)


_REAL_CACHE: dict[str, dict] = {}


def real_layer_activations(data_dir) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Return {linear name: (weight, inputs, Hessian)} for the linears of one real decoder layer.

    The inputs are the real activations reaching that layer when the unquantized default model
    reads C4 calibration windows. The Hessian is 2 X X^T / n over the same inputs.
    """
    if "default" in _REAL_CACHE:
        return _REAL_CACHE["default"]
    from bench.calibration import calibration_windows
    from bench.models import load_model

    loaded = load_model("smollm2-135m")
    model = loaded.model
    windows, _ = calibration_windows(loaded.tokenizer, REAL_WINDOWS, REAL_SEQLEN, seed=0, data_dir=data_dir)
    captured = capture_layer_inputs(model, windows)
    layers = decoder_layers(model)

    hidden = captured.hidden_states
    with torch.no_grad():
        for index in range(REAL_LAYER):
            call = captured.layer_calls[index]
            hidden = torch.cat([_run_layer(layers[index], hidden[w : w + 1], call) for w in range(hidden.shape[0])])

    layer = layers[REAL_LAYER]
    linears = layer_linears(layer)
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    accumulators = {name: HessianAccumulator(linear.in_features) for name, linear in linears.items()}

    def record(name: str):
        def hook(_module, args):
            inputs[name].append(args[0].reshape(-1, args[0].shape[-1]).float())
            accumulators[name].add_batch(args[0])

        return hook

    handles = [linear.register_forward_pre_hook(record(name)) for name, linear in linears.items()]
    with torch.no_grad():
        for window in range(hidden.shape[0]):
            _run_layer(layer, hidden[window : window + 1], captured.layer_calls[REAL_LAYER])
    for handle in handles:
        handle.remove()

    _REAL_CACHE["default"] = {
        name: (linear.weight.detach().float().clone(), torch.cat(inputs[name]), accumulators[name].hessian)
        for name, linear in linears.items()
    }
    return _REAL_CACHE["default"]
