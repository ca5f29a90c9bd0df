"""The SFT loss: next-token cross-entropy on assistant tokens, summed so the caller chooses the normaliser."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batching import IGNORE_INDEX


def summed_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of per-token losses, number of tokens it covers) for one micro-batch.

    Summing, not averaging, lets training divide by the assistant tokens of the whole gradient-accumulation step
    (every token weighs the same however the batches split them) and lets evaluation average over the whole set.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Position t predicts token t+1; labels are IGNORE_INDEX outside assistant replies. Only the scored positions
    # are upcast to fp32: the full (tokens x vocab) fp32 logits would be ~200 KB per token for a 49k vocabulary.
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    loss = F.cross_entropy(logits[:, :-1][scored].float(), targets[scored], reduction="sum")
    return loss, int(scored.sum())
