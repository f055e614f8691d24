"""BiLLM: residual binarization, the mask searches, the block loop, bit accounting and real-layer quality."""

from __future__ import annotations

import pytest
import torch

from methods import registry
from methods.base import ConfigError
from methods.billm import BiLLMConfig, billm_quantize_weight
from methods.binarization_search import rank_columns, salient_column_errors, split_errors
from methods.gptq_core import blockwise_feedback
from methods.ptq_layouts import BiLLMLayout
from methods.residual_binarization import residual_binarize, search_salient_columns
from tests.ptq_helpers import output_error, real_layer_activations, sign_rtn, small_llama, token_windows


def saliency_block(metric: str, rows: int = 40, columns: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, columns, generator=generator)
    return values**2 if metric == "hessian" else values


def test_order1_hand_example():
    values = torch.tensor([[1.0, 3.0], [1.0, 2.0]])
    mask = torch.ones_like(values, dtype=torch.bool)

    # Row 0: mean 2, scale 1, so both values are exact. Row 1: mean 1.5, scale 0.5.
    assert torch.equal(residual_binarize(values, mask, 1), values)


def test_order1_three_values():
    values = torch.tensor([[1.0, 2.0, 6.0]])

    # mean 3, scale mean(|-2|, |-1|, |3|) = 2: 3 - 2, 3 - 2, 3 + 2.
    result = residual_binarize(values, torch.ones_like(values, dtype=torch.bool), 1)

    assert torch.allclose(result, torch.tensor([[1.0, 1.0, 5.0]]))


def test_order2_lowers_error():
    values = saliency_block("magnitude")
    mask = torch.ones_like(values, dtype=torch.bool)

    first = (residual_binarize(values, mask, 1) - values).pow(2).sum()
    second = (residual_binarize(values, mask, 2) - values).pow(2).sum()

    assert second < first


