"""End-to-end runs of `bench run` on a tiny Llama with the real tokenizer and the real data."""

import json
import shutil

import pytest
import torch

import bench.distill as distill_module
import methods
from bench.cli import main
from bench.results import ResultStore

TINY_SETTINGS = """
[settings]
ppl_seqlen = 32
ppl_windows = 1
train_steps = 4
train_seqlen = 32
save_steps = 2
"""


@pytest.fixture
def workspace(tmp_path, tiny_model_dir, isolated_cache, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY_SETTINGS)
    return tmp_path


def run(workspace, tiny_model_dir, methods: str) -> int:
    return main(["run", "--methods", methods, "--model", str(tiny_model_dir), "--config", "tiny.toml"])


def records(workspace) -> list[dict]:
    return ResultStore(workspace / "results").records()


def test_run_writes_records_and_leaderboard(workspace, tiny_model_dir):
    assert run(workspace, tiny_model_dir, "rtn,binarymos,onebit") == 0
    stored = records(workspace)
    by_method = {}
    for record in stored:
        by_method.setdefault(record["method"]["name"], []).append(record)
    assert sorted(by_method) == ["binarymos", "fp", "onebit", "rtn"]
    assert len(by_method["fp"]) == 2 and len(by_method["rtn"]) == 2
    for name in ("binarymos", "onebit"):
        stages = sorted((record["stage"], record["metric"]["name"]) for record in by_method[name])
        assert stages == [("final", "ppl/c4"), ("final", "ppl/wikitext2"), ("init", "ppl/c4"), ("init", "ppl/wikitext2")]
        final = next(record for record in by_method[name] if record["stage"] == "final")
        assert final["training"]["tokens"] == 4 * 32
        assert final["training"]["wall_time_s"] > 0
        assert (workspace / "results" / final["training"]["loss_log"]).exists()
    protocol = by_method["fp"][0]["metric"]["protocol"]
    assert protocol["seqlen"] == 32 and protocol["windows_used"] == 1
    leaderboard = (workspace / "leaderboard.md").read_text()
    for label in ("| fp (unquantized reference, float32) |", "| rtn |", "| binarymos |", "| onebit |"):
        assert label in leaderboard
    assert "PPL at init" in leaderboard


def test_second_run_reuses_everything(workspace, tiny_model_dir, monkeypatch):
    assert run(workspace, tiny_model_dir, "rtn,binarymos") == 0
    first = records(workspace)

    def fail(*args, **kwargs):
        raise AssertionError("distillation ran again")

    monkeypatch.setattr("bench.runner.distill", fail)
    assert run(workspace, tiny_model_dir, "rtn,binarymos") == 0
    assert records(workspace) == first


def test_interrupted_training_resumes_from_checkpoint(workspace, tiny_model_dir, monkeypatch):
    original = distill_module.LossLogCallback.on_log

    def interrupt_at_step_three(self, args, state, control, logs=None, **kwargs):
        original(self, args, state, control, logs=logs, **kwargs)
        if state.global_step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(distill_module.LossLogCallback, "on_log", interrupt_at_step_three)
    assert run(workspace, tiny_model_dir, "binarymos") == 130
    before = records(workspace)
    assert {record["stage"] for record in before if record["method"]["name"] == "binarymos"} == {"init"}

    monkeypatch.setattr(distill_module.LossLogCallback, "on_log", original)
    assert run(workspace, tiny_model_dir, "binarymos") == 0
    after = records(workspace)
    assert after[: len(before)] == before
    final = [record for record in after if record["stage"] == "final" and record["method"]["name"] == "binarymos"]
    assert len(final) == 2
    assert final[0]["training"]["resumed_from_step"] == 2
    log = [json.loads(line) for line in (workspace / "results" / final[0]["training"]["loss_log"]).read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]


def test_retraining_keeps_earlier_loss_log(workspace, tiny_model_dir, isolated_cache):
    assert run(workspace, tiny_model_dir, "binarymos") == 0
    final = next(
        record for record in records(workspace) if record["method"]["name"] == "binarymos" and record["stage"] == "final"
    )
    log_path = workspace / "results" / final["training"]["loss_log"]
    first_log = log_path.read_text()

    # A new machine keeps the records but not the cached student, and a new metric needs it.
    shutil.rmtree(isolated_cache / "runs")
    (workspace / "more.toml").write_text(TINY_SETTINGS.replace("ppl_windows = 1", "ppl_windows = 2"))
    assert main(["run", "--methods", "binarymos", "--model", str(tiny_model_dir), "--config", "more.toml"]) == 0

    kept = log_path.with_name(f"{log_path.stem}.1.jsonl")
    assert kept.read_text() == first_log


