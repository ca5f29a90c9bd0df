"""The SFT loss, summed so the caller chooses the normaliser: next-token cross-entropy on assistant tokens, and on
replayed answers the KL from the base model's next-token distribution (self-distillation: why in distill.py)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .batching import IGNORE_INDEX

MIN_REST = 1e-12  # floor of the probability mass outside a distribution's kept tokens, so its log stays finite
# Config fields of models whose logits are more than ``lm_head(hidden)``: they take the plain forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output layer) when the logits are exactly ``head(decoder(...))``, else None."""
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the HF model
    if any(getattr(hf_model.config, name, None) is not None for name in _LOGIT_TRANSFORMS):
        return None
    decoder = getattr(hf_model, getattr(hf_model, "base_model_prefix", ""), None)
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    if decoder is None or head is None:
        return None
    return decoder, head


def logits_at(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, where: list[torch.Tensor]
) -> list[torch.Tensor]:
    """The logits of the positions ``where`` selects (each a bool mask over ``[:, :-1]``), from one forward.

    Only the selected positions go through the output layer: with a 49k vocabulary it is a fifth of the model's
    FLOPs, and about half the tokens of a chat are prompt, whose logits the loss never reads.
    """
    parts = _decoder_and_head(model)
    # use_cache=False: a loss needs no KV cache, and filling one costs a cache update per layer.
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
        return [logits[mask] for mask in where]
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0][:, :-1]
    return [head(hidden[mask]) for mask in where]


def base_model_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, where: torch.Tensor
) -> torch.Tensor:
    """The base model's logits at the positions ``where`` selects: ``model`` (a PEFT model) with its adapter off."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError("distillation needs a LoRA model: its base model is the model with the adapter switched off")
    rows = where.any(dim=1)  # only the rows that have distilled positions pay for the extra forward
    with torch.no_grad(), model.disable_adapter():
        return logits_at(model, input_ids[rows], attention_mask[rows], [where[rows]])[0]


def kept_and_rest(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """A distribution over the tokens ``ids`` and, as one more outcome, the rest of the vocabulary: log-probabilities
    ``[..., k + 1]`` from full ones ``[..., vocab]``. The rest's mass is summed, not ``1 - kept``: exact however
    small."""
    kept = logprobs.gather(-1, ids)
    rest = logprobs.scatter(-1, ids, float("-inf")).logsumexp(dim=-1, keepdim=True)
    return torch.cat([kept, rest.clamp_min(math.log(MIN_REST))], dim=-1)


def distillation_loss(student_logits: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Summed ``KL(teacher || student)`` over positions (rows), both as distributions over the teacher's kept
    tokens ``ids`` and the rest of the vocabulary as one outcome; ``logprobs`` are the teacher's (k + 1 columns, see
    render.TeacherTargets). Temperature 1, fp32. Zero when the student's distribution is the teacher's."""
    student = kept_and_rest(F.log_softmax(student_logits.float(), dim=-1), ids)
    return (logprobs.exp() * (logprobs - student)).sum()


def summed_token_loss(
    model: Any, batch: dict[str, torch.Tensor], distill_weight: float = 1.0
) -> tuple[torch.Tensor, int]:
    """(sum of per-token losses, number of tokens it covers) for one micro-batch.

    Summing, not averaging, lets training divide by the assistant tokens of the whole gradient-accumulation step
    (every token weighs the same however the batches split them) and lets evaluation average over the whole set.
    A token is scored by cross-entropy, or, where ``batch["distill"]`` marks it, by the KL from its teacher
    targets (``teacher_ids``, ``teacher_logprobs``; see batching.Collator): both are nats per token, one scale,
    the KL times ``distill_weight`` (SFT's ``--replay-weight``).
    """
    # Position t predicts token t+1; labels are IGNORE_INDEX outside assistant replies.
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    if "distill" not in batch:
        (logits,) = logits_at(model, input_ids, attention_mask, [scored])
        return F.cross_entropy(logits.float(), targets[scored], reduction="sum"), int(scored.sum())
    distilled = batch["distill"][:, 1:] & scored
    learned = scored & ~distilled
    logits, student = logits_at(model, input_ids, attention_mask, [learned, distilled])
    # Both masks select positions row by row, so the teacher's rows line up with the student's.
    ids, logprobs = batch["teacher_ids"][:, 1:][distilled], batch["teacher_logprobs"][:, 1:][distilled]
    loss = F.cross_entropy(logits.float(), targets[learned], reduction="sum")
    return loss + distill_weight * distillation_loss(student, ids, logprobs), int(scored.sum())


class TokenLossModel(torch.nn.Module):
    """The model and its loss as one module, so that ``accelerator.prepare`` (DDP, FSDP) wraps the whole forward
    that training runs, the shortcut past the output layer included. ``forward`` returns the summed loss."""

    def __init__(self, model: Any, distill_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.distill_weight = distill_weight

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, **teacher: torch.Tensor
    ) -> torch.Tensor:
        """``teacher``: the Collator's ``distill``, ``teacher_ids`` and ``teacher_logprobs`` when the batch has any."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **teacher}
        return summed_token_loss(self.model, batch, self.distill_weight)[0]
