"""`bench check`: metric ids, tolerances, the baseline file and the command's exit status."""

import json

import pytest

import bench.check as check
from bench.check import BaselineError, CheckRun, Tolerances, collect_metrics, compare, metric_kind, read_baseline, write_baseline
from bench.cli import main
from bench.results import ResultStore
from tests.report_records import record


def metric(value, stderr=None, n_samples=None) -> dict:
    return {"value": value, "stderr": stderr, "n_samples": n_samples}


BASELINE = {
    "rtn|ppl/wikitext2": metric(1000.0),
    "binarymos|ppl/wikitext2@init": metric(3.0e6),
    "fp|zeroshot/piqa/acc": metric(0.6, stderr=0.11, n_samples=20),
    "fp|zeroshot/piqa/gold_loglik": metric(-12.5, stderr=0.8, n_samples=20),
    "rtn|storage/bits_per_weight_linear": metric(1.0234375),
}


def statuses(current: dict) -> dict[str, str]:
    return {difference.metric: difference.status for difference in compare(BASELINE, current)}


def test_identical_metrics_pass():
    differences = compare(BASELINE, dict(BASELINE))
    assert all(difference.status == "ok" and not difference.failed for difference in differences)
    assert all(difference.delta == 0 for difference in differences)


def test_perplexity_relative_tolerance():
    assert statuses({**BASELINE, "rtn|ppl/wikitext2": metric(1009.0)})["rtn|ppl/wikitext2"] == "ok"
    assert statuses({**BASELINE, "rtn|ppl/wikitext2": metric(1011.0)})["rtn|ppl/wikitext2"] == "regression"
    assert statuses({**BASELINE, "rtn|ppl/wikitext2": metric(989.0)})["rtn|ppl/wikitext2"] == "improved"


def test_accuracy_tolerance_is_one_stderr():
    assert statuses({**BASELINE, "fp|zeroshot/piqa/acc": metric(0.5)})["fp|zeroshot/piqa/acc"] == "ok"
    assert statuses({**BASELINE, "fp|zeroshot/piqa/acc": metric(0.45)})["fp|zeroshot/piqa/acc"] == "regression"


def test_accuracy_tolerance_is_at_least_one_example():
    baseline = {"fp|zeroshot/boolq/acc": metric(1.0, stderr=0.0, n_samples=20)}
    (difference,) = compare(baseline, {"fp|zeroshot/boolq/acc": metric(0.95)})
    assert difference.tolerance == pytest.approx(0.05)
    assert difference.status == "ok"


def test_gold_loglik_tolerance_grows_with_magnitude():
    baseline = {"rtn|zeroshot/piqa/gold_loglik": metric(-400.0, stderr=30.0, n_samples=20)}
    (difference,) = compare(baseline, {"rtn|zeroshot/piqa/gold_loglik": metric(-400.03)})
    assert difference.tolerance == pytest.approx(0.04)
    assert difference.status == "ok"


def test_gold_loglik_catches_small_shift():
    """A shift far inside the accuracy's error still fails on the gold log-likelihood."""
    current = {**BASELINE, "fp|zeroshot/piqa/gold_loglik": metric(-12.6)}
    result = statuses(current)
    assert result["fp|zeroshot/piqa/gold_loglik"] == "regression"
    assert result["fp|zeroshot/piqa/acc"] == "ok"


def test_missing_fails_and_new_passes():
    current = {key: value for key, value in BASELINE.items() if key != "rtn|ppl/wikitext2"}
    current["pbllm|ppl/c4"] = metric(5.0)
    differences = {difference.metric: difference for difference in compare(BASELINE, current)}
    assert differences["rtn|ppl/wikitext2"].status == "missing"
    assert differences["rtn|ppl/wikitext2"].failed
    assert differences["pbllm|ppl/c4"].status == "new"
    assert not differences["pbllm|ppl/c4"].failed


def test_nan_counts_as_regression():
    assert statuses({**BASELINE, "rtn|ppl/wikitext2": metric(float("nan"))})["rtn|ppl/wikitext2"] == "regression"


def test_bits_must_match():
    assert statuses({**BASELINE, "rtn|storage/bits_per_weight_linear": metric(1.03)})["rtn|storage/bits_per_weight_linear"] == "regression"


def test_metric_kinds():
    assert metric_kind("binarymos|ppl/c4@init") == "ppl"
    assert metric_kind("fp|zeroshot/arc_easy/acc_norm") == "accuracy"
    assert metric_kind("fp|zeroshot/arc_easy/gold_loglik") == "gold_loglik"
    assert metric_kind("rtn|storage/bits_per_weight_linear") == "bits"


def test_collect_metrics_names_stage_and_bits():
    storage = {"bits_per_weight_linear": 1.25}
    records = [
        record("binarymos", "ppl/c4", 9.0e6, stage="init", storage=storage),
        record("binarymos", "ppl/c4", 8000.0, storage=storage),
        record("fp", "ppl/c4", 30.0, storage={"bits_per_weight_linear": float("nan")}),
        record("fp", "zeroshot/piqa/acc", 0.6, stderr=0.1, n_samples=20),
    ]
    metrics = collect_metrics(records)
    assert metrics["binarymos|ppl/c4@init"]["value"] == 9.0e6
    assert metrics["binarymos|ppl/c4"]["value"] == 8000.0
    assert metrics["binarymos|storage/bits_per_weight_linear"]["value"] == 1.25
    assert "fp|storage/bits_per_weight_linear" not in metrics
    assert metrics["fp|zeroshot/piqa/acc"] == {"value": 0.6, "stderr": 0.1, "n_samples": 20}


