"""Write every report file from the records; the output depends only on the records and the loss logs."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from bench.leaderboard import group_rows, leaderboard_tables, render, sorted_rows
from bench.report import plots
from bench.report.paper import build_paper_table
from bench.report.table import Table, to_csv, to_latex, to_markdown

logger = logging.getLogger(__name__)


def slug(*parts: str) -> str:
    """Return a directory name made of `parts`, with anything but letters, digits, dots and dashes replaced by "_"."""
    return "-".join(re.sub(r"[^A-Za-z0-9.-]+", "_", part).strip("_") or "none" for part in parts)


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_table(table: Table, directory: Path, stem: str = "table") -> list[Path]:
    """Write `table` as <stem>.md, <stem>.csv and <stem>.tex in `directory`."""
    markdown = "\n".join([f"# {table.title}", "", *to_markdown(table), ""])
    return [
        _write_text(directory / f"{stem}.md", markdown),
        _write_text(directory / f"{stem}.csv", to_csv(table)),
        _write_text(directory / f"{stem}.tex", to_latex(table)),
    ]


def write_reports(records: list[dict], results_dir: Path, leaderboard: Path, reports_dir: Path) -> list[Path]:
    """Regenerate `leaderboard` and `reports_dir` from `records`; return the paths written.

    `reports_dir` is emptied first, so files of groups that no longer exist do not linger.
    """
    results_dir, leaderboard, reports_dir = Path(results_dir), Path(leaderboard), Path(reports_dir)
    written = [_write_text(leaderboard, render(records))]
    if reports_dir.exists():
        shutil.rmtree(reports_dir)
    groups = group_rows(records)
    index = ["# Reports", "", "Generated from `results/` by `bench report`; do not edit by hand.", ""]
    for (model, revision, profile), table in leaderboard_tables(records):
        directory = reports_dir / slug(model, profile)
        rows = sorted_rows(groups[(model, revision, profile)])
        title = f"{model}, profile {profile}"
        files = write_table(table, directory)
        files += plots.plot_ppl_vs_bits(title, rows, directory / "ppl_vs_bits")
        files += plots.plot_zeroshot(f"{title}: zero-shot accuracy", rows, directory / "zeroshot_accuracy")
        files += plots.plot_memory(f"{title}: stored size by component", rows, directory / "memory")
        files += plots.plot_losses(f"{title}: distillation loss", rows, results_dir, directory / "distillation_loss")
        index += [f"## {table.title}", ""]
        index += [f"- [{path.name}]({path.relative_to(reports_dir).as_posix()})" for path in files]
        index.append("")
        written += files
    paper_files = write_table(build_paper_table(records), reports_dir / "paper")
    index += ["## BinaryMoS paper comparison", ""]
    index += [f"- [{path.name}]({path.relative_to(reports_dir).as_posix()})" for path in paper_files]
    index.append("")
    written += paper_files
    written.append(_write_text(reports_dir / "README.md", "\n".join(index)))
    logger.info("Wrote %d report files", len(written))
    return written
