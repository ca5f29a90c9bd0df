"""Training speed of our SFT vs the seeds' recipe, side by side in one run: same model (the bundled one), same
variable-length chat data, same machine, same method (LoRA of the trainer's default rank on every linear layer, so
only the pipeline differs).

- ours: ``trainer.sft.run_sft`` with its defaults for the device (length-grouped dynamic padding, bf16 autocast
  where fast, the measured CPU thread count and attention kernel);
- the seeds' recipe: ``transformers.Trainer`` with default arguments, every example padded to ``MAX_LENGTH``,
  on as many CPU threads as ours (torch's default of one per core made it ~3x slower still on a busy machine, which
  would measure the machine's load rather than the pipeline).

tokens/s counts real (non-padding) tokens per second of training steps: the work a user wants done. With CUDA the
MFU of ours is printed too (bench/mfu.py). On a shared CPU the numbers move with other processes' load; both rows
are measured in the same minute.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import SFTConfig
from trainer.home import DataHome
from trainer.models import ensure_bundled, load_model
from trainer.progress import ProgressReporter
from trainer.sft import run_sft

from .mfu import mfu_line

CONVERSATIONS = 24
MAX_LENGTH = 320  # tokens; the seeds' recipe pads every example to this
SEEDS_STEPS = 2  # the padded recipe is slow on CPU: time a few of its steps (after one warm-up step)
BATCH = 4
LORA = {"lora_r": 4, "lora_alpha": 8}  # the trainer's defaults (trainer/config.py), for both rows

_WORDS = (
    "the model answers questions about history science cooking travel music code and everyday life with short "
    "clear sentences it explains why things happen gives examples and asks what the user wants to know next"
).split()


def chat_data(n: int, seed: int = 0) -> list[dict]:
    """Chat-like conversations: 1-4 exchanges, short questions, replies of 5-120 words (long-tailed, like chats)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        messages = []
        for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
            question = " ".join(rng.choices(_WORDS, k=rng.randint(4, 20))).capitalize() + "?"
            reply_words = min(120, int(rng.lognormvariate(3.2, 0.8)) + 5)
            reply = " ".join(rng.choices(_WORDS, k=reply_words)).capitalize() + "."
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        records.append({"messages": messages})
    return records


def ours(data: Path, home: DataHome, out: Path) -> dict:
    config = SFTConfig(
        data=str(data), home=str(home.root), out=str(out), val_fraction=0.0, no_eval=True, epochs=1,
        method="lora", max_length=MAX_LENGTH, micro_batch=BATCH, grad_accum=1, save_every=0, progress="none",
        **LORA,
    )
    run_dir = run_sft(config, ProgressReporter("none"))
    return json.loads((run_dir / "metrics.json").read_text())


def seeds_recipe(records: list[dict], home: DataHome, out: Path, threads: int) -> tuple[float, float, float]:
    """(real tokens/s, computed tokens/s, real tokens per CPU-second) of HF Trainer on examples padded to
    MAX_LENGTH, as the seeds trained."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    loaded = load_model("default", models_dir=home.models, dtype="float32")
    tokenizer = loaded.tokenizer
    examples = []
    for record in records:
        text = tokenizer.apply_chat_template(record["messages"], tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=MAX_LENGTH, padding="max_length")
        labels = [t if m else -100 for t, m in zip(enc["input_ids"], enc["attention_mask"])]
        examples.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})
    lora = LoraConfig(
        r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = get_peft_model(loaded.model, lora)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

            self.cpu: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.times[-1] = time.perf_counter() - self.times[-1]
            self.cpu[-1] = time.process_time() - self.cpu[-1]

    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=SEEDS_STEPS + 1, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, callbacks=[timer])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(previous)
    # Trainer shuffles; the timed steps saw a random BATCH examples each, so use the mean real length.
    mean_real = sum(sum(e["attention_mask"]) for e in examples) / len(examples)
    seconds = sum(timer.times[1:])  # the first step warms up kernels and allocators
    real = SEEDS_STEPS * BATCH * mean_real
    return real / seconds, SEEDS_STEPS * BATCH * MAX_LENGTH / seconds, real / sum(timer.cpu[1:])


def main() -> None:
    home = DataHome.locate().ensure()
    ensure_bundled(home.models, progress=lambda what, _: print(f"  {what}", flush=True))
    records = chat_data(CONVERSATIONS)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chats.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics = ours(data, home, Path(tmp) / "ours")
        threads = metrics["threads"] or 1
        seeds_real, seeds_padded, seeds_per_cpu = seeds_recipe(records, home, Path(tmp) / "seeds", threads)
    real_fraction = metrics["data"]["real_token_fraction"]
    ours_per_cpu = metrics["tokens_per_s"] * metrics["train_time_s"] / metrics["train_cpu_s"]
    print(f"data: {CONVERSATIONS} conversations, {metrics['data']['train_tokens']} tokens, max length {MAX_LENGTH}")
    print(
        f"ours:          {metrics['tokens_per_s']:7.1f} tokens/s, {ours_per_cpu:6.1f} per CPU-second  "
        f"({metrics['precision']}, "
        f"{real_fraction:.0%} of computed tokens real, {metrics['device']}, {metrics['threads']} threads)"
    )
    print(
        f"seeds' recipe: {seeds_real:7.1f} tokens/s, {seeds_per_cpu:6.1f} per CPU-second  (HF Trainer defaults, "
        f"padded to {MAX_LENGTH}: {seeds_padded:.1f} computed tokens/s)"
    )
    print(
        f"ratio: {metrics['tokens_per_s'] / seeds_real:.2f}x tokens/s, {ours_per_cpu / seeds_per_cpu:.2f}x per "
        "CPU-second (target >= 4x; per CPU-second is steadier when other processes share the cores)"
    )
    if metrics["device"].startswith("cuda"):
        print(mfu_line(torch.device(metrics["device"]), metrics["parameters"], metrics["tokens_per_s"]))
