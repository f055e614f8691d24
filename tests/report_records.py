"""Result records built in memory for report tests, shaped like the ones `bench run` stores."""

from __future__ import annotations

import json
from pathlib import Path

TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge")
MODEL = {"name": "smollm2-135m", "revision": "gguf-sha256:test", "dtype": "float32", "origin": "a test model"}


def ppl_protocol(dataset: str, seqlen: int = 512, windows: int | None = 8) -> dict:
    variant = "wikitext2-raw-test" if dataset == "wikitext2" else "c4-validation-2k-sample, documents joined (c4-new style); not GPTQ's c4 subset"
    return {
        "dataset": dataset, "variant": variant, "seqlen": seqlen, "windows": windows,
        "windows_used": windows or 140, "join": "\n\n" if dataset == "wikitext2" else " ", "text_source": "local:test",
    }


def zeroshot_protocol(limit: int | None = 200, version: str = "0.4.13") -> dict:
    return {"lm_eval_version": version, "num_fewshot": 0, "limit": limit, "seed": 0}


def storage(bits_linear: float, components: dict[str, int]) -> dict:
    return {
        "bits_per_weight_linear": bits_linear, "bits_per_weight_model": bits_linear + 3.0,
        "components_bits": components, "kept_bits": 16, "kept_parameters": 1000, "quantized_weights": 4000,
        "source": "formula", "total_bytes": (sum(components.values()) + 16000) / 8,
    }


def record(method: str, metric: str, value: float, *, stage: str = "final", protocol: dict | None = None,
           stderr: float | None = None, n_samples: int | None = None, profile: str = "quick",
           timestamp: str = "2026-12-01T00:00:00+00:00", model: dict | None = None, **fields) -> dict:
    return {
        "key": f"{method}-{metric}-{stage}-{profile}",
        "model": model or MODEL,
        "method": {"name": method, "config": {}},
        "metric": {"name": metric, "protocol": protocol or {}},
        "value": value, "stderr": stderr, "n_samples": n_samples, "stage": stage, "profile": profile,
        "timestamp": timestamp, "training": fields.pop("training", None), "calibration": None,
        "storage": fields.pop("storage", None), **fields,
    }


METHOD_STORAGE = {
    "fp": {"bits_per_weight_linear": float("nan"), "bits_per_weight_model": 32.0, "components_bits": {}, "kept_bits": 32,
           "kept_parameters": 5000, "quantized_weights": 0, "source": "formula", "total_bytes": 20000.0},
    "rtn": storage(1.02, {"signs": 4000, "scales": 80}),
    "binarymos": storage(1.27, {"signs": 4000, "scales": 700, "router": 380}),
    "onebit": storage(1.05, {"signs": 4000, "scales": 200}),
    "pbllm": storage(2.79, {"signs": 3600, "salient_codes": 3200, "salient_indices": 4000}),
}
PPL = {"fp": 30.6, "rtn": 3.0e6, "binarymos": 8126.6, "onebit": 5323.5, "pbllm": 2091.4}


def report_records(loss_log: str | None = None) -> list[dict]:
    """Records of five methods: perplexities, six zero-shot tasks, and latency, memory and artifact size for some."""
    records = []
    for index, (method, ppl) in enumerate(PPL.items()):
        extra = {"storage": METHOD_STORAGE[method]}
        if method == "binarymos":
            extra["training"] = {"steps": 4, "batch_size": 1, "seqlen": 32, "learning_rate": 1e-3, "tokens": 128,
                                 "wall_time_s": 75.0, "lr_scheduler": "cosine", "warmup_steps": 0,
                                 "data": {"datasets": {"c4_train": "local:test"}}, "loss_log": loss_log}
            extra["storage_measured"] = {**METHOD_STORAGE[method], "source": "artifact", "total_bytes": 700.0}
        for dataset, scale in (("wikitext2", 1.0), ("c4", 0.8)):
            records.append(record(method, f"ppl/{dataset}", ppl * scale, protocol=ppl_protocol(dataset), n_samples=4088, **extra))
        for position, task in enumerate(TASKS):
            accuracy = 0.3 + 0.05 * position + 0.02 * (index % 3)
            records.append(record(method, f"zeroshot/{task}/acc", accuracy, protocol=zeroshot_protocol(), stderr=0.03, n_samples=200, **extra))
            records.append(record(method, f"zeroshot/{task}/gold_loglik", -5.0 - index, protocol=zeroshot_protocol(), stderr=0.2, n_samples=200, **extra))
        if method in ("fp", "binarymos"):
            # The RSS fields are measurements that differ per method, as in stored records.
            memory = {"device": "cpu", "seqlen": 512, "baseline_rss_bytes": 16e6 + index, "rss_after_load_bytes": 4.8e8 + index}
            records.append(record(method, "memory/peak_eval", 2.4e9 - index * 1e8, protocol=memory, **extra))
            records.append(record(method, "latency/prefill", 120.0 + index, protocol={"prompt_tokens": 128, "repeats": 5}, **extra))
            records.append(record(method, "latency/decode", 15.5 + index, protocol={"new_tokens": 32, "repeats": 5}, **extra))
    return records


def write_loss_log(results_dir: Path, relative: str, steps: int = 4) -> None:
    path = results_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": step, "loss": 100.0 / step, "kl": 10.0 / step, "hidden_mse": 9.0 / step}) for step in range(1, steps + 1)]
    path.write_text("\n".join(lines) + "\n")
