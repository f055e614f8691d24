"""Calibration windows of the post-training methods, drawn from C4 train text.

Protocol: the C4 train documents are joined with JOIN (a space) into one text and tokenized
once. Each window is `seqlen` consecutive tokens starting at a uniformly random offset, drawn
with random.Random(seed). Windows may overlap. The text is joined because few documents of the local
C4 sample reach 2048 tokens on their own, unlike GPTQ's sampler, which picks one window inside
a random document longer than the window.
"""

from __future__ import annotations

import logging
import os
import random

import torch

from bench.data import load_texts

logger = logging.getLogger(__name__)

DATASET = "c4_train"
JOIN = " "

_TOKEN_CACHE: dict[tuple, torch.Tensor] = {}


def _token_stream(tokenizer, texts: list[str], source: str) -> torch.Tensor:
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), source, len(texts))
    if key not in _TOKEN_CACHE:
        _TOKEN_CACHE[key] = torch.tensor(tokenizer(JOIN.join(texts))["input_ids"], dtype=torch.long)
    return _TOKEN_CACHE[key]


def calibration_windows(
    tokenizer, count: int, seqlen: int, seed: int = 0, data_dir: str | os.PathLike | None = None
) -> tuple[torch.Tensor, dict]:
    """Return `count` calibration windows of `seqlen` tokens, shape (count, seqlen), and their protocol.

    The protocol dict names the dataset source, join string, token count, window count, seqlen
    and seed, for storing with a result.
    """
    if count < 1:
        raise ValueError(f"Calibration window count must be >= 1, got {count}.")
    if seqlen < 1:
        raise ValueError(f"Calibration seqlen must be >= 1, got {seqlen}.")

    dataset = load_texts(DATASET, data_dir)
    stream = _token_stream(tokenizer, dataset.texts, dataset.source)
    if stream.numel() < seqlen:
        raise ValueError(
            f"The joined {DATASET} text has {stream.numel()} tokens, fewer than one calibration window "
            f"of {seqlen}; use a shorter seqlen or more calibration text."
        )

    generator = random.Random(seed)
    starts = [generator.randint(0, stream.numel() - seqlen) for _ in range(count)]
    windows = torch.stack([stream[start : start + seqlen] for start in starts])
    logger.info("Drew %d calibration windows of %d tokens from %d tokens of %s", count, seqlen, stream.numel(), DATASET)

    protocol = {
        "dataset": DATASET,
        "source": dataset.source,
        "documents": len(dataset.texts),
        "join": JOIN,
        "stream_tokens": int(stream.numel()),
        "count": count,
        "seqlen": seqlen,
        "seed": seed,
        "sampling": "uniform random start offsets in the joined token stream, random.Random(seed), overlaps allowed",
    }
    return windows, protocol
