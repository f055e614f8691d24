"""Latency protocol validation and measurement on a tiny Llama."""

import statistics

import pytest
import torch

import bench.latency as latency
from bench.latency import LatencyProtocol, measure_latency, prompt_ids

SMALL = LatencyProtocol(prompt_tokens=12, decode_tokens=3, warmup=2, repeats=3)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prompt_tokens": 0}, "prompt_tokens must be an integer >= 1, got 0"),
        ({"decode_tokens": -1}, "decode_tokens must be an integer >= 1, got -1"),
        ({"repeats": 0}, "repeats must be an integer >= 1, got 0"),
        ({"repeats": 2.5}, "repeats must be an integer >= 1, got 2.5"),
        ({"prompt_tokens": True}, "prompt_tokens must be an integer >= 1, got True"),
        ({"warmup": -1}, "warmup must be an integer >= 0, got -1"),
        ({"batch_size": 4}, "batch size 1 only, got batch_size=4"),
    ],
)
def test_protocol_rejects_bad_values(settings, message):
    with pytest.raises(ValueError) as error:
        LatencyProtocol(**settings)
    assert message in str(error.value)


def test_protocol_accepts_zero_warmup():
    assert LatencyProtocol(warmup=0).warmup == 0


def test_prompt_is_seeded_and_in_vocabulary(tiny_llama):
    first = prompt_ids(tiny_llama, SMALL)
    assert first.shape == (1, 12)
    assert torch.equal(first, prompt_ids(tiny_llama, SMALL))
    assert not torch.equal(first, prompt_ids(tiny_llama, LatencyProtocol(prompt_tokens=12, seed=1)))
    assert int(first.min()) >= 0
    assert int(first.max()) < tiny_llama.config.vocab_size


def test_result_fields_are_positive(tiny_llama):
    result = measure_latency(tiny_llama, SMALL)
    assert result.prefill_ms > 0
    assert result.decode_ms_per_token > 0
    assert result.wall_time_s > 0
    assert len(result.prefill_samples_ms) == SMALL.repeats
    assert len(result.decode_samples_ms_per_token) == SMALL.repeats
    assert result.prefill_ms == statistics.median(result.prefill_samples_ms)
    assert result.decode_ms_per_token == statistics.median(result.decode_samples_ms_per_token)


def test_result_records_protocol_and_environment(tiny_llama):
    protocol = measure_latency(tiny_llama, SMALL).protocol
    assert protocol["prompt_tokens"] == 12
    assert protocol["decode_tokens"] == 3
    assert protocol["warmup"] == 2
    assert protocol["repeats"] == 3
    assert protocol["batch_size"] == 1
    assert protocol["device"] == "cpu"
    assert protocol["dtype"] == "float32"
    assert protocol["torch_threads"] == torch.get_num_threads()
    assert protocol["timer"] == "perf_counter"
    assert protocol["prefill_logits"] == "last position only"


class RecordingTimer(latency.CpuTimer):
    """A CPU timer that notes how many forwards had run when each timed section started."""

    def __init__(self, forwards: list):
        self.forwards = forwards
        self.starts: list[int] = []

    def start(self) -> None:
        self.starts.append(len(self.forwards))
        super().start()


def test_timing_starts_after_warmup(tiny_llama, monkeypatch):
    forwards = []

    def note_forward(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        forwards.append((tuple(kwargs["input_ids"].shape), cache is not None))

    tiny_llama.register_forward_pre_hook(note_forward, with_kwargs=True)
    timers = []
    monkeypatch.setattr(latency, "make_timer", lambda device: timers.append(RecordingTimer(forwards)) or timers[-1])
    measure_latency(tiny_llama, SMALL)

    per_pass = 1 + SMALL.decode_tokens
    assert len(forwards) == (SMALL.warmup + SMALL.repeats) * per_pass
    starts = timers[0].starts
    assert len(starts) == 2 * SMALL.repeats
    assert starts[0] == SMALL.warmup * per_pass
    assert starts[1] == starts[0] + 1  # the decode section starts right after the prefill forward
    prefill, *decode = forwards[starts[0] : starts[0] + per_pass]
    assert prefill == ((1, 12), False)
    assert decode == [((1, 1), True)] * SMALL.decode_tokens


def test_restores_training_mode(tiny_llama):
    tiny_llama.train()
    measure_latency(tiny_llama, LatencyProtocol(prompt_tokens=4, decode_tokens=1, warmup=0, repeats=1))
    assert tiny_llama.training


def test_prompt_beyond_context_is_rejected(tiny_llama):
    protocol = LatencyProtocol(prompt_tokens=250, decode_tokens=10)
    with pytest.raises(ValueError, match="260 positions.*context of 256"):
        measure_latency(tiny_llama, protocol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_uses_events(tiny_llama):
    result = measure_latency(tiny_llama.to("cuda"), SMALL)
    assert result.protocol["timer"] == "cuda_events"
    assert result.prefill_ms > 0
    assert result.decode_ms_per_token > 0


def test_decode_follows_greedy_generation(tiny_llama):
    fed = []
    tiny_llama.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    protocol = LatencyProtocol(prompt_tokens=10, decode_tokens=5, warmup=0, repeats=1)
    measure_latency(tiny_llama, protocol)
    decoded = torch.cat(fed[1:], dim=1)

    prompt = prompt_ids(tiny_llama, protocol)
    generated = tiny_llama.generate(prompt, max_new_tokens=protocol.decode_tokens, do_sample=False)
    assert torch.equal(decoded, generated[:, protocol.prompt_tokens :])
