"""Evaluation on validation conversations: loss and perplexity on assistant tokens, and greedy generations scored
with BLEU (sacrebleu) and ROUGE-L (rouge-score) against the reference replies.

Generation is bounded (``max_samples`` prompts, ``max_new_tokens`` each) because on a CPU it is the slow part.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import sacrebleu
import torch
from rouge_score import rouge_scorer

from .data import Conversation
from .loss import summed_token_loss


@dataclass
class Sample:
    prompt: str  # the last user message (the whole conversation up to it was the model's input)
    reference: str
    reply: str


@dataclass
class EvalResult:
    val_loss: float
    val_ppl: float
    val_tokens: int
    bleu: float
    rouge_l: float
    samples: list[Sample] = field(default_factory=list)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "EvalResult":
        return cls(**{**value, "samples": [Sample(**s) for s in value.get("samples", [])]})

    def metrics(self) -> dict[str, Any]:
        """The numbers (no samples), for progress events and metrics.json."""
        return {k: v for k, v in asdict(self).items() if k != "samples"}


def eval_prompts(conversations: Sequence[Conversation], limit: int) -> list[tuple[list[dict[str, str]], str]]:
    """(messages before the last assistant reply, that reply) for the first ``limit`` conversations."""
    prompts = []
    for conversation in conversations[:limit]:
        messages = conversation.as_messages()
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if last > 0:
            prompts.append((messages[:last], messages[last]["content"]))
    return prompts


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device, bf16: bool
) -> tuple[float, float, int]:
    """(mean loss per assistant token, perplexity, assistant tokens) over all ``batches``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        with _autocast(device, bf16):
            loss, n = summed_token_loss(model, {k: v.to(device) for k, v in batch.items()})
        total, count = total + float(loss), count + n
    model.train(was_training)
    mean = total / max(count, 1)
    return mean, math.exp(min(mean, 50.0)), count


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a reply: the tokenizer's eos and the model's generation eos (e.g. <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    *,
    device: torch.device,
    bf16: bool,
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> list[str]:
    """Greedy replies to each prompt (a list of messages), rendered with the chat template as the chat does."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so prompts line up on the right
    replies = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
            with _autocast(device, bf16):
                output = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=end_of_turn_ids(model, tokenizer),
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            replies.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return replies


def generation_scores(references: Sequence[str], replies: Sequence[str]) -> tuple[float, float]:
    """(corpus BLEU 0-100, mean ROUGE-L F1 0-1) of ``replies`` against ``references``."""
    if not references:
        return 0.0, 0.0
    bleu = sacrebleu.corpus_bleu(list(replies), [list(references)]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = sum(scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(references, replies)) / len(references)
    return bleu, rouge


def evaluate(
    model: Any,
    tokenizer: Any,
    batches: Callable[[], Iterable[dict[str, torch.Tensor]]],
    conversations: Sequence[Conversation],
    *,
    device: torch.device,
    bf16: bool,
    max_samples: int = 8,
    max_new_tokens: int = 64,
) -> EvalResult:
    """Loss/perplexity over ``batches()`` (the rendered validation set) and generation scores on the first
    ``max_samples`` validation conversations."""
    loss, ppl, tokens = validation_loss(model, batches(), device, bf16)
    pairs = eval_prompts(conversations, max_samples)
    replies = generate_replies(
        model, tokenizer, [p for p, _ in pairs], device=device, bf16=bf16, max_new_tokens=max_new_tokens
    )
    bleu, rouge = generation_scores([r for _, r in pairs], replies)
    samples = [Sample(p[-1]["content"], ref, reply) for (p, ref), reply in zip(pairs, replies)]
    return EvalResult(loss, ppl, tokens, bleu, rouge, samples)


def eval_key(conversations: Sequence[Conversation], config: Any, bf16: bool) -> dict[str, Any]:
    """What an evaluation's result depends on besides the model (``config``: the run's SFTConfig): the key of the
    base model's cached "before" evaluation."""
    return {
        "conversations": [c.as_messages() for c in conversations], "bf16": bf16, "max_length": config.max_length,
        "micro_batch": config.micro_batch, "samples": config.eval_samples, "max_new_tokens": config.max_new_tokens,
    }


def evaluate_dataset(
    model_spec: str,
    data_path: str,
    *,
    models_dir: Any,
    max_length: int = 1024,
    micro_batch: int = 4,
    max_samples: int = 8,
    max_new_tokens: int = 64,
    skip_invalid: bool = False,
    precision: str = "auto",
    trust_remote_code: bool = False,
) -> EvalResult:
    """Load ``model_spec`` and evaluate it on every conversation of ``data_path`` (``python -m trainer eval``)."""
    from .batching import Collator, LengthGroupedBatches
    from .data import read_jsonl
    from .devices import bf16_is_fast
    from .models import load_model
    from .render import render_conversations

    loaded = load_model(model_spec, models_dir=models_dir, dtype="float32", trust_remote_code=trust_remote_code)
    conversations = read_jsonl(data_path, skip_invalid=skip_invalid).conversations
    rendered = render_conversations(loaded.tokenizer, conversations, max_length)
    collate = Collator(loaded.tokenizer.pad_token_id)
    sampler = LengthGroupedBatches([len(e) for e in rendered.examples], micro_batch, seed=0)

    def batches() -> Iterable[dict[str, torch.Tensor]]:
        return (collate([rendered.examples[i] for i in indices]) for indices in sampler)

    bf16 = precision == "bf16" or (precision == "auto" and bf16_is_fast(loaded.device))
    return evaluate(
        loaded.model, loaded.tokenizer, batches, conversations, device=loaded.device, bf16=bf16,
        max_samples=max_samples, max_new_tokens=max_new_tokens,
    )
