"""Peak memory of evaluating the packed BinaryMoS default model against the reference model.

The script builds BinaryMoS on SmolLM2-135M at initialisation, because distillation changes
values, not the stored format or its memory. It freezes and saves the model, then measures
the reference and the artifact, each in a fresh subprocess with bench.memory (peak RSS while
loading and scoring WikiText-2 perplexity windows). It prints both peaks, the baseline of the
bare process, and their ratios.

    OMP_NUM_THREADS=1 python benchmarks/peak_memory.py
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402
from bench.artifacts import save_artifact  # noqa: E402
from bench.memory import MemoryProtocol, measure_peak_eval  # noqa: E402
from bench.models import load_model  # noqa: E402
from methods.freezing import freeze  # noqa: E402

MODEL = "smollm2-135m"


def build_artifact(directory: Path) -> Path:
    loaded = load_model(MODEL)
    quantizer = methods.create("binarymos")
    model = copy.deepcopy(loaded.model)
    quantizer.quantize(model)
    formula = quantizer.storage_report(model)
    freeze(quantizer, model)
    return save_artifact(
        model, directory / "binarymos", method={"name": "binarymos", "config": quantizer.config.to_dict()},
        model_identity=loaded.info.to_dict(), base_model=MODEL, storage_formula=formula.to_dict(),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per perplexity window")
    parser.add_argument("--windows", type=int, default=2, help="perplexity windows scored")
    args = parser.parse_args()
    protocol = MemoryProtocol(dataset="wikitext2", seqlen=args.seqlen, windows=args.windows)

    with tempfile.TemporaryDirectory() as directory:
        artifact = build_artifact(Path(directory))
        reference = measure_peak_eval(protocol, model=MODEL)
        packed = measure_peak_eval(protocol, artifact=artifact)

    mib = 1024 * 1024
    print(f"protocol: {protocol}, {reference['protocol']['measurement']}")
    for label, result in (("reference (fp, float32)", reference), ("binarymos packed", packed)):
        print(f"{label:<24} peak {result['peak_rss_bytes'] / mib:8.1f} MiB  baseline {result['baseline_rss_bytes'] / mib:6.1f} MiB"
              f"  after load {result['rss_after_load_bytes'] / mib:8.1f} MiB  ppl {result['ppl']:.2f}")
    ratio = packed["peak_rss_bytes"] / reference["peak_rss_bytes"]
    above = (packed["peak_rss_bytes"] - packed["baseline_rss_bytes"]) / (reference["peak_rss_bytes"] - reference["baseline_rss_bytes"])
    print(f"peak ratio packed / reference: {ratio:.3f}; above the bare-process baseline: {above:.3f}")
    return 0 if ratio < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
