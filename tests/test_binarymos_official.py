"""Import of checkpoints in the official BinaryMoS layout, checked against an independent reference."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaForCausalLM

from bench.models import ModelLoadError, load_model
from methods.binarymos import BinaryMoSLinear
from methods.binarymos_official import OfficialCheckpointError, is_official_binarymos, load_official_binarymos
from tests.conftest import tiny_llama_config

EXPERTS = 4
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class OfficialFormulaLinear(nn.Module):
    """The official layer written from its description, holding tensors under the official names."""

    def __init__(self, in_features: int, out_features: int, experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.gate_linear = nn.Linear(in_features, experts, bias=False)
        self.in_channel_scale = nn.Parameter(torch.empty(experts, in_features))
        self.out_channel_scale = nn.Parameter(torch.empty(experts, out_features))

    def forward(self, x):
        leading = x.shape[:-1]
        tokens = x.reshape(-1, x.shape[-1])
        routing = torch.softmax(self.gate_linear(tokens), dim=1, dtype=torch.float32).to(tokens.dtype)
        scaled = tokens * (routing @ self.in_channel_scale)
        output = (scaled @ torch.sign(self.weight).t()) * (routing @ self.out_channel_scale)
        return output.reshape(*leading, -1)


def official_tensors(config, experts: int = EXPERTS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float16 tensors named as an official checkpoint names them."""
    torch.manual_seed(seed)
    plain = LlamaForCausalLM(config)
    tensors = {name: tensor.detach().clone() for name, tensor in plain.state_dict().items()}
    if config.tie_word_embeddings:
        del tensors["lm_head.weight"]
    for layer in range(config.num_hidden_layers):
        for projection in PROJECTIONS:
            path = f"model.layers.{layer}.{projection}"
            out_features, in_features = tensors[f"{path}.weight"].shape
            tensors[f"{path}.weight"] = torch.randn(out_features, in_features) * 0.05
            tensors[f"{path}.gate_linear.weight"] = torch.randn(experts, in_features)
            tensors[f"{path}.in_channel_scale"] = torch.rand(experts, in_features) + 0.5
            tensors[f"{path}.out_channel_scale"] = torch.rand(experts, out_features) * 0.05
    return {name: tensor.to(torch.float16).contiguous() for name, tensor in tensors.items()}


def write_checkpoint(directory, config, tensors, experts: int = EXPERTS):
    directory.mkdir(parents=True, exist_ok=True)
    values = config.to_dict()
    values.update(architectures=["LlamaForCausalLM"], num_expert=experts)
    (directory / "config.json").write_text(json.dumps(values))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def reference_model(config, tensors, experts: int = EXPERTS) -> nn.Module:
    """A plain transformers Llama whose decoder linears compute the official formula."""
    model = LlamaForCausalLM(config)
    for layer in model.model.layers:
        for projection in PROJECTIONS:
            parent_name, child = projection.split(".")
            parent = getattr(layer, parent_name)
            linear = getattr(parent, child)
            setattr(parent, child, OfficialFormulaLinear(linear.in_features, linear.out_features, experts))
    state = {name: tensor.float() for name, tensor in tensors.items()}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture
def config():
    return tiny_llama_config(tie=False)


@pytest.fixture
def tensors(config):
    values = official_tensors(config)
    assert not any((values[f"model.layers.{i}.{p}.weight"] == 0).any() for i in range(2) for p in PROJECTIONS)
    return values


@pytest.fixture
def checkpoint(tmp_path, config, tensors):
    return write_checkpoint(tmp_path / "Tiny-BinaryMoS-E4", config, tensors)


