"""Retention: does the fine-tuned model still answer general questions the way the base model did?

The held-out prompts ship in ``trainer/data/retention_prompts.jsonl`` (none of them in the replay set, so replay
cannot simply have memorised them). The base model's greedy answers are the reference (generated once per base
model and cached, see ``base_answers.py``). A fine-tuned model is scored on them three ways:

- facts: the prompts with short expected answers ("What is the capital of France?" -> Paris) that the base model
  answers right; how many the new model still answers right. Exact, and the headline ``retention`` number.
- substance: how many answers still say what the base model said: ROUGE-L F1 against the reference at least
  ``ROUGE_THRESHOLD``. Greedy text is fragile, so this is the softer, noisier signal (see the threshold's comment).
- perplexity of the new model on the reference answers, next to the base model's: how far its distribution moved.

``RETENTION_WARN_BELOW`` is the level under which training warns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from .answer_match import contains_answer, rouge_l
from .base_answers import Answer, AnswerCache, AnswerSettings, Prompt, greedy_answers, load_prompt_set
from .batching import Collator
from .evaluate import end_of_turn_ids
from .loss import summed_token_loss
from .render import RenderedExample

RETENTION_MAX_NEW_TOKENS = 48  # per answer: enough for the facts and a sentence or two of the rest
# Prompts per generate() call: the whole set at once. On a small CPU a decode step costs about the same for 48 rows
# as for 16, so one batch beats three even though it runs until its longest answer ends (README: small runs).
RETENTION_BATCH = 48
# ROUGE-L F1 at or above which an answer counts as the same in substance. Calibrated on the bundled model: the
# same weights in bf16 and in fp32 (a change that teaches nothing) gave >= 0.5 on 86% of the retention prompts and
# >= 0.3 on 96%, because one flipped greedy token sends the rest of a reply elsewhere; a wrong fact in a short answer
# ("Quenthal is the capital of ...") still shares half its words with the right one. 0.5 sits between.
ROUGE_THRESHOLD = 0.5
RETENTION_WARN_BELOW = 0.9  # of the facts the base model answered right
EVAL_BATCH = 8  # reference answers scored per forward pass


@dataclass
class RetentionItem:
    prompt: str
    reference: str  # the base model's answer
    reply: str  # the evaluated model's answer
    rouge_l: float
    expect: list[str] = field(default_factory=list)
    base_correct: bool | None = None  # None: no expected answer for this prompt
    correct: bool | None = None


@dataclass
class RetentionResult:
    items: list[RetentionItem]
    perplexity: float  # of the evaluated model on the reference answers
    base_perplexity: float | None = None  # of the base model on the same answers

    @property
    def facts_total(self) -> int:
        """Facts the base model answered right: the ones that can be retained."""
        return sum(1 for i in self.items if i.base_correct)

    @property
    def facts_kept(self) -> int:
        return sum(1 for i in self.items if i.base_correct and i.correct)

    @property
    def retention(self) -> float:
        """Share of the base model's right facts still right (1.0 when there are none to lose)."""
        return self.facts_kept / self.facts_total if self.facts_total else 1.0

    @property
    def substance(self) -> float:
        """Share of answers with ROUGE-L >= ROUGE_THRESHOLD against the base model's."""
        return sum(i.rouge_l >= ROUGE_THRESHOLD for i in self.items) / len(self.items) if self.items else 1.0

    @property
    def mean_rouge_l(self) -> float:
        return sum(i.rouge_l for i in self.items) / len(self.items) if self.items else 1.0

    def metrics(self) -> dict[str, Any]:
        """The numbers (no answers), for progress events, metrics.json and /train's summary."""
        return {
            "retention": round(self.retention, 4),
            "facts_kept": self.facts_kept,
            "facts_total": self.facts_total,
            "substance": round(self.substance, 4),
            "mean_rouge_l": round(self.mean_rouge_l, 4),
            "rouge_threshold": ROUGE_THRESHOLD,
            "prompts": len(self.items),
            "perplexity": round(self.perplexity, 4),
            "base_perplexity": None if self.base_perplexity is None else round(self.base_perplexity, 4),
        }

    def lost_facts(self) -> list[RetentionItem]:
        return [i for i in self.items if i.base_correct and not i.correct]

    def warning(self, threshold: float = RETENTION_WARN_BELOW) -> str | None:
        """One line when too many facts were lost, else None."""
        if self.retention >= threshold:
            return None
        example = self.lost_facts()[0]
        return (
            f"retention {self.retention:.0%} is below {threshold:.0%}: the model lost "
            f"{self.facts_total - self.facts_kept} of {self.facts_total} general facts it knew (e.g. "
            f"{example.prompt!r} -> {example.reply[:80]!r}); train fewer epochs, with a lower --lr, or with more "
            "--replay"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.metrics(), "items": [asdict(i) for i in self.items]}


def retention_settings(bf16: bool) -> AnswerSettings:
    return AnswerSettings(max_new_tokens=RETENTION_MAX_NEW_TOKENS, bf16=bf16, batch_size=RETENTION_BATCH)


@dataclass
class RetentionBaseline:
    """The base model's side: the prompts, its answers (the reference) and its perplexity on them."""

    prompts: list[Prompt]
    references: list[Answer]
    perplexity: float
    cached: bool = False  # it came from the cache: nothing was generated or measured