def test_masked_entries_only():
    values = torch.tensor([[1.0, 5.0, 3.0], [2.0, 4.0, 8.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])

    result = residual_binarize(values, mask, 2)

    assert torch.allclose(result, torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("metric", ["hessian", "magnitude"])
def test_column_search_errors_match_binarization(metric):
    saliency = saliency_block(metric)
    ranked = rank_columns(saliency, 10)

    closed_form = salient_column_errors(saliency, ranked)

    values = saliency.double()
    for count in range(1, 11):
        mask = torch.zeros(24, dtype=torch.bool)
        mask[ranked[:count]] = True
        mask = mask.expand_as(values)
        approximation = residual_binarize(values, mask, 2) + residual_binarize(values, ~mask, 2)
        expected = (approximation - values).pow(2).sum()
        assert closed_form[count - 1] == pytest.approx(float(expected), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("metric", ["hessian", "magnitude"])
def test_split_errors_match_binarization(metric):
    saliency = saliency_block(metric, seed=1)
    column_mask = torch.zeros(24, dtype=torch.bool)
    column_mask[[2, 7, 11]] = True
    others = (~column_mask).expand_as(saliency)
    magnitude = (saliency * others).abs()
    thresholds = torch.cat([torch.quantile(magnitude.flatten(), torch.linspace(0.1, 0.9, 81)), torch.zeros(1)])

    closed_form = split_errors(saliency, column_mask, thresholds)

    values = saliency.double()
    for index, threshold in enumerate(thresholds):
        low = (magnitude < threshold) & others
        high = (magnitude >= threshold) & others
        approximation = residual_binarize(values, low, 1) + residual_binarize(values, high, 1)
        expected = ((approximation - values).pow(2) * others).sum()
        assert closed_form[index] == pytest.approx(float(expected), rel=1e-9, abs=1e-9)


def test_salient_search_finds_outlier_column():
    saliency = saliency_block("hessian", rows=64, columns=32)
    saliency[:, 5] *= 400

    column_mask = search_salient_columns(saliency, 49)

    assert column_mask[5]
    assert int(column_mask.sum()) < 32


def test_block_loop_identity_hessian_passes_no_error():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(6, 48, generator=generator)
    factor = torch.eye(48)

    def quantize_block(_start, _end, block):
        return torch.sign(block)

    compensated = blockwise_feedback(weight.clone(), factor, 16, quantize_block, compensate=True)
    plain = blockwise_feedback(weight.clone(), factor, 16, quantize_block, compensate=False)

    assert torch.equal(compensated, plain)


def test_block_loop_passes_error_to_later_blocks_only():
    weight = torch.tensor([[1.0, 1.0, 1.0]])
    factor = torch.tensor([[1.0, 0.5, 0.25], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    seen = []

    def quantize_block(start, end, block):
        seen.append(block.clone())
        return torch.zeros_like(block)

    blockwise_feedback(weight.clone(), factor, 2, quantize_block)

    # Block [0, 2) receives the original weights, with no update between its own columns. Block
    # [2, 3) receives 1 - (1 * 0.25 + 1 * 0.5) after the first block's errors of 1 and 1.
    assert torch.equal(seen[0], torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(seen[1], torch.tensor([[0.25]]))


def test_block_size_not_dividing_columns():
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(8, 80, generator=generator)
    inputs = torch.randn(300, 80, generator=generator)
    hessian = 2 * inputs.T @ inputs / 3

    quantized, layout = billm_quantize_weight(weight, hessian, BiLLMConfig(block_size=32))

    assert layout.block_columns == (32, 32, 16)
    assert all(1 <= count <= width for count, width in zip(layout.salient_columns, layout.block_columns))
    assert quantized.shape == weight.shape


def test_layout_bits_hand_computed():
    layout = BiLLMLayout(rows=4, block_columns=(128, 64), salient_columns=(3, 5))

    counts = layout.bit_counts()

    assert counts == {
        "weights": 768,
        "signs": 768,
        "salient_residual_signs": 4 * 8,
        "group_bitmap": 4 * (192 - 8),
        "salient_column_bitmap": 192,
        "row_statistics": 16 * 8 * 4 * 2,
    }


def test_storage_report_sums_layouts():
    model = small_llama()
    quantizer = registry.create("billm", {"block_size": 16})
    quantizer.quantize(model, calibration=token_windows())

    report = quantizer.storage_report(model)

    expected = sum(sum(v for k, v in layout.bit_counts().items() if k != "weights") for layout in quantizer.layouts.values())
    assert report.quantized_bits == expected
    assert len(quantizer.layouts) == 14
    assert report.bits_per_weight_linear > 1


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"block_size": 0}, "block_size"),
        ({"salient_metric": "abs"}, "salient_metric"),
        ({"max_salient_columns": 0}, "max_salient_columns"),
        ({"split_quantile_low": 0.0}, "split_quantile_low"),
        ({"split_quantile_high": 1.0}, "split_quantile_high"),
        ({"split_quantile_low": 0.8, "split_quantile_high": 0.2}, "split_quantile_low"),
        ({"split_quantile_count": 0}, "split_quantile_count"),
        ({"damping": -1.0}, "damping"),
    ],
    ids=["block-0", "metric", "salient-0", "low-0", "high-1", "low-above-high", "count-0", "damping"],
)
def test_config_rejects_invalid(overrides, field):
    with pytest.raises(ConfigError, match=field):
        registry.create("billm", overrides)


@pytest.mark.slow
def test_real_layer_beats_sign_rtn(data_dir):
    """On real activations of the default model, BiLLM beats plain sign binarization (`rtn`)."""
    for name, (weight, inputs, hessian) in real_layer_activations(data_dir).items():
        quantized, _ = billm_quantize_weight(weight, hessian, BiLLMConfig())

        assert output_error(weight, quantized, inputs) < output_error(weight, sign_rtn(weight), inputs), name