def test_baseline_round_trip(tmp_path):
    path = tmp_path / "ci_baseline.json"
    write_baseline(path, CheckRun(BASELINE, {"name": "m"}, 12.0))
    baseline = read_baseline(path)
    assert baseline["metrics"] == BASELINE
    assert baseline["tolerances"]["ppl_relative"] == Tolerances().ppl_relative
    assert not list(tmp_path.glob(".ci_baseline-*"))


def test_baseline_from_other_profile_is_rejected(tmp_path):
    path = tmp_path / "ci_baseline.json"
    write_baseline(path, CheckRun(BASELINE, {}, 1.0))
    content = json.loads(path.read_text())
    content["profile"]["ppl_windows"] = 99
    path.write_text(json.dumps(content))
    with pytest.raises(BaselineError, match="another ci profile"):
        read_baseline(path)


def test_missing_baseline_names_the_fix(tmp_path):
    with pytest.raises(BaselineError, match="--update-baseline"):
        read_baseline(tmp_path / "absent.json")


@pytest.fixture
def fake_run(monkeypatch):
    """Replace the model run with fixed metrics; the test sets `current` before calling the CLI."""
    state = {"current": dict(BASELINE), "calls": 0}

    def run_ci_profile(model, data_dir, scratch_dir, methods):
        state["calls"] += 1
        state["methods"] = methods
        current = state["current"] if methods is None else check.select_methods(state["current"], methods)
        return CheckRun(dict(current), {"name": model}, 3.0)

    monkeypatch.setattr(check, "run_ci_profile", run_ci_profile)
    return state


def test_cli_check_passes_then_fails(tmp_path, fake_run, capsys):
    baseline = tmp_path / "ci_baseline.json"
    assert main(["check", "--baseline", str(baseline)]) == 2
    assert fake_run["calls"] == 0
    assert main(["check", "--baseline", str(baseline), "--update-baseline"]) == 0
    written = baseline.read_bytes()
    assert main(["check", "--baseline", str(baseline)]) == 0
    assert "passed" in capsys.readouterr().out
    fake_run["current"] = {**BASELINE, "binarymos|ppl/wikitext2@init": metric(9.0e6)}
    assert main(["check", "--baseline", str(baseline)]) == 1
    output = capsys.readouterr().out
    assert "binarymos|ppl/wikitext2@init (regression)" in output
    assert baseline.read_bytes() == written


def test_cli_check_selected_methods(tmp_path, fake_run, capsys):
    baseline = tmp_path / "ci_baseline.json"
    assert main(["check", "--baseline", str(baseline), "--update-baseline"]) == 0
    assert main(["check", "--baseline", str(baseline), "--methods", "binarymos"]) == 0
    assert fake_run["methods"] == ["binarymos"]
    output = capsys.readouterr().out
    assert "binarymos|ppl/wikitext2@init" in output
    assert "rtn|ppl/wikitext2" not in output
    assert main(["check", "--baseline", str(baseline), "--methods", "binarymos", "--update-baseline"]) == 2


def test_ci_plan_covers_every_method(tmp_path):
    from methods.registry import METHODS

    plan = check.ci_plan(tmp_path / "results", tmp_path / "runs", "smollm2-135m", None)
    assert sorted(plan.methods) == sorted(entry.name for entry in METHODS if entry.name != "fp")
    assert plan.profile.name == "ci"
    assert plan.metrics == ["ppl", "zeroshot"]
    assert plan.runs_dir == tmp_path / "runs"


@pytest.mark.slow  # about 3 minutes on 2 CPU cores: seven methods, each with six zero-shot tasks
def test_check_on_tiny_model_repeats_exactly(tmp_path, tiny_model_dir, isolated_cache, data_dir, monkeypatch, capsys):
    """The whole check on a 2-layer model: create the baseline, then pass against it with the same numbers."""
    monkeypatch.chdir(tmp_path)
    baseline = tmp_path / "results" / "ci_baseline.json"
    common = ["--baseline", str(baseline), "--model", str(tiny_model_dir), "--data-dir", str(data_dir)]
    assert main(["check", "--update-baseline", *common]) == 0
    assert main(["check", *common, "--scratch-dir", str(tmp_path / "scratch")]) == 0
    assert "passed" in capsys.readouterr().out
    assert not (tmp_path / "results" / "records.jsonl").exists()

    stored = json.loads(baseline.read_text())["metrics"]
    methods = {metric_id.split("|")[0] for metric_id in stored}
    assert methods == {"fp", "rtn", "binarymos", "onebit", "gptq", "billm", "pbllm"}
    assert "binarymos|ppl/wikitext2@init" in stored
    assert "fp|zeroshot/winogrande/gold_loglik" in stored
    assert stored["fp|zeroshot/piqa/acc"]["n_samples"] == 20

    rerun = collect_metrics(ResultStore(tmp_path / "scratch" / "results").records())
    assert set(rerun) == set(stored)
    for metric_id, entry in stored.items():
        assert rerun[metric_id] == entry, metric_id
