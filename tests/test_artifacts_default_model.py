"""Packed artifacts of the default model (SmolLM2-135M): size against the formula, exact reload.

The post-training methods take minutes on the default model; benchmarks/artifact_sizes.py
checks their sizes.
"""

from __future__ import annotations

import copy

import pytest
import torch

import methods
from bench.artifacts import load_artifact, measured_storage, save_artifact
from methods.freezing import freeze

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["rtn", "binarymos", "onebit"])
def test_default_model_artifact(default_model, tmp_path, method):
    quantizer = methods.create(method)
    model = copy.deepcopy(default_model.model)
    quantizer.quantize(model)
    formula = quantizer.storage_report(model)
    freeze(quantizer, model)
    path = save_artifact(
        model, tmp_path / method, method={"name": method, "config": quantizer.config.to_dict()},
        model_identity=default_model.info.to_dict(), base_model="smollm2-135m", storage_formula=formula.to_dict(),
    )
    measured = measured_storage(path)
    assert measured.total_bytes == pytest.approx(formula.total_bytes, rel=0.03)
    assert measured.bits_per_weight_model == pytest.approx(formula.bits_per_weight_model, rel=0.03)
    assert measured.bits_per_weight_linear == pytest.approx(formula.bits_per_weight_linear, rel=0.03)

    batch = default_model.tokenizer(["The capital of France is Paris, and"], return_tensors="pt").input_ids
    loaded = load_artifact(path, expected_model=default_model.info.to_dict())
    with torch.no_grad():
        assert torch.equal(model(batch).logits, loaded.model(batch).logits)
