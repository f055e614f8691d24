"""Measure each method's packed artifact on the default model against its storage formula.

For each method, the script quantizes a copy of the model, freezes it, saves the artifact,
and prints the formula and measured sizes with their ratio. Post-training methods calibrate
on a few short C4 windows, because the stored size does not depend on how well they are
calibrated. QAT methods are stored untrained, because training changes values, not sizes.

    OMP_NUM_THREADS=1 python benchmarks/artifact_sizes.py --methods rtn,binarymos --out sizes.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402
from bench.artifacts import artifact_files_bytes, measured_storage, save_artifact  # noqa: E402
from bench.calibration import calibration_windows  # noqa: E402
from bench.models import load_model  # noqa: E402
from methods.freezing import freeze  # noqa: E402

ALL_METHODS = ("rtn", "binarymos", "onebit", "gptq", "billm", "pbllm")
TOLERANCE = 0.03  # measured total bytes must be within 3% of the formula's


def measure(loaded, name: str, windows, directory: Path) -> dict:
    quantizer = methods.create(name)
    model = copy.deepcopy(loaded.model)
    started = time.perf_counter()
    quantizer.quantize(model, calibration=windows if quantizer.calibrates else None)
    formula = quantizer.storage_report(model)
    freeze(quantizer, model)
    path = save_artifact(
        model, directory / name, method={"name": name, "config": quantizer.config.to_dict()},
        model_identity=loaded.info.to_dict(), base_model=loaded.info.name, storage_formula=formula.to_dict(),
    )
    measured = measured_storage(path)
    return {
        "method": name,
        "formula_bytes": formula.total_bytes,
        "measured_bytes": measured.total_bytes,
        "artifact_file_bytes": artifact_files_bytes(path),
        "ratio": measured.total_bytes / formula.total_bytes,
        "formula_bpw_linear": formula.bits_per_weight_linear,
        "measured_bpw_linear": measured.bits_per_weight_linear,
        "formula_bpw_model": formula.bits_per_weight_model,
        "measured_bpw_model": measured.bits_per_weight_model,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated methods (default: all)")
    parser.add_argument("--windows", type=int, default=2, help="calibration windows of the post-training methods")
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per calibration window")
    parser.add_argument("--out", type=Path, help="append one JSON line per method to this file")
    args = parser.parse_args()

    loaded = load_model("smollm2-135m")
    windows, _ = calibration_windows(loaded.tokenizer, args.windows, args.seqlen, seed=0, data_dir=None)
    print(f"{'method':<10} {'formula B':>12} {'measured B':>12} {'file B':>12} {'ratio':>7} "
          f"{'bpw lin f/m':>14} {'bpw model f/m':>14}")
    outside = []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.methods.split(","):
            row = measure(loaded, name, windows, Path(directory))
            print(f"{name:<10} {row['formula_bytes']:>12.0f} {row['measured_bytes']:>12.0f} {row['artifact_file_bytes']:>12} "
                  f"{row['ratio']:>7.4f} {row['formula_bpw_linear']:>6.3f}/{row['measured_bpw_linear']:<6.3f} "
                  f"{row['formula_bpw_model']:>6.3f}/{row['measured_bpw_model']:<6.3f}", flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
            if abs(row["ratio"] - 1) > TOLERANCE:
                outside.append(name)
    if outside:
        print(f"Outside {TOLERANCE:.0%} of the formula: {', '.join(outside)}")
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
