"""Terminal output of the CLI: logging setup and the rich results table."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from bench.leaderboard import PPL_LABELS, TASK_LABELS, format_ppl, group_rows

# A pipe or CI log gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr through rich; $BENCH_LOG_LEVEL overrides the level."""
    level = os.environ.get("BENCH_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=Console(stderr=True), show_path=False)]
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "datasets", "transformers", "accelerate", "lm_eval"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def _measured(row, column: str, scale: float, text_format: str) -> str:
    record = row.cells.get(column)
    return "" if record is None else format(record["value"] * scale, text_format)


# Shown only when some row of the table has them: (label, record column, scale, format).
OPTIONAL_COLUMNS = (
    ("Peak mem (MB)", "memory/peak_eval", 1e-6, ".1f"),
    ("Prefill (ms)", "latency/prefill", 1.0, ".1f"),
    ("Decode (ms/token)", "latency/decode", 1.0, ".2f"),
)


def results_table(records: list[dict]) -> Table:
    """Build a rich table per method: perplexity, zero-shot average, bits per weight, and memory
    and latency where `records` contain them."""
    cells = []
    for (model, _revision, profile), rows in sorted(group_rows(records).items()):
        for row in rows.values():
            def ppl(column):
                record = row.cells.get(column)
                return format_ppl(record["value"]) if record else ""

            accuracies = [row.cells[f"zeroshot/{task}/acc"]["value"] for task in TASK_LABELS if f"zeroshot/{task}/acc" in row.cells]
            average = f"{100 * sum(accuracies) / len(accuracies):.1f}" if accuracies else ""
            storage = next((record["storage"] for record in row.cells.values() if record.get("storage")), {})
            bits = storage.get("bits_per_weight_linear")
            cells.append([
                model, profile, row.label,
                *(ppl(f"ppl/{name}") for name in PPL_LABELS),
                *(ppl(f"ppl/{name}@init") for name in PPL_LABELS),
                average,
                "" if bits is None or bits != bits else f"{bits:.3f}",
                *(_measured(row, column, scale, text_format) for _label, column, scale, text_format in OPTIONAL_COLUMNS),
            ])
    labels = ["Model", "Profile", "Method", "Wiki2 PPL", "C4 PPL", "Wiki2 at init", "C4 at init", "Zero-shot avg", "Bits/w (linears)"]
    labels += [label for label, *_rest in OPTIONAL_COLUMNS]
    fixed = len(labels) - len(OPTIONAL_COLUMNS)
    visible_columns = [index for index in range(len(labels)) if index < fixed or any(row[index] for row in cells)]
    table = Table(title="bitbench results")
    for index in visible_columns:
        table.add_column(labels[index], justify="left" if index < 3 else "right")
    for row in cells:
        table.add_row(*(row[index] for index in visible_columns))
    return table


def _format_number(value: float | None) -> str:
    if value is None:
        return ""
    if value != value:
        return "nan"
    return f"{value:.6g}"


CHECK_STYLES = {"ok": "green", "regression": "bold red", "improved": "bold yellow", "missing": "bold red", "new": "cyan"}


def check_table(differences) -> Table:
    """Build the rich table of `bench check`: each metric, its baseline, current value and tolerance."""
    table = Table(title="bench check: ci profile against the baseline")
    for column in ("Metric", "Baseline", "Current", "Difference", "Tolerance", "Status"):
        table.add_column(column, justify="left" if column in ("Metric", "Status") else "right")
    for difference in differences:
        style = CHECK_STYLES.get(difference.status, "")
        table.add_row(
            difference.metric,
            _format_number(difference.baseline),
            _format_number(difference.current),
            _format_number(difference.delta),
            _format_number(difference.tolerance),
            f"[{style}]{difference.status}[/]" if style else difference.status,
        )
    return table


def report_table(table) -> tuple[Table, int]:
    """Build a rich table from a `bench.report.table.Table`, with its notes as the caption.

    Returns the table and the console width it needs to print every cell on one line.
    """
    rich_table = Table(title=table.title, caption="\n".join(table.notes), caption_justify="left")
    widths = []
    for index, label in enumerate(table.columns):
        widths.append(max([len(label), *(len(row[index].text) for row in table.rows)]))
        rich_table.add_column(label, justify="left" if index < 3 else "right", no_wrap=True, min_width=widths[-1])
    for row in table.rows:
        rich_table.add_row(*(cell.text for cell in row))
    return rich_table, sum(widths) + 3 * len(widths) + 1
