"""Training text for distillation: documents from several datasets, tokenized, packed into blocks."""

from __future__ import annotations

import logging
import random

import torch

from bench.data import load_texts

logger = logging.getLogger(__name__)


def interleave_documents(sources: list[list[str]], seed: int) -> list[str]:
    """Shuffle each source with `seed` and interleave them one document at a time."""
    rng = random.Random(seed)
    shuffled = []
    for texts in sources:
        order = list(texts)
        rng.shuffle(order)
        shuffled.append(order)
    mixed = []
    for index in range(max((len(texts) for texts in shuffled), default=0)):
        for texts in shuffled:
            if index < len(texts):
                mixed.append(texts[index])
    return mixed


def pack_blocks(
    tokenizer, documents: list[str], seqlen: int, max_blocks: int | None
) -> tuple[torch.Tensor, int]:
    """Tokenize documents in order, join them with EOS and cut the stream into `seqlen` blocks.

    Stops tokenizing once `max_blocks` blocks are full. Returns the blocks and the number of
    documents used.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    needed = None if max_blocks is None else max_blocks * seqlen
    used = 0
    for document in documents:
        if needed is not None and len(stream) >= needed:
            break
        stream.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
        used += 1
    count = len(stream) // seqlen
    if max_blocks is not None:
        count = min(count, max_blocks)
    if count == 0:
        raise ValueError(f"The training text has fewer than {seqlen} tokens; lower the training seqlen.")
    blocks = torch.tensor(stream[: count * seqlen], dtype=torch.long).view(count, seqlen)
    return blocks, used


def training_blocks(
    tokenizer, datasets: tuple[str, ...], seqlen: int, max_blocks: int | None, seed: int, data_dir=None
) -> tuple[torch.Tensor, dict]:
    """Return packed training blocks from the named catalog datasets and a description of them."""
    loaded = [load_texts(name, data_dir) for name in datasets]
    documents = interleave_documents([dataset.texts for dataset in loaded], seed)
    blocks, used = pack_blocks(tokenizer, documents, seqlen, max_blocks)
    description = {
        "datasets": {dataset.name: dataset.source for dataset in loaded},
        "mix": "documents shuffled per dataset (seeded) and interleaved one by one",
        "join": "EOS token between documents",
        "documents_used": used,
        "blocks": int(blocks.shape[0]),
        "seqlen": seqlen,
        "seed": seed,
    }
    logger.info("Training text: %d blocks of %d tokens from %d documents", blocks.shape[0], seqlen, used)
    return blocks, description
