"""Print the decode latency of one model timed in several fresh processes, one after another.

Each process loads the model (a packed artifact directory, or the reference model with
--reference), times it under the latency protocol and prints its median. Comparing the
medians shows how much a latency record depends on the process that measured it.

    python benchmarks/latency_processes.py ~/.cache/bitbench/runs/<key>/artifact --processes 6
    python benchmarks/latency_processes.py --reference --processes 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from bench.latency import LatencyProtocol, measure_latency

PROTOCOL = LatencyProtocol(prompt_tokens=64, decode_tokens=32, warmup=1, repeats=5)


def time_once(artifact: str | None) -> None:
    """Load the model, time it once under PROTOCOL and print the decode median and samples."""
    if artifact is None:
        from bench.models import load_model

        model = load_model("smollm2-135m").model
    else:
        from bench.artifacts import load_artifact

        model = load_artifact(artifact, dtype=torch.float32).model
    result = measure_latency(model, PROTOCOL)
    samples = ", ".join(f"{value:.1f}" for value in result.decode_samples_ms_per_token)
    print(f"decode {result.decode_ms_per_token:.1f} ms per token (samples {samples})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", nargs="?", help="packed artifact directory (bench quantize --save, or bench run's cache)")
    parser.add_argument("--reference", action="store_true", help="time the unquantized default model instead")
    parser.add_argument("--processes", type=int, default=6, help="fresh processes to time in turn (default: 6)")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.artifact is None) != args.reference:
        parser.error("pass exactly one of an artifact directory and --reference")
    if args.single:
        time_once(args.artifact)
        return
    print(f"protocol: prompt {PROTOCOL.prompt_tokens} tokens, {PROTOCOL.decode_tokens} decode steps, "
          f"{PROTOCOL.warmup} warm-up + {PROTOCOL.repeats} timed passes, median; torch {torch.__version__}")
    command = [sys.executable, __file__, "--single", *([args.artifact] if args.artifact else ["--reference"])]
    for index in range(args.processes):
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
        print(f"process {index + 1}: {output}", flush=True)


if __name__ == "__main__":
    main()
