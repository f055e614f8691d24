"""Rendering `leaderboard.md` from stored result records alone.

One table per (model, profile): a row per method configuration, columns for each metric, and
the protocol stated once under the table. When a number was measured more than once, the
latest record wins. The output depends only on the records, so it is reproducible.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import methods
from methods.registry import METHODS

PPL_LABELS = {"wikitext2": "Wiki2", "c4": "C4"}
TASK_LABELS = {
    "boolq": "BoolQ",
    "piqa": "PIQA",
    "hellaswag": "HellaSwag",
    "winogrande": "WinoG",
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
}


def format_ppl(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    return f"{value:.2f}" if value < 1e4 else f"{value:.2e}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def method_label(method: dict, dtype: str | None = None) -> str:
    """The method name, plus every option that differs from its default."""
    name = method["name"]
    if name == "fp":
        return f"fp (unquantized reference, {dtype})" if dtype else "fp (unquantized reference)"
    try:
        defaults = methods.load(name).config_cls().to_dict()
    except (ValueError, ImportError, AttributeError):
        defaults = {}
    changed = [f"{key}={value}" for key, value in sorted(method.get("config", {}).items()) if defaults.get(key) != value]
    return f"{name} ({', '.join(changed)})" if changed else name


def _method_order(name: str) -> int:
    names = [entry.name for entry in METHODS]
    return names.index(name) if name in names else len(names)


@dataclass
class Row:
    label: str
    method: str
    cells: dict[str, dict] = field(default_factory=dict)  # column id -> latest record

    def put(self, column: str, record: dict) -> None:
        current = self.cells.get(column)
        if current is None or record["timestamp"] >= current["timestamp"]:
            self.cells[column] = record


def _column(record: dict) -> str:
    name = record["metric"]["name"]
    return f"{name}@init" if record.get("stage") == "init" else name


def group_rows(records: list[dict]) -> dict[tuple, dict[str, Row]]:
    """Group records into tables keyed by (model name, model revision, profile) and rows by configuration."""
    tables: dict[tuple, dict[str, Row]] = defaultdict(dict)
    for record in records:
        model = record["model"]
        table = tables[(model["name"], model["revision"], record.get("profile") or "")]
        training = record.get("training") or {}
        training_id = {key: training.get(key) for key in ("steps", "seqlen", "batch_size", "learning_rate")}
        row_id = json.dumps([record["method"], training_id], sort_keys=True)
        if row_id not in table:
            table[row_id] = Row(method_label(record["method"], model.get("dtype")), record["method"]["name"])
        table[row_id].put(_column(record), record)
    return tables


def _zeroshot_columns(rows: list[Row]) -> list[str]:
    tasks = {column.split("/")[1] for row in rows for column in row.cells if column.startswith("zeroshot/")}
    return [task for task in TASK_LABELS if task in tasks]


def _accuracy_cell(row: Row, task: str) -> tuple[str, float | None]:
    record = row.cells.get(f"zeroshot/{task}/acc")
    if record is None:
        return "", None
    text = f"{100 * record['value']:.1f}"
    if record.get("stderr") is not None:
        text += f" ± {100 * record['stderr']:.1f}"
    return text, record["value"]


def _first(row: Row, key: str):
    """Return `key` of the row's records, preferring final-stage records (they carry training outcomes)."""
    ordered = sorted(row.cells.values(), key=lambda record: record.get("stage") != "final")
    for record in ordered:
        if record.get(key):
            return record[key]
    return None


