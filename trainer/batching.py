"""Micro-batches without waste: length-grouped dynamic padding.

Each row of a batch is one conversation, padded on the right only to the longest row of its own batch. Rows never
share a sequence, so conversations cannot attend to each other and positions start at 0 in every row: no packing
masks are needed, and every attention backend (eager, sdpa, flash) and every model family behaves the same. The
padding that packing would save is kept small by grouping similar lengths: the epoch's order is shuffled, cut into
"mega-batches" of ``GROUP_FACTOR`` micro-batches, and each mega-batch is sorted by length before it is cut into
micro-batches (the scheme of HF's ``group_by_length``). The order is a pure function of (seed, epoch), so a resumed
run sees the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .render import RenderedExample

GROUP_FACTOR = 16  # micro-batches per sorted mega-batch: larger = less padding, less randomness
IGNORE_INDEX = -100  # label value the loss skips (PyTorch's cross_entropy default)


class LengthGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Yields lists of example indices; similar lengths share a batch. Call ``set_epoch`` before each epoch."""

    def __init__(self, lengths: Sequence[int], micro_batch: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.micro_batch = micro_batch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        size = self.micro_batch * GROUP_FACTOR
        batches = []
        for mega_start in range(0, len(order), size):
            mega = sorted(order[mega_start : mega_start + size], key=self.lengths.__getitem__, reverse=True)
            batches.extend(mega[i : i + self.micro_batch] for i in range(0, len(mega), self.micro_batch))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.micro_batch)


@dataclass
class Collator:
    """Pads a list of examples on the right into ``input_ids``, ``attention_mask`` and ``labels``.

    ``labels`` hold the token id where the loss applies (assistant tokens) and ``IGNORE_INDEX`` elsewhere, padding
    included; it is decided by the mask, never by comparing ids with ``pad_token_id`` (which may equal eos).
    Examples with ``teacher`` targets (replay, see distill.py) add ``distill``, True at their assistant tokens,
    and the targets of those tokens (``teacher_ids``, ``teacher_logprobs``): there the loss matches the base
    model's distribution instead of the token. Batches without such examples do without the three.
    """

    pad_token_id: int

    def __call__(self, examples: Sequence[RenderedExample]) -> dict[str, torch.Tensor]:
        width = max(len(e) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example)
            ids = torch.tensor(example.input_ids, dtype=torch.long)
            input_ids[row, :n] = ids
            attention_mask[row, :n] = 1
            mask = torch.tensor(example.assistant_mask, dtype=torch.bool)
            labels[row, :n] = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        taught = [(row, e.teacher) for row, e in enumerate(examples) if e.teacher is not None]
        if taught:
            k = taught[0][1].ids.shape[1]
            batch["distill"] = torch.zeros((len(examples), width), dtype=torch.bool)
            batch["teacher_ids"] = torch.zeros((len(examples), width, k), dtype=torch.long)
            batch["teacher_logprobs"] = torch.zeros((len(examples), width, k + 1))
            for row, teacher in taught:
                # Targets are stored per assistant token, in order: the token's position in the row.
                at = torch.tensor(examples[row].assistant_mask, dtype=torch.bool).nonzero().squeeze(1)
                batch["distill"][row, at] = True
                batch["teacher_ids"][row, at] = teacher.ids
                batch["teacher_logprobs"][row, at] = teacher.logprobs
        return batch


def padding_efficiency(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Real tokens / tokens computed (real + padding) for these batches: 1.0 means no padding at all."""
    real = sum(lengths[i] for batch in batches for i in batch)
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return real / computed if computed else 1.0
