"""The BinaryMoS paper's main table beside the numbers reproduced here.

For each model of the paper and each method, a "paper" row holds the published numbers and an
"ours" row the latest reproduced number from the results store (empty where nothing was
reproduced); a "difference" row follows where something was. A difference is printed only
where our protocol matches the paper's; otherwise the cell says "n.c." (not comparable) and a
note says why. Models the paper lacks get "ours" rows in the same layout. Averages are always
recomputed from the six task columns, and a published average that does not match its columns
is flagged with "≠".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bench.leaderboard import TASK_LABELS
from bench.report.table import EMPTY, Cell, Table
from bench.results import current_records

PAPER_FILE = Path(__file__).with_name("binarymos_table3.json")
PPL_COLUMNS = ("wikitext2", "c4")
TASKS = tuple(TASK_LABELS)
METHOD_NAMES = {"FP16": "fp", "PB-LLM": "pbllm", "BiLLM": "billm", "OneBit": "onebit", "BinaryMoS": "binarymos"}
# Published averages are rounded to 2 decimals and so are the task columns, so a correct average
# can differ from the mean of the printed columns by up to 0.005 + 0.005.
AVERAGE_TOLERANCE = 0.01
# Profiles in the order of preference: the first with a record of a (model, method) is shown.
PROFILE_PREFERENCE = ("paper", "full", "quick")
COLUMN_GROUPS = {"wikitext2": "Wiki2", "c4": "C4"}  # any other column is a zero-shot task


def load_paper_table(path: Path = PAPER_FILE) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def normalize_model_name(name: str) -> str:
    """Map a paper model label or a model id to one comparable key, e.g. "meta-llama/Llama-2-7b-hf" to "llama-2-7b"."""
    key = name.lower().rsplit("/", 1)[-1]
    key = re.sub(r"-hf$", "", key)
    key = key.replace("llama-1-", "llama-")
    return key


@dataclass(frozen=True)
class ComparableCheck:
    """Whether a reproduced number was measured under the paper's protocol, and why not if it was not."""

    comparable: bool
    reason: str = ""


def check_ppl_protocol(dataset: str, protocol: dict) -> ComparableCheck:
    if protocol.get("seqlen") != 2048:
        return ComparableCheck(False, f"seqlen {protocol.get('seqlen')}, the paper uses 2048")
    if dataset == "wikitext2":
        if protocol.get("windows") is not None:
            return ComparableCheck(False, f"{protocol.get('windows_used')} windows, the paper uses every window")
        return ComparableCheck(True)
    variant = str(protocol.get("variant", ""))
    if "not GPTQ's c4" in variant or not variant.startswith("c4") or protocol.get("windows_used") != 256:
        return ComparableCheck(False, f"C4 set {variant!r} with {protocol.get('windows_used')} windows, the paper uses GPTQ's 256 c4 windows")
    return ComparableCheck(True)


def check_zeroshot_protocol(protocol: dict) -> ComparableCheck:
    if protocol.get("limit"):
        return ComparableCheck(False, f"a subset of {protocol['limit']} examples per task, the paper uses every example")
    if protocol.get("lm_eval_version") != "0.3.0":
        return ComparableCheck(False, f"lm-eval {protocol.get('lm_eval_version')}, the paper uses lm-eval 0.3.0, whose prompts and tokenization differ")
    return ComparableCheck(True)


def _profile_rank(profile: str) -> int:
    return PROFILE_PREFERENCE.index(profile) if profile in PROFILE_PREFERENCE else len(PROFILE_PREFERENCE)


def reproduced_numbers(records: list[dict]) -> dict[tuple[str, str], dict]:
    """Return {(model key, method): {"profile", "model", "cells": {column: record}}} from final-stage records.

    Only methods at their default configuration count, in the preferred profile that has them.
    The latest record of each column wins.
    """
    import methods

    chosen: dict[tuple[str, str], dict] = {}
    for record in sorted(current_records(records), key=lambda record: record["timestamp"]):
        if record.get("stage") == "init":
            continue
        name = record["metric"]["name"]
        parts = name.split("/")
        if parts[0] == "ppl" and parts[1] in PPL_COLUMNS:
            column = parts[1]
        elif parts[0] == "zeroshot" and len(parts) == 3 and parts[2] == "acc" and parts[1] in TASKS:
            column = parts[1]
        else:
            continue
        method = record["method"]["name"]
        try:
            defaults = methods.load(method).config_cls().to_dict()
        except (ValueError, ImportError, AttributeError):
            defaults = {}
        if any(defaults.get(key) != value for key, value in record["method"].get("config", {}).items()):
            continue
        key = (normalize_model_name(record["model"]["name"]), method)
        profile = record.get("profile") or ""
        entry = chosen.get(key)
        if entry is None or _profile_rank(profile) < _profile_rank(entry["profile"]):
            entry = chosen[key] = {"profile": profile, "model": record["model"], "cells": {}}
        if profile == entry["profile"]:
            entry["cells"][column] = record
    return chosen


def _value_text(column: str, value: float) -> str:
    if column in PPL_COLUMNS:
        return f"{value:.2f}" if value < 1e4 else f"{value:.2e}"
    return f"{value:.2f}"