def render_table(rows: list[Row]) -> list[str]:
    ppl = [name for name in PPL_LABELS if any(f"ppl/{name}" in row.cells for row in rows)]
    ppl_init = [name for name in ppl if any(f"ppl/{name}@init" in row.cells for row in rows)]
    tasks = _zeroshot_columns(rows)
    header = ["Method"]
    header += [f"{PPL_LABELS[name]} PPL" for name in ppl]
    header += [f"{PPL_LABELS[name]} PPL at init" for name in ppl_init]
    header += [TASK_LABELS[task] for task in tasks] + (["Avg"] if tasks else [])
    header += ["Bits/weight (linears)", "Bits/weight (model)", "Size (MB, formula)", "Train tokens", "Train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label]
        cells += [format_ppl(row.cells[f"ppl/{n}"]["value"]) if f"ppl/{n}" in row.cells else "" for n in ppl]
        cells += [format_ppl(row.cells[f"ppl/{n}@init"]["value"]) if f"ppl/{n}@init" in row.cells else "" for n in ppl_init]
        accuracies = [_accuracy_cell(row, task) for task in tasks]
        cells += [text for text, _ in accuracies]
        if tasks:
            values = [value for _, value in accuracies if value is not None]
            cells.append(f"{100 * sum(values) / len(values):.1f}" if len(values) == len(tasks) else "")
        storage = _first(row, "storage") or {}
        linear_bits = storage.get("bits_per_weight_linear")
        cells.append("" if linear_bits is None or linear_bits != linear_bits else f"{linear_bits:.3f}")
        cells.append(f"{storage['bits_per_weight_model']:.3f}" if "bits_per_weight_model" in storage else "")
        cells.append(f"{storage['total_bytes'] / 1e6:.1f}" if "total_bytes" in storage else "")
        training = _first(row, "training") or {}
        cells.append(f"{training['tokens']:,}" if "tokens" in training else "")
        cells.append(format_duration(training.get("wall_time_s")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _protocol_notes(rows: list[Row]) -> list[str]:
    notes = []
    seen = set()
    for row in rows:
        for column, record in sorted(row.cells.items()):
            protocol = record["metric"].get("protocol", {})
            if column.startswith("ppl/") and not column.endswith("@init"):
                text = (
                    f"Perplexity, {protocol.get('dataset')}: {protocol.get('variant')}, seqlen {protocol.get('seqlen')}, "
                    f"{protocol.get('windows_used')} non-overlapping windows, joined with {json.dumps(protocol.get('join'))}, "
                    f"source {protocol.get('text_source')}."
                )
            elif column.startswith("zeroshot/") and column.endswith("/acc"):
                text = (
                    f"Zero-shot: lm-eval {protocol.get('lm_eval_version')}, {protocol.get('num_fewshot', 0)}-shot, "
                    f"acc ± standard error in %, "
                    + (f"a seeded subset of {protocol['limit']} examples per task (seed {protocol.get('seed')})." if protocol.get("limit") else "every example of each task.")
                )
            else:
                continue
            if text not in seen:
                seen.add(text)
                notes.append(f"- {text}")
    for row in rows:
        for task in _zeroshot_columns([row]):
            acc = row.cells.get(f"zeroshot/{task}/acc")
            norm = row.cells.get(f"zeroshot/{task}/acc_norm")
            if acc is None:
                continue
            text = f"{row.label}, {TASK_LABELS[task]}: acc {100 * acc['value']:.1f}"
            if norm is not None:
                text += f", acc_norm {100 * norm['value']:.1f}"
            notes.append(f"- {text}, {acc.get('n_samples')} examples.")
    trained = [row for row in rows if _first(row, "training")]
    for row in trained:
        training = _first(row, "training")
        data = training.get("data", {})
        text = (
            f"Training of {row.label}: {training.get('steps')} steps x {training.get('batch_size')} x {training.get('seqlen')} tokens, "
            f"AdamW lr {training.get('learning_rate')} ({training.get('lr_scheduler')}, {training.get('warmup_steps')} warm-up steps), "
            f"data {', '.join(sorted(data.get('datasets', {})))}; \"at init\" is the same model before any training step."
        )
        if text not in seen:
            seen.add(text)
            notes.append(f"- {text}")
    return notes


def render(records: list[dict]) -> str:
    """Return the whole leaderboard.md text for `records`."""
    lines = [
        "# Leaderboard",
        "",
        "Generated from `results/records.jsonl` by `bench report` (and at the end of `bench run`); do not edit by hand.",
        "Every number comes from a stored record with its full protocol and the command that produced it.",
        "",
    ]
    tables = group_rows(records)
    for (model_name, revision, profile), table in sorted(tables.items()):
        rows = sorted(table.values(), key=lambda row: (_method_order(row.method), row.label))
        sample = next(iter(next(iter(rows)).cells.values()))
        model = sample["model"]
        lines += [f"## {model_name}, profile `{profile}`", ""]
        lines += render_table(rows)
        lines += [
            "",
            f"- Model: {model_name} ({model.get('revision')}), {model.get('origin')}; run in {model.get('dtype')}. "
            "`fp` is the unquantized reference in that dtype.",
            "- Size and bits per weight come from each method's storage formula, side data at 16 bits; "
            "\"model\" counts kept layers (embeddings, norms) at 16 bits, and the reference at its run dtype.",
        ]
        lines += _protocol_notes(rows)
        lines.append("")
    return "\n".join(lines)
