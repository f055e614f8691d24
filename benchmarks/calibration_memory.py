"""Measure the peak resident memory and the time per layer of calibrating a model.

Loads the model, draws the calibration windows, then runs one post-training method through the
sequential calibration engine and prints:
- the model's bytes (its parameters in their dtype),
- the bytes of one calibration activation buffer (windows x seqlen x hidden; the engine keeps two),
- the peak resident set size (VmHWM) during calibration, against a target of
  model + 2 activation buffers + 1 GiB,
- the capture time and the time per decoder layer.

With --layers N only the first N decoder layers are calibrated, which shortens a run at the
paper's 128 x 2048 setting. The other layers stay in memory. In a model whose layers all have
the same shapes, every layer uses the same two buffers and Hessians of the same sizes, so the
first layers already reach the peak.

The peak counter is reset after loading when the kernel allows it (by writing 5 to
/proc/self/clear_refs). Otherwise the peak covers the whole process, and the output states that.
Linux only, because it reads /proc/self/status.

    python benchmarks/calibration_memory.py --method gptq --windows 16 --seqlen 512
    python benchmarks/calibration_memory.py --method gptq --windows 128 --seqlen 2048 --layers 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.calibration import calibration_windows
from bench.models import load_model
from methods import registry
from methods.modules import decoder_layers

GIB = 2**30


def status_bytes(field: str) -> int:
    """Return a memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"{field} is missing from /proc/self/status")


def reset_peak() -> bool:
    """Reset the kernel's peak RSS counter of this process and return whether the reset worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return status_bytes("VmHWM") <= status_bytes("VmRSS") * 1.01


def model_bytes(model: torch.nn.Module) -> int:
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


def keep_first_layers(model: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """Leave only the first `count` decoder layers in the model and return the others.

    The caller keeps the returned layers referenced, so their memory stays counted.
    """
    layers = decoder_layers(model)
    if not 1 <= count <= len(layers):
        raise SystemExit(f"--layers must be between 1 and {len(layers)}, got {count}.")
    removed = list(layers[count:])
    del layers[count:]
    model.config.get_text_config().num_hidden_layers = count
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model alias, hub id or directory")
    parser.add_argument("--method", default="gptq", choices=["gptq", "billm", "pbllm"], help="post-training method")
    parser.add_argument("--windows", type=int, default=16, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window offsets")
    parser.add_argument("--data-dir", default=None, help="local data directory (default: $BENCH_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--layers", type=int, default=None, help="calibrate only the first N decoder layers")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    windows, _ = calibration_windows(loaded.tokenizer, args.windows, args.seqlen, args.seed, args.data_dir)
    quantizer = registry.create(args.method)

    size = model_bytes(loaded.model)
    removed = keep_first_layers(loaded.model, args.layers) if args.layers else []
    rss_before = status_bytes("VmRSS")
    peak_reset = reset_peak()
    started = time.perf_counter()
    quantizer.quantize(loaded.model, calibration=windows)
    wall = time.perf_counter() - started
    peak = status_bytes("VmHWM")

    stats = quantizer.calibration_stats
    target = size + 2 * stats.buffer_bytes + GIB
    layer_seconds = stats.layer_seconds
    print(f"model            {args.model}, {torch.get_num_threads()} threads, {args.method}")
    if removed:
        print(f"layers           the first {args.layers} calibrated, {len(removed)} more kept in memory")
    print(f"calibration      {stats.windows} windows x {stats.seqlen} tokens")
    print(f"model bytes      {size / GIB:.3f} GiB ({size} bytes)")
    print(f"buffer bytes     {stats.buffer_bytes / GIB:.3f} GiB per activation buffer ({stats.buffer_bytes} bytes)")
    print(f"RSS before       {rss_before / GIB:.3f} GiB")
    scope = "during calibration" if peak_reset else "of the whole process (the peak counter could not be reset)"
    print(f"peak RSS         {peak / GIB:.3f} GiB, {scope}")
    print(f"target           {target / GIB:.3f} GiB = model + 2 buffers + 1 GiB: {'met' if peak <= target else 'NOT met'}")
    print(f"capture          {stats.capture_seconds:.1f} s")
    print(
        f"time per layer   mean {statistics.mean(layer_seconds):.2f} s, min {min(layer_seconds):.2f} s, "
        f"max {max(layer_seconds):.2f} s over {len(layer_seconds)} layers"
    )
    print(f"total            {wall:.1f} s")


if __name__ == "__main__":
    main()