def test_non_finite_loss_stops_with_clear_error(workspace, tiny_model_dir, monkeypatch, capsys):
    from methods.binarymos import BinaryMoS

    def nan_loss(self, student_out, teacher_out, input_ids):
        return student_out.logits.sum() * torch.tensor(float("nan")), {"kl": float("nan")}

    monkeypatch.setattr(BinaryMoS, "distillation_loss", nan_loss)
    assert run(workspace, tiny_model_dir, "binarymos") == 2
    output = capsys.readouterr().out
    assert "loss became nan at step 1" in output
    assert "Lower the learning rate" in output
    assert any(record["stage"] == "init" for record in records(workspace))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["run", "--methods", "binarymoss"], "Did you mean 'binarymos'"),
        (["run", "--methods", "rtn", "--profile", "quik"], "Did you mean 'quick'"),
        (["run", "--methods", "rtn", "--metrics", "ppl,bleu"], "Unknown metric(s) bleu"),
        (["run", "--methods", "rtn", "--config", "missing.toml"], "Config file missing.toml not found"),
    ],
)
def test_bad_input_exits_with_message(arguments, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(arguments) == 2
    assert message in " ".join(capsys.readouterr().out.split())


def test_unknown_config_setting_is_rejected(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("[settings]\ntrain_stpes = 3\n")
    assert main(["run", "--methods", "rtn", "--config", "bad.toml"]) == 2
    assert "Unknown profile setting(s) train_stpes" in " ".join(capsys.readouterr().out.split())


LATENCY_SETTINGS = TINY_SETTINGS + """latency_prompt_tokens = 16
latency_decode_tokens = 4
latency_warmup = 1
latency_repeats = 3
"""


def test_latency_records_per_method(workspace, tiny_model_dir):
    (workspace / "tiny.toml").write_text(LATENCY_SETTINGS)
    arguments = ["run", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml"]
    assert main([*arguments, "--metrics", "ppl,latency"]) == 0
    stored = [record for record in records(workspace) if record["metric"]["name"].startswith("latency/")]
    names = sorted((record["method"]["name"], record["metric"]["name"]) for record in stored)
    assert names == [("fp", "latency/decode"), ("fp", "latency/prefill"), ("rtn", "latency/decode"), ("rtn", "latency/prefill")]
    for record in stored:
        protocol = record["metric"]["protocol"]
        assert record["value"] > 0
        assert record["n_samples"] == 3
        assert len(record["metric"]["samples"]) == 3
        assert protocol["prompt_tokens"] == 16
        assert protocol["decode_tokens"] == 4
        assert protocol["device"] == "cpu"
        assert protocol["timer"] == "perf_counter"
        assert record["environment"]["device"].startswith("cpu")
        assert record["storage"] is not None
    units = {record["metric"]["name"]: record["metric"]["unit"] for record in stored}
    assert units == {"latency/prefill": "ms for the prompt", "latency/decode": "ms per token"}


def test_latency_key_includes_device(workspace, tiny_model_dir, monkeypatch):
    (workspace / "tiny.toml").write_text(LATENCY_SETTINGS)
    arguments = ["run", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml", "--metrics", "ppl,latency"]
    assert main(arguments) == 0
    first = records(workspace)
    assert main(arguments) == 0
    assert records(workspace) == first

    import bench.environment

    other_device = {**bench.environment.environment(), "device": "NVIDIA H200"}
    monkeypatch.setattr("bench.runner.environment", lambda: other_device)
    assert main(arguments) == 0
    added = records(workspace)[len(first) :]
    assert sorted(record["metric"]["name"] for record in added) == ["latency/decode", "latency/decode", "latency/prefill", "latency/prefill"]
    assert {record["key"] for record in added}.isdisjoint(record["key"] for record in first)


def test_forward_version_remeasures_latency(workspace, tiny_model_dir, monkeypatch):
    (workspace / "tiny.toml").write_text(LATENCY_SETTINGS)
    arguments = ["run", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml", "--metrics", "ppl,latency"]
    assert main(arguments) == 0
    first = records(workspace)

    import bench.runner

    monkeypatch.setattr(bench.runner, "FORWARD_VERSION", bench.runner.FORWARD_VERSION + 1)
    assert main(arguments) == 0
    added = records(workspace)[len(first) :]
    assert sorted((record["method"]["name"], record["metric"]["name"]) for record in added) == [
        ("rtn", "latency/decode"), ("rtn", "latency/prefill")
    ]


def test_new_method_version_reruns_method(workspace, tiny_model_dir, monkeypatch):
    assert run(workspace, tiny_model_dir, "rtn") == 0
    first = records(workspace)

    monkeypatch.setattr(methods.load("rtn"), "version", 2)
    assert run(workspace, tiny_model_dir, "rtn") == 0
    added = records(workspace)[len(first) :]
    assert sorted(record["metric"]["name"] for record in added) == ["ppl/c4", "ppl/wikitext2"]
    assert {record["method"]["name"] for record in added} == {"rtn"}
    assert all(record["method"]["version"] == 2 for record in added)
    leaderboard = (workspace / "leaderboard.md").read_text()
    assert leaderboard.count("| rtn |") == 1


def test_remeasure_adds_latency_records(workspace, tiny_model_dir):
    (workspace / "tiny.toml").write_text(LATENCY_SETTINGS)
    arguments = ["run", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml", "--metrics", "ppl,latency"]
    assert main(arguments) == 0
    first = records(workspace)

    assert main([*arguments, "--remeasure", "latency"]) == 0
    stored = records(workspace)
    assert stored[: len(first)] == first
    added = stored[len(first) :]
    assert sorted((record["method"]["name"], record["metric"]["name"]) for record in added) == [
        ("fp", "latency/decode"), ("fp", "latency/prefill"), ("rtn", "latency/decode"), ("rtn", "latency/prefill")
    ]


def test_remeasure_unmeasured_metric_rejected(workspace, tiny_model_dir, capsys):
    arguments = ["run", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml", "--remeasure", "latency"]
    assert main(arguments) == 2
    output = capsys.readouterr()
    assert "add them to --metrics" in output.out + output.err
    assert not (workspace / "results" / "records.jsonl").exists()


def test_bad_latency_setting_exits_with_message(workspace, tiny_model_dir, capsys):
    (workspace / "tiny.toml").write_text(TINY_SETTINGS + "latency_repeats = 0\n")
    arguments = ["run", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml", "--metrics", "latency"]
    assert main(arguments) == 2
    output = " ".join(capsys.readouterr().out.split())
    assert "repeats must be an integer >= 1, got 0" in output
    assert "latency_* profile settings" in output
