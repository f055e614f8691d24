"""Rendering `leaderboard.md` from stored result records alone.

One table per (model, profile): a row per method configuration, columns for each metric, and
the protocol stated once under the table. When a number was measured more than once, the
latest record wins. The output depends only on the records, so it is reproducible.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

import methods
from bench.report.table import EMPTY, Cell, Table, to_markdown
from bench.results import current_records
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
    for record in current_records(records):
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
    tasks = {column.split("/")[1] for row in rows for column in row.cells if column.startswith("zeroshot/") and column.endswith("/acc")}
    return [task for task in TASK_LABELS if task in tasks]


def _accuracy_cell(row: Row, task: str) -> Cell:
    record = row.cells.get(f"zeroshot/{task}/acc")
    if record is None:
        return EMPTY
    value = 100 * record["value"]
    stderr = None if record.get("stderr") is None else 100 * record["stderr"]
    text = f"{value:.1f}" + (f" ± {stderr:.1f}" if stderr is not None else "")
    return Cell(text, value, stderr)


def average_cell(cells: list[Cell]) -> Cell:
    """Return the unweighted mean of accuracy cells (in %), with the standard error of that mean, or an empty cell.

    The standard error treats the tasks as independent: sqrt(sum of squared errors) / count.
    """
    if not cells or any(cell.value is None for cell in cells):
        return EMPTY
    mean = sum(cell.value for cell in cells) / len(cells)
    if all(cell.stderr is not None for cell in cells):
        stderr = math.sqrt(sum(cell.stderr**2 for cell in cells)) / len(cells)
        return Cell(f"{mean:.1f} ± {stderr:.1f}", mean, stderr)
    return Cell(f"{mean:.1f}", mean)


def _first(row: Row, key: str):
    """Return `key` of the row's records, preferring final-stage records (they carry training outcomes)."""
    ordered = sorted(row.cells.values(), key=lambda record: record.get("stage") != "final")
    for record in ordered:
        if record.get(key):
            return record[key]
    return None


def _number_cell(value, text_format: str, scale: float = 1.0) -> Cell:
    if value is None or value != value:
        return EMPTY
    return Cell(format(value * scale, text_format), value * scale)


def _ppl_cell(record: dict | None) -> Cell:
    return EMPTY if record is None else Cell(format_ppl(record["value"]), record["value"])


# Optional columns from records that only some runs produce: (column label, metric name, scale, format).
MEASURED_COLUMNS = (
    ("Peak eval memory (MB)", "memory/peak_eval", 1e-6, ".1f"),
    ("Prefill (ms)", "latency/prefill", 1.0, ".1f"),
    ("Decode (ms/token)", "latency/decode", 1.0, ".2f"),
)


def build_table(title: str, rows: list[Row]) -> Table:
    """Build the leaderboard table of one (model, profile): a row per method configuration."""
    ppl = [name for name in PPL_LABELS if any(f"ppl/{name}" in row.cells for row in rows)]
    ppl_init = [name for name in ppl if any(f"ppl/{name}@init" in row.cells for row in rows)]
    tasks = _zeroshot_columns(rows)
    measured_size = any(_first(row, "storage_measured") for row in rows)
    measured = [column for column in MEASURED_COLUMNS if any(column[1] in row.cells for row in rows)]
    columns = ["Method"]
    columns += [f"{PPL_LABELS[name]} PPL" for name in ppl]
    columns += [f"{PPL_LABELS[name]} PPL at init" for name in ppl_init]
    columns += [TASK_LABELS[task] for task in tasks] + (["Avg"] if tasks else [])
    columns += ["Bits/weight (linears)", "Bits/weight (model)", "Size (MB, formula)"]
    columns += ["Size (MB, artifact)"] if measured_size else []
    columns += [label for label, *_ in measured]
    columns += ["Train tokens", "Train time"]
    table = Table(title, columns)
    for row in rows:
        cells = [Cell(row.label, row.label)]
        cells += [_ppl_cell(row.cells.get(f"ppl/{name}")) for name in ppl]
        cells += [_ppl_cell(row.cells.get(f"ppl/{name}@init")) for name in ppl_init]
        accuracies = [_accuracy_cell(row, task) for task in tasks]
        cells += accuracies
        if tasks:
            cells.append(average_cell(accuracies))
        storage = _first(row, "storage") or {}
        cells.append(_number_cell(storage.get("bits_per_weight_linear"), ".3f"))
        cells.append(_number_cell(storage.get("bits_per_weight_model"), ".3f"))
        cells.append(_number_cell(storage.get("total_bytes"), ".1f", 1e-6))
        if measured_size:
            cells.append(_number_cell((_first(row, "storage_measured") or {}).get("total_bytes"), ".1f", 1e-6))
        for _label, metric, scale, text_format in measured:
            record = row.cells.get(metric)
            cells.append(_number_cell(record["value"] if record else None, text_format, scale))
        training = _first(row, "training") or {}
        cells.append(Cell(f"{training['tokens']:,}", training["tokens"]) if "tokens" in training else EMPTY)
        seconds = training.get("wall_time_s")
        cells.append(Cell(format_duration(seconds), seconds) if seconds is not None else EMPTY)
        table.add_row(cells)
    return table


