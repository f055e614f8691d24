"""Import of the checkpoints published by the BinaryMoS authors into the harness's BinaryMoSLinear.

The authors' training code (dongwonjo/BinaryMoS) saves its models with `save_pretrained`: a
Llama `config.json` with an extra `num_expert` field, and the latent weights in float16. Their
Hugging Face repositories `dongwonjo/Llama-*-BinaryMoS-E4` use this layout. Inside the decoder
layers, each linear at path P (for example `model.layers.0.self_attn.q_proj`) stores:

    P.weight                  (out, in)   latent weight; its sign is used in the forward pass
    P.bias                    (out,)      only when the Llama config enables biases
    P.gate_linear.weight      (E, in)     bias-free router
    P.in_channel_scale        (E, in)     input scale of each expert
    P.out_channel_scale       (E, out)    output scale of each expert

Every other tensor (embeddings, norms, lm_head) has its plain Llama name.

NOTE: these names follow from the module and parameter names of the official code
(`binarization/binarized_modules.py`, `models/modeling_llama.py`). No published checkpoint file
was opened to confirm them, nor whether the hub repositories ship safetensors or only pickles.

The harness layer keeps the same tensors in the same shapes under other names (`router.weight`, `in_scale`,
`out_scale`) and computes the same formula, with one exception: the official forward uses
`torch.sign`, which maps an exact 0 to 0, and the harness maps it to +1. The importer counts
such weights and reports them in the identity.

Loading a checkpoint of this layout with `AutoModelForCausalLM` would drop the router and
scales without an error, so `bench.models.load_model` rejects it and points here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from bench.models import LoadedModel, ModelInfo, ModelLoadError, parse_dtype
from methods.binarymos import BinaryMoSLinear
from methods.modules import decoder_linears, set_submodule

logger = logging.getLogger(__name__)

EXPERT_COUNT_KEY = "num_expert"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Official tensor suffix -> harness BinaryMoSLinear parameter name.
LINEAR_TENSORS = {
    "weight": "weight",
    "bias": "bias",
    "gate_linear.weight": "router.weight",
    "in_channel_scale": "in_scale",
    "out_channel_scale": "out_scale",
}
EXPERT_TENSORS = ("gate_linear.weight", "in_channel_scale", "out_channel_scale")
# Some transformers versions saved these buffers. The importer recomputes them from the config.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


class OfficialCheckpointError(ModelLoadError):
    """Raised when an official BinaryMoS checkpoint is missing, incomplete or inconsistent."""


@dataclass
class OfficialBinaryMoS:
    """An imported official BinaryMoS model, its tokenizer (None when the checkpoint has none) and identity."""

    model: nn.Module
    tokenizer: object | None
    identity: dict

    def loaded_model(self) -> LoadedModel:
        """Return the import as the harness's LoadedModel, whose info is stored with results."""
        info = ModelInfo(
            name=self.identity["name"],
            source=self.identity["source"],
            revision=self.identity["revision"],
            dtype=self.identity["dtype"],
            origin=self.identity["origin"],
            num_parameters=self.identity["num_parameters"],
        )
        return LoadedModel(model=self.model, tokenizer=self.tokenizer, info=info)


# -- finding the files ------------------------------------------------------------------------


