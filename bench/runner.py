"""`bench run`: measure the reference and each method under one profile, resuming stored work.

For each method the runner builds the quantized model (calibrating or distilling it when the
method needs that), measures every requested metric, and appends one record per number as soon
as it exists. A record whose key is already stored is reused, never recomputed; distillation
resumes from its last checkpoint, and a finished student is reloaded from its artifact.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

import methods
from bench.artifacts import (
    FORMAT_VERSION,
    artifact_sha256,
    check_model_identity,
    copy_artifact,
    load_artifact,
    measured_storage,
    measured_storage_dict,
    read_config,
    save_artifact,
)
from bench.distill import TrainingSettings, distill, remove_checkpoints
from bench.environment import environment
from bench.latency import LatencyProtocol, measure_latency
from bench.memory import METRIC_NAME, MemoryProtocol, measure_peak_eval
from bench.models import LoadedModel, ModelInfo, check_model_spec, load_model as load_causal_lm, resolve_model
from bench.paths import runs_dir
from bench.perplexity import PerplexityProtocol, evaluate_perplexity
from bench.profiles import Profile
from bench.results import ResultRecord, ResultStore, record_key
from bench.training_data import training_blocks
from bench.training_plan import resolve_training
from methods.base import ConfigError, Quantizer
from methods.freezing import freeze
from methods.packed import FORWARD_VERSION

logger = logging.getLogger(__name__)

METRICS = ("ppl", "zeroshot", "memory", "latency")
LATENCY_PARTS = ("prefill", "decode")
REFERENCE = "fp"


@dataclass
class RunPlan:
    """What `bench run` measures: one model, its reference plus methods, under one profile."""

    model: str
    methods: list[str]
    profile: Profile
    metrics: list[str] = field(default_factory=lambda: ["ppl"])
    method_options: dict[str, dict] = field(default_factory=dict)
    data_dir: str | None = None
    results_dir: Path = Path("results")
    dtype: str | None = None
    command: str | None = None
    runs_dir: Path | None = None  # training checkpoints, students and artifacts; None: the cache's runs/
    remeasure: list[str] = field(default_factory=list)  # metrics measured again even when stored


@dataclass
class MetricJob:
    """One metric to measure on one model state, with the record keys it produces."""

    metric: str  # "ppl", "zeroshot" or "latency"
    stage: str  # "init" or "final"
    protocol: object
    keys: dict[str, str]  # sub-metric (e.g. "wikitext2") -> record key


def _validate_plan(plan: RunPlan) -> dict[str, Quantizer]:
    unknown = [metric for metric in [*plan.metrics, *plan.remeasure] if metric not in METRICS]
    if unknown:
        raise ConfigError(f"Unknown metric(s) {', '.join(unknown)}. Available metrics: {', '.join(METRICS)}.")
    not_run = [metric for metric in plan.remeasure if metric not in plan.metrics]
    if not_run:
        raise ConfigError(
            f"--remeasure {','.join(not_run)} names metric(s) this run does not measure; add them to --metrics "
            f"(now {','.join(plan.metrics)})."
        )
    if "latency" in plan.metrics:
        _latency_protocol(plan.profile)
    names = [REFERENCE] + [methods.resolve(name).name for name in plan.methods]
    quantizers = {}
    for name in dict.fromkeys(names):
        quantizers[name] = methods.create(name, plan.method_options.get(name))
    return quantizers


def _latency_protocol(profile: Profile) -> LatencyProtocol:
    try:
        return LatencyProtocol(
            prompt_tokens=profile.latency_prompt_tokens,
            decode_tokens=profile.latency_decode_tokens,
            warmup=profile.latency_warmup,
            repeats=profile.latency_repeats,
            seed=profile.seed,
        )
    except ValueError as error:
        raise ConfigError(f"{error} Set it with the latency_* profile settings.") from error


def _zeroshot_module():
    try:
        from bench import zeroshot
    except ImportError as error:
        raise ConfigError(f"The zeroshot metric is not available in this build ({error}).") from error
    return zeroshot


def _check_data(plan: RunPlan, quantizers: dict[str, Quantizer]) -> None:
    """Fail before any model work when a needed dataset is missing."""
    from bench.data import load_texts
    from bench.perplexity import DATASETS

    if "ppl" in plan.metrics:
        for dataset in plan.profile.ppl_datasets:
            load_texts(DATASETS[dataset], plan.data_dir)
    if any(quantizer.trains for quantizer in quantizers.values()):
        for dataset in plan.profile.train_datasets:
            load_texts(dataset, plan.data_dir)
    if any(quantizer.calibrates for quantizer in quantizers.values()):
        load_texts("c4_train", plan.data_dir)
    if "zeroshot" in plan.metrics:
        zeroshot = _zeroshot_module()
        zeroshot.check_zeroshot_data(_zeroshot_protocol(plan.profile), plan.data_dir)


def _zeroshot_protocol(profile: Profile):
    zeroshot = _zeroshot_module()
    try:
        return zeroshot.ZeroShotProtocol(limit=profile.zeroshot_limit, seed=profile.seed, batch_size=profile.zeroshot_batch_size)
    except ValueError as error:
        raise ConfigError(str(error)) from error


class Runner:
    """Executes a RunPlan; see the module docstring."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.store = ResultStore(plan.results_dir)
        self.quantizers = _validate_plan(plan)
        self.reference: LoadedModel | None = None
        self.covered: list[str] = []
        # Method identities read from a stored artifact, which may come from an earlier method version.
        self.stored_identities: dict[str, dict] = {}

    # -- identities -------------------------------------------------------------------------

    def _model_identity(self) -> dict:
        info = self.reference.info
        return {"name": info.name, "revision": info.revision, "dtype": info.dtype}

    def _method_identity(self, quantizer: Quantizer) -> dict:
        if quantizer.name in self.stored_identities:
            return self.stored_identities[quantizer.name]
        identity = {"name": quantizer.name, "config": quantizer.config.to_dict()}
        # Version 1 is left out, so the keys of records made before versions existed stay valid.
        if quantizer.version != 1:
            identity["version"] = quantizer.version
        return identity

    def _jobs(self, quantizer: Quantizer, base: dict) -> list[MetricJob]:
        profile = self.plan.profile
        jobs = []
        if quantizer.name != REFERENCE:
            # Methods are measured on their packed artifact, whose float16 side data changes the
            # numbers slightly, so records of the earlier dense-float models are not reused.
            base = {**base, "storage_format": FORMAT_VERSION}
        stages = ["init", "final"] if quantizer.trains else ["final"]
        if "ppl" in self.plan.metrics:
            for stage in stages:
                for dataset in profile.ppl_datasets:
                    protocol = PerplexityProtocol(
                        dataset, seqlen=profile.ppl_seqlen, windows=profile.ppl_windows,
                        batch_size=profile.eval_batch_size, seed=profile.seed,
                    )
                    key = record_key({**base, "metric": "ppl", "protocol": asdict(protocol), "stage": stage})
                    jobs.append(MetricJob("ppl", stage, protocol, {dataset: key}))
        if "memory" in self.plan.metrics:
            protocol = MemoryProtocol(
                dataset=profile.ppl_datasets[0], seqlen=profile.ppl_seqlen, batch_size=profile.eval_batch_size
            )
            key = record_key({**base, "metric": METRIC_NAME, "protocol": asdict(protocol)})
            jobs.append(MetricJob("memory", "final", protocol, {METRIC_NAME: key}))
        if "zeroshot" in self.plan.metrics:
            protocol = _zeroshot_protocol(profile)
            # A local-file run and a hub run of the same task must not share a key.
            sources = _zeroshot_module().task_sources(protocol, self.plan.data_dir)
            keys = {}
            for task in protocol.tasks:
                for metric in ("acc", "acc_norm", "gold_loglik"):
                    keys[f"{task}/{metric}"] = record_key(
                        {**base, "metric": "zeroshot", "protocol": asdict(protocol), "task": task, "name": metric,
                         "source": sources[task]}
                    )
            jobs.append(MetricJob("zeroshot", "final", protocol, keys))
        if "latency" in self.plan.metrics:
            protocol = _latency_protocol(profile)
            # The device is part of the key, so a GPU figure never replaces a CPU one.
            latency_base = {**base, "metric": "latency", "protocol": asdict(protocol), "device": environment()["device"]}
            if quantizer.name != REFERENCE:
                latency_base["forward_version"] = FORWARD_VERSION
            keys = {part: record_key({**latency_base, "name": part}) for part in LATENCY_PARTS}
            jobs.append(MetricJob("latency", "final", protocol, keys))
        return jobs

    def _missing(self, job: MetricJob) -> bool:
        if job.metric in self.plan.remeasure:
            return True
        stored = {record["key"] for record in self.store.records()}
        if job.metric == "zeroshot":
            # acc_norm does not exist for every task, so the acc records decide.
            return any(key not in stored for name, key in job.keys.items() if name.endswith("/acc"))
        return any(key not in stored for key in job.keys.values())

    # -- model preparation ----------------------------------------------------------------

    def _training_settings(self, quantizer: Quantizer) -> tuple[TrainingSettings, int | None]:
        profile = self.plan.profile
        if profile.train_steps is not None:
            settings = resolve_training(quantizer, profile)
            return settings, settings.steps * settings.batch_size
        return None, None

    def _prepare_training(self, quantizer: Quantizer):
        """Return (settings, blocks, data description) for a QAT method."""
        profile = self.plan.profile
        settings, max_blocks = self._training_settings(quantizer)
        seqlen = settings.seqlen if settings else (profile.train_seqlen or quantizer.training_defaults.seqlen)
        blocks, description = training_blocks(
            self.reference.tokenizer, profile.train_datasets, seqlen, max_blocks, profile.seed, self.plan.data_dir
        )
        if settings is None:
            settings = resolve_training(quantizer, profile, available_blocks=blocks.shape[0])
        return settings, blocks, description

    def _calibrate(self, quantizer: Quantizer, model) -> dict:
        from bench.calibration import calibration_windows

        profile = self.plan.profile
        windows, details = calibration_windows(
            self.reference.tokenizer, profile.calibration_windows, profile.calibration_seqlen,
            profile.seed, self.plan.data_dir,
        )
        started = time.perf_counter()
        quantizer.quantize(model, calibration=windows)
        return {**details, "wall_time_s": round(time.perf_counter() - started, 2)}

    def _distill(self, quantizer, student, settings, blocks, data_description, training_key) -> dict:
        run_dir = (self.plan.runs_dir or runs_dir()) / training_key
        artifact = run_dir / "student.safetensors"
        outcome_path = run_dir / "outcome.json"
        log_path = self.plan.results_dir / "losses" / f"{training_key}.jsonl"
        if artifact.exists() and outcome_path.exists():
            logger.info("Reusing the distilled %s student from %s", quantizer.name, artifact)
            load_model(student, str(artifact))
            return json.loads(outcome_path.read_text())
        outcome = distill(student, self.reference.model, quantizer, blocks, settings, run_dir, log_path)
        save_model(student, str(artifact))
        summary = {
            **settings.to_dict(),
            "data": data_description,
            "wall_time_s": outcome.wall_time_s,
            "final_loss": outcome.final_loss,
            "resumed_from_step": outcome.resumed_from_step,
            "loss_log": str(log_path.relative_to(self.plan.results_dir)),
        }
        outcome_path.write_text(json.dumps(summary, indent=2))
        remove_checkpoints(run_dir)
        return summary

    # -- measuring ------------------------------------------------------------------------

    def _record(self, key, quantizer, metric, value, stage, **fields) -> None:
        record = ResultRecord(
            key=key,
            model=self.reference.info.to_dict(),
            method=self._method_identity(quantizer),
            metric=metric,
            value=value,
            stage=stage,
            profile=self.plan.profile.name,
            environment=environment(),
            command=self.plan.command,
            **fields,
        )
        self.store.append(record)

    def _measure(self, job: MetricJob, quantizer, model, context: dict) -> None:
        if job.metric == "ppl":
            (dataset, key), = job.keys.items()
            result = evaluate_perplexity(model, self.reference.tokenizer, job.protocol, self.plan.data_dir)
            self._record(
                key, quantizer, {"name": f"ppl/{dataset}", "protocol": result.protocol}, result.value, job.stage,
                n_samples=result.predicted_tokens, wall_time_s=round(result.wall_time_s, 2), **context,
            )
            return
        if job.metric == "memory":
            self._measure_memory(job, quantizer, context)
            return
        if job.metric == "latency":
            self._measure_latency(job, quantizer, model, context)
            return
        zeroshot = _zeroshot_module()
        started = time.perf_counter()
        rows = zeroshot.evaluate_zeroshot(model, self.reference.tokenizer, job.protocol, self.plan.data_dir)
        elapsed = round(time.perf_counter() - started, 2)
        for row in rows:
            key = job.keys.get(f"{row['task']}/{row['metric']}")
            if key is None:
                continue
            protocol = {**asdict(job.protocol), **{k: v for k, v in row.items() if k not in ("value", "stderr", "n_samples")}}
            self._record(
                key, quantizer, {"name": f"zeroshot/{row['task']}/{row['metric']}", "protocol": protocol},
                row["value"], job.stage, stderr=row.get("stderr"), n_samples=row.get("n_samples"),
                wall_time_s=elapsed, **context,
            )

    def _artifact_dir(self, base: dict) -> Path:
        return (self.plan.runs_dir or runs_dir()) / record_key(base) / "artifact"

    def _build_quantized(self, quantizer: Quantizer, context: dict):
        """Return a quantized copy of the reference (calibrated when the method needs it)."""
        model = copy.deepcopy(self.reference.model)
        # Modules a method adds may draw their initial values from the global generator
        # (BinaryMoS's router does), so seed it for the same model in every process.
        torch.manual_seed(self.plan.profile.seed)
        if quantizer.calibrates:
            context["calibration"] = self._calibrate(quantizer, model)
        else:
            quantizer.quantize(model)
        context["storage"] = quantizer.storage_report(model).to_dict()
        return model

    def _store_artifact(self, quantizer: Quantizer, model, artifact_dir: Path, context: dict) -> None:
        """Freeze `model` into its packed form and save it; the caller drops the model afterwards."""
        freeze(quantizer, model)
        save_artifact(
            model,
            artifact_dir,
            method=self._method_identity(quantizer),
            model_identity=self._model_identity(),
            base_model=self.plan.model,
            storage_formula=context["storage"],
            context={"training": context.get("training"), "calibration": context.get("calibration")},
            overwrite=True,
        )

    def _load_stored(self, artifact_dir: Path, context: dict):
        """Load a method's artifact and fill the record context from it; return the model."""
        dtype = getattr(torch, self.reference.info.dtype)
        loaded = load_artifact(artifact_dir, expected_model=self._model_identity(), dtype=dtype)
        stored_context = loaded.config.get("context") or {}
        context["training"] = stored_context.get("training", context.get("training"))
        if stored_context.get("calibration") is not None:
            context["calibration"] = stored_context["calibration"]
        context["storage"] = loaded.config.get("storage_formula")
        context["storage_measured"] = measured_storage_dict(artifact_dir, loaded.config)
        context["artifact"] = {"path": str(artifact_dir), "sha256": artifact_sha256(artifact_dir)}
        model = loaded.model
        if torch.cuda.is_available():
            model.to("cuda")
        return model

    def _run_reference(self, quantizer: Quantizer, pending: list[MetricJob], context: dict) -> None:
        model = self.reference.model
        context["storage"] = quantizer.storage_report(model).to_dict()
        for job in pending:
            self._measure(job, quantizer, model, context)

    def _measure_memory(self, job: MetricJob, quantizer, context: dict) -> None:
        (name, key), = job.keys.items()
        if quantizer.name == REFERENCE:
            target = {"model": self.plan.model, "dtype": self.plan.dtype}
        else:
            target = {"artifact": context["artifact"]["path"]}
        started = time.perf_counter()
        measured = measure_peak_eval(job.protocol, data_dir=self.plan.data_dir, **target)
        protocol = {**measured["protocol"], "baseline_rss_bytes": measured["baseline_rss_bytes"],
                    "rss_after_load_bytes": measured["rss_after_load_bytes"], "dtype": measured["dtype"]}
        self._record(
            key, quantizer, {"name": name, "protocol": protocol}, measured["peak_rss_bytes"], job.stage,
            wall_time_s=round(time.perf_counter() - started, 2), **context,
        )

    def _measure_latency(self, job: MetricJob, quantizer, model, context: dict) -> None:
        result = measure_latency(model, job.protocol)
        parts = {
            "prefill": (result.prefill_ms, "ms for the prompt", result.prefill_samples_ms),
            "decode": (result.decode_ms_per_token, "ms per token", result.decode_samples_ms_per_token),
        }
        for part, (value, unit, samples) in parts.items():
            metric = {"name": f"latency/{part}", "protocol": result.protocol, "unit": unit, "samples": samples}
            self._record(
                job.keys[part], quantizer, metric, value, job.stage,
                n_samples=job.protocol.repeats, wall_time_s=round(result.wall_time_s, 2), **context,
            )

    def _base(self, quantizer: Quantizer) -> tuple[dict, tuple]:
        """Return what identifies the method's model (its key parts) and its training inputs."""
        base = {"model": self._model_identity(), "method": self._method_identity(quantizer)}
        training = (None, None, None)
        if quantizer.trains:
            training = self._prepare_training(quantizer)
            settings, _, data_description = training
            base["training"] = {**settings.to_dict(), "data": data_description}
        if quantizer.calibrates:
            profile = self.plan.profile
            base["calibration"] = {
                "windows": profile.calibration_windows, "seqlen": profile.calibration_seqlen, "seed": profile.seed,
            }
        return base, training

    def _ensure_artifact(self, quantizer: Quantizer, base: dict, training: tuple) -> Path:
        """Build and store the method's artifact in the cache unless it is there; return its directory."""
        artifact_dir = self._artifact_dir(base)
        if (artifact_dir / "config.json").exists():
            logger.info("Reusing the %s artifact at %s", quantizer.name, artifact_dir)
            return artifact_dir
        context: dict = {"training": base.get("training")}
        model = self._build_quantized(quantizer, context)
        if quantizer.trains:
            settings, blocks, data_description = training
            context["training"] = self._distill(quantizer, model, settings, blocks, data_description, record_key(base))
        self._store_artifact(quantizer, model, artifact_dir, context)
        del model
        gc.collect()
        return artifact_dir

    def quantize_to(self, method: str, directory: Path, overwrite: bool = False) -> Path:
        """Build `method`'s artifact (or reuse the cached one) and copy it to `directory`."""
        quantizer = self.quantizers[methods.resolve(method).name]
        if quantizer.name == REFERENCE:
            raise ConfigError("fp is the unquantized reference and has no packed artifact; choose a quantization method.")
        if directory.exists() and not overwrite:
            raise ConfigError(f"{directory} already exists; choose another directory or pass --overwrite.")
        check_model_spec(self.plan.model)
        _check_data(self.plan, {quantizer.name: quantizer})
        self.reference = load_causal_lm(self.plan.model, self.plan.dtype)
        base, training = self._base(quantizer)
        return copy_artifact(self._ensure_artifact(quantizer, base, training), directory)

    def evaluate_artifact(self, directory: Path) -> list[str]:
        """Measure the plan's metrics on a stored artifact and return the keys of its records.

        The plan's model must be the artifact's base model and its only method the artifact's.
        """
        config = read_config(directory)
        name, location, revision, origin = resolve_model(self.plan.model)
        check_model_identity(config, {"name": name, "revision": None if revision == "hub" else revision}, directory)
        quantizer = self.quantizers[config["method"]["name"]]
        self.stored_identities[quantizer.name] = config["method"]
        _check_data(self.plan, {})
        from transformers import AutoTokenizer

        measured = measured_storage(directory, config)
        info = ModelInfo(
            name=config["model"]["name"], source=location, revision=config["model"]["revision"],
            dtype=config["model"].get("dtype") or "float32", origin=origin,
            num_parameters=measured.quantized_weights + measured.kept_parameters,
        )
        self.reference = LoadedModel(model=None, tokenizer=AutoTokenizer.from_pretrained(location), info=info)
        base = {"model": self._model_identity(), "method": self._method_identity(quantizer),
                "artifact_sha256": artifact_sha256(directory)}
        jobs = [job for job in self._jobs(quantizer, base) if job.stage == "final"]
        keys = [key for job in jobs for key in job.keys.values()]
        pending = [job for job in jobs if self._missing(job)]
        if pending:
            context: dict = {}
            model = self._load_stored(directory, context)
            for job in pending:
                self._measure(job, quantizer, model, context)
        return keys

    def evaluate_official(self, spec: str) -> list[str]:
        """Import an official BinaryMoS checkpoint, store it packed, measure it; return its record keys."""
        from methods.binarymos_official import load_official_binarymos

        _check_data(self.plan, {})
        imported = load_official_binarymos(spec, self.plan.dtype)
        options = {**self.plan.method_options.get("binarymos", {}), "num_experts": imported.identity["num_experts"]}
        quantizer = methods.create("binarymos", options)
        if imported.tokenizer is None:
            raise ConfigError(
                f"The checkpoint {spec} has no tokenizer files. Copy the base model's tokenizer files "
                "(tokenizer.json, tokenizer_config.json, special_tokens_map.json) into it and run again."
            )
        self.reference = imported.loaded_model()
        base = {"model": self._model_identity(), "method": self._method_identity(quantizer), "imported": True}
        jobs = [job for job in self._jobs(quantizer, base) if job.stage == "final"]
        keys = [key for job in jobs for key in job.keys.values()]
        pending = [job for job in jobs if self._missing(job)]
        if not pending:
            return keys
        artifact_dir = self._artifact_dir(base)
        if not (artifact_dir / "config.json").exists():
            context = {"storage": quantizer.storage_report(imported.model).to_dict(), "training": None}
            self._store_artifact(quantizer, imported.model, artifact_dir, context)
        imported.model = None
        self.reference = LoadedModel(model=None, tokenizer=imported.tokenizer, info=self.reference.info)
        gc.collect()
        context: dict = {}
        model = self._load_stored(artifact_dir, context)
        for job in pending:
            self._measure(job, quantizer, model, context)
        return keys

    def _run_method(self, quantizer: Quantizer) -> None:
        base, (settings, blocks, data_description) = self._base(quantizer)
        jobs = self._jobs(quantizer, base)
        self.covered.extend(key for job in jobs for key in job.keys.values())
        pending = [job for job in jobs if self._missing(job)]
        if not pending:
            logger.info("%s: every result is stored; nothing to run", quantizer.name)
            return

        context: dict = {"training": base.get("training")}
        if quantizer.name == REFERENCE:
            self._run_reference(quantizer, pending, context)
            return

        # Final metrics are measured on the model reloaded from its packed artifact, which is
        # built once (quantize, calibrate or distill, then freeze) and reused by later runs.
        init_jobs = [job for job in pending if job.stage == "init"]
        final_jobs = [job for job in pending if job.stage == "final"]
        artifact_dir = self._artifact_dir(base)
        needs_artifact = bool(final_jobs) and not (artifact_dir / "config.json").exists()
        if init_jobs or needs_artifact:
            model = self._build_quantized(quantizer, context)
            for job in init_jobs:
                self._measure(job, quantizer, model, context)
            if needs_artifact:
                if quantizer.trains:
                    context["training"] = self._distill(
                        quantizer, model, settings, blocks, data_description, record_key(base)
                    )
                self._store_artifact(quantizer, model, artifact_dir, context)
            del model
            gc.collect()
        elif final_jobs:
            logger.info("Reusing the %s artifact at %s", quantizer.name, artifact_dir)

        if final_jobs:
            model = self._load_stored(artifact_dir, context)
            for job in final_jobs:
                self._measure(job, quantizer, model, context)
            del model
            gc.collect()

    def run(self) -> list[str]:
        """Run the plan and return the keys of every record it covers, stored before or now."""
        check_model_spec(self.plan.model)
        _check_data(self.plan, self.quantizers)
        self.reference = load_causal_lm(self.plan.model, self.plan.dtype)
        if torch.cuda.is_available():
            self.reference.model.to("cuda")
        for quantizer in self.quantizers.values():
            logger.info("Method %s", quantizer.name)
            self._run_method(quantizer)
        return self.covered
