"""The `bench` command line: run, quantize, eval, report, list."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from bench import __version__

logger = logging.getLogger("bench")

EPILOG = """examples:
  bench run --methods binarymos,onebit          distill both methods on the default model (quick profile)
  bench run --methods rtn --profile full        whole evaluation sets
  bench run --methods binarymos --metrics ppl,zeroshot
  bench run --methods gptq --metrics ppl,memory  also measure the peak memory of evaluation
  bench quantize --methods rtn --save out/rtn   store a packed artifact
  bench eval out/rtn --metrics ppl              measure a stored artifact
  bench run --methods rtn --metrics ppl,latency
  bench report                                  rebuild leaderboard.md and reports/ from results/
  bench report --paper                          also print the BinaryMoS paper table beside our numbers
  bench list                                    show the registered methods
  bench check                                   CI regression check against results/ci_baseline.json
"""


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _add_run_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="quantize and measure methods", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG
    )
    selection = parser.add_argument_group("what to run")
    selection.add_argument("--methods", type=_split_list, required=True, metavar="A,B", help="comma-separated method names (see `bench list`)")
    selection.add_argument("--model", default="smollm2-135m", metavar="SPEC", help="model alias, Hugging Face id or local directory (default: smollm2-135m)")
    selection.add_argument("--metrics", type=_split_list, default=["ppl"], metavar="A,B", help="any of ppl, zeroshot, memory, latency (default: ppl)")
    selection.add_argument(
        "--remeasure", type=_split_list, default=[], metavar="A,B",
        help="measure these metrics again for every method of the run, the reference included, even when stored "
             "(e.g. latency on a quiet machine); the new records are added and win on the leaderboard",
    )
    settings = parser.add_argument_group("settings")
    settings.add_argument("--profile", default=None, metavar="NAME", help="quick (default), full or paper")
    settings.add_argument("--config", metavar="FILE", help="TOML or YAML file with keys profile, settings and methods.<name>")
    settings.add_argument("--steps", type=int, metavar="N", help="distillation steps (overrides the profile)")
    settings.add_argument("--lr", type=float, metavar="LR", help="distillation learning rate (overrides the profile)")
    settings.add_argument("--dtype", default=None, metavar="DTYPE", help="auto (default: float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16")
    locations = parser.add_argument_group("locations")
    locations.add_argument("--data-dir", metavar="DIR", help="local data directory (default: $BENCH_DATA_DIR, else the Hugging Face hub)")
    locations.add_argument("--results-dir", default="results", metavar="DIR", help="where result records are stored (default: results)")
    locations.add_argument("--leaderboard", default="leaderboard.md", metavar="FILE", help="leaderboard file to regenerate (default: leaderboard.md)")
    locations.add_argument("--reports-dir", default="reports", metavar="DIR", help="directory of tables and plots to regenerate (default: reports)")


def _add_settings(parser) -> None:
    settings = parser.add_argument_group("settings")
    settings.add_argument("--profile", default=None, metavar="NAME", help="quick (default), full or paper")
    settings.add_argument("--config", metavar="FILE", help="TOML or YAML file with keys profile, settings and methods.<name>")
    settings.add_argument("--steps", type=int, metavar="N", help="distillation steps (overrides the profile)")
    settings.add_argument("--lr", type=float, metavar="LR", help="distillation learning rate (overrides the profile)")
    settings.add_argument("--data-dir", metavar="DIR", help="local data directory (default: $BENCH_DATA_DIR, else the Hugging Face hub)")


def _add_quantize_parser(subparsers) -> None:
    parser = subparsers.add_parser("quantize", help="quantize one method and save its packed artifact")
    parser.add_argument("--methods", required=True, metavar="NAME", help="the method to quantize (see `bench list`)")
    parser.add_argument("--model", default="smollm2-135m", metavar="SPEC", help="model alias, Hugging Face id or local directory (default: smollm2-135m)")
    parser.add_argument("--save", required=True, type=Path, metavar="DIR", help="artifact directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --save")
    parser.add_argument("--dtype", default=None, metavar="DTYPE", help="compute dtype of the reference model (default: auto)")
    _add_settings(parser)


def _add_eval_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="measure a stored artifact and record the results")
    parser.add_argument(
        "artifact", type=Path, metavar="DIR",
        help="artifact directory written by `bench quantize --save`, or an official BinaryMoS checkpoint (directory or hub id)",
    )
    parser.add_argument("--metrics", type=_split_list, default=["ppl"], metavar="A,B", help="any of ppl, zeroshot, memory, latency (default: ppl)")
    _add_settings(parser)
    parser.add_argument("--results-dir", default="results", metavar="DIR", help="where result records are stored (default: results)")
    parser.add_argument("--leaderboard", default="leaderboard.md", metavar="FILE", help="leaderboard file to regenerate (default: leaderboard.md)")
    parser.add_argument("--reports-dir", default="reports", metavar="DIR", help="directory of tables and plots to regenerate (default: reports)")


def _add_report_parser(subparsers) -> None:
    parser = subparsers.add_parser("report", help="regenerate leaderboard.md and reports/ from stored results")
    parser.add_argument("--results-dir", default="results", metavar="DIR", help="where result records are stored (default: results)")
    parser.add_argument("--leaderboard", default="leaderboard.md", metavar="FILE", help="leaderboard file to write (default: leaderboard.md)")
    parser.add_argument("--reports-dir", default="reports", metavar="DIR", help="directory of tables and plots to rewrite (default: reports)")
    parser.add_argument("--paper", action="store_true", help="also print the BinaryMoS paper's main table beside the reproduced numbers")


def _add_check_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check", help="CI regression check: run the ci profile and compare it with the committed baseline"
    )
    parser.add_argument("--baseline", default="results/ci_baseline.json", metavar="FILE", help="baseline file (default: results/ci_baseline.json)")
    parser.add_argument("--update-baseline", action="store_true", help="rewrite the baseline file with this run's numbers instead of comparing")
    parser.add_argument("--model", default="smollm2-135m", metavar="SPEC", help="model alias, Hugging Face id or local directory (default: smollm2-135m)")
    parser.add_argument("--data-dir", metavar="DIR", help="local data directory (default: $BENCH_DATA_DIR, else the Hugging Face hub)")
    parser.add_argument("--scratch-dir", metavar="DIR", help="keep this run's records and students here (default: a temporary directory, removed afterwards)")
    parser.add_argument("--methods", type=_split_list, metavar="A,B", help="check only these methods and the reference (default: every registered method)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark 1-bit LLM quantizers under one protocol.")
    parser.add_argument("--version", action="version", version=f"bitbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    _add_quantize_parser(subparsers)
    _add_eval_parser(subparsers)
    _add_report_parser(subparsers)
    _add_check_parser(subparsers)
    subparsers.add_parser("list", help="list the registered methods")
    return parser


def _write_reports(results_dir: str, leaderboard: str, reports_dir: str) -> tuple[list[dict], int]:
    """Regenerate the leaderboard and the reports directory; return the records and the file count."""
    from bench.report.write import write_reports
    from bench.results import ResultStore

    records = ResultStore(results_dir).records()
    written = write_reports(records, Path(results_dir), Path(leaderboard), Path(reports_dir))
    return records, len(written)


def command_list(args) -> int:
    from rich.table import Table

    from bench.console import console
    from methods.registry import METHODS

    table = Table(title="registered methods")
    table.add_column("Method")
    table.add_column("Aliases")
    table.add_column("Summary")
    for entry in METHODS:
        table.add_row(entry.name, ", ".join(entry.aliases), entry.summary)
    console.print(table)
    return 0


def command_report(args) -> int:
    from bench.console import console, report_table
    from bench.report.paper import build_paper_table

    records, written = _write_reports(args.results_dir, args.leaderboard, args.reports_dir)
    if args.paper:
        table, width = report_table(build_paper_table(records))
        # Rich clamps a print to the console width; widen it so no cell is cut.
        previous = console.width
        console.width = max(previous, width)
        try:
            console.print(table)
        finally:
            console.width = previous
    console.print(f"Wrote {args.leaderboard} and {written - 1} files under {args.reports_dir}/ from {len(records)} records in {args.results_dir}.")
    return 0


def _plan(args, model: str, method_names: list[str], metrics: list[str], method_options: dict | None = None):
    from bench.profiles import get_profile, read_config_file
    from bench.runner import RunPlan

    config = read_config_file(args.config) if args.config else None
    profile_name = args.profile or (config.profile if config else None) or "quick"
    profile = get_profile(profile_name)
    overrides = dict(config.settings) if config else {}
    if args.steps is not None:
        overrides["train_steps"] = args.steps
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    profile = profile.with_overrides(overrides)
    options = dict(config.methods) if config else {}
    options.update(method_options or {})
    return RunPlan(
        model=model,
        methods=method_names,
        profile=profile,
        metrics=metrics,
        method_options=options,
        data_dir=args.data_dir,
        results_dir=Path(getattr(args, "results_dir", "results")),
        dtype=getattr(args, "dtype", None),
        command=shlex.join(["bench", *args.argv]),
        remeasure=getattr(args, "remeasure", []),
    )


def command_quantize(args) -> int:
    from bench.artifacts import measured_storage
    from bench.console import console
    from bench.runner import Runner
    from methods.base import ConfigError

    names = _split_list(args.methods)
    if len(names) != 1:
        raise ConfigError(f"bench quantize takes one method, got {len(names)} ({args.methods}); run it once per method.")
    path = Runner(_plan(args, args.model, names, [])).quantize_to(names[0], args.save, overwrite=args.overwrite)
    report = measured_storage(path)
    console.print(
        f"Saved the {names[0]} artifact to {path}: {report.total_bytes / 1e6:.2f} MB stored, "
        f"{report.bits_per_weight_linear:.3f} bits per quantized weight, {report.bits_per_weight_model:.3f} over the model."
    )
    return 0


def command_eval(args) -> int:
    from bench.artifacts import read_config
    from bench.console import console, results_table
    from bench.runner import Runner

    from methods.binarymos_official import is_official_binarymos

    if is_official_binarymos(str(args.artifact)):
        plan = _plan(args, str(args.artifact), ["binarymos"], args.metrics)
        keys = set(Runner(plan).evaluate_official(str(args.artifact)))
    else:
        config = read_config(args.artifact)
        method = config["method"]
        plan = _plan(args, config["base_model"], [method["name"]], args.metrics, {method["name"]: method["config"]})
        keys = set(Runner(plan).evaluate_artifact(args.artifact))
    records, _written = _write_reports(args.results_dir, args.leaderboard, args.reports_dir)
    console.print(results_table([record for record in records if record["key"] in keys]))
    console.print(f"Records in {args.results_dir}/records.jsonl; {args.leaderboard} and {args.reports_dir}/ regenerated.")
    return 0


def command_run(args) -> int:
    from bench.console import console, results_table
    from bench.runner import Runner

    plan = _plan(args, args.model, args.methods, args.metrics)
    keys = set(Runner(plan).run())
    records, _written = _write_reports(args.results_dir, args.leaderboard, args.reports_dir)
    console.print(results_table([record for record in records if record["key"] in keys]))
    console.print(f"Records in {args.results_dir}/records.jsonl; {args.leaderboard} and {args.reports_dir}/ regenerated.")
    return 0


def command_check(args) -> int:
    import methods
    from bench.check import compare, read_baseline, run_ci_profile, select_methods, write_baseline
    from bench.console import check_table, console
    from methods.base import ConfigError

    selected = [methods.resolve(name).name for name in args.methods] if args.methods else None
    if selected and args.update_baseline:
        raise ConfigError("--update-baseline rewrites the baseline of every method; leave out --methods.")
    baseline_path = Path(args.baseline)
    baseline = None if args.update_baseline else read_baseline(baseline_path)
    scratch = Path(args.scratch_dir) if args.scratch_dir else None
    run = run_ci_profile(args.model, args.data_dir, scratch, selected)
    if selected:
        baseline["metrics"] = select_methods(baseline["metrics"], selected)
    if args.update_baseline:
        write_baseline(baseline_path, run)
        console.print(f"Wrote {len(run.metrics)} metrics of the ci profile to {baseline_path} ({run.wall_time_s:.0f} s).")
        return 0
    differences = compare(baseline["metrics"], run.metrics)
    console.print(check_table(differences))
    failed = [difference for difference in differences if difference.failed]
    if failed:
        names = ", ".join(f"{difference.metric} ({difference.status})" for difference in failed)
        console.print(f"[bold red]bench check failed[/] on {len(failed)} of {len(differences)} metrics: {names}.")
        console.print(f"If the change is intended, rewrite the baseline with `bench check --update-baseline` and commit {baseline_path}.")
        return 1
    console.print(f"bench check passed: {len(differences)} metrics within tolerance of {baseline_path} ({run.wall_time_s:.0f} s).")
    return 0


COMMANDS = {
    "run": command_run,
    "quantize": command_quantize,
    "eval": command_eval,
    "report": command_report,
    "check": command_check,
    "list": command_list,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from bench.console import console, setup_logging

    setup_logging(args.verbose)
    from bench.artifacts import ArtifactError
    from bench.check import BaselineError
    from bench.data import DataNotFoundError
    from bench.distill import TrainingDivergedError
    from bench.memory import MemoryProbeError
    from bench.models import ModelLoadError
    from bench.results import ResultsStoreError
    from bench.zeroshot.local_data import MalformedDataError
    from methods.base import ConfigError
    from methods.freezing import FreezeError

    user_errors = (
        ArtifactError, BaselineError, ConfigError, DataNotFoundError, FreezeError, MalformedDataError,
        MemoryProbeError, ModelLoadError, ResultsStoreError, TrainingDivergedError,
    )
    try:
        return COMMANDS[args.command](args)
    except user_errors as error:
        console.print(f"[bold red]error:[/] {error}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted. Stored records and training checkpoints are kept; rerun the same command to resume.[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