def _is_hub_id(spec: str) -> bool:
    return HUB_ID.fullmatch(spec) is not None and not Path(spec).expanduser().exists()


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise OfficialCheckpointError(f"config.json is missing from {directory}; point at a BinaryMoS checkpoint directory.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise OfficialCheckpointError(f"{path} is not valid JSON ({error}).") from error


def _pickle_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.bin"))


def _pickle_message(where: str, pickles: list[str]) -> str:
    return (
        f"{where} ships its weights only as {', '.join(pickles)} (a pickle), and the harness loads safetensors "
        "only, because unpickling can run arbitrary code. Convert it once on a machine you trust: load the "
        "state dict with torch.load(path, weights_only=True), write it with safetensors.torch.save_file("
        "state_dict, 'model.safetensors') into a directory with the same config.json and tokenizer files, "
        "keeping the tensor names, and pass that directory."
    )


def _weight_files(directory: Path) -> list[Path]:
    """Return the safetensors files of a checkpoint, following a shard index when there is one."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [path.name for path in files if not path.is_file()]
        if missing:
            raise OfficialCheckpointError(f"{index} lists shard(s) {', '.join(missing)} that are not in {directory}.")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = _pickle_files(directory)
    if pickles:
        raise OfficialCheckpointError(_pickle_message(str(directory), pickles))
    raise OfficialCheckpointError(f"{directory} has no *.safetensors weight file.")


def _tensor_locations(files: list[Path]) -> dict[str, Path]:
    """Map every tensor name to the file that contains it, rejecting a name stored twice."""
    locations: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if name in locations:
                    raise OfficialCheckpointError(f"Tensor {name} is stored in both {locations[name].name} and {path.name}.")
                locations[name] = path
    return locations


def _has_official_names(names) -> bool:
    return all(any(name.endswith("." + suffix) for name in names) for suffix in EXPERT_TENSORS)


def _hub_snapshot(repo_id: str) -> tuple[Path, str]:
    """Download (or find in the cache) a hub checkpoint without pickle files; return (directory, commit)."""
    from huggingface_hub import snapshot_download

    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as error:  # the hub raises many error types (offline, not found, gated)
        raise OfficialCheckpointError(
            f"Could not get {repo_id} from the Hugging Face hub or its cache: {error}. Check the id, "
            "or download the repository to a local directory and pass that path."
        ) from error
    return directory, directory.name


def _hub_pickle_files(repo_id: str) -> list[str]:
    from huggingface_hub import list_repo_files

    try:
        return sorted(name for name in list_repo_files(repo_id) if name.endswith(".bin"))
    except Exception as error:  # listing is only for a better message
        logger.debug("Could not list the files of %s: %s", repo_id, error)
        return []


# -- detection --------------------------------------------------------------------------------


def is_official_binarymos(spec: str) -> bool:
    """Return True when `spec` (a local directory or a hub id) is a checkpoint in the official layout.

    A local directory qualifies when its config.json sets `num_expert` and its safetensors
    files contain the router and scale tensors. It also qualifies when it ships only pickle
    (`*.bin`) weights, so that loading fails with the conversion instructions instead of a
    plain Llama load that drops the scales. A hub id qualifies on its config.json
    and, when the hub is reachable, on the tensor names in its safetensors headers. A hub id whose
    config cannot be fetched is not recognised.
    """
    if _is_hub_id(spec):
        return _is_official_on_hub(spec)
    directory = Path(spec).expanduser()
    config_path = directory / "config.json"
    if not config_path.is_file():
        return False
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    if EXPERT_COUNT_KEY not in config:
        return False
    try:
        files = _weight_files(directory)
    except OfficialCheckpointError:
        return bool(_pickle_files(directory))
    return _has_official_names(_tensor_locations(files))


def _is_official_on_hub(repo_id: str) -> bool:
    from huggingface_hub import get_safetensors_metadata, hf_hub_download

    try:
        config = json.loads(Path(hf_hub_download(repo_id, "config.json")).read_text(encoding="utf-8"))
    except Exception as error:  # offline without a cached copy, unknown repo, no config
        logger.info("Could not read config.json of %s from the hub or its cache: %s", repo_id, error)
        return False
    if EXPERT_COUNT_KEY not in config:
        return False
    try:
        metadata = get_safetensors_metadata(repo_id)
    except Exception as error:  # offline, or a repository without safetensors
        logger.info("Deciding %s from its config alone; its safetensors headers are unavailable: %s", repo_id, error)
        return True
    return _has_official_names(metadata.weight_map)


# -- building the model -----------------------------------------------------------------------


def _llama_config(config: dict, directory: Path):
    from transformers import LlamaConfig

    model_type = config.get("model_type")
    if model_type != "llama":
        raise OfficialCheckpointError(
            f"{directory / 'config.json'} has model_type {model_type!r}; official BinaryMoS checkpoints are Llama models."
        )
    experts = config[EXPERT_COUNT_KEY]
    if not isinstance(experts, int) or isinstance(experts, bool) or experts < 1:
        raise OfficialCheckpointError(f"{directory / 'config.json'} sets num_expert={experts!r}; expected an integer >= 1.")
    return LlamaConfig.from_dict({key: value for key, value in config.items() if key != EXPERT_COUNT_KEY}), experts


def _skeleton(llama_config, experts: int) -> nn.Module:
    """Build the Llama model with BinaryMoSLinear decoder linears on the meta device (no memory)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config)
        for name, linear in decoder_linears(model).items():
            layer = BinaryMoSLinear(linear.in_features, linear.out_features, experts, bias=linear.bias is not None)
            set_submodule(model, name, layer)
    return model


def _linear_paths(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, BinaryMoSLinear)}


def _official_names(model: nn.Module) -> dict[str, str]:
    """Map each harness parameter name to the official tensor name that fills it."""
    harness_to_official = {}
    linear_paths = _linear_paths(model)
    official_by_suffix = {harness: official for official, harness in LINEAR_TENSORS.items()}
    for name, _ in model.named_parameters(remove_duplicate=False):
        for suffix, official in official_by_suffix.items():
            path = name[: -len(suffix) - 1]
            if name.endswith("." + suffix) and path in linear_paths:
                harness_to_official[name] = f"{path}.{official}"
                break
        else:
            harness_to_official[name] = name
    return harness_to_official


def _check_shape(official: str, path: Path, found: list[int], expected: torch.Size, experts: int) -> None:
    expected = list(expected)
    if found == expected:
        return
    if official.endswith(EXPERT_TENSORS) and len(found) == 2 and found[1:] == expected[1:]:
        raise OfficialCheckpointError(
            f"config.json sets num_expert={experts}, but tensor {official} in {path.name} has {found[0]} experts "
            f"(shape {tuple(found)}). The config and the weights come from different models."
        )
    raise OfficialCheckpointError(
        f"Tensor {official} in {path.name} has shape {tuple(found)}, expected {tuple(expected)} from config.json."
    )


