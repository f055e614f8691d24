"""`bench check`: the CI regression check against a committed baseline of the `ci` profile.

The check runs every registered method on the default model under the small, seeded `ci`
profile, in a scratch results directory, so the committed records stay untouched. It reduces
the records to one number per (method, metric, stage) and compares each with the baseline file:

- accuracy: may move by `accuracy_stderrs` standard errors of the baseline value (at least one
  example), because a sample of 20 examples per task cannot resolve smaller changes;
- perplexity: may move by `ppl_relative` of the baseline value;
- mean gold log-likelihood per task: may move by `gold_loglik_nats`, or `gold_loglik_relative`
  of the baseline value where that is more. It is the sensitive zero-shot signal, because it
  changes with the model even where no prediction flips;
- bits per weight of the quantized linears: must match to `bits_relative`.

The check runs torch on one thread, whatever the machine has, because the order of float
sums changes with the thread count and the numbers should not depend on the CI machine's cores.

The baseline is rewritten only on request (`--update-baseline`), through a temporary file and
an atomic rename.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.profiles import get_profile
from bench.runner import RunPlan, Runner

logger = logging.getLogger(__name__)

CI_PROFILE = "ci"
DEFAULT_BASELINE = Path("results") / "ci_baseline.json"
BASELINE_FORMAT = 1


class BaselineError(RuntimeError):
    """Raised when the baseline file is missing, unreadable or made under another profile."""


@dataclass(frozen=True)
class Tolerances:
    """How far each kind of metric may move from its baseline before the check fails."""

    accuracy_stderrs: float = 1.0
    ppl_relative: float = 0.01
    gold_loglik_nats: float = 0.02
    gold_loglik_relative: float = 1e-4
    bits_relative: float = 1e-9


@dataclass
class Difference:
    """One metric compared with its baseline."""

    metric: str
    baseline: float | None
    current: float | None
    tolerance: float | None
    status: str  # "ok", "regression", "improved", "missing" (not measured now) or "new" (not in the baseline)

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def failed(self) -> bool:
        return self.status in ("regression", "improved", "missing")


def metric_kind(metric_id: str) -> str:
    """Return "ppl", "accuracy", "gold_loglik" or "bits" for a metric id such as "rtn|ppl/c4"."""
    name = metric_id.split("|", 1)[1].split("@", 1)[0]
    if name.startswith("ppl/"):
        return "ppl"
    if name.endswith("/gold_loglik"):
        return "gold_loglik"
    if name.startswith("storage/"):
        return "bits"
    return "accuracy"


def collect_metrics(records: list[dict]) -> dict[str, dict]:
    """Reduce records to {"method|metric[@init]": {value, stderr, n_samples}}, the latest record winning."""
    metrics: dict[str, dict] = {}
    for record in sorted(records, key=lambda record: record["timestamp"]):
        method = record["method"]["name"]
        suffix = "@init" if record.get("stage") == "init" else ""
        metrics[f"{method}|{record['metric']['name']}{suffix}"] = {
            "value": record["value"],
            "stderr": record.get("stderr"),
            "n_samples": record.get("n_samples"),
        }
        bits = (record.get("storage") or {}).get("bits_per_weight_linear")
        if record.get("stage") != "init" and isinstance(bits, (int, float)) and not math.isnan(bits):
            metrics[f"{method}|storage/bits_per_weight_linear"] = {"value": bits, "stderr": None, "n_samples": None}
    return dict(sorted(metrics.items()))


def _tolerance(kind: str, baseline: dict, tolerances: Tolerances) -> float:
    value = baseline["value"]
    if kind == "ppl":
        return tolerances.ppl_relative * abs(value)
    if kind == "gold_loglik":
        return max(tolerances.gold_loglik_nats, tolerances.gold_loglik_relative * abs(value))
    if kind == "bits":
        return tolerances.bits_relative * abs(value)
    one_example = 1.0 / baseline["n_samples"] if baseline.get("n_samples") else 0.0
    stderr = baseline.get("stderr") or 0.0
    return max(tolerances.accuracy_stderrs * stderr, one_example)


def compare(baseline: dict[str, dict], current: dict[str, dict], tolerances: Tolerances = Tolerances()) -> list[Difference]:
    """Compare every metric of the baseline and the current run; return one Difference per metric id."""
    differences = []
    for metric_id in sorted(set(baseline) | set(current)):
        old, new = baseline.get(metric_id), current.get(metric_id)
        if old is None:
            differences.append(Difference(metric_id, None, new["value"], None, "new"))
            continue
        if new is None:
            differences.append(Difference(metric_id, old["value"], None, None, "missing"))
            continue
        kind = metric_kind(metric_id)
        tolerance = _tolerance(kind, old, tolerances)
        delta = new["value"] - old["value"]
        # The slack keeps a change of exactly one tolerance (e.g. one example) from failing on float rounding.
        slack = 1e-9 * max(1.0, abs(old["value"]))
        if math.isnan(new["value"]) != math.isnan(old["value"]) or abs(delta) > tolerance + slack:
            higher_is_worse = kind in ("ppl", "bits")
            worse = math.isnan(new["value"]) or (delta > 0) == higher_is_worse
            status = "regression" if worse else "improved"
        else:
            status = "ok"
        differences.append(Difference(metric_id, old["value"], new["value"], tolerance, status))
    return differences


def ci_plan(results_dir: Path, runs_dir: Path, model: str, data_dir: str | None, methods: list[str] | None = None) -> RunPlan:
    """Return the plan of the check: the reference and `methods` (default: every registered one) under the ci profile."""
    from methods.registry import METHODS

    return RunPlan(
        model=model,
        methods=methods or [entry.name for entry in METHODS if entry.name != "fp"],
        profile=get_profile(CI_PROFILE),
        metrics=["ppl", "zeroshot"],
        data_dir=data_dir,
        results_dir=results_dir,
        runs_dir=runs_dir,
        command="bench check",
    )


@dataclass
class CheckRun:
    """The metrics of one run of the ci profile and what produced them."""

    metrics: dict[str, dict]
    model: dict
    wall_time_s: float


def run_ci_profile(
    model: str = "smollm2-135m", data_dir: str | None = None, scratch_dir: Path | None = None, methods: list[str] | None = None
) -> CheckRun:
    """Run the ci profile on one thread in a scratch directory (a new temporary one by default, removed afterwards)."""
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-check-") as temporary:
            scratch = Path(scratch_dir) if scratch_dir else Path(temporary)
            plan = ci_plan(scratch / "results", scratch / "runs", model, data_dir, methods)
            runner = Runner(plan)
            runner.run()
            records = runner.store.records()
    finally:
        torch.set_num_threads(threads)
    model_identity = {key: records[0]["model"].get(key) for key in ("name", "revision", "dtype")} if records else {}
    return CheckRun(collect_metrics(records), model_identity, round(time.perf_counter() - started, 1))


def select_methods(metrics: dict[str, dict], methods: list[str]) -> dict[str, dict]:
    """Keep the metrics of the reference and of `methods` (registry names)."""
    keep = {"fp", *methods}
    return {metric_id: entry for metric_id, entry in metrics.items() if metric_id.split("|", 1)[0] in keep}


def read_baseline(path: Path) -> dict:
    """Read the baseline file and check that it was made under the current ci profile."""
    if not path.exists():
        raise BaselineError(f"Baseline file {path} not found. Create it with `bench check --update-baseline`.")
    try:
        baseline = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BaselineError(f"Baseline file {path} is not valid JSON ({error}). Recreate it with `bench check --update-baseline`.") from error
    if baseline.get("format") != BASELINE_FORMAT:
        raise BaselineError(f"Baseline file {path} has format {baseline.get('format')!r}, expected {BASELINE_FORMAT}. Recreate it with `bench check --update-baseline`.")
    profile = get_profile(CI_PROFILE).to_dict()
    if baseline.get("profile") != _json_round_trip(profile):
        raise BaselineError(
            f"Baseline file {path} was made under another ci profile than the current one. "
            "Recreate it with `bench check --update-baseline` if the profile change is intended."
        )
    return baseline


def _json_round_trip(value):
    return json.loads(json.dumps(value))


def write_baseline(path: Path, run: CheckRun) -> None:
    """Write the baseline atomically: a temporary file in the same directory, then a rename."""
    from bench.environment import environment

    content = {
        "format": BASELINE_FORMAT,
        "description": "Metrics of `bench check` (the ci profile); rewritten only by `bench check --update-baseline`.",
        "profile": get_profile(CI_PROFILE).to_dict(),
        "model": run.model,
        "environment": environment(),
        "wall_time_s": run.wall_time_s,
        "tolerances": asdict(Tolerances()),
        "metrics": run.metrics,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".ci_baseline-", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("Wrote %d baseline metrics to %s", len(run.metrics), path)
