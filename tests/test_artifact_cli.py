"""`bench quantize`, `bench eval` and artifact reuse by `bench run`, on a tiny Llama with the real tokenizer."""

from __future__ import annotations

import json

import pytest

import methods
from bench.artifacts import CONFIG_FILE, WEIGHTS_FILE
from bench.cli import main
from bench.results import ResultStore

TINY_SETTINGS = """
[settings]
ppl_seqlen = 32
ppl_windows = 1
ppl_datasets = ["wikitext2"]
calibration_windows = 2
calibration_seqlen = 32
train_steps = 2
train_seqlen = 32
"""


@pytest.fixture
def workspace(tmp_path, tiny_model_dir, isolated_cache, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY_SETTINGS)
    return tmp_path


def records(workspace) -> list[dict]:
    return ResultStore(workspace / "results").records()


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_then_eval_records_artifact(workspace, tiny_model_dir, method):
    target = workspace / "artifact"
    assert main(["quantize", "--methods", method, "--model", str(tiny_model_dir), "--config", "tiny.toml", "--save", str(target)]) == 0
    assert (target / WEIGHTS_FILE).exists()
    assert (target / CONFIG_FILE).exists()
    assert main(["eval", str(target), "--config", "tiny.toml"]) == 0
    (record,) = records(workspace)
    assert record["method"]["name"] == method
    assert record["metric"]["name"] == "ppl/wikitext2"
    assert record["storage"]["source"] == "formula"
    measured = record["storage_measured"]
    assert measured["source"] == "artifact"
    assert measured["total_bytes"] == pytest.approx(record["storage"]["total_bytes"], rel=0.03)
    assert measured["artifact_bytes"] > measured["total_bytes"]
    assert record["artifact"]["path"] == str(target)
    assert len(record["artifact"]["sha256"]) == 64


def test_eval_records_artifact_method_version(workspace, tiny_model_dir, monkeypatch):
    target = workspace / "artifact"
    assert main(["quantize", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml", "--save", str(target)]) == 0
    monkeypatch.setattr(methods.load("rtn"), "version", 2)
    assert main(["eval", str(target), "--config", "tiny.toml"]) == 0
    (record,) = records(workspace)
    assert record["method"] == json.loads((target / CONFIG_FILE).read_text())["method"]
    assert "version" not in record["method"]


def test_quantize_refuses_existing_directory(workspace, tiny_model_dir, capsys):
    target = workspace / "artifact"
    target.mkdir()
    assert main(["quantize", "--methods", "rtn", "--model", str(tiny_model_dir), "--save", str(target)]) == 2
    assert "already exists" in capsys.readouterr().out


def test_eval_rejects_corrupt_artifact(workspace, tiny_model_dir, capsys):
    target = workspace / "artifact"
    assert main(["quantize", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml", "--save", str(target)]) == 0
    config = json.loads((target / CONFIG_FILE).read_text())
    config["format_version"] = 99
    (target / CONFIG_FILE).write_text(json.dumps(config))
    assert main(["eval", str(target), "--config", "tiny.toml"]) == 2
    assert "format version 99" in capsys.readouterr().out
    assert records(workspace) == []


def test_run_stores_and_reuses_artifact(workspace, tiny_model_dir, isolated_cache, monkeypatch):
    arguments = ["run", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml"]
    assert main(arguments) == 0
    first = [record for record in records(workspace) if record["method"]["name"] == "rtn"]
    assert len(first) == 1
    assert first[0]["storage_measured"]["source"] == "artifact"
    assert list(isolated_cache.glob("runs/*/artifact/config.json"))

    (workspace / "results" / "records.jsonl").unlink()

    def fail(*args, **kwargs):
        raise AssertionError("the method was quantized again")

    monkeypatch.setattr("methods.rtn.SignRTN.quantize", fail)
    assert main(arguments) == 0
    second = [record for record in records(workspace) if record["method"]["name"] == "rtn"]
    assert second[0]["value"] == first[0]["value"]
    assert second[0]["artifact"] == first[0]["artifact"]


def test_memory_metric_records_peak(workspace, tiny_model_dir):
    assert main(["run", "--methods", "rtn", "--model", str(tiny_model_dir), "--config", "tiny.toml", "--metrics", "memory"]) == 0
    stored = {record["method"]["name"]: record for record in records(workspace)}
    assert sorted(stored) == ["fp", "rtn"]
    for record in stored.values():
        assert record["metric"]["name"] == "memory/peak_eval"
        protocol = record["metric"]["protocol"]
        assert record["value"] >= protocol["rss_after_load_bytes"] >= protocol["baseline_rss_bytes"] > 0
        assert "VmHWM" in protocol["measurement"]