def render_table(rows: list[Row]) -> list[str]:
    """Return the Markdown lines of the table of `rows`, without notes."""
    return to_markdown(build_table("", rows))


MEMORY_MEASUREMENTS = ("baseline_rss_bytes", "rss_after_load_bytes")


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
                    + " Avg is the unweighted mean over the tasks, its error sqrt(sum of squared errors) / task count."
                )
            elif column == "latency/prefill":
                text = "Prefill latency (ms for the prompt): " + ", ".join(f"{key} {value}" for key, value in sorted(protocol.items())) + "."
            elif column == "latency/decode":
                text = "Decode latency (ms per token): " + ", ".join(f"{key} {value}" for key, value in sorted(protocol.items())) + "."
            elif column == "memory/peak_eval":
                # The RSS before and after loading are measurements kept in the record, not settings.
                settings = {key: value for key, value in protocol.items() if key not in MEMORY_MEASUREMENTS}
                text = "Peak eval memory: " + ", ".join(f"{key} {value}" for key, value in sorted(settings.items())) + "."
            else:
                continue
            if text not in seen:
                seen.add(text)
                notes.append(text)
    if any(_first(row, "storage_measured") for row in rows):
        notes.append("Size (MB, artifact) is the byte count of the packed artifact written to disk.")
    for row in rows:
        tasks = _zeroshot_columns([row])
        if not tasks:
            continue
        counts = sorted({row.cells[f"zeroshot/{task}/acc"].get("n_samples") for task in tasks}, key=str)
        text = f"{row.label}: {', '.join(str(count) for count in counts)} examples per task"
        normalized = [
            f"{TASK_LABELS[task]} {100 * row.cells[f'zeroshot/{task}/acc_norm']['value']:.1f}"
            for task in tasks if f"zeroshot/{task}/acc_norm" in row.cells
        ]
        notes.append(text + (f"; acc_norm {', '.join(normalized)}." if normalized else "."))
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
            notes.append(text)
    return notes


def sorted_rows(table: dict[str, Row]) -> list[Row]:
    return sorted(table.values(), key=lambda row: (_method_order(row.method), row.label))


def leaderboard_tables(records: list[dict]) -> list[tuple[tuple, Table]]:
    """Return ((model name, revision, profile), table with its notes) for every group of `records`, sorted."""
    tables = []
    for (model_name, revision, profile), group in sorted(group_rows(records).items()):
        rows = sorted_rows(group)
        sample = next(iter(rows[0].cells.values()))
        model = sample["model"]
        table = build_table(f"{model_name}, profile `{profile}`", rows)
        table.notes = [
            f"Model: {model_name} ({model.get('revision')}), {model.get('origin')}; run in {model.get('dtype')}. "
            "`fp` is the unquantized reference in that dtype.",
            "Size and bits per weight come from each method's storage formula, side data at 16 bits; "
            "\"model\" counts kept layers (embeddings, norms) at 16 bits, and the reference at its run dtype.",
            *_protocol_notes(rows),
        ]
        tables.append(((model_name, revision, profile), table))
    return tables


def render(records: list[dict]) -> str:
    """Return the whole leaderboard.md text for `records`."""
    lines = [
        "# Leaderboard",
        "",
        "Generated from `results/records.jsonl` by `bench report` (and at the end of `bench run`); do not edit by hand.",
        "Every number comes from a stored record with its full protocol and the command that produced it.",
        "CSV and LaTeX versions of each table, plots and the BinaryMoS paper comparison are under `reports/`.",
        "",
    ]
    for _key, table in leaderboard_tables(records):
        lines += [f"## {table.title}", ""]
        lines += to_markdown(table)
        lines.append("")
    return "\n".join(lines)
