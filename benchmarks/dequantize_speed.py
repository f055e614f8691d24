"""Print the time one packed layer takes to rebuild its float weight, per storage kind.

The packed models rebuild each linear's weight in every forward, so at batch 1 a decode step
costs about (layers x this time) on top of the matrix-vector products. The layer shape is the
default model's MLP projection (1536 x 576); the stored values are random, which does not
change the work. Compare with the dense matrix-vector product printed last.

    python benchmarks/dequantize_speed.py --repeats 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from methods.packed import PackedSignLinear
from methods.packed_ptq import pack_billm, pack_gptq, pack_pbllm

ROWS, COLUMNS, GROUP = 1536, 576, 128


def median_ms(function, repeats: int) -> float:
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples)


def layers(generator: torch.Generator) -> dict:
    weight = torch.randn(ROWS, COLUMNS, generator=generator)
    signs = torch.sign(weight)
    groups = -(-COLUMNS // GROUP)
    linear = nn.Linear(COLUMNS, ROWS, bias=False)
    linear.weight.data = signs * 0.1
    salient_columns = torch.zeros(COLUMNS, dtype=torch.bool)
    salient_columns[torch.randperm(COLUMNS, generator=generator)[:30]] = True
    binarized = torch.rand(ROWS, COLUMNS, generator=generator) > 0.1
    def uniform(*shape):
        return torch.rand(*shape, generator=generator)
    return {
        "sign (rtn, binarymos, onebit)": PackedSignLinear.from_binarized_linear(linear),
        "gptq 2-bit, group 128": pack_gptq(torch.randint(0, 4, (ROWS, COLUMNS), generator=generator),
                                           uniform(ROWS, groups), uniform(ROWS, groups), None, 2, GROUP, False),
        "billm, 30 salient columns": pack_billm(signs, torch.sign(torch.randn(ROWS, COLUMNS, generator=generator)),
                                                uniform(ROWS, COLUMNS) > 0.5, salient_columns,
                                                uniform(ROWS, groups, 8), GROUP),
        "pbllm 10% salient, bitmap": pack_pbllm(signs, torch.randint(0, 256, (ROWS, COLUMNS), generator=generator),
                                                binarized, uniform(ROWS, 1), uniform(ROWS, 1), uniform(ROWS),
                                                uniform(ROWS) * 255, 8, COLUMNS, "bitmap"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per layer; the median is printed")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    print(f"layer {ROWS} x {COLUMNS}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    with torch.no_grad():
        for name, layer in layers(generator).items():
            print(f"{name}: dequantize {median_ms(layer.dequantize, args.repeats):.2f} ms")
        weight, token = torch.randn(ROWS, COLUMNS), torch.randn(1, COLUMNS)
        print(f"dense matrix-vector product: {median_ms(lambda: torch.nn.functional.linear(token, weight), args.repeats):.2f} ms")


if __name__ == "__main__":
    main()
