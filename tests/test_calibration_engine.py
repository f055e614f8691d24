"""The sequential calibration engine on tiny Llama, Qwen2 and Gemma3 models."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

from methods.calibration_engine import (
    calibrate_sequentially,
    capture_layer_inputs,
    validate_calibration,
)
from methods.gptq_core import HessianAccumulator, column_ranges
from tests.ptq_helpers import direct_hessians, small_llama, token_windows


def record_hessians(model, windows, true_sequential=False, scale=None):
    """Run the engine; return the Hessians it passed, in call order. `scale` multiplies each weight."""
    seen: dict[str, torch.Tensor] = {}

    def quantize_linear(name, linear, hessian):
        seen[name] = hessian.clone()
        if scale is not None:
            linear.weight.mul_(scale)

    calibrate_sequentially(model, windows, quantize_linear, true_sequential=true_sequential)
    return seen


def assert_hessians_close(actual: dict, expected: dict, names) -> None:
    for name in names:
        assert torch.allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5), name


def test_hessian_accumulator_matches_direct():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 5, 6, generator=generator), torch.randn(1, 5, 6, generator=generator)]
    accumulator = HessianAccumulator(6)
    for batch in batches:
        accumulator.add_batch(batch)

    rows = torch.cat([batch.reshape(-1, 6) for batch in batches])
    expected = 2 * rows.T @ rows / 3
    assert accumulator.samples == 3
    assert torch.allclose(accumulator.hessian, expected, rtol=1e-5, atol=1e-6)


def test_engine_hessians_match_direct():
    model = small_llama()
    windows = token_windows()
    expected = direct_hessians(model, windows)

    seen = record_hessians(model, windows)

    assert set(seen) == set(expected)
    assert_hessians_close(seen, expected, expected)


def test_captured_inputs_are_embeddings():
    model = small_llama()
    windows = token_windows()

    captured = capture_layer_inputs(model, windows)

    with torch.no_grad():
        embeddings = model.model.embed_tokens(windows)
    assert captured.hidden_states.shape == (3, 12, 32)
    assert torch.equal(captured.hidden_states, embeddings)
    assert len(captured.layer_calls) == 2
    for call in captured.layer_calls:
        assert "position_embeddings" in call.kwargs
        assert "hidden_states" not in call.kwargs


def test_layer_order():
    model = small_llama()
    seen = record_hessians(model, token_windows())

    layer_of = [int(name.split(".")[2]) for name in seen]
    assert layer_of == sorted(layer_of)
    assert len(seen) == 14


def test_true_sequential_group_order():
    model = small_llama(layers=1)
    seen = list(record_hessians(model, token_windows(), true_sequential=True))

    short = [name.rsplit(".", 1)[-1] for name in seen]
    assert set(short[:3]) == {"q_proj", "k_proj", "v_proj"}
    assert short[3] == "o_proj"
    assert set(short[4:6]) == {"gate_proj", "up_proj"}
    assert short[6] == "down_proj"


def test_next_layer_reads_quantized_outputs():
    model = small_llama()
    windows = token_windows()

    seen = record_hessians(model, windows, scale=0.5)

    # Layer 1's q/k/v inputs depend only on layer 0, which the engine changed before reading
    # layer 1, so they match a direct pass over the final model.
    final = direct_hessians(model, windows)
    names = [f"model.layers.1.self_attn.{part}" for part in ("q_proj", "k_proj", "v_proj")]
    assert_hessians_close(seen, final, names)
    untouched = direct_hessians(small_llama(), windows)
    assert not torch.allclose(seen[names[0]], untouched[names[0]], rtol=1e-3)


def test_true_sequential_reads_quantized_groups():
    model = small_llama()
    windows = token_windows()

    seen = record_hessians(model, windows, true_sequential=True, scale=0.5)

    # Every linear's input depends only on the groups before it, all changed by then.
    final = direct_hessians(model, windows)
    assert_hessians_close(seen, final, final)


def test_one_pass_reads_unquantized_groups():
    model = small_llama()
    windows = token_windows()

    seen = record_hessians(model, windows, true_sequential=False, scale=0.5)

    final = direct_hessians(model, windows)
    name = "model.layers.0.self_attn.o_proj"
    assert not torch.allclose(seen[name], final[name], rtol=1e-3)


def tiny_gemma3() -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=64,
    )
    return Gemma3ForCausalLM(config).eval()


def tiny_qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("build", [tiny_gemma3, tiny_qwen2], ids=["gemma3", "qwen2"])
def test_other_architectures_match_direct(build):
    model = build()
    windows = token_windows(seqlen=12)
    expected = direct_hessians(model, windows)

    seen = record_hessians(model, windows)

    assert set(seen) == set(expected)
    assert_hessians_close(seen, expected, expected)


def test_gemma3_layers_get_their_own_masks():
    model = tiny_gemma3()
    captured = capture_layer_inputs(model, token_windows(seqlen=12))

    sliding = captured.layer_calls[0].kwargs["attention_mask"]
    full = captured.layer_calls[1].kwargs["attention_mask"]
    assert isinstance(sliding, torch.Tensor)
    assert full is None or not torch.equal(sliding, full)
    assert captured.layer_calls[2].kwargs["attention_mask"] is not None
    local_cos = captured.layer_calls[0].kwargs["position_embeddings"][0]
    global_cos = captured.layer_calls[1].kwargs["position_embeddings"][0]
    assert not torch.equal(local_cos, global_cos)


@pytest.mark.parametrize(
    "calibration, message",
    [
        (None, "needs calibration windows"),
        (torch.zeros(3, 4), "torch.long"),
        (torch.zeros(12, dtype=torch.long), "2-D"),
        (torch.zeros(0, 4, dtype=torch.long), "empty"),
    ],
    ids=["none", "float", "one-dimensional", "empty"],
)
def test_rejects_bad_calibration(calibration, message):
    with pytest.raises(ValueError, match=message):
        validate_calibration(calibration, "gptq")


def test_column_ranges_shorter_last():
    assert column_ranges(576, 128) == [(0, 128), (128, 256), (256, 384), (384, 512), (512, 576)]
    assert column_ranges(64, 128) == [(0, 64)]
