"""GPTQ: config checks, the shared column loop, groups, bit accounting and real-layer quality."""

from __future__ import annotations

import pytest
import torch

from methods import registry
from methods.base import ConfigError
from methods.gptq import GPTQConfig, gptq_quantize_weight
from methods.gptq_core import column_ranges
from methods.ptq_layouts import GPTQLayout
from methods.uniform import fake_quantize, fit_minmax
from tests.ptq_helpers import output_error, real_layer_activations, small_llama, token_windows


def grouped_rtn(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest with the same asymmetric min-max groups as GPTQ, without error feedback."""
    quantized = torch.empty_like(weight)
    for start, end in column_ranges(weight.shape[1], group_size):
        group = weight[:, start:end]
        quantized[:, start:end] = fake_quantize(group, fit_minmax(group, bits))
    return quantized


def correlated_inputs(tokens: int, columns: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    return torch.randn(tokens, columns, generator=generator) @ mixing + 0.1 * torch.randn(tokens, columns, generator=generator)


def test_defaults_are_the_2bit_setting():
    config = GPTQConfig()

    assert config.bits == 2
    assert config.group_size == 128
    assert config.symmetric is False
    assert config.act_order is True
    assert config.true_sequential is True
    assert config.static_groups is False
    assert config.damping == 0.01
    assert config.block_size == 128


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"bits": 1}, "bits"),
        ({"bits": 5}, "bits"),
        ({"bits": 2.5}, "bits"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": -1}, "group_size"),
        ({"damping": 0}, "damping"),
        ({"damping": -0.01}, "damping"),
        ({"block_size": 0}, "block_size"),
        ({"act_order": "yes"}, "act_order"),
    ],
    ids=["bits-1", "bits-5", "bits-float", "group-0", "group-negative", "damping-0", "damping-negative", "block-0", "act-order-str"],
)
def test_config_rejects_invalid(overrides, field):
    with pytest.raises(ConfigError, match=field) as error:
        registry.create("gptq", overrides)
    assert repr(next(iter(overrides.values()))) in str(error.value)


def test_config_error_names_valid_bits_range():
    with pytest.raises(ConfigError, match=r"\[2, 4\]"):
        registry.create("gptq", {"bits": 8})


def test_identity_hessian_equals_rtn():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 64, generator=generator)
    config = GPTQConfig(group_size=32, act_order=False, block_size=16)

    quantized, _ = gptq_quantize_weight(weight, torch.eye(64), config)

    assert torch.allclose(quantized, grouped_rtn(weight, 2, 32), atol=1e-6)


def test_group_size_not_dividing_columns():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 80, generator=generator)
    config = GPTQConfig(group_size=32, act_order=False, block_size=32)

    quantized, layout = gptq_quantize_weight(weight, torch.eye(80), config)

    last = weight[:, 64:80]
    assert torch.allclose(quantized[:, 64:80], fake_quantize(last, fit_minmax(last, 2)), atol=1e-6)
    assert layout.groups == 3
    assert layout.bit_counts()["scales"] == 16 * 6 * 3


@pytest.mark.parametrize("act_order, static_groups", [(False, False), (True, False), (True, True)])
def test_groups_hold_at_most_four_levels(act_order, static_groups):
    """Every row of every group uses at most 2^2 values, including the shorter last group."""
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(5, 80, generator=generator)
    inputs = correlated_inputs(200, 80)
    hessian = 2 * inputs.T @ inputs / 4
    config = GPTQConfig(group_size=32, act_order=act_order, static_groups=static_groups, block_size=16)

    quantized, layout = gptq_quantize_weight(weight, hessian, config)

    if act_order and not static_groups:
        order = torch.argsort(hessian.diagonal(), descending=True, stable=True)
    else:
        order = torch.arange(80)
    for start, end in column_ranges(80, 32):
        group = quantized[:, order[start:end]]
        for row in group:
            assert torch.unique(row).numel() <= 4
    assert layout.group_indices == (act_order and not static_groups)


def test_feedback_lowers_output_error():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(16, 96, generator=generator)
    inputs = correlated_inputs(400, 96)
    hessian = 2 * inputs.T @ inputs / 4

    quantized, _ = gptq_quantize_weight(weight, hessian, GPTQConfig(group_size=32))

    assert output_error(weight, quantized, inputs) < output_error(weight, grouped_rtn(weight, 2, 32), inputs)


def test_layout_bits_hand_computed():
    layout = GPTQLayout(rows=8, columns=80, bits=2, group_size=32, symmetric=False, group_indices=True)

    counts = layout.bit_counts()

    # 3 groups (32, 32, 16 columns); 16-bit scales and zero points per row and group;
    # one 16-bit group index per input column.
    assert counts == {"weights": 640, "codes": 1280, "scales": 384, "zero_points": 384, "group_indices": 1280}


def test_layout_symmetric_has_no_zero_points():
    layout = GPTQLayout(rows=4, columns=128, bits=3, group_size=128, symmetric=True, group_indices=False)

    assert layout.bit_counts() == {"weights": 512, "codes": 1536, "scales": 64}


def test_storage_report_of_tiny_model():
    model = small_llama()
    quantizer = registry.create("gptq", {"group_size": 16})
    quantizer.quantize(model, calibration=token_windows())

    report = quantizer.storage_report(model)

    # Per layer: q and o are 32x32, k and v 16x32, gate and up 48x32, down 32x48; with groups
    # of 16 columns, 2 groups per 32-wide row and 3 per 48-wide row.
    shapes = [(32, 32), (16, 32), (16, 32), (32, 32), (48, 32), (48, 32), (32, 48)]
    weights = 2 * sum(rows * columns for rows, columns in shapes)
    groups = 2 * sum(rows * (columns // 16) for rows, columns in shapes)
    group_indices = 2 * sum(columns for _, columns in shapes)
    expected_bits = 2 * weights + 2 * 16 * groups + 16 * group_indices
    assert report.quantized_weights == weights
    assert report.quantized_bits == expected_bits
    assert report.bits_per_weight_linear == pytest.approx(expected_bits / weights)
    total = sum(parameter.numel() for parameter in model.parameters())
    assert report.kept_parameters == total - weights


def test_storage_report_before_quantize_raises():
    quantizer = registry.create("gptq")

    with pytest.raises(RuntimeError, match="call quantize"):
        quantizer.storage_report(small_llama())


@pytest.mark.slow
def test_real_layer_beats_rtn(data_dir):
    """On real activations of the default model, GPTQ 2-bit beats round-to-nearest 2-bit with the same groups."""
    for name, (weight, inputs, hessian) in real_layer_activations(data_dir).items():
        quantized, _ = gptq_quantize_weight(weight, hessian, GPTQConfig())

        gptq_error = output_error(weight, quantized, inputs)
        rtn_error = output_error(weight, grouped_rtn(weight, 2, 128), inputs)
        assert gptq_error < rtn_error, name
