"""The base model's own greedy answers to a shipped prompt set, generated in batches and cached in the data home.

Replay (``replay.py``) trains on these answers so a fine-tune keeps what the base model knew; retention
(``retention.py``) uses them as the reference a fine-tuned model is compared with. Both prompt sets ship as package
data (``trainer/data/<name>_prompts.jsonl``, one ``{"prompt": ..., "expect": [...]}`` object a line; ``expect`` is
optional: short answers that a correct reply contains).

Generating costs minutes on a CPU, so answers are cached once per base model under
``<home>/base_answers/<set>-<key>.jsonl``. The key covers everything that changes the text: the model's weights and
config (a hash of the parameters, not the spec, so a retrained run of the same name is not mistaken for the old
one), its chat template, the prompt set and the generation settings. A cache holds answers for a prefix of the set
and grows when more are asked for; it is rewritten atomically, so a killed run leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .evaluate import end_of_turn_ids

PROMPT_SETS = ("replay", "retention")
CACHE_DIR = "base_answers"  # under the data home's root


@dataclass(frozen=True)
class Prompt:
    prompt: str
    expect: tuple[str, ...] = ()  # short answers a correct reply contains (any one of them)


@dataclass(frozen=True)
class Answer:
    prompt: str
    reply: str
    finished: bool  # the model ended its turn within max_new_tokens (an unfinished reply is cut mid-way)


@dataclass(frozen=True)
class AnswerSettings:
    """How answers are generated; part of the cache key, since each changes the text."""

    max_new_tokens: int  # per answer
    bf16: bool  # bf16 autocast over the loaded weights
    batch_size: int = 16  # prompts per generate() call; left padding can change a greedy pick in rare near-ties


def load_prompt_set(name: str) -> list[Prompt]:
    """The shipped prompt set ``name`` (``replay`` or ``retention``), in file order."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; expected one of {', '.join(PROMPT_SETS)}")
    text = resources.files("trainer").joinpath("data", f"{name}_prompts.jsonl").read_text(encoding="utf-8")
    prompts = []
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            prompts.append(Prompt(record["prompt"], tuple(record.get("expect", ()))))
    return prompts


def prompt_set_hash(prompts: Sequence[Prompt]) -> str:
    text = json.dumps([[p.prompt, list(p.expect)] for p in prompts], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(model: torch.nn.Module, tokenizer: Any) -> str:
    """A hash of the model's parameters, config and chat template (~1 s for 135M parameters on a CPU)."""
    digest = hashlib.sha256()
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        # Raw bytes in the stored dtype: the same weights always hash the same, whatever the device.
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def greedy_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: AnswerSettings,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[Answer]:
    """Greedy answers to single-turn ``prompts`` (rendered with the chat template, as the chat does), in order.

    Prompts are batched by length (left padded, so every row's answer starts at the same column) and a batch stops
    when every row has ended its turn. ``progress(done, total)`` is called after each batch.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stops = end_of_turn_ids(model, tokenizer)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)  # similar lengths share a batch: little padding
    answers: dict[int, Answer] = {}
    try:
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            inputs = tokenizer([texts[i] for i in rows], add_special_tokens=False, padding=True, return_tensors="pt")
            inputs = inputs.to(device)
            with _autocast(device, settings.bf16):
                output = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=settings.max_new_tokens,
                    eos_token_id=stops,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            finished = torch.isin(new_tokens, torch.tensor(stops, device=new_tokens.device)).any(dim=1)
            for row, tokens, done in zip(rows, new_tokens, finished.tolist()):
                reply = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                answers[row] = Answer(prompts[row], reply, done)
            if progress is not None:
                progress(len(answers), len(texts))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [answers[i] for i in range(len(prompts))]


def cache_path(cache_dir: Path, set_name: str, model: Any, tokenizer: Any, prompts: Sequence[Prompt], settings: AnswerSettings) -> Path:
    """Where the answers of this model to this prompt set with these settings are cached."""
    key = hashlib.sha256(
        json.dumps(
            {
                "model": model_fingerprint(model, tokenizer),
                "prompts": prompt_set_hash(prompts),
                "settings": asdict(settings),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]
    return Path(cache_dir) / f"{set_name}-{key}.jsonl"


def _read_cache(path: Path) -> list[Answer]:
    if not path.is_file():
        return []
    answers = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            answers.append(Answer(record["prompt"], record["reply"], bool(record["finished"])))
        except (json.JSONDecodeError, KeyError, TypeError):
            return []  # a damaged cache is regenerated, never trusted
    return answers


def _write_cache(path: Path, answers: Sequence[Answer]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            for answer in answers:
                file.write(json.dumps(asdict(answer), ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def base_answers(
    model: Any,
    tokenizer: Any,
    set_name: str,
    prompts: Sequence[Prompt],
    settings: AnswerSettings,
    cache_dir: Path,
    *,
    count: int | None = None,
    select: Sequence[Prompt] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Answer]:
    """The model's answers to ``select`` (prompts of the set ``prompts``; default: its first ``count``, all when None),
    from the cache where it has them, in that order.

    The cache holds one answer per prompt of the set, whatever order they were asked in; missing answers are generated
    and added to it. ``progress(done, total)`` counts generated ones only.
    """
    wanted = list(select if select is not None else prompts if count is None else prompts[:count])
    path = cache_path(cache_dir, set_name, model, tokenizer, prompts, settings)
    cached = {answer.prompt: answer for answer in _read_cache(path)}
    missing = [p.prompt for p in wanted if p.prompt not in cached]
    if missing:
        cached.update((a.prompt, a) for a in greedy_answers(model, tokenizer, missing, settings, progress=progress))
        _write_cache(path, list(cached.values()))
    return [cached[p.prompt] for p in wanted]
