"""Zero-shot accuracy of the unquantized default model on large evaluation sets.

Evaluates the reference (method `fp`) on every PIQA validation example, every ARC-Easy test
example and a seeded subset of HellaSwag validation examples (2000 by default). It appends one
result record per (task, metric) to the results store under the profile `zeroshot-reference`.
Records already stored with the same key are kept and not recomputed, so an interrupted run
resumes.

Measured on 2 CPU cores shared with two other torch jobs, with OMP_NUM_THREADS=1: PIQA and
ARC-Easy (13,177 loglikelihood requests) took 49 minutes, and the 2000 HellaSwag examples
(8,000 longer requests) roughly 45 more. With the cores shared, a forward pass ran about 4x
faster with one thread than with torch's default of one thread per core.

    OMP_NUM_THREADS=1 BENCH_DATA_DIR=../shared/data python benchmarks/zeroshot_reference.py
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.environment import environment
from bench.models import DEFAULT_MODEL, load_model
from bench.results import ResultRecord, ResultStore, record_key
from bench.zeroshot import TASKS, ZeroShotProtocol, check_zeroshot_data, evaluate_zeroshot, select_examples, task_sources
from bench.zeroshot.local_data import read_local_rows, resolve_data_dir

PROFILE = "zeroshot-reference"
REFERENCE_METHOD = {"name": "fp", "config": {}}
CHOICE_COUNTS = {"piqa": lambda row: 2, "arc_easy": lambda row: len(row["choices"]["text"]), "hellaswag": lambda row: 4}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model alias, hub id or directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--data-dir", default=None, help="local data directory (default: $BENCH_DATA_DIR)")
    parser.add_argument("--results-dir", default="results", help="results store directory (default: results)")
    parser.add_argument("--hellaswag-limit", type=int, default=2000, help="HellaSwag examples, a seeded subset (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size in requests (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the HellaSwag subset (default: 0)")
    parser.add_argument(
        "--limit", type=int, default=None, help="evaluate a seeded subset of this many examples of every task, for a quick check"
    )
    return parser.parse_args(argv)


def chance_accuracy(task: str, data_dir: Path | None, indices: list[int] | None) -> float | None:
    """Return the expected accuracy of uniform guessing over the evaluated examples (local data only)."""
    if data_dir is None:
        return None
    rows = read_local_rows(task, data_dir)
    chosen = rows if indices is None else [rows[index] for index in indices]
    return sum(1 / CHOICE_COUNTS[task](row) for row in chosen) / len(chosen)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data_dir = resolve_data_dir(args.data_dir)
    protocols = [
        ZeroShotProtocol(tasks=("piqa", "arc_easy"), limit=args.limit, seed=args.seed, batch_size=args.batch_size),
        ZeroShotProtocol(
            tasks=("hellaswag",), limit=args.limit or args.hellaswag_limit, seed=args.seed, batch_size=args.batch_size
        ),
    ]
    for protocol in protocols:
        check_zeroshot_data(protocol, data_dir)

    loaded = load_model(args.model)
    info = loaded.info
    store = ResultStore(args.results_dir)
    model_identity = {"name": info.name, "revision": info.revision, "dtype": info.dtype}
    command = "python " + " ".join(shlex.quote(part) for part in sys.argv)
    summary = []

    for protocol in protocols:
        sources = task_sources(protocol, data_dir)
        keys = {
            (task, metric): record_key(
                {
                    "model": model_identity,
                    "method": REFERENCE_METHOD,
                    "metric": "zeroshot",
                    "protocol": asdict(protocol),
                    "task": task,
                    "name": metric,
                    "task_source": sources[task],
                }
            )
            for task in protocol.tasks
            for metric in TASKS[task].metrics
        }
        if all(store.find(key) is not None for key in keys.values()):
            logging.info("Already stored: %s", ", ".join(protocol.tasks))
            summary += [store.find(key) for key in keys.values()]
            continue

        started = time.perf_counter()
        rows = evaluate_zeroshot(loaded.model, loaded.tokenizer, protocol, data_dir)
        elapsed = round(time.perf_counter() - started, 2)
        for row in rows:
            indices = select_examples(row["n_total"], protocol.limit, protocol.seed)
            metric_protocol = {**asdict(protocol), **{k: v for k, v in row.items() if k not in ("value", "stderr", "n_samples")}}
            metric_protocol["chance_accuracy"] = chance_accuracy(row["task"], data_dir, indices)
            record = ResultRecord(
                key=keys[(row["task"], row["metric"])],
                model=info.to_dict(),
                method=REFERENCE_METHOD,
                metric={"name": f"zeroshot/{row['task']}/{row['metric']}", "protocol": metric_protocol},
                value=row["value"],
                stderr=row["stderr"],
                n_samples=row["n_samples"],
                wall_time_s=elapsed,
                profile=PROFILE,
                environment=environment(),
                command=command,
            )
            store.append(record)
            summary.append(record.to_dict())

    print(f"{'task/metric':32} {'value':>8} {'stderr':>8} {'n':>6} {'chance':>8}")
    for record in summary:
        protocol = record["metric"]["protocol"]
        chance = protocol.get("chance_accuracy")
        chance_text = f"{chance:8.4f}" if chance is not None else f"{'':8}"
        print(f"{record['metric']['name']:32} {record['value']:8.4f} {record['stderr']:8.4f} {record['n_samples']:6d} {chance_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
