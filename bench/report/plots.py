"""Plots of stored results with matplotlib, written as PNG and SVG with fixed metadata.

The files depend only on the records (and the matplotlib version): no date in the metadata, and
a fixed `svg.hashsalt` so SVG element ids are the same on every run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from bench.leaderboard import PPL_LABELS, TASK_LABELS, Row, _first  # noqa: E402

logger = logging.getLogger(__name__)

STYLE = {
    "svg.hashsalt": "bitbench",
    "svg.fonttype": "path",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "figure.dpi": 100,
}
PNG_METADATA = {"Software": None}
SVG_METADATA = {"Date": None, "Creator": None}
MARKERS = "osD^vP*Xh<>"
# Accuracy of guessing uniformly at random: 2 choices, or 4 for HellaSwag and ARC.
CHANCE = {"boolq": 0.5, "piqa": 0.5, "hellaswag": 0.25, "winogrande": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25}


def save_figure(figure, path_stem: Path) -> list[Path]:
    """Save `figure` as <stem>.png and <stem>.svg without any date or version stamp; return both paths."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")
    figure.savefig(png, dpi=150, metadata=PNG_METADATA)
    figure.savefig(svg, metadata=SVG_METADATA)
    plt.close(figure)
    return [png, svg]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the points that no other point beats on both axes (lower is better), sorted by x."""
    front = []
    best_y = math.inf
    for x, y in sorted(points):
        if y < best_y:
            front.append((x, y))
            best_y = y
    return front


def _row_bits(row: Row) -> float | None:
    """Bits per weight of the row's linear layers; the unquantized reference counts at its dtype's width."""
    storage = _first(row, "storage") or {}
    bits = storage.get("bits_per_weight_linear")
    if bits is None or bits != bits:
        bits = storage.get("kept_bits") if row.method == "fp" else None
    return float(bits) if bits else None


def plot_ppl_vs_bits(title: str, rows: list[Row], path_stem: Path) -> list[Path]:
    """Perplexity against bits per weight, one panel per dataset, one marker per method, Pareto front dashed."""
    datasets = [name for name in PPL_LABELS if any(f"ppl/{name}" in row.cells for row in rows)]
    points = [(row, _row_bits(row)) for row in rows]
    points = [(row, bits) for row, bits in points if bits is not None]
    if not datasets or not points:
        return []
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.4), squeeze=False, layout="constrained")
        for axis, dataset in zip(axes[0], datasets):
            plotted = []
            for index, (row, bits) in enumerate(points):
                record = row.cells.get(f"ppl/{dataset}")
                if record is None or not math.isfinite(record["value"]):
                    continue
                axis.scatter(bits, record["value"], marker=MARKERS[index % len(MARKERS)], s=60, color=f"C{index % 10}", label=row.label, zorder=3)
                plotted.append((bits, record["value"]))
            front = pareto_front(plotted)
            if len(front) > 1:
                xs, ys = zip(*front)
                axis.step(xs, ys, where="post", linestyle="--", color="0.45", linewidth=1.2, label="Pareto front", zorder=2)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("bits per weight of the quantized linears (log scale)")
            axis.set_ylabel(f"{PPL_LABELS[dataset]} perplexity (log scale)")
            axis.set_title(f"{PPL_LABELS[dataset]} perplexity against size")
            axis.grid(True, which="major", linewidth=0.5, alpha=0.5)
            axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        handles, labels = axes[0][0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside right center", frameon=False)
        figure.suptitle(title)
        return save_figure(figure, path_stem)


def plot_zeroshot(title: str, rows: list[Row], path_stem: Path) -> list[Path]:
    """Grouped bars of zero-shot accuracy per task and method, with standard-error bars and chance level."""
    tasks = [task for task in TASK_LABELS if any(f"zeroshot/{task}/acc" in row.cells for row in rows)]
    rows = [row for row in rows if any(f"zeroshot/{task}/acc" in row.cells for task in tasks)]
    if not tasks:
        return []
    width = 0.8 / len(rows)
    with plt.rc_context(STYLE):
        figure, axis = plt.subplots(figsize=(max(7.0, 0.35 * len(tasks) * len(rows) + 5.0), 4.4), layout="constrained")
        for index, row in enumerate(rows):
            xs, ys, errors = [], [], []
            for position, task in enumerate(tasks):
                record = row.cells.get(f"zeroshot/{task}/acc")
                if record is None:
                    continue
                xs.append(position - 0.4 + width * (index + 0.5))
                ys.append(100 * record["value"])
                errors.append(100 * (record.get("stderr") or 0.0))
            axis.bar(xs, ys, width=width * 0.95, yerr=errors, capsize=3, color=f"C{index % 10}", label=row.label, zorder=3)
        for position, task in enumerate(tasks):
            chance = 100 * CHANCE[task]
            axis.hlines(chance, position - 0.45, position + 0.45, colors="black", linestyles=":", linewidth=1.2, zorder=4,
                        label="chance level" if position == 0 else None)
        axis.set_xticks(range(len(tasks)), [TASK_LABELS[task] for task in tasks])
        axis.set_ylabel("accuracy (%)")
        axis.set_xlabel("task (error bars: one standard error)")
        axis.set_ylim(0, 100)
        axis.grid(True, axis="y", linewidth=0.5, alpha=0.5)
        figure.legend(loc="outside right upper", frameon=False)
        axis.set_title(title)
        return save_figure(figure, path_stem)


KEPT_LABEL = "kept in floating point (embeddings, norms)"


def _memory_parts(row: Row) -> dict[str, float] | None:
    storage = _first(row, "storage")
    if not storage:
        return None
    parts = {KEPT_LABEL: storage.get("kept_parameters", 0) * storage.get("kept_bits", 16) / 8e6}
    for name, bits in sorted(storage.get("components_bits", {}).items()):
        if bits:
            parts[name.replace("_", " ")] = bits / 8e6
    return parts


def plot_memory(title: str, rows: list[Row], path_stem: Path) -> list[Path]:
    """Stacked horizontal bars of stored megabytes by component per method (storage formula).

    The unquantized reference is left out of the bars when any quantized method is present,
    because at 4 to 8 times their size it would squeeze their components out of sight. Its size
    is stated in the title instead.
    """
    parts_by_row = [(row, _memory_parts(row)) for row in rows]
    parts_by_row = [(row, parts) for row, parts in parts_by_row if parts]
    references = [(row, parts) for row, parts in parts_by_row if row.method == "fp"]
    if len(references) < len(parts_by_row):
        parts_by_row = [(row, parts) for row, parts in parts_by_row if row.method != "fp"]
        if references:
            title += "\n(not drawn: " + ", ".join(f"{row.label} {sum(parts.values()):.1f} MB" for row, parts in references) + ")"
    if not parts_by_row:
        return []
    components = []
    for _row, parts in parts_by_row:
        components += [name for name in parts if name not in components]
    with plt.rc_context(STYLE):
        figure, axis = plt.subplots(figsize=(9.0, 0.55 * len(parts_by_row) + 1.8), layout="constrained")
        labels = [row.label for row, _ in parts_by_row]
        positions = list(range(len(parts_by_row)))[::-1]
        for index, component in enumerate(components):
            lefts = [sum(parts.get(name, 0.0) for name in components[:index]) for _row, parts in parts_by_row]
            widths = [parts.get(component, 0.0) for _row, parts in parts_by_row]
            axis.barh(positions, widths, left=lefts, color=plt.get_cmap("tab20")(index % 20), label=component, zorder=3)
        limit = max(sum(parts.values()) for _row, parts in parts_by_row)
        for position, (row, parts) in zip(positions, parts_by_row):
            total = sum(parts.values())
            measured = (_first(row, "storage_measured") or {}).get("total_bytes")
            text = f"{total:.1f} MB" + (f" (artifact {measured / 1e6:.1f})" if measured else "")
            axis.text(total + limit * 0.01, position, text, va="center", fontsize=9)
        axis.set_yticks(positions, labels)
        axis.set_xlim(0, limit * 1.25)
        axis.set_xlabel("stored size (MB, 10^6 bytes; storage formula, side data and kept layers at 16 bits)")
        axis.grid(True, axis="x", linewidth=0.5, alpha=0.5)
        figure.legend(loc="outside right upper", frameon=False, title="component")
        axis.set_title(title)
        return save_figure(figure, path_stem)


def read_loss_log(results_dir: Path, relative: str) -> list[dict]:
    """Read a distillation loss log (one JSON object per logged step); an absent file gives an empty list."""
    path = results_dir / relative
    if not path.exists():
        logger.warning("Loss log %s not found; its curve is left out", path)
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


LOSS_TERMS = {"loss": "total loss", "kl": "KL term", "hidden_mse": "hidden-state MSE term", "hidden_distance": "hidden-state distance term"}


def plot_losses(title: str, rows: list[Row], results_dir: Path, path_stem: Path) -> list[Path]:
    """Distillation loss against step, one panel per trained method, every logged term on a log scale."""
    logs = []
    for row in rows:
        training = _first(row, "training") or {}
        if training.get("loss_log"):
            entries = read_loss_log(results_dir, training["loss_log"])
            if entries:
                logs.append((row, entries))
    if not logs:
        return []
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, len(logs), figsize=(5.0 * len(logs), 4.0), squeeze=False, layout="constrained")
        for axis, (row, entries) in zip(axes[0], logs):
            steps = [entry["step"] for entry in entries]
            for index, (term, label) in enumerate(LOSS_TERMS.items()):
                values = [entry.get(term) for entry in entries]
                if all(value is not None and value > 0 for value in values):
                    axis.plot(steps, values, color=f"C{index}", label=label, linewidth=1.4 if term == "loss" else 1.0)
            axis.set_yscale("log")
            axis.set_xlabel("training step")
            axis.set_ylabel("loss (log scale, no unit)")
            axis.set_title(row.label)
            axis.grid(True, which="major", linewidth=0.5, alpha=0.5)
        handles = {}
        for axis in axes[0]:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), frameon=False)
        figure.suptitle(title)
        return save_figure(figure, path_stem)