def measure_baseline(
    model: Any,
    tokenizer: Any,
    cache: AnswerCache,
    *,
    bf16: bool,
    progress: Callable[[int, int], None] | None = None,
) -> RetentionBaseline:
    """Answer the retention prompts with ``model`` (the base model) and score them; both are cached, so only a base
    model's first run pays for them."""
    prompts = load_prompt_set("retention")
    settings = retention_settings(bf16)
    references = cache.answers(model, tokenizer, "retention", prompts, settings, progress=progress)
    perplexity = cache.value("retention_perplexity", **_perplexity_key(references, settings))
    if isinstance(perplexity, float):
        return RetentionBaseline(prompts, references, perplexity, cached=True)
    perplexity = reference_perplexity(model, tokenizer, references, bf16=bf16)
    cache.store("retention_perplexity", perplexity, **_perplexity_key(references, settings))
    return RetentionBaseline(prompts, references, perplexity)


def _perplexity_key(references: Sequence[Answer], settings: AnswerSettings) -> dict[str, Any]:
    return {"answers": [asdict(a) for a in references], "settings": asdict(settings), "batch": EVAL_BATCH}


def baseline_cached(cache: AnswerCache | None, *, bf16: bool) -> bool:
    """Whether a run's retention baseline would come from ``cache`` whole (None: nothing is cached)."""
    if cache is None:
        return False
    prompts = load_prompt_set("retention")
    settings = retention_settings(bf16)
    answers = cache.cached("retention", prompts, settings)
    if any(p.prompt not in answers for p in prompts):
        return False
    key = _perplexity_key([answers[p.prompt] for p in prompts], settings)
    return isinstance(cache.value("retention_perplexity", **key), float)


@torch.no_grad()
def reference_perplexity(model: Any, tokenizer: Any, references: Sequence[Answer], *, bf16: bool) -> float:
    """Perplexity of ``model`` on the reference answers (answer tokens only; the end-of-turn token counts only where
    the reference ended its turn, since a cut reference did not)."""
    device = next(model.parameters()).device
    end = end_of_turn_ids(model, tokenizer)
    examples = []
    for answer in references:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": answer.prompt}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(answer.reply, add_special_tokens=False)["input_ids"] + (end[:1] if answer.finished else [])
        examples.append(RenderedExample(prompt_ids + reply_ids, [False] * len(prompt_ids) + [True] * len(reply_ids)))
    collate = Collator(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), EVAL_BATCH):
            batch = {k: v.to(device) for k, v in collate(examples[start : start + EVAL_BATCH]).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, n = summed_token_loss(model, batch)
            total, count = total + float(loss), count + n
    finally:
        model.train(was_training)
    return math.exp(min(total / max(count, 1), 50.0))


def evaluate_retention(
    model: Any,
    tokenizer: Any,
    baseline: RetentionBaseline,
    *,
    bf16: bool,
    progress: Callable[[int, int], None] | None = None,
) -> RetentionResult:
    """Score ``model`` (the fine-tuned one) against the base model's answers in ``baseline``."""
    prompts = baseline.prompts
    replies = greedy_answers(
        model, tokenizer, [p.prompt for p in prompts], retention_settings(bf16), progress=progress
    )
    items = []
    for prompt, reference, reply in zip(prompts, baseline.references, replies):
        has_expect = bool(prompt.expect)
        items.append(
            RetentionItem(
                prompt=prompt.prompt,
                reference=reference.reply,
                reply=reply.reply,
                rouge_l=rouge_l(reference.reply, reply.reply),
                expect=list(prompt.expect),
                base_correct=contains_answer(reference.reply, prompt.expect) if has_expect else None,
                correct=contains_answer(reply.reply, prompt.expect) if has_expect else None,
            )
        )
    perplexity = reference_perplexity(model, tokenizer, baseline.references, bf16=bf16)
    return RetentionResult(items, perplexity, baseline.perplexity)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())[:160] or "(empty)"


def report_section(result: RetentionResult, warning: str | None) -> str:
    """The retention part of report.md: the numbers, the warning, and the facts lost (or a few changed answers)."""
    lines = [
        "## Retention (general knowledge kept)",
        "",
        f"- facts still answered right: {result.facts_kept} of {result.facts_total} ({result.retention:.0%})",
        f"- answers the same in substance (ROUGE-L >= {ROUGE_THRESHOLD} against the base model's): "
        f"{result.substance:.0%} of {len(result.items)}, mean ROUGE-L {result.mean_rouge_l:.3f}",
    ]
    if result.base_perplexity is not None:
        lines.append(
            f"- perplexity on the base model's answers: {result.base_perplexity:.3f} before, {result.perplexity:.3f} after"
        )
    if warning:
        lines += ["", f"**Warning:** {warning}"]
    shown = result.lost_facts() or sorted(result.items, key=lambda i: i.rouge_l)[:3]
    if shown:
        title = "facts lost" if result.lost_facts() else "most changed answers"
        lines += ["", f"| {title} | base model | now |", "|---|---|---|"]
        lines += [f"| {_cell(i.prompt)} | {_cell(i.reference)} | {_cell(i.reply)} |" for i in shown]
    return "\n".join(lines) + "\n"
