"""Peak process memory of an evaluation, measured in a fresh subprocess.

Protocol: a new Python process imports the harness and records its resident set size (RSS).
It then loads the model (the reference from its spec, or a packed artifact) and scores
`windows` perplexity windows. It reports its peak RSS as the kernel counts it: VmHWM in /proc/self/status, the
high-water mark of the process's memory since it started its program. The peak includes the interpreter and the libraries imported after
the baseline is taken (torch and transformers, several hundred MiB), so compare the peaks of
two models rather than reading one alone. VmHWM is used rather than getrusage's ru_maxrss because Linux carries
ru_maxrss over from the parent process across fork and exec, so a child of a large parent
would report the parent's size.

The probe runs as `python -m bench.memory --model SPEC | --artifact DIR ...` and prints one
JSON line.

NOTE: the probe evaluates on the CPU, so it measures host memory only, also on a machine with
a GPU where `bench run` evaluates on the GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

METRIC_NAME = "memory/peak_eval"
MEASUREMENT = "VmHWM (peak RSS) of a fresh subprocess that loads the model and scores perplexity windows"


class MemoryProbeError(RuntimeError):
    """Raised when the memory probe subprocess fails; the message carries its error output."""


@dataclass(frozen=True)
class MemoryProtocol:
    """Every setting that changes a peak-memory number."""

    dataset: str = "wikitext2"
    seqlen: int = 512
    windows: int = 2
    batch_size: int = 1
    threads: int = 1


def _status_bytes(field: str) -> int:
    """Return a memory field of /proc/self/status (reported in kB) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise MemoryProbeError(f"/proc/self/status has no {field} line; the memory probe needs Linux.")


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _peak_rss_bytes() -> int:
    return _status_bytes("VmHWM")


def measure_peak_eval(protocol: MemoryProtocol, *, model: str | None = None, artifact: str | os.PathLike | None = None,
                      dtype: str | None = None, data_dir: str | None = None, timeout_s: float = 1800) -> dict:
    """Run the probe in a subprocess and return its measurement as a dict (bytes and protocol)."""
    if (model is None) == (artifact is None):
        raise ValueError("Pass exactly one of model (a spec) or artifact (a directory).")
    command = [sys.executable, "-m", "bench.memory", "--dataset", protocol.dataset, "--seqlen", str(protocol.seqlen),
               "--windows", str(protocol.windows), "--batch-size", str(protocol.batch_size)]
    command += ["--model", model] if model is not None else ["--artifact", str(artifact)]
    if dtype:
        command += ["--dtype", dtype]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(protocol.threads)}
    root = str(Path(__file__).resolve().parents[1])
    environment["PYTHONPATH"] = root + os.pathsep + environment.get("PYTHONPATH", "")
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout_s)
    if completed.returncode != 0:
        raise MemoryProbeError(f"The memory probe failed (exit {completed.returncode}): {completed.stderr.strip()[-2000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise MemoryProbeError(f"The memory probe printed no result; its output was: {completed.stdout[-2000:]}")
    return json.loads(lines[-1])


def _probe(args) -> dict:
    baseline = _rss_bytes()
    import torch

    from bench.models import load_model, parse_dtype, resolve_model
    from bench.perplexity import PerplexityProtocol, evaluate_perplexity

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.artifact:
        from transformers import AutoTokenizer

        from bench.artifacts import load_artifact

        loaded = load_artifact(args.artifact, dtype=parse_dtype(args.dtype) if args.dtype else None)
        model = loaded.model
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(loaded.config["base_model"])[1])
        target = {"artifact": str(args.artifact), "method": loaded.config["method"]["name"]}
    else:
        reference = load_model(args.model, args.dtype)
        model, tokenizer = reference.model, reference.tokenizer
        target = {"model": args.model, "method": "fp"}
    after_load = _rss_bytes()
    protocol = PerplexityProtocol(args.dataset, seqlen=args.seqlen, windows=args.windows, batch_size=args.batch_size)
    with torch.no_grad():
        result = evaluate_perplexity(model, tokenizer, protocol, args.data_dir)
    return {
        **target,
        "peak_rss_bytes": _peak_rss_bytes(),
        "baseline_rss_bytes": baseline,
        "rss_after_load_bytes": after_load,
        "ppl": result.value,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "protocol": {**asdict(MemoryProtocol(args.dataset, args.seqlen, args.windows, args.batch_size,
                                             int(os.environ.get("OMP_NUM_THREADS", "1")))),
                     "measurement": MEASUREMENT},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description="Measure the peak memory of one evaluation.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", metavar="SPEC", help="reference model spec")
    target.add_argument("--artifact", metavar="DIR", help="packed artifact directory")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the model's or artifact's)")
    parser.add_argument("--dataset", default="wikitext2")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per perplexity window")
    parser.add_argument("--windows", type=int, default=2, help="perplexity windows scored")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(_probe(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
