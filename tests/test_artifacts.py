"""Packed artifacts on tiny models: exact reloads, measured sizes, and rejected corrupt artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import methods
from bench.artifacts import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    ArtifactError,
    load_artifact,
    measured_storage,
    save_artifact,
)
from methods.freezing import FreezeError, freeze
from methods.packed import PackedLinear
from tests.ptq_helpers import small_llama, token_windows

IDENTITY = {"name": "tiny-llama", "revision": "test-r1", "dtype": "float32"}

METHOD_CASES = {
    "rtn": {},
    "binarymos": {},
    "onebit": {},
    "gptq": {"group_size": 16},
    "gptq-static": {"group_size": 16, "static_groups": True},
    "gptq-symmetric": {"group_size": None, "symmetric": True, "bits": 3},
    "billm": {"block_size": 16},
    "pbllm": {},
    "pbllm-csr": {"binarized_fraction": 0.99, "group_size": 16},
}


def build_frozen(case: str, tied: bool = False):
    name = case.split("-")[0]
    model = small_llama()
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    quantizer = methods.create(name, METHOD_CASES[case])
    quantizer.quantize(model, calibration=token_windows(2, 12) if quantizer.calibrates else None)
    if name == "binarymos":
        # Experts that differ, so the router's gates matter in the comparison.
        with torch.no_grad():
            for module in model.modules():
                if hasattr(module, "router"):
                    module.router.weight.normal_(0, 0.5)
                    module.in_scale.mul_(torch.rand_like(module.in_scale) + 0.5)
    formula = quantizer.storage_report(model)
    freeze(quantizer, model)
    return quantizer, model, formula


def save(model, quantizer, directory, formula=None, **kwargs):
    return save_artifact(
        model, directory, method={"name": quantizer.name, "config": quantizer.config.to_dict()},
        model_identity=IDENTITY, base_model="tiny", storage_formula=formula.to_dict() if formula else None, **kwargs,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """{case: (frozen model, formula report, artifact path)} for every method case."""
    root = tmp_path_factory.mktemp("artifacts")
    built = {}
    for case in METHOD_CASES:
        quantizer, model, formula = build_frozen(case)
        built[case] = (model, formula, save(model, quantizer, root / case, formula))
    return built


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_reload_gives_identical_logits(artifacts, case):
    model, _, path = artifacts[case]
    batch = token_windows(3, 16, seed=5)
    loaded = load_artifact(path, expected_model=IDENTITY)
    with torch.no_grad():
        expected = model(batch).logits
        reloaded = loaded.model(batch).logits
    assert torch.equal(expected, reloaded)


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_loaded_model_holds_only_packed_weights(artifacts, case):
    loaded = load_artifact(artifacts[case][2])
    packed = [module for module in loaded.model.modules() if isinstance(module, PackedLinear)]
    assert len(packed) == 2 * 7
    for module in packed:
        for buffer in module.buffers():
            assert buffer.dtype in (torch.uint8, torch.float16, torch.int16, torch.int32)


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_measured_size_matches_formula(artifacts, case):
    _, formula, path = artifacts[case]
    measured = measured_storage(path)
    assert measured.quantized_weights == formula.quantized_weights
    assert measured.kept_parameters == formula.kept_parameters
    assert measured.total_bytes == pytest.approx(formula.total_bytes, rel=0.03)
    assert set(measured.components) <= set(formula.components)
    assert measured.to_dict()["source"] == "artifact"


def test_tied_embedding_stored_once(tmp_path):
    quantizer, model, formula = build_frozen("rtn", tied=True)
    path = save(model, quantizer, tmp_path / "tied", formula)
    stored = load_file(str(path / WEIGHTS_FILE))
    assert "lm_head.weight" not in stored
    loaded = load_artifact(path).model
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert measured_storage(path).kept_parameters == formula.kept_parameters


def test_kept_tensors_rounded_to_float16(artifacts):
    model = artifacts["rtn"][0]
    embedding = model.model.embed_tokens.weight
    assert embedding.dtype == torch.float32
    assert torch.equal(embedding, embedding.half().float())


@pytest.mark.parametrize("case", ["gptq", "gptq-static", "gptq-symmetric", "billm", "pbllm", "pbllm-csr"])
def test_packed_weight_matches_method_output(case):
    """The packed layer dequantizes to the method's float32 weights up to float16 side data."""
    from methods.billm import billm_quantize_weight
    from methods.gptq import gptq_quantize_weight
    from methods.pbllm import pbllm_quantize_weight

    functions = {"gptq": gptq_quantize_weight, "billm": billm_quantize_weight, "pbllm": pbllm_quantize_weight}
    name = case.split("-")[0]
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(24, 40, generator=generator)
    inputs = torch.randn(200, 40, generator=generator)
    hessian = 2 * inputs.T @ inputs / 200
    config = methods.load(name).config_cls.from_dict(METHOD_CASES[case])
    quantized, layout = functions[name](weight, hessian, config)
    dequantized = layout.packed.dequantize()
    assert dequantized.shape == quantized.shape
    assert (dequantized - quantized).abs().max() <= 2e-3 * quantized.abs().max()