def assert_logits_match(imported, reference, input_ids):
    with torch.no_grad():
        actual = imported(input_ids=input_ids).logits
        expected = reference(input_ids=input_ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_import_matches_official_formula(tmp_path, tie):
    config = tiny_llama_config(tie=tie)
    tensors = official_tensors(config, seed=1)
    directory = write_checkpoint(tmp_path / "checkpoint", config, tensors)
    imported = load_official_binarymos(str(directory), dtype="float32")
    input_ids = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    assert_logits_match(imported.model, reference_model(config, tensors), input_ids)


def test_import_maps_tensors_to_harness_layer(checkpoint, tensors):
    imported = load_official_binarymos(str(checkpoint), dtype="float32")
    layer = imported.model.model.layers[1].mlp.down_proj
    assert isinstance(layer, BinaryMoSLinear)
    path = "model.layers.1.mlp.down_proj"
    assert torch.equal(layer.weight, tensors[f"{path}.weight"].float())
    assert torch.equal(layer.router.weight, tensors[f"{path}.gate_linear.weight"].float())
    assert torch.equal(layer.in_scale, tensors[f"{path}.in_channel_scale"].float())
    assert torch.equal(layer.out_scale, tensors[f"{path}.out_channel_scale"].float())
    assert isinstance(imported.model.lm_head, nn.Linear)
    assert imported.model.lm_head.weight.dtype == torch.float32


def test_import_identity(checkpoint):
    identity = load_official_binarymos(str(checkpoint), dtype="float32").identity
    assert identity["name"] == "Tiny-BinaryMoS-E4"
    assert identity["num_experts"] == EXPERTS
    assert identity["imported_linears"] == 2 * len(PROJECTIONS)
    assert identity["zero_latent_weights"] == 0
    assert identity["dtype"] == "float32"
    assert identity["revision"].startswith("sha256:")
    assert set(identity["files"]) == {"config.json", "model.safetensors"}
    assert "num_expert" not in load_official_binarymos(str(checkpoint)).model.config.to_dict()


def test_revision_changes_with_weights(tmp_path, config, tensors):
    first = write_checkpoint(tmp_path / "a", config, tensors)
    changed = dict(tensors)
    changed["model.norm.weight"] = changed["model.norm.weight"] * 2
    second = write_checkpoint(tmp_path / "b", config, changed)
    assert load_official_binarymos(str(first)).identity["revision"] != load_official_binarymos(str(second)).identity["revision"]


def test_sharded_checkpoint_loads(tmp_path, config, tensors):
    directory = write_checkpoint(tmp_path / "sharded", config, tensors)
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, shard_names in shards.items():
        save_file({name: tensors[name] for name in shard_names}, str(directory / file))
        weight_map.update({name: file for name in shard_names})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    imported = load_official_binarymos(str(directory), dtype="float32")
    input_ids = torch.arange(16).unsqueeze(0)
    assert_logits_match(imported.model, reference_model(config, tensors), input_ids)


def test_tokenizer_loaded_when_present(checkpoint, tiny_model_dir):
    assert load_official_binarymos(str(checkpoint)).tokenizer is None
    for path in tiny_model_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, checkpoint / path.name)
    tokenizer = load_official_binarymos(str(checkpoint)).tokenizer
    assert tokenizer is not None
    assert len(tokenizer("hello world")["input_ids"]) > 0


def test_zero_latent_weight_is_counted(tmp_path, config, tensors):
    tensors["model.layers.0.self_attn.k_proj.weight"][3, 5] = 0
    directory = write_checkpoint(tmp_path / "zeros", config, tensors)
    assert load_official_binarymos(str(directory)).identity["zero_latent_weights"] == 1


def test_detects_official_layout(checkpoint, tmp_path, config):
    assert is_official_binarymos(str(checkpoint))
    plain = tmp_path / "plain"
    LlamaForCausalLM(config).save_pretrained(plain)
    assert not is_official_binarymos(str(plain))
    assert not is_official_binarymos(str(tmp_path / "missing"))


def test_plain_loader_rejects_official_checkpoint(checkpoint):
    with pytest.raises(ModelLoadError, match="official BinaryMoS checkpoint.*load_official_binarymos"):
        load_model(str(checkpoint))


def test_missing_tensor_is_named(tmp_path, config, tensors):
    del tensors["model.layers.1.mlp.down_proj.gate_linear.weight"]
    directory = write_checkpoint(tmp_path / "missing", config, tensors)
    with pytest.raises(OfficialCheckpointError) as error:
        load_official_binarymos(str(directory))
    assert "model.layers.1.mlp.down_proj.gate_linear.weight" in str(error.value)
    assert "model.safetensors" in str(error.value)


