"""The base model's own greedy answers to a shipped prompt set, generated in batches and cached in the data home.

Replay (``replay.py``) trains on these answers so a fine-tune keeps what the base model knew; retention
(``retention.py``) uses them as the reference a fine-tuned model is compared with, and the knowledge check
(``knowledge_check.py``) to choose how much of the update to keep. Each prompt set ships as package data (``trainer/data/<name>_prompts.jsonl``, one ``{"prompt": ..., "expect": [...]}`` object a line; ``expect`` is
optional: short answers that a correct reply contains).

Generating costs minutes on a CPU, so answers are cached once per base model under
``<home>/base_answers/<set>-<key>.jsonl`` (``AnswerCache``), next to small measurements of the base model that do
not depend on a run (``<kind>-<key>.json``: its perplexity on the retention answers, its evaluation on a validation
set). The key covers everything that changes the result: the model's weights and config (a hash of the parameters,
not the spec, so a retrained run of the same name is not mistaken for the old one), its chat template, the prompt
set and the generation settings. Hashing the weights takes about a second, so ``fingerprints.json`` remembers the
hash by the files' identity (path, sizes, change times), which also lets `/train`'s preview see what is cached
without loading the model. A cache holds answers to the prompts asked so far and grows when more are asked for;
files are rewritten atomically (a killed run leaves the old file or the new one) and private to the user (0600).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .evaluate import end_of_turn_ids

PROMPT_SETS = ("replay", "retention", "check")
CACHE_DIR = "base_answers"  # under the data home's root
FINGERPRINTS_FILE = "fingerprints.json"  # in CACHE_DIR: model_identity -> model_fingerprint, see AnswerCache.of


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
    """The shipped prompt set ``name`` (one of ``PROMPT_SETS``), in file order."""
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


def model_identity(location: str | Path, dtype: str) -> str | None:
    """The identity of a model's files loaded in ``dtype``, cheap to compute: the directory's real path and each
    file's name, size and change time. None for a Hub id (no directory). Used only to look up a fingerprint computed
    before (``AnswerCache``): the fingerprint hashes the weights in the dtype they were loaded in."""
    directory = Path(location).expanduser()
    if not directory.is_dir():
        return None
    directory = directory.resolve()
    entries = []
    for path in sorted(directory.iterdir()):
        if path.is_file():
            stat = path.stat()
            entries.append([path.name, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps([str(directory), dtype, entries]).encode()).hexdigest()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path``, readable by its owner only (the cache quotes the user's chats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or damaged: measured again, never trusted


@dataclass
class AnswerCache:
    """What one base model said and measured, cached in ``directory`` (the data home's base_answers/): answers to
    the shipped prompt sets, and small measurements (``value``) such as its perplexity on them.

    Everything is keyed by ``fingerprint`` (the weights, config and chat template) plus what else changes the result.
    ``generated`` counts the answers this object had to generate, by prompt set: what a run paid for.
    """

    directory: Path
    fingerprint: str
    generated: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Any, tokenizer: Any, directory: Path, identity: str | None = None) -> "AnswerCache":
        """The cache of ``model``. With ``identity`` (``model_identity`` of the files it was loaded from) the
        fingerprint is looked up instead of hashed when these files were seen before."""
        memo_path = Path(directory) / FINGERPRINTS_FILE
        memo = (_read_json(memo_path) or {}) if identity else {}
        fingerprint = memo.get(identity) if identity else None
        if not isinstance(fingerprint, str):
            fingerprint = model_fingerprint(model, tokenizer)
            if identity:
                _write_private(memo_path, json.dumps({**memo, identity: fingerprint}, indent=1))
        return cls(Path(directory), fingerprint)

    @classmethod
    def known(cls, directory: Path, identity: str | None) -> "AnswerCache | None":
        """The cache of the model whose files have ``identity``, without loading it; None when no run used them."""
        fingerprint = (_read_json(Path(directory) / FINGERPRINTS_FILE) or {}).get(identity) if identity else None
        return cls(Path(directory), fingerprint) if isinstance(fingerprint, str) else None

    def _key(self, **parts: Any) -> str:
        text = json.dumps({"model": self.fingerprint, **parts}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def path(self, set_name: str, prompts: Sequence[Prompt], settings: AnswerSettings) -> Path:
        """Where the answers to the prompt set ``prompts`` with these settings are cached."""
        key = self._key(prompts=prompt_set_hash(prompts), settings=asdict(settings))
        return self.directory / f"{set_name}-{key}.jsonl"

    def cached(self, set_name: str, prompts: Sequence[Prompt], settings: AnswerSettings) -> dict[str, Answer]:
        """The answers already cached, by prompt."""
        path = self.path(set_name, prompts, settings)
        answers: dict[str, Answer] = {}
        if not path.is_file():
            return answers
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                answers[record["prompt"]] = Answer(record["prompt"], record["reply"], bool(record["finished"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                return {}  # a damaged cache is regenerated, never trusted
        return answers

    def answers(
        self,
        model: Any,
        tokenizer: Any,
        set_name: str,
        prompts: Sequence[Prompt],
        settings: AnswerSettings,
        *,
        select: Sequence[Prompt] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Answer]:
        """``model``'s answers to ``select`` (prompts of the set ``prompts``; default: all of them), from the cache
        where it has them, in that order. ``model`` must be the model this cache belongs to.

        The cache holds one answer per prompt of the set, whatever order they were asked in; missing answers are
        generated and added to it. ``progress(done, total)`` counts generated ones only.
        """
        wanted = list(prompts if select is None else select)
        cached = self.cached(set_name, prompts, settings)
        missing = [p.prompt for p in wanted if p.prompt not in cached]
        if missing:
            cached.update((a.prompt, a) for a in greedy_answers(model, tokenizer, missing, settings, progress=progress))
            lines = [json.dumps(asdict(answer), ensure_ascii=False) + "\n" for answer in cached.values()]
            _write_private(self.path(set_name, prompts, settings), "".join(lines))
        self.generated[set_name] = self.generated.get(set_name, 0) + len(missing)
        return [cached[p.prompt] for p in wanted]

    def value_path(self, kind: str, **key: Any) -> Path:
        return self.directory / f"{kind}-{self._key(kind=kind, **key)}.json"

    def value(self, kind: str, **key: Any) -> Any:
        """A measurement cached under ``kind`` and ``key`` (JSON values), or None."""
        return _read_json(self.value_path(kind, **key))

    def store(self, kind: str, value: Any, **key: Any) -> None:
        _write_private(self.value_path(kind, **key), json.dumps(value, ensure_ascii=False))
