"""Packed artifacts: a frozen quantized model stored as a directory of safetensors plus a JSON config.

Layout of an artifact directory:

- `model.safetensors`: every packed layer's buffers (uint8 bit streams, float16 side data,
  int16 or int32 indices) under their state-dict names, and every kept tensor (embeddings,
  norms, lm_head) in float16. A tensor shared by several names (a tied lm_head) is stored once.
- `config.json`: the format version, the method and its config, and the identity of the model
  it was made from (name, revision, dtype) with the spec that loads it. It also has the
  Hugging Face model config, each packed layer's constructor arguments, each tensor's storage
  component, dtype and shape, the shared-tensor aliases, the storage formula and the run context.

Loading reads JSON and safetensors only (nothing is unpickled), checks the format version, the
model identity and every tensor's presence, dtype and shape before any data is read, and never
writes to the directory. Saving writes a sibling temporary directory and renames it into place,
so a failed save leaves any existing artifact as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from methods.freezing import kept_tensors
from methods.packed import STORAGE_DTYPE, PackedLinear, build_from_metadata
from methods.storage import StorageReport

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
KEPT_COMPONENT = "kept"

DTYPE_NAMES = {torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64", torch.float16: "F16"}
DTYPE_BYTES = {"U8": 1, "I16": 2, "I32": 4, "F16": 2, "BF16": 2, "F32": 4, "I64": 8, "BOOL": 1}


class ArtifactError(RuntimeError):
    """Raised for a missing, corrupt or mismatched artifact; the artifact itself is left unchanged."""


@dataclass
class LoadedArtifact:
    model: nn.Module
    config: dict
    directory: Path


def _identity_text(identity: dict) -> str:
    return f"{identity.get('name')} (revision {identity.get('revision')})"


def collect_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str], dict[str, dict]]:
    """Return (tensors to store, component by name, aliases, packed layer metadata) of a frozen model."""
    tensors: dict[str, torch.Tensor] = {}
    components: dict[str, str] = {}
    layers: dict[str, dict] = {}
    for name, module in model.named_modules():
        if not isinstance(module, PackedLinear):
            continue
        layers[name] = module.metadata()
        for buffer_name, buffer in module.named_buffers(recurse=False):
            tensors[f"{name}.{buffer_name}"] = buffer.detach().contiguous()
            components[f"{name}.{buffer_name}"] = module.component_of(buffer_name)
    if not layers:
        raise ArtifactError("The model has no packed layers: freeze it (methods.freezing.freeze) before saving.")

    first_name: dict[int, str] = {}
    aliases: dict[str, str] = {}
    kept = kept_tensors(model)
    for name, tensor in model.state_dict(keep_vars=True).items():
        first = first_name.setdefault(id(tensor), name)
        if first != name:
            aliases[name] = first
    for name, tensor in kept.items():
        stored = tensor.detach()
        tensors[name] = (stored.to(STORAGE_DTYPE) if stored.is_floating_point() else stored).contiguous()
        components[name] = KEPT_COMPONENT
    return tensors, components, aliases, layers


def save_artifact(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    method: dict,
    model_identity: dict,
    base_model: str,
    storage_formula: dict | None = None,
    context: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the frozen `model` as an artifact at `directory` and return its path.

    `method` is {"name", "config"}; `model_identity` is {"name", "revision", "dtype"} of the
    reference model; `base_model` is the spec that loads it (alias, hub id or directory).
    """
    target = Path(directory)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} already exists; choose another directory or remove it first.")
    tensors, components, aliases, layers = collect_tensors(model)
    config = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "model": {key: model_identity.get(key) for key in ("name", "revision", "dtype")},
        "base_model": base_model,
        "hf_config": model.config.to_dict(),
        "packed_layers": layers,
        "tensors": {
            name: {"component": components[name], "dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape)}
            for name, tensor in tensors.items()
        },
        "aliases": aliases,
        "storage_formula": storage_formula,
        "context": context or {},
    }

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "bitbench_format": str(FORMAT_VERSION)})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str), encoding="utf-8")
        _replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Saved the %s artifact to %s (%d tensors)", method.get("name"), target, len(tensors))
    return target


