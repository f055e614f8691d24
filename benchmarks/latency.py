"""Print the latency of the unquantized reference model under the harness's latency protocol.

Prefill time for a prompt of --prompt-tokens random token ids and decode time per token over
--decode-tokens greedy steps, at batch 1, median of --repeats timed passes after --warmup
untimed ones (see bench/latency.py). Optionally also times a binarized copy (--method), which
runs with dense sign matrices, so its figure is that of the simulation, not of a 1-bit kernel.

    OMP_NUM_THREADS=1 python benchmarks/latency.py
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch

import methods
from bench.latency import LatencyProtocol, measure_latency
from bench.models import load_model


def print_result(label: str, result) -> None:
    prefill = ", ".join(f"{value:.1f}" for value in result.prefill_samples_ms)
    decode = ", ".join(f"{value:.2f}" for value in result.decode_samples_ms_per_token)
    print(f"{label}: prefill {result.prefill_ms:.1f} ms (samples {prefill})")
    print(f"{label}: decode {result.decode_ms_per_token:.2f} ms per token (samples {decode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model alias, hub id or directory (default: smollm2-135m)")
    parser.add_argument("--prompt-tokens", type=int, default=LatencyProtocol.prompt_tokens)
    parser.add_argument("--decode-tokens", type=int, default=LatencyProtocol.decode_tokens)
    parser.add_argument("--warmup", type=int, default=LatencyProtocol.warmup, help="untimed passes first")
    parser.add_argument("--repeats", type=int, default=LatencyProtocol.repeats, help="timed passes; the median is reported")
    parser.add_argument("--method", help="also time a copy quantized with this method (no training or calibration)")
    args = parser.parse_args()

    protocol = LatencyProtocol(
        prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens, warmup=args.warmup, repeats=args.repeats
    )
    quantizer = methods.create(args.method) if args.method else None
    if quantizer is not None and quantizer.calibrates:
        parser.error(f"--method {args.method} needs calibration windows; use a method without calibration (rtn, binarymos, onebit).")
    loaded = load_model(args.model)
    if torch.cuda.is_available():
        loaded.model.to("cuda")
    reference = measure_latency(loaded.model, protocol)
    setting = reference.protocol
    print(
        f"model {loaded.info.name} ({loaded.info.revision}), {setting['dtype']}, device {setting['device']} "
        f"({platform.machine()}), {setting['torch_threads']} torch threads, torch {torch.__version__}, "
        f"timer {setting['timer']}"
    )
    print(
        f"protocol: batch 1, prompt {protocol.prompt_tokens} tokens, {protocol.decode_tokens} greedy decode steps, "
        f"{protocol.warmup} warm-up + {protocol.repeats} timed passes, median"
    )
    print_result("reference", reference)
    if quantizer is not None:
        quantized = quantizer.quantize(copy.deepcopy(loaded.model))
        print_result(args.method, measure_latency(quantized, protocol))


if __name__ == "__main__":
    main()