def test_pbllm_csr_case_uses_csr():
    from methods.pbllm import PBLLMConfig, pbllm_quantize_weight

    weight = torch.randn(24, 40, generator=torch.Generator().manual_seed(1))
    _, layout = pbllm_quantize_weight(weight, torch.eye(40), PBLLMConfig.from_dict(METHOD_CASES["pbllm-csr"]))
    assert layout.index_format == "csr"
    assert layout.packed.index_format == "csr"


# -- rejected artifacts ------------------------------------------------------------------


@pytest.fixture
def artifact_copy(artifacts, tmp_path):
    path = tmp_path / "copy"
    path.mkdir()
    source = artifacts["gptq"][2]
    for file in source.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    return path


def rewrite_weights(path: Path, change) -> None:
    tensors = load_file(str(path / WEIGHTS_FILE))
    change(tensors)
    save_file(tensors, str(path / WEIGHTS_FILE))


def rewrite_config(path: Path, change) -> None:
    config = json.loads((path / CONFIG_FILE).read_text())
    change(config)
    (path / CONFIG_FILE).write_text(json.dumps(config))


def test_missing_tensor_rejected_and_untouched(artifact_copy):
    rewrite_weights(artifact_copy, lambda tensors: tensors.pop("model.layers.0.mlp.up_proj.scales"))
    before = snapshot(artifact_copy)
    with pytest.raises(ArtifactError, match=r"model\.layers\.0\.mlp\.up_proj\.scales is missing"):
        load_artifact(artifact_copy)
    assert snapshot(artifact_copy) == before


def test_wrong_shape_rejected_and_untouched(artifact_copy):
    def shrink(tensors):
        tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1].clone()

    rewrite_weights(artifact_copy, shrink)
    before = snapshot(artifact_copy)
    with pytest.raises(ArtifactError, match=r"model\.norm\.weight is F16 \[31\], expected F16 \[32\]"):
        load_artifact(artifact_copy)
    assert snapshot(artifact_copy) == before


def test_unknown_format_version_rejected_and_untouched(artifact_copy):
    rewrite_config(artifact_copy, lambda config: config.update(format_version=FORMAT_VERSION + 1))
    before = snapshot(artifact_copy)
    with pytest.raises(ArtifactError, match="format version"):
        load_artifact(artifact_copy)
    assert snapshot(artifact_copy) == before


def test_other_model_rejected_and_untouched(artifact_copy):
    before = snapshot(artifact_copy)
    with pytest.raises(ArtifactError, match="was made from model tiny-llama"):
        load_artifact(artifact_copy, expected_model={"name": "smollm2-135m", "revision": "gguf-sha256:abc"})
    assert snapshot(artifact_copy) == before


def test_config_of_other_architecture_rejected(artifact_copy):
    rewrite_config(artifact_copy, lambda config: config["hf_config"].update(hidden_size=48))
    before = snapshot(artifact_copy)
    with pytest.raises(ArtifactError, match="expected F16"):
        load_artifact(artifact_copy)
    assert snapshot(artifact_copy) == before


def test_garbage_weights_file_rejected(artifact_copy):
    (artifact_copy / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    before = snapshot(artifact_copy)
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_artifact(artifact_copy)
    assert snapshot(artifact_copy) == before


def test_missing_config_rejected(tmp_path):
    with pytest.raises(ArtifactError, match="config.json is missing"):
        load_artifact(tmp_path)


def test_save_refuses_existing_directory(artifacts, artifact_copy):
    model = artifacts["rtn"][0]
    before = snapshot(artifact_copy)
    with pytest.raises(ArtifactError, match="already exists"):
        save(model, methods.create("rtn"), artifact_copy)
    assert snapshot(artifact_copy) == before


def test_failed_overwrite_leaves_artifact(artifact_copy):
    unfrozen = small_llama()
    before = snapshot(artifact_copy)
    with pytest.raises(ArtifactError, match="no packed layers"):
        save(unfrozen, methods.create("rtn"), artifact_copy, overwrite=True)
    assert snapshot(artifact_copy) == before
    assert not [path for path in artifact_copy.parent.iterdir() if path.name.startswith(".copy")]


def test_overwrite_replaces_artifact(artifacts, artifact_copy):
    save(artifacts["rtn"][0], methods.create("rtn"), artifact_copy, overwrite=True)
    assert json.loads((artifact_copy / CONFIG_FILE).read_text())["method"]["name"] == "rtn"
    assert [path.name for path in artifact_copy.parent.iterdir()] == ["copy"]


def test_freeze_unquantized_model_raises():
    with pytest.raises(FreezeError, match="packed no layer"):
        freeze(methods.create("binarymos"), small_llama())


def test_reference_has_no_packed_format():
    from methods.base import ConfigError

    with pytest.raises(ConfigError, match="no packed storage format"):
        freeze(methods.create("fp"), small_llama())