def _read_state(model: nn.Module, locations: dict[str, Path], experts: int, dtype: torch.dtype, tied: bool):
    """Read, check and cast every tensor the model needs. Return (state dict, count of zero latent weights)."""
    state: dict[str, torch.Tensor] = {}
    zeros = 0
    used = set()
    parameters = dict(model.named_parameters(remove_duplicate=False))
    latent_weights = {f"{path}.weight" for path in _linear_paths(model)}
    files = ", ".join(sorted({path.name for path in locations.values()}))

    for harness, official in _official_names(model).items():
        if tied and harness == "lm_head.weight":
            continue  # filled from the embedding below
        if official not in locations:
            raise OfficialCheckpointError(f"Tensor {official} is missing from {files}.")
        path = locations[official]
        with safe_open(str(path), framework="pt") as handle:
            _check_shape(official, path, handle.get_slice(official).get_shape(), parameters[harness].shape, experts)
            tensor = handle.get_tensor(official)
        if harness in latent_weights:
            zeros += int((tensor == 0).sum())
        state[harness] = tensor.to(dtype)
        used.add(official)

    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
        used.add("lm_head.weight")

    unexpected = sorted(name for name in set(locations) - used if not name.endswith(IGNORED_SUFFIXES))
    if unexpected:
        listed = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise OfficialCheckpointError(
            f"{files} contain unexpected tensor(s) that a Llama BinaryMoS model of this config does not have: {listed}."
        )
    return state, zeros


def _finish(model: nn.Module, state: dict, llama_config, tied: bool) -> None:
    """Put the tensors in place, rebuild the rotary buffers, and check that nothing stayed on meta."""
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=llama_config)
    leftover = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if leftover:
        raise RuntimeError(f"Tensors left unloaded after the import: {', '.join(leftover)}.")
    model.eval()


def _file_hashes(files: list[Path]) -> dict[str, str]:
    hashes = {}
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        hashes[path.name] = digest.hexdigest()
    return hashes


def _load_tokenizer(directory: Path):
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if not any((directory / name).is_file() for name in names):
        logger.warning("%s has no tokenizer files; pass the base model's tokenizer to evaluate it.", directory)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def load_official_binarymos(spec: str, dtype: str | None = None) -> OfficialBinaryMoS:
    """Import an official BinaryMoS checkpoint (local directory or hub id) as a Llama with BinaryMoSLinear layers.

    `dtype` is a harness dtype name (None or "auto": float32 on CPU, bfloat16 on a GPU); the
    stored float16 tensors are cast to it. Raises OfficialCheckpointError naming the tensor and
    file for a missing tensor, a wrong shape or an expert count that differs from the config.
    """
    torch_dtype = parse_dtype(dtype)
    if _is_hub_id(spec):
        directory, commit = _hub_snapshot(spec)
        name, source = spec, spec
    else:
        directory = Path(spec).expanduser().resolve()
        if not directory.is_dir():
            raise OfficialCheckpointError(f"{spec} is neither a local directory nor a Hugging Face id (org/name).")
        commit, name, source = None, directory.name, str(directory)

    config = _read_config(directory)
    if EXPERT_COUNT_KEY not in config:
        raise OfficialCheckpointError(
            f"{directory / 'config.json'} has no num_expert field, so it is not an official BinaryMoS checkpoint; "
            "load it as a plain model instead."
        )
    try:
        files = _weight_files(directory)
    except OfficialCheckpointError:
        pickles = _hub_pickle_files(spec) if commit else []
        if pickles:
            raise OfficialCheckpointError(_pickle_message(spec, pickles)) from None
        raise
    llama_config, experts = _llama_config(config, directory)
    tied = bool(llama_config.tie_word_embeddings)

    model = _skeleton(llama_config, experts)
    state, zeros = _read_state(model, _tensor_locations(files), experts, torch_dtype, tied)
    _finish(model, state, llama_config, tied)
    if zeros:
        # NOTE: the official forward uses torch.sign (0 -> 0) and the harness layer maps 0 to +1,
        # so outputs differ wherever a latent weight is exactly 0.
        logger.warning(
            "%d latent weights of %s are exactly 0: the official forward multiplies them by 0, the harness layer by +1.",
            zeros, name,
        )

    hashes = None if commit else _file_hashes([directory / "config.json", *files])
    revision = commit if commit else "sha256:" + hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]
    identity = {
        "name": name,
        "source": source,
        "revision": revision,
        "files": hashes,
        "format": "official BinaryMoS checkpoint (config num_expert, gate_linear / in_channel_scale / out_channel_scale)",
        "origin": f"official BinaryMoS checkpoint {source}, imported into the harness's BinaryMoSLinear",
        "num_experts": experts,
        "imported_linears": sum(isinstance(module, BinaryMoSLinear) for module in model.modules()),
        "zero_latent_weights": zeros,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "num_parameters": sum(parameter.numel() for parameter in model.parameters()),
    }
    logger.info("Imported %s: %d BinaryMoS linears with %d experts", name, identity["imported_linears"], experts)
    return OfficialBinaryMoS(model=model, tokenizer=_load_tokenizer(directory), identity=identity)
