"""PB-LLM (GPTQ-PB): salient masks, binarization statistics, bit accounting and real-layer quality."""

from __future__ import annotations

import pytest
import torch

from methods import registry
from methods.base import ConfigError
from methods.partial_binarization import binarization_statistics, binarized_mask, mean_shifted_sign
from methods.pbllm import PBLLMConfig, pbllm_quantize_weight
from methods.ptq_layouts import PBLLMLayout
from methods.uniform import fake_quantize, fit_minmax
from tests.ptq_helpers import output_error, real_layer_activations, sign_rtn, small_llama, token_windows


def test_defaults_match_reference():
    config = PBLLMConfig()

    assert config.binarized_fraction == 0.9
    assert config.salient_bits == 8
    assert config.binarization_statistics == "zeroed_salient"
    assert config.group_size is None
    assert config.block_size == 128
    assert config.damping == 0.01


def test_binarized_mask_fraction():
    saliency = torch.randperm(100, generator=torch.Generator().manual_seed(0)).float().view(10, 10)

    mask = binarized_mask(saliency, 0.9)

    # The threshold is the sorted value at index 90, and ties at it are binarized: 0..90.
    assert int(mask.sum()) == 91
    assert torch.equal(mask, saliency <= 90)


def test_statistics_zeroed_salient_hand_example():
    weight = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    binarized = torch.tensor([[True, True, True, False]])

    mean, scale = binarization_statistics(weight, binarized, "zeroed_salient")

    # Over [1, 2, 3, 0]: mean 1.5, scale mean(0.5, 0.5, 1.5, 1.5) = 1.
    assert torch.allclose(mean, torch.tensor([[1.5]]))
    assert torch.allclose(scale, torch.tensor([[1.0]]))


def test_statistics_binarized_only_hand_example():
    weight = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    binarized = torch.tensor([[True, True, True, False]])

    mean, scale = binarization_statistics(weight, binarized, "binarized_only")

    # Over [1, 2, 3]: mean 2, scale mean(1, 0, 1) = 2/3.
    assert torch.allclose(mean, torch.tensor([[2.0]]))
    assert torch.allclose(scale, torch.tensor([[2.0 / 3.0]]))


def test_mean_shifted_sign():
    values = torch.tensor([0.5, 2.0, 1.5])

    result = mean_shifted_sign(values, torch.tensor(1.5), torch.tensor(0.25))

    # sign(0) = +1 for the value at the mean.
    assert torch.allclose(result, torch.tensor([1.25, 1.75, 1.75]))


def test_identity_hessian_parts():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 64, generator=generator)
    config = PBLLMConfig(salient_metric="magnitude", binarization_statistics="binarized_only")

    quantized, layout = pbllm_quantize_weight(weight, torch.eye(64), config)

    binarized = binarized_mask(weight.abs(), 0.9)
    mean, scale = binarization_statistics(weight, binarized, "binarized_only")
    expected_binary = mean_shifted_sign(weight, mean, scale)
    expected_salient = fake_quantize(weight, fit_minmax(weight, 8))
    assert torch.allclose(quantized[binarized], expected_binary[binarized], atol=1e-6)
    assert torch.allclose(quantized[~binarized], expected_salient[~binarized], atol=1e-6)
    assert layout.salient_count == int((~binarized).sum())


def test_statistics_choice_changes_result():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(8, 64, generator=generator)
    inputs = torch.randn(200, 64, generator=generator)
    hessian = 2 * inputs.T @ inputs / 2

    reference, _ = pbllm_quantize_weight(weight, hessian, PBLLMConfig())
    corrected, _ = pbllm_quantize_weight(weight, hessian, PBLLMConfig(binarization_statistics="binarized_only"))

    assert not torch.allclose(reference, corrected)


def test_group_size_not_dividing_columns():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(8, 80, generator=generator)

    quantized, layout = pbllm_quantize_weight(weight, torch.eye(80), PBLLMConfig(group_size=32, block_size=32))

    assert layout.groups == 3
    assert layout.bit_counts()["binary_statistics"] == 16 * 2 * 8 * 3
    assert quantized.shape == weight.shape


def test_layout_bits_bitmap_hand_computed():
    layout = PBLLMLayout(rows=4, columns=100, salient_count=40, salient_bits=8, groups=1)

    counts = layout.bit_counts()

    # CSR would take 40 x 7-bit column indices + 5 x 32-bit row pointers = 440 bits, more than
    # the 400-bit bitmap.
    assert layout.index_format == "bitmap"
    assert counts == {
        "weights": 400,
        "signs": 360,
        "salient_codes": 320,
        "salient_indices": 400,
        "binary_statistics": 128,
        "salient_scales": 128,
    }


def test_layout_bits_csr_hand_computed():
    layout = PBLLMLayout(rows=4, columns=1000, salient_count=40, salient_bits=8, groups=2)

    counts = layout.bit_counts()

    # 40 x 10-bit column indices + 5 x 32-bit row pointers = 560 bits < 4000-bit bitmap.
    assert layout.index_format == "csr"
    assert counts["salient_indices"] == 560
    assert counts["binary_statistics"] == 16 * 2 * 4 * 2


def test_storage_report_sums_layouts():
    model = small_llama()
    quantizer = registry.create("pbllm")
    quantizer.quantize(model, calibration=token_windows())

    report = quantizer.storage_report(model)

    expected = sum(sum(v for k, v in layout.bit_counts().items() if k != "weights") for layout in quantizer.layouts.values())
    assert report.quantized_bits == expected
    assert len(quantizer.layouts) == 14


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"binarized_fraction": 0.0}, "binarized_fraction"),
        ({"binarized_fraction": 1.0}, "binarized_fraction"),
        ({"binarized_fraction": 1.5}, "binarized_fraction"),
        ({"salient_bits": 1}, "salient_bits"),
        ({"salient_metric": "random"}, "salient_metric"),
        ({"binarization_statistics": "corrected"}, "binarization_statistics"),
        ({"group_size": 0}, "group_size"),
        ({"block_size": -4}, "block_size"),
    ],
    ids=["fraction-0", "fraction-1", "fraction-above", "bits-1", "metric", "statistics", "group-0", "block-negative"],
)
def test_config_rejects_invalid(overrides, field):
    with pytest.raises(ConfigError, match=field):
        registry.create("pbllm", overrides)


@pytest.mark.slow
def test_real_layer_beats_sign_rtn(data_dir):
    """On real activations of the default model, PB-LLM beats plain sign binarization (`rtn`)."""
    for name, (weight, inputs, hessian) in real_layer_activations(data_dir).items():
        quantized, _ = pbllm_quantize_weight(weight, hessian, PBLLMConfig())

        assert output_error(weight, quantized, inputs) < output_error(weight, sign_rtn(weight), inputs), name
