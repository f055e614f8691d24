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
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

import methods
from bench.distill import TrainingSettings, distill, remove_checkpoints
from bench.environment import environment
from bench.models import LoadedModel, check_model_spec, load_model as load_causal_lm
from bench.paths import runs_dir
from bench.perplexity import PerplexityProtocol, evaluate_perplexity
from bench.profiles import Profile
from bench.results import ResultRecord, ResultStore, record_key
from bench.training_data import training_blocks
from bench.training_plan import resolve_training
from methods.base import ConfigError, Quantizer

logger = logging.getLogger(__name__)

METRICS = ("ppl", "zeroshot")
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
    runs_dir: Path | None = None  # training checkpoints and distilled students; None: the cache's runs/


@dataclass
class MetricJob:
    """One metric to measure on one model state, with the record keys it produces."""

    metric: str  # "ppl" or "zeroshot"
    stage: str  # "init" or "final"
    protocol: object
    keys: dict[str, str]  # sub-metric (e.g. "wikitext2") -> record key


def _validate_plan(plan: RunPlan) -> dict[str, Quantizer]:
    unknown = [metric for metric in plan.metrics if metric not in METRICS]
    if unknown:
        raise ConfigError(f"Unknown metric(s) {', '.join(unknown)}. Available metrics: {', '.join(METRICS)}.")
    names = [REFERENCE] + [methods.resolve(name).name for name in plan.methods]
    quantizers = {}
    for name in dict.fromkeys(names):
        quantizers[name] = methods.create(name, plan.method_options.get(name))
    return quantizers


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

    # -- identities -------------------------------------------------------------------------

    def _model_identity(self) -> dict:
        info = self.reference.info
        return {"name": info.name, "revision": info.revision, "dtype": info.dtype}

    def _method_identity(self, quantizer: Quantizer) -> dict:
        return {"name": quantizer.name, "config": quantizer.config.to_dict()}

    def _jobs(self, quantizer: Quantizer, base: dict) -> list[MetricJob]:
        profile = self.plan.profile
        jobs = []
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
        return jobs

    def _missing(self, job: MetricJob) -> bool:
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

    def _run_method(self, quantizer: Quantizer) -> None:
        base = {"model": self._model_identity(), "method": self._method_identity(quantizer)}
        settings = blocks = data_description = None
        if quantizer.trains:
            settings, blocks, data_description = self._prepare_training(quantizer)
            base["training"] = {**settings.to_dict(), "data": data_description}
        if quantizer.calibrates:
            profile = self.plan.profile
            base["calibration"] = {
                "windows": profile.calibration_windows, "seqlen": profile.calibration_seqlen, "seed": profile.seed,
            }
        jobs = self._jobs(quantizer, base)
        self.covered.extend(key for job in jobs for key in job.keys.values())
        pending = [job for job in jobs if self._missing(job)]
        if not pending:
            logger.info("%s: every result is stored; nothing to run", quantizer.name)
            return

        context: dict = {"training": base.get("training")}
        if quantizer.name == REFERENCE:
            model = self.reference.model
        else:
            model = copy.deepcopy(self.reference.model)
            # Modules a method adds may draw their initial values from the global generator
            # (BinaryMoS's router does), so seed it for the same model in every process.
            torch.manual_seed(self.plan.profile.seed)
            if quantizer.calibrates:
                context["calibration"] = self._calibrate(quantizer, model)
            else:
                quantizer.quantize(model)
        context["storage"] = quantizer.storage_report(model).to_dict()

        for job in pending:
            if job.stage == "init":
                self._measure(job, quantizer, model, context)
        final_jobs = [job for job in pending if job.stage == "final"]
        if final_jobs and quantizer.trains:
            training_key = record_key(base)
            context["training"] = self._distill(quantizer, model, settings, blocks, data_description, training_key)
        for job in final_jobs:
            self._measure(job, quantizer, model, context)

        if model is not self.reference.model:
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
