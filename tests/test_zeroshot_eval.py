"""In-process zero-shot evaluation against the `lm_eval` command line on the same model and examples."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.zeroshot import TASK_CONFIG_DIR, TASKS, ZeroShotProtocol, evaluate_zeroshot, select_examples

pytestmark = pytest.mark.slow
LIMIT = 20  # examples per task: 20 of each of the six tasks are about 400 loglikelihood requests
BATCH_SIZE = 8


def _parameter_checksums(model) -> dict[str, float]:
    return {name: float(parameter.detach().double().sum()) for name, parameter in model.named_parameters()}


def _run_lm_eval_cli(model_dir: str, data_dir: Path, samples: dict[str, list[int]], output: Path) -> dict:
    """Run `python -m lm_eval run` on the model directory with the local task configs; return its results."""
    command = [
        sys.executable, "-m", "lm_eval", "run",
        "--model", "hf",
        "--model_args", f"pretrained={model_dir},dtype=float32",
        "--tasks", ",".join(samples),
        "--include_path", str(TASK_CONFIG_DIR),
        "--samples", json.dumps(samples),
        "--batch_size", str(BATCH_SIZE),
        "--device", "cpu",
        "--metadata", json.dumps({"data_dir": str(data_dir)}),
        "--output_path", str(output),
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=1800)
    assert completed.returncode == 0, completed.stderr[-4000:]
    (results_file,) = output.rglob("results_*.json")
    return json.loads(results_file.read_text())


def test_in_process_equals_cli(default_model, data_dir, tmp_path):
    model = default_model.model
    checksums = _parameter_checksums(model)
    random.seed(1234)
    expected_random = random.random()
    random.seed(1234)

    protocol = ZeroShotProtocol(limit=LIMIT, seed=0, batch_size=BATCH_SIZE)
    model.train()  # evaluate_zeroshot must evaluate in eval mode and hand the mode back
    try:
        records = evaluate_zeroshot(model, default_model.tokenizer, protocol, data_dir)
        assert model.training
    finally:
        model.eval()
    assert random.random() == expected_random
    assert _parameter_checksums(model) == checksums

    n_totals = {record["lm_eval_task"]: record["n_total"] for record in records}
    samples = {name: select_examples(n_totals[name], LIMIT, protocol.seed) for name in n_totals}
    cli = _run_lm_eval_cli(default_model.info.source, data_dir, samples, tmp_path / "lm_eval_output")

    gold = [record for record in records if record["metric"] == "gold_loglik"]
    accuracies = [record for record in records if record["metric"] != "gold_loglik"]
    assert [record["task"] for record in gold] == list(protocol.tasks)
    assert all(record["value"] < 0 and record["n_samples"] == LIMIT for record in gold)
    assert len(accuracies) == sum(len(TASKS[name].metrics) for name in protocol.tasks)
    for record in accuracies:
        name = record["lm_eval_task"]
        metric = record["metric"]
        assert record["n_samples"] == LIMIT == cli["n-samples"][name]["effective"]
        assert record["value"] == cli["results"][name][f"{metric},none"], f"{name} {metric}"
        assert record["stderr"] == pytest.approx(cli["results"][name][f"{metric}_stderr,none"], rel=1e-9)
        assert record["lm_eval_version"] == cli["lm_eval_version"]
        assert record["task_source"].startswith("local:")
        assert record["limit"] == LIMIT


def test_quantized_model_evaluates_in_place(default_model, data_dir):
    """A model whose linears a method replaced is evaluated as is, and left unchanged."""
    import methods

    model = copy.deepcopy(default_model.model)
    methods.create("binarymos").quantize(model)
    replaced = sum(1 for module in model.modules() if type(module).__module__.startswith("methods."))
    assert replaced > 0
    checksums = _parameter_checksums(model)
    pointers = {name: parameter.data_ptr() for name, parameter in model.named_parameters()}

    protocol = ZeroShotProtocol(tasks=("piqa",), limit=4, seed=0, batch_size=BATCH_SIZE)
    with torch.no_grad():
        records = evaluate_zeroshot(model, default_model.tokenizer, protocol, data_dir)

    assert [record["metric"] for record in records] == ["acc", "acc_norm", "gold_loglik"]
    assert all(0.0 <= record["value"] <= 1.0 and record["n_samples"] == 4 for record in records[:2])
    assert records[2]["value"] < 0 and records[2]["n_samples"] == 4
    assert _parameter_checksums(model) == checksums
    assert {name: parameter.data_ptr() for name, parameter in model.named_parameters()} == pointers