def _replace_directory(staging: Path, target: Path) -> None:
    """Move `staging` to `target`; an existing target is swapped out first and removed only afterwards."""
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    retired.rmdir()
    os.replace(target, retired)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def read_config(directory: str | os.PathLike) -> dict:
    """Read and check an artifact's config.json: presence, JSON syntax and format version."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise ArtifactError(f"Artifact directory {directory} does not exist.")
    if not path.exists():
        raise ArtifactError(f"{path} is missing, so {directory} is not a bitbench artifact. Create one with `bench quantize --save DIR`.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); re-create the artifact with `bench quantize --save DIR`.") from error
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {version!r}, but this bitbench reads version {FORMAT_VERSION}. "
            "Re-create the artifact with this version's `bench quantize --save DIR`."
        )
    for key in ("method", "model", "hf_config", "packed_layers", "tensors", "aliases"):
        if key not in config:
            raise ArtifactError(f"{path} has no '{key}' entry; re-create the artifact with `bench quantize --save DIR`.")
    return config


def check_model_identity(config: dict, expected: dict, directory) -> None:
    """Raise ArtifactError when the artifact was made from another model than `expected`."""
    stored = config["model"]
    for key in ("name", "revision"):
        if expected.get(key) is not None and stored.get(key) != expected.get(key):
            raise ArtifactError(
                f"{Path(directory) / CONFIG_FILE} was made from model {_identity_text(stored)}, "
                f"not {_identity_text(expected)}. Use an artifact of this model, or re-create it with "
                "`bench quantize --model SPEC --save DIR`."
            )


def _file_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Return {tensor name: (dtype, shape)} from a safetensors header, reading no tensor data."""
    if not path.exists():
        raise ArtifactError(f"{path} is missing; re-create the artifact with `bench quantize --save DIR`.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {}
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                header[name] = (tensor_slice.get_dtype(), list(tensor_slice.get_shape()))
            return header
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{path} is not a readable safetensors file ({error}); re-create the artifact.") from error


def build_skeleton(config: dict, dtype: torch.dtype) -> nn.Module:
    """Build the model with empty (meta) kept parameters and empty packed layers from `config`."""
    from accelerate import init_empty_weights
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    hf_values = dict(config["hf_config"])
    model_type = hf_values.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ArtifactError(f"The artifact's model type {model_type!r} is unknown to this transformers version.")
    hf_config = CONFIG_MAPPING[model_type].from_dict(hf_values)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    from methods.modules import set_submodule

    for name, metadata in config["packed_layers"].items():
        try:
            layer = build_from_metadata(metadata)
        except (KeyError, TypeError, ValueError) as error:
            raise ArtifactError(f"Packed layer {name} has invalid metadata {metadata} ({error}).") from error
        set_submodule(model, name, layer)
    return model


def _expected_tensors(model: nn.Module, config: dict) -> dict[str, tuple[str, list[int]]]:
    """Return {name: (dtype, shape)} that the artifact must hold for the model built from its config."""
    expected = {}
    aliases = config["aliases"]
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in aliases:
            continue
        dtype = "F16" if tensor.is_floating_point() else DTYPE_NAMES[tensor.dtype]
        expected[name] = (dtype, list(tensor.shape))
    return expected


def _check_tensors(path: Path, header: dict, expected: dict) -> None:
    problems = []
    for name, (dtype, shape) in expected.items():
        if name not in header:
            problems.append(f"tensor {name} is missing (expected {dtype} {shape})")
            continue
        found_dtype, found_shape = header[name]
        if found_dtype != dtype or found_shape != shape:
            problems.append(f"tensor {name} is {found_dtype} {found_shape}, expected {dtype} {shape}")
    for name in sorted(set(header) - set(expected)):
        problems.append(f"tensor {name} is not part of this model")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ArtifactError(f"{path} does not match its config.json: {shown}. Re-create the artifact with `bench quantize --save DIR`.")


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    parent_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(parent_name) if parent_name else model
    if leaf in module._parameters:
        module._parameters[leaf] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def load_artifact(
    directory: str | os.PathLike, expected_model: dict | None = None, dtype: torch.dtype | None = None
) -> LoadedArtifact:
    """Load a packed artifact as a model in `dtype` (default: the reference model's dtype).

    `expected_model` ({"name", "revision"}) rejects an artifact made from another model.
    """
    directory = Path(directory)
    config = read_config(directory)
    if expected_model is not None:
        check_model_identity(config, expected_model, directory)
    if dtype is None:
        dtype = getattr(torch, config["model"].get("dtype") or "float32")
    path = directory / WEIGHTS_FILE
    header = _file_header(path)
    model = build_skeleton(config, dtype)
    _check_tensors(path, header, _expected_tensors(model, config))

    packed_prefixes = tuple(f"{name}." for name in config["packed_layers"])
    with safe_open(str(path), framework="pt") as handle:
        for name in header:
            tensor = handle.get_tensor(name)
            if not name.startswith(packed_prefixes) and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            _assign(model, name, tensor)
    for alias, stored in config["aliases"].items():
        _assign(model, alias, model.get_parameter(stored) if stored in dict(model.named_parameters()) else model.get_buffer(stored))

    left = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if left:
        raise ArtifactError(f"{path} left {len(left)} tensor(s) empty, such as {left[0]}; re-create the artifact.")
    model.requires_grad_(False)
    model.eval()
    return LoadedArtifact(model=model, config=config, directory=directory)


def artifact_files_bytes(directory: str | os.PathLike) -> int:
    return sum(path.stat().st_size for path in Path(directory).iterdir() if path.is_file())


def artifact_sha256(directory: str | os.PathLike) -> str:
    """Return the SHA-256 of the weights file and config, which identifies an artifact's content."""
    digest = hashlib.sha256()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        with open(Path(directory) / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def measured_storage(directory: str | os.PathLike, config: dict | None = None) -> StorageReport:
    """Measure an artifact's storage by component from its tensors' bytes, read from the file header."""
    directory = Path(directory)
    config = config or read_config(directory)
    header = _file_header(directory / WEIGHTS_FILE)
    report = StorageReport(source="artifact")
    for name, (dtype, shape) in header.items():
        count = 1
        for size in shape:
            count *= size
        component = config["tensors"].get(name, {}).get("component", KEPT_COMPONENT)
        if component == KEPT_COMPONENT:
            if dtype != "F16":
                raise ArtifactError(f"Kept tensor {name} is stored as {dtype}, not F16; re-create the artifact.")
            report.kept_parameters += count
        else:
            report.add(component, count * DTYPE_BYTES[dtype] * 8)
    report.quantized_weights = sum(
        layer["in_features"] * layer["out_features"] for layer in config["packed_layers"].values()
    )
    return report


def measured_storage_dict(directory: str | os.PathLike, config: dict | None = None) -> dict:
    """Return the measured report as the `storage_measured` record field, with the bytes on disk."""
    return {**measured_storage(directory, config).to_dict(), "artifact_bytes": artifact_files_bytes(directory)}


def copy_artifact(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy the artifact at `source` to `target` through a temporary directory; return `target`."""
    source, target = Path(source), Path(target)
    read_config(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copyfile(source / name, staging / name)
        _replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
