"""Latency at batch 1: prefill time for a fixed prompt and decode time per generated token.

Protocol: a prompt of `prompt_tokens` token ids drawn uniformly from the vocabulary with a
seeded generator. One pass is a prefill followed by `decode_tokens` greedy steps. The prefill
is one forward of the whole prompt that fills the KV cache and, as generation does, computes
logits for the last position only. Each decode step is one forward of a single token with the
cache. `warmup` untimed passes come first. Each of `repeats` timed passes gives one prefill
time and one mean decode time per token, and the result is the median over the timed passes.

On a CUDA device the two phases are timed with CUDA events after a synchronize; elsewhere
with `time.perf_counter`. Gradients are off. The model is measured as it runs in the harness,
so a binarized method that keeps dense weights (sign matrices in float) is timed as such.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyProtocol:
    """Every setting that changes a latency number (the device, dtype and threads are recorded beside it)."""

    prompt_tokens: int = 512
    decode_tokens: int = 32
    warmup: int = 2
    repeats: int = 5
    seed: int = 0
    batch_size: int = 1

    def __post_init__(self):
        for name in ("prompt_tokens", "decode_tokens", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Latency {name} must be an integer >= 1, got {value!r}.")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ValueError(f"Latency warmup must be an integer >= 0, got {self.warmup!r}.")
        if self.batch_size != 1:
            raise ValueError(f"Latency is measured at batch size 1 only, got batch_size={self.batch_size!r}.")


@dataclass
class LatencyResult:
    """Median prefill time (ms for the whole prompt) and decode time (ms per token), with every sample."""

    prefill_ms: float
    decode_ms_per_token: float
    prefill_samples_ms: list[float]
    decode_samples_ms_per_token: list[float]
    wall_time_s: float
    protocol: dict = field(default_factory=dict)


class CpuTimer:
    """Wall-clock milliseconds from `time.perf_counter`."""

    name = "perf_counter"

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> float:
        return (time.perf_counter() - self._started) * 1000.0


class CudaTimer:
    """Milliseconds between two CUDA events, after the device has finished its queued work."""

    name = "cuda_events"

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._start.record()

    def stop(self) -> float:
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end)


def make_timer(device: torch.device):
    """Return the timer for `device`: CUDA events on a GPU, `time.perf_counter` elsewhere."""
    return CudaTimer(device) if device.type == "cuda" else CpuTimer()


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def prompt_ids(model, protocol: LatencyProtocol) -> torch.Tensor:
    """Return the fixed prompt: `prompt_tokens` ids drawn uniformly from the vocabulary with the seed."""
    vocab_size = _text_config(model).vocab_size
    generator = torch.Generator().manual_seed(protocol.seed)
    return torch.randint(0, vocab_size, (protocol.batch_size, protocol.prompt_tokens), generator=generator)


def _check_context(model, protocol: LatencyProtocol) -> None:
    context = getattr(_text_config(model), "max_position_embeddings", None)
    needed = protocol.prompt_tokens + protocol.decode_tokens
    if context is not None and needed > context:
        raise ValueError(
            f"Latency needs {needed} positions (prompt_tokens {protocol.prompt_tokens} + decode_tokens "
            f"{protocol.decode_tokens}), more than the model's context of {context}; lower them."
        )


@dataclass(frozen=True)
class ForwardStyle:
    """The keyword a model's forward takes its KV cache under, and whether it can skip the prompt's logits."""

    cache_argument: str  # "cache" from transformers 5.25, "past_key_values" before
    last_logits_only: bool

    @classmethod
    def of(cls, model) -> "ForwardStyle":
        parameters = inspect.signature(model.forward).parameters
        cache_argument = "cache" if "cache" in parameters else "past_key_values"
        return cls(cache_argument, "logits_to_keep" in parameters)


class _NoTimer:
    """Stands in for a timer during warm-up, so that no timing call happens before the timed passes."""

    def start(self) -> None:
        pass

    def stop(self) -> float:
        return 0.0


def _returned_cache(output):
    cache = output.get("cache")
    return cache if cache is not None else output.get("past_key_values")


def _run_pass(model, prompt: torch.Tensor, decode_tokens: int, timer, style: ForwardStyle) -> tuple[float, float]:
    """Run one prefill and `decode_tokens` greedy steps. Return (prefill ms, decode ms per token)."""
    prefill_arguments = {"logits_to_keep": 1} if style.last_logits_only else {}
    timer.start()
    output = model(input_ids=prompt, use_cache=True, **prefill_arguments)
    prefill_ms = timer.stop()

    cache = _returned_cache(output)
    token = output.logits[:, -1].argmax(dim=-1, keepdim=True)
    timer.start()
    for _ in range(decode_tokens):
        output = model(input_ids=token, use_cache=True, **{style.cache_argument: cache})
        cache = _returned_cache(output)
        token = output.logits[:, -1].argmax(dim=-1, keepdim=True)
    decode_ms = timer.stop() / decode_tokens
    return prefill_ms, decode_ms


def describe_run(model) -> dict:
    """Return the device, dtype and CPU thread count a latency number was measured with."""
    parameter = next(model.parameters())
    device = parameter.device
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = str(device)
    return {
        "device": device_name,
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }


@torch.no_grad()
def measure_latency(model, protocol: LatencyProtocol) -> LatencyResult:
    """Measure prefill and per-token decode latency of `model` under `protocol` (see the module docstring)."""
    started = time.perf_counter()
    _check_context(model, protocol)
    device = next(model.parameters()).device
    prompt = prompt_ids(model, protocol).to(device)
    style = ForwardStyle.of(model)
    timer = make_timer(device)
    was_training = model.training
    model.eval()

    for _ in range(protocol.warmup):
        _run_pass(model, prompt, protocol.decode_tokens, _NoTimer(), style)
    prefill_samples, decode_samples = [], []
    for _ in range(protocol.repeats):
        prefill_ms, decode_ms = _run_pass(model, prompt, protocol.decode_tokens, timer, style)
        prefill_samples.append(prefill_ms)
        decode_samples.append(decode_ms)
    model.train(was_training)

    description = {
        **asdict(protocol),
        **describe_run(model),
        "timer": timer.name,
        "prompt": "token ids drawn uniformly from the vocabulary with the seed",
        "decoding": "greedy, one token per forward with the KV cache",
        "prefill_logits": "last position only" if style.last_logits_only else "every position",
        "statistic": "median over repeats",
    }
    result = LatencyResult(
        prefill_ms=statistics.median(prefill_samples),
        decode_ms_per_token=statistics.median(decode_samples),
        prefill_samples_ms=prefill_samples,
        decode_samples_ms_per_token=decode_samples,
        wall_time_s=time.perf_counter() - started,
        protocol=description,
    )
    logger.info(
        "Latency: prefill %.1f ms for %d tokens, decode %.2f ms per token",
        result.prefill_ms, protocol.prompt_tokens, result.decode_ms_per_token,
    )
    return result
