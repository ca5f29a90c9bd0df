"""Batches of a preference run: micro-batches of pairs and, for the combined objective, of conversations.

The combined objective (``python -m trainer dpo --sft-data``, what `/train` runs when the store has preference pairs)
learns the good and corrected replies by cross-entropy and the pairs by DPO in one run: each micro-batch is all pairs
or all conversations (one loss each, see preference_loss.py), both kinds length-grouped as batching.py does, and the
epoch's micro-batches shuffled together so every optimizer step sees both. Replay (replay.py) is a third kind, batched
apart from the user's conversations so its loss can be weighed on its own (``--replay-weight``). The order is a pure function of (seed,
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



@dataclass(frozen=True)
class Replayed:
    """A replay conversation among a preference run's items: collated as any conversation, its loss weighed apart."""

    example: RenderedExample

    def __len__(self) -> int:
        return len(self.example)


Item = Union[RenderedPair, RenderedExample, Replayed]


class KindGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Index lists over the items of every kind in order (``kinds``: each kind's item lengths; pairs first, then the
    conversations, then the replay); a batch never mixes two kinds."""

    def __init__(self, kinds: Sequence[Sequence[int]], micro_batch: int, seed: int) -> None:
        self.offsets = [sum(len(k) for k in kinds[:i]) for i in range(len(kinds))]
        self.kinds = [LengthGroupedBatches(lengths, micro_batch, seed + i) for i, lengths in enumerate(kinds)]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for kind in self.kinds:
            kind.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        batches = [[i + offset for i in b] for offset, kind in zip(self.offsets, self.kinds) for b in kind.batches()]
        random.Random(self.seed * 100_003 + self.epoch + 7).shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return sum(len(kind) for kind in self.kinds)


@dataclass
class MixedCollator:
    """Collates a micro-batch of one kind: pairs as PairCollator does, conversations as batching.Collator does, and
    replay as conversations with ``loss_weight`` (``replay_weight``: what its loss weighs against the others')."""

    pad_token_id: int
    replay_weight: float = 1.0

    def __call__(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        if isinstance(items[0], RenderedPair):
            return PairCollator(self.pad_token_id)(items)  # type: ignore[arg-type]
        if isinstance(items[0], Replayed):
            batch = Collator(self.pad_token_id)([item.example for item in items])  # type: ignore[union-attr]
            batch["loss_weight"] = torch.tensor(self.replay_weight)
            return batch
        return Collator(self.pad_token_id)(items)  # type: ignore[arg-type]