def test_wrong_shape_is_named(tmp_path, config, tensors):
    tensors["model.layers.0.self_attn.q_proj.in_channel_scale"] = torch.ones(EXPERTS, 65, dtype=torch.float16)
    directory = write_checkpoint(tmp_path / "shape", config, tensors)
    with pytest.raises(OfficialCheckpointError) as error:
        load_official_binarymos(str(directory))
    message = str(error.value)
    assert "model.layers.0.self_attn.q_proj.in_channel_scale in model.safetensors" in message
    assert "(4, 65)" in message
    assert "(4, 64)" in message


def test_expert_count_mismatch_is_named(tmp_path, config, tensors):
    directory = write_checkpoint(tmp_path / "experts", config, tensors, experts=2)
    with pytest.raises(OfficialCheckpointError) as error:
        load_official_binarymos(str(directory))
    message = str(error.value)
    assert "num_expert=2" in message
    assert "has 4 experts" in message
    assert "tensor model.layers.0.self_attn.q_proj." in message


def test_unexpected_tensor_is_rejected(tmp_path, config, tensors):
    tensors["model.layers.0.self_attn.q_proj.extra_scale"] = torch.ones(3, dtype=torch.float16)
    directory = write_checkpoint(tmp_path / "extra", config, tensors)
    with pytest.raises(OfficialCheckpointError, match="model.layers.0.self_attn.q_proj.extra_scale"):
        load_official_binarymos(str(directory))


def test_pickle_only_checkpoint_is_rejected(tmp_path, config, tensors):
    directory = write_checkpoint(tmp_path / "pickle", config, tensors)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"not read")
    assert is_official_binarymos(str(directory))
    with pytest.raises(OfficialCheckpointError) as error:
        load_official_binarymos(str(directory))
    message = str(error.value)
    assert "pytorch_model.bin" in message
    assert "safetensors only" in message
    assert "safetensors.torch.save_file" in message


def test_config_without_experts_is_rejected(tmp_path, config, tensors):
    directory = write_checkpoint(tmp_path / "no-experts", config, tensors)
    values = json.loads((directory / "config.json").read_text())
    del values["num_expert"]
    (directory / "config.json").write_text(json.dumps(values))
    assert not is_official_binarymos(str(directory))
    with pytest.raises(OfficialCheckpointError, match="no num_expert field"):
        load_official_binarymos(str(directory))


def test_hub_id_uses_snapshot_commit(tmp_path, config, tensors, monkeypatch):
    import huggingface_hub

    snapshot = write_checkpoint(tmp_path / "snapshots" / "0123abcd", config, tensors)
    requested = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        requested.append((repo_id, allow_patterns))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    identity = load_official_binarymos("someone/Tiny-BinaryMoS-E4").identity
    assert identity["name"] == "someone/Tiny-BinaryMoS-E4"
    assert identity["revision"] == "0123abcd"
    assert requested[0][0] == "someone/Tiny-BinaryMoS-E4"
    assert not any(pattern.endswith(".bin") for pattern in requested[0][1])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "mistral"}, "model_type 'mistral'"),
        ({"num_expert": 0}, "num_expert=0; expected an integer >= 1"),
        ({"num_expert": "4"}, "num_expert='4'; expected an integer >= 1"),
    ],
)
def test_invalid_config_is_rejected(tmp_path, config, tensors, change, message):
    directory = write_checkpoint(tmp_path / "bad-config", config, tensors)
    values = json.loads((directory / "config.json").read_text())
    values.update(change)
    (directory / "config.json").write_text(json.dumps(values))
    with pytest.raises(OfficialCheckpointError) as error:
        load_official_binarymos(str(directory))
    assert message in str(error.value)


def test_hub_detection_reads_config_and_headers(tmp_path, checkpoint, tensors, monkeypatch):
    import huggingface_hub

    class Metadata:
        weight_map = {name: "model.safetensors" for name in tensors}

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(checkpoint / filename))
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", lambda repo_id: Metadata())
    assert is_official_binarymos("someone/Tiny-BinaryMoS-E4")

    Metadata.weight_map = {name: "model.safetensors" for name in tensors if "gate_linear" not in name}
    assert not is_official_binarymos("someone/Tiny-BinaryMoS-E4")

    def offline(repo_id):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", offline)
    assert is_official_binarymos("someone/Tiny-BinaryMoS-E4")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: offline(repo_id))
    assert not is_official_binarymos("someone/Tiny-BinaryMoS-E4")
