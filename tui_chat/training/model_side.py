"""The part of `/train`'s preview that needs the base model, worked out in a child process.

Resolving the base model, counting tokens with its tokenizer and chat template, choosing the device and looking up
what the trainer's cache already holds for this base model all import torch and transformers. The chat window
plans `/train` in its own process, which never imports torch (it would grow by hundreds of megabytes and map
torch's libraries for the rest of the session), so that part runs as ``python -m tui_chat.training.model_side``:
the request goes in as JSON on stdin, the answer comes back as one JSON line on stdout. A process that has imported
torch already works it out itself, and a preview asked for again with the same snapshot and options is answered
from memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trainer.home import DataHome
from trainer.timings import TIMINGS_FILE

from tui_chat.training.errors import TrainingError
from tui_chat.training.estimate import DevicePlan, RunWork, count_parameters, plan_device, read_timings
from tui_chat.training.estimate import replay_tokens_each as replay_tokens_of
from tui_chat.training.workload import Schedule, TokenCount

CHILD_TIMEOUT_S = 600  # a first tokenizer load of a Hub model from the cache, on a busy machine
ANSWER_PREFIX = "MODEL-SIDE "  # marks the answer line among anything a library prints to stdout


@dataclass(frozen=True)
class ModelSide:
    """What the preview learns from the base model and the machine."""

    base_name: str
    base_location: str
    base_kind: str
    train: int  # conversations in the training split
    val: int
    messages: int
    counts: TokenCount
    steps: Schedule
    parameters: int | None
    device: DevicePlan
    method: str
    work: RunWork
    example: str | None = None  # one training conversation as the model sees it, the learned text «marked»
    train_pairs: int = 0  # preference pairs that fit in --max-length, split as trainer/dpo.py splits them
    val_pairs: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelSide":
        values = json.loads(text)
        device = values["device"]
        return cls(
            **{**values, "counts": TokenCount(**values["counts"]), "steps": Schedule(**values["steps"]),
               "device": DevicePlan(**{**device, "notes": tuple(device["notes"])}), "work": RunWork(**values["work"])}
        )


_answers: dict[tuple, ModelSide] = {}  # (snapshot sha256, base, options, home, timings) -> the child's answer


def measure(
    home: DataHome, snapshot: Path | None, snapshot_sha256: str, base_spec: str, argv: Sequence[str],
    pairs: Path | None = None,
) -> ModelSide:
    """The model side of a preview of ``argv`` on ``snapshot`` (conversations; None: there are none) and ``pairs``
    (preference pairs, when there are any), from a child process (or memory); ``snapshot_sha256`` names the contents
    of both. TrainingError for what the user can fix (a base model that cannot be found, nothing that fits)."""
    timings = home.runs / TIMINGS_FILE
    key = (snapshot_sha256, base_spec, tuple(argv), str(home.root),
           timings.stat().st_mtime_ns if timings.exists() else None)
    if key in _answers:
        return _answers[key]
    if "torch" in sys.modules:  # this process paid for torch already (a script, the tests): no second interpreter
        _answers[key] = compute(home, snapshot, base_spec, argv, pairs)
        return _answers[key]
    request = {"home": str(home.root), "snapshot": str(snapshot) if snapshot else None, "base": base_spec,
               "argv": list(argv), "pairs": str(pairs) if pairs else None}
    result = subprocess.run(
        [sys.executable, "-m", "tui_chat.training.model_side"], input=json.dumps(request), capture_output=True,
        text=True, timeout=CHILD_TIMEOUT_S, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    answer = next((line[len(ANSWER_PREFIX):] for line in reversed(result.stdout.splitlines())
                   if line.startswith(ANSWER_PREFIX)), None)
    if answer is None:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"working out the preview failed (exit {result.returncode}): {last}")
    values = json.loads(answer)
    if "error" in values:
        raise TrainingError(values["error"])
    side = ModelSide.from_json(answer)
    _answers[key] = side
    return side


def compute(
    home: DataHome, snapshot: Path | None, base_spec: str, argv: Sequence[str], pairs: Path | None = None
) -> ModelSide:
    """The model side itself (in the child: this imports torch)."""
    import torch

    from trainer.data import read_jsonl, split_conversations
    from trainer.devices import pick_device
    from trainer.models import ModelError, resolve_spec

    from tui_chat.training.options import parse_train_options
    from tui_chat.training.workload import base_tokenizer, count_pair_tokens, count_tokens, run_work, schedule

    config = parse_train_options(argv).config
    try:
        resolved = resolve_spec(base_spec, home.models)
    except ModelError as exc:
        raise TrainingError(f"--base: {exc}") from None
    conversations = read_jsonl(snapshot).conversations if snapshot else []
    # With pairs the run is trainer/dpo.py's: it holds out pairs to measure, and learns every conversation.
    train, val = (conversations, []) if pairs else split_conversations(conversations, config.val_fraction)
    tokenizer = base_tokenizer(resolved.location, resolved.kind)
    counts = count_tokens(tokenizer, train, val, config.max_length)
    paired = count_pair_tokens(tokenizer, pairs, config) if pairs else None
    if counts.train_kept < 1 and not (paired and paired.train):
        what = "conversation or preference pair" if pairs else "conversation"
        raise TrainingError(
            f"nothing to train on: no {what} fits in --max-length {config.max_length} tokens; raise --max-length"
        )
    steps = schedule(config, len(train), counts.train_kept, paired.train if paired else 0)
    parameters = count_parameters(Path(resolved.location)) if resolved.kind != "hub" else None
    available = pick_device().type
    device = plan_device(
        available, config.method, parameters, cpu_count=os.cpu_count() or 1, threads=config.threads,
        gpu_memory=torch.cuda.mem_get_info() if available == "cuda" else None, load=os.getloadavg()[0],
    )
    method = config.method or ("full" if device.device == "cuda" else "lora")
    timings = read_timings(home.runs / TIMINGS_FILE)
    work = run_work(home, resolved, config, method, device.device, train, val, counts.tokens, steps,
                    replay_tokens_of(timings, resolved.name), paired)
    return ModelSide(
        base_name=resolved.name, base_location=resolved.location, base_kind=resolved.kind, train=len(train),
        val=len(val), messages=sum(len(c.messages) for c in conversations), counts=counts, steps=steps,
        parameters=parameters, device=device, method=method, work=work,
        example=marked_example(tokenizer, train, config.max_length),
        train_pairs=paired.train if paired else 0, val_pairs=paired.val if paired else 0,
    )


LEARNED = ("«", "»")  # around the text that carries loss; not Rich markup, so the window shows them as they are


def marked_example(tokenizer: Any | None, conversations: Sequence[Any], max_length: int) -> str | None:
    """The shortest training conversation rendered with the base model's chat template exactly as the trainer
    renders it (trainer.render), the tokens that carry loss between «»: what the model is taught, in its own
    template. None without the tokenizer."""
    from trainer.render import render_conversation

    if tokenizer is None or not conversations:
        return None
    shortest = min(conversations, key=lambda c: sum(len(m["content"]) for m in c.messages))
    example = render_conversation(tokenizer, shortest.as_messages(), max_length)
    if example is None:
        return None
    pieces, run, learned = [], [], example.assistant_mask[0]
    for token, mask in zip(example.input_ids, example.assistant_mask):
        if mask != learned:
            pieces.append(_marked(tokenizer.decode(run), learned))
            run, learned = [], mask
        run.append(token)
    pieces.append(_marked(tokenizer.decode(run), learned))
    return "".join(pieces)


def _marked(text: str, learned: bool) -> str:
    return f"{LEARNED[0]}{text}{LEARNED[1]}" if learned else text


def main() -> None:
    request = json.loads(sys.stdin.read())
    try:
        side = compute(DataHome(Path(request["home"])), request["snapshot"] and Path(request["snapshot"]),
                       request["base"], request["argv"], request["pairs"] and Path(request["pairs"]))
        answer: dict[str, Any] | str = side.to_json()
    except TrainingError as exc:
        answer = json.dumps({"error": str(exc)})
    print(ANSWER_PREFIX + (answer if isinstance(answer, str) else json.dumps(answer)), flush=True)


if __name__ == "__main__":
    main()
