"""Batches of a preference run: micro-batches of pairs and, for the combined objective, of conversations.

The combined objective (``python -m trainer dpo --sft-data``, what `/train` runs when the store has preference pairs)
learns the good and corrected replies by cross-entropy and the pairs by DPO in one run: each micro-batch is all pairs
or all conversations (one loss each, see preference_loss.py), both kinds length-grouped as batching.py does, and the
epoch's micro-batches shuffled together so every optimizer step sees both. The order is a pure function of (seed,
epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch

from .batching import Collator, LengthGroupedBatches
from .pairs import RenderedPair
from .preference_loss import PairCollator
from .render import RenderedExample

Item = Union[RenderedPair, RenderedExample]


class KindGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Index lists over ``pairs + conversations`` (pairs first); a batch never mixes the two kinds."""

    def __init__(self, pair_lengths: Sequence[int], conversation_lengths: Sequence[int], micro_batch: int,
                 seed: int) -> None:
        self.offset = len(pair_lengths)
        self.pairs = LengthGroupedBatches(pair_lengths, micro_batch, seed)
        self.conversations = LengthGroupedBatches(conversation_lengths, micro_batch, seed + 1)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.pairs.set_epoch(epoch)
        self.conversations.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        batches = self.pairs.batches() + [[i + self.offset for i in b] for b in self.conversations.batches()]
        random.Random(self.seed * 100_003 + self.epoch + 7).shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.pairs) + len(self.conversations)


@dataclass
class MixedCollator:
    """Collates a micro-batch of one kind: pairs as PairCollator does, conversations as batching.Collator does."""

    pad_token_id: int

    def __call__(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        if isinstance(items[0], RenderedPair):
            return PairCollator(self.pad_token_id)(items)  # type: ignore[arg-type]
        return Collator(self.pad_token_id)(items)  # type: ignore[arg-type]