def _paper_row(model: str, method: str, row: dict) -> tuple[list[Cell], str | None]:
    cells = [Cell(model), Cell(method), Cell("paper")]
    cells += [Cell(_value_text(column, row[column]), row[column]) for column in (*PPL_COLUMNS, *TASKS)]
    average = sum(row[task] for task in TASKS) / len(TASKS)
    flag = None
    if abs(average - row["average"]) > AVERAGE_TOLERANCE:
        cells.append(Cell(f"{row['average']:.2f} ≠ {average:.2f}", row["average"]))
        flag = f"{model} {method}: the published average {row['average']:.2f} does not match its six task columns, whose mean is {average:.2f}."
    else:
        cells.append(Cell(f"{row['average']:.2f}", row["average"]))
    return cells, flag


def _our_value(column: str, record: dict) -> float:
    return record["value"] if column in PPL_COLUMNS else 100 * record["value"]


def _ours_rows(model: str, method: str, entry: dict | None, paper: dict | None, reasons: set[str]) -> list[list[Cell]]:
    source = f"ours ({entry['profile']})" if entry else "ours"
    ours = [Cell(model), Cell(method), Cell(source)]
    difference = [Cell(model), Cell(method), Cell("difference")]
    cells = entry["cells"] if entry else {}
    for column in (*PPL_COLUMNS, *TASKS):
        record = cells.get(column)
        if record is None:
            ours.append(EMPTY)
            difference.append(EMPTY)
            continue
        value = _our_value(column, record)
        stderr = 100 * record["stderr"] if column in TASKS and record.get("stderr") is not None else None
        text = _value_text(column, value) + (f" ± {stderr:.2f}" if stderr is not None else "")
        ours.append(Cell(text, value, stderr))
        if paper is None:
            difference.append(EMPTY)
            continue
        protocol = record["metric"].get("protocol", {})
        check = check_ppl_protocol(column, protocol) if column in PPL_COLUMNS else check_zeroshot_protocol(protocol)
        if check.comparable:
            delta = value - paper[column]
            difference.append(Cell(f"{delta:+.2f}", delta))
        else:
            difference.append(Cell("n.c.", "not comparable"))
            label = COLUMN_GROUPS.get(column, "zero-shot")
            reasons.add(f"{label}: {check.reason}.")
    task_values = [ours[3 + len(PPL_COLUMNS) + index].value for index in range(len(TASKS))]
    if all(value is not None for value in task_values):
        average = sum(task_values) / len(TASKS)
        ours.append(Cell(f"{average:.2f}", average))
        if paper is not None and all(cell.text not in ("n.c.",) for cell in difference[3 + len(PPL_COLUMNS):]):
            delta = average - sum(paper[task] for task in TASKS) / len(TASKS)
            difference.append(Cell(f"{delta:+.2f}", delta))
        else:
            difference.append(Cell("n.c.", "not comparable") if paper is not None else EMPTY)
    else:
        ours.append(EMPTY)
        difference.append(EMPTY)
    rows = [ours]
    if entry and paper is not None:
        rows.append(difference)
    return rows


def build_paper_table(records: list[dict], paper: dict | None = None) -> Table:
    """Build the comparison table; see the module docstring for its layout."""
    paper = paper or load_paper_table()
    columns = ["Model", "Method", "Source", "Wiki2", "C4", *(TASK_LABELS[task] for task in TASKS), "Avg"]
    table = Table("BinaryMoS paper, Table 3, against reproduced numbers", columns)
    reproduced = reproduced_numbers(records)

    reasons: set[str] = set()
    flags = []
    paper_models = []
    for row in paper["rows"]:
        model_key = normalize_model_name(row["model"])
        if model_key not in paper_models:
            paper_models.append(model_key)
        method = METHOD_NAMES[row["method"]]
        cells, flag = _paper_row(row["model"], row["method"], row)
        if flag:
            flags.append(flag)
        table.add_row(cells)
        for ours in _ours_rows(row["model"], row["method"], reproduced.get((model_key, method)), row, reasons):
            table.add_row(ours)

    method_order = list(METHOD_NAMES.values())
    others = sorted(
        (key for key in reproduced if key[0] not in paper_models),
        key=lambda key: (key[0], method_order.index(key[1]) if key[1] in method_order else len(method_order), key[1]),
    )
    for model_key, method in others:
        entry = reproduced[(model_key, method)]
        if method == "fp":
            label = f"fp ({entry['model'].get('dtype')})"
        else:
            label = next((name for name, code in METHOD_NAMES.items() if code == method), method)
        for ours in _ours_rows(entry["model"]["name"], label, entry, None, reasons):
            table.add_row(ours)

    table.notes = [
        f"Paper numbers: {paper['source']}",
        "Paper protocol: " + "; ".join(f"{key}: {value}" for key, value in paper["protocol"].items()) + ".",
        "Ours: the latest final-stage record of each method at its default configuration, from the first of the profiles "
        f"{', '.join(PROFILE_PREFERENCE)} that has one; accuracy is lm-eval's acc ± standard error, in %. Empty: not reproduced.",
        "Difference: ours minus the paper's, only where our protocol matches the paper's; n.c. (not comparable) otherwise. "
        "Avg is recomputed from the six task columns.",
        *sorted(f"Not comparable, {reason}" for reason in reasons),
        *flags,
    ]
    return table
