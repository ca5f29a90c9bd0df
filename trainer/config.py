"""The SFT settings: one dataclass, whose field ``help`` texts are also the command-line help.

``None`` means "chosen for this device / method", see ``SFTConfig.resolved``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only named in annotations: the chat's /train planning reads these settings without torch
    import torch

from .progress import MODES
from .schedule import auto_epochs, auto_lr, auto_replay_weight

# Distilled replay trains on each answer's first sentence only. Why: the loss is a mean over tokens, so a replayed
# poem (~90 tokens) weighed ten times "The capital of Egypt is Cairo." (~9) while the general answers a run loses are
# short facts, and a fact sits in an answer's first sentence. Cut there, every replayed prompt counts about the same,
# and a replayed conversation is ~60% of the tokens it was (61 vs 105, its question and the system prompt
# included: 60 chatterbot conversations). Distillation matches the base model's distribution at every kept position,
# so the cut teaches no early stop (the base model's distribution where the cut falls says "go on"); cross-entropy
# replay (a full fine-tune, ``--replay-loss ce``) would learn the end of turn there, so it keeps whole answers.
# Measured on teach-a-fact (tests/test_teach_fact.py, new data homes, 54 replayed at weight 2, training seeds 0-6;
# README "Replay and retention"): cut, 26, 25, 25, 25, 25, 25, 23 of 26 general facts kept and 12, 12, 12, 12, 9, 12,
# 10 of 12 taught facts recalled; whole (seeds 0-3), 26, 25, 24, 21 kept and 11, 10, 10, 11 recalled. On 60 real
# conversations (schedule.py) cut answers kept 26 of 26 at the weight where whole ones kept 24-25, and so could be
# weighed less for more of the gain.
DISTILLED_REPLAY_SENTENCES = 1


def replay_sentences_for(replay_loss: str) -> int:
    """The sentences a replayed answer keeps when the user did not say (0: whole): first sentences when distilled."""
    return DISTILLED_REPLAY_SENTENCES if replay_loss == "kl" else 0

# Fields that do not change what is learned: they may differ between a run and its --resume.
OPERATIONAL_FIELDS = frozenset(
    {"out", "home", "resume", "progress", "threads", "save_every", "eval_samples", "max_new_tokens", "no_eval"}
)

_OPTION_TYPES = {"str": str, "int": int, "float": float}


@dataclass
class SFTConfig:
    data: str = field(metadata={"help": "training conversations: `messages` JSONL (a `split` field is honoured)"})
    model: str = field(default="default", metadata={"help": "base model spec: default, a run name, a path, a Hub id"})
    out: str | None = field(
        default=None, metadata={"help": "run directory (default: the data home's models/<model>-sft-<time>)"}
    )
    home: str | None = field(default=None, metadata={"help": "data home (default: TUI_CHAT_HOME or the user dir)"})
    val: str | None = field(
        default=None, metadata={"help": "validation JSONL (default: the file's split, else a hash split)"}
    )
    val_fraction: float = field(
        default=0.1, metadata={"help": "share of unlabelled conversations held out for validation"}
    )
    extra_data: list[str] = field(
        default_factory=list,
        metadata={"help": "more JSONL mixed into training only (repeatable)"},
    )
    replay: int | None = field(
        default=None,
        metadata={
            "help": "general prompts answered by the base model, mixed in so it keeps what it knew "
            "(default: three per training conversation below ~50 conversations, else two; 16-128)"
        },
    )
    no_replay: bool = field(default=False, metadata={"help": "train on your data alone, without replay"})
    replay_loss: str | None = field(
        default=None,
        metadata={
            "help": "how replayed answers are learned: kl (match the base model's next-token distribution; LoRA only) "
            "or ce (its greedy text) (default: kl with LoRA, ce for a full fine-tune)"
        },
    )
    replay_weight: float | None = field(
        default=None,
        metadata={"help": "what a replayed token's distillation loss (kl) weighs against one of your tokens' loss "
                  "(default: 2, and 4 from ~50 conversations, printed)"},
    )
    replay_sentences: int | None = field(
        default=None,
        metadata={"help": "replayed answers are cut after this many sentences; 0 keeps them whole "
                  "(default: 1 when distilled (kl), whole with ce)"},
    )
    skip_invalid: bool = field(default=False, metadata={"help": "drop and count invalid lines instead of stopping"})
    max_length: int = field(default=1024, metadata={"help": "tokens per conversation; longer ones are cut at a turn"})
    method: str | None = field(default=None, metadata={"help": "lora or full (default: lora on CPU, full on GPU)"})
    # Rank 4: a low-rank update learns a handful of facts as well as rank 16 and disturbs less of what the model
    # knew. Teach-a-fact (bundled model, 8 epochs, targeted replay; retention = 26 general facts it answered right
    # before; recall = 12 probes): r16 lr 1e-3 kept 20-21 and recalled 11-12, r8 lr 1e-3 kept 22 (12), r4 lr 2e-3
    # kept 22-23 (12), r2 lr 4e-3 kept 23 (12), r4 lr 1e-3 kept 23 but recalled only 7. See schedule.py for the lr.
    lora_r: int = field(default=4, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    # 0 like peft's default: on CPU drawing the dropout masks is a sizeable share of a small model's LoRA step.
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_targets: str = field(
        default="all-linear", metadata={"help": "LoRA target modules: all-linear or a comma list (q_proj,v_proj)"}
    )
    # By size (schedule.py), since issue 17: one pass from ~50 conversations, with replay up to 128 (replay.py).
    # 60 real conversations, seed 0: 20 of 26 general facts kept -> 23 (validation perplexity 38.2 -> 11.0 before,
    # 15.0 now; a run without replay: 20.3); seed 1: 24 of 26 at 73% of the no-replay gain. Up to ~20 conversations
    # (teach-a-fact) nothing changed: 8 epochs at 2e-3, two replayed per conversation.
    epochs: float | None = field(
        default=None, metadata={"help": "passes over the training data (default: 8 up to ~20 conversations, 1 from "
                                "~50, printed)"}
    )
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides --epochs)"})
    no_early_stop: bool = field(
        default=False,
        metadata={
            "help": "train every epoch and keep the last weights (default: stop once the validation loss is clearly "
            "(3%%) above its best and keep the best epoch's weights)"
        },
    )
    adapter_scale: float = field(
        default=1.0,
        metadata={
            "help": "share of the LoRA update kept, 0-1: the model between the base (0) and the tuned one (1)"
        },
    )
    # Not the default (README "Replay and retention"): on 60 real conversations it scaled seed 0 back to 0.55 (general
    # facts kept 23 -> 25 of 26, 120% of the no-replay gain), kept seed 1 whole (24), but scaled seed 2 to 0.4 (24 ->
    # 25 kept, the gain 89% -> 38%): the check's losses and retention's disagree.
    choose_adapter_scale: bool = field(
        default=False,
        metadata={
            "help": "after training, keep the largest share of the LoRA update (1, 0.85, 0.7, 0.55, 0.4) that still "
            "gives all but one of the base model's right short answers to ~60 general questions (a check apart from "
            "retention's; printed)"
        },
    )
    lr: float | None = field(
        default=None, metadata={"help": "peak learning rate (default: by method and dataset size, printed)"}
    )
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule: cosine, linear or constant"})
    warmup: float = field(default=0.05, metadata={"help": "warmup: a fraction of the steps (<1) or a step count"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    micro_batch: int = field(default=4, metadata={"help": "conversations per forward pass"})
    grad_accum: int = field(default=2, metadata={"help": "micro-batches per optimizer step"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations: less memory, ~30%% slower"}
    )
    precision: str = field(
        default="auto", metadata={"help": "bf16 (autocast over fp32 weights), fp32, or auto (bf16 where fast)"}
    )
    threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads (default: every core while the machine is otherwise idle, one fewer while another "
            "process keeps a core busy; re-decided every step)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for the split order, batches, LoRA init and dropout"})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N optimizer steps (0: only on a signal)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its last checkpoint"})
    keep_adapter: bool = field(
        default=False, metadata={"help": "save the LoRA adapter (loads on top of the base) instead of merging it"}
    )
    eval_samples: int = field(default=8, metadata={"help": "validation prompts answered for BLEU / ROUGE-L / samples"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per evaluation reply"})
    no_eval: bool = field(default=False, metadata={"help": "skip the before/after evaluation"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow a Hub model's own code to run"})
    progress: str = field(default="bar", metadata={"help": "bar (for people), json (one object a line) or none"})

    def resolved(self, device: torch.device, n_conversations: int = 1) -> "SFTConfig":
        """A copy with every automatic choice made for ``device`` and ``n_conversations`` training conversations
        (the user's, replay not counted: see schedule.py)."""
        method = self.method or ("full" if device.type == "cuda" else "lora")
        # A full fine-tune has no base model left to ask (LoRA's is the model with its adapter off).
        replay_loss = self.replay_loss or ("kl" if method == "lora" else "ce")
        return dataclasses.replace(
            self,
            method=method,
            replay_loss=replay_loss,
            lr=self.lr if self.lr is not None else auto_lr(method, n_conversations),
            epochs=self.epochs if self.epochs is not None else auto_epochs(n_conversations),
            replay_weight=self.replay_weight if self.replay_weight is not None else auto_replay_weight(n_conversations),
            replay_sentences=self.replay_sentences if self.replay_sentences is not None else (
                replay_sentences_for(replay_loss)),
        )

    def describe(self, replay_count: int) -> str:
        """The resolved settings that decide what is learned, in one line (printed when training starts)."""
        method = f"LoRA rank {self.lora_r} on {self.lora_targets}" if self.method == "lora" else "full fine-tune"
        epochs = f"{self.epochs:g} epochs" if self.max_steps is None else f"{self.max_steps} steps"
        stop = "every epoch kept" if self.no_early_stop else "stopping once the validation loss is clearly worse"
        weight = f", weight {self.replay_weight:g}" if self.replay_loss == "kl" else ""
        cut = {None: "", 0: ", whole answers", 1: ", first sentences"}.get(
            self.replay_sentences, f", first {self.replay_sentences} sentences")
        replay = f"{replay_count} replayed ({self.replay_loss}{weight}{cut})" if replay_count else "no replay"
        scale = ("the share of the update kept chosen by a general-knowledge check" if self.choose_adapter_scale
                 else f"{self.adapter_scale:g} of the update kept")
        return f"{method}, lr {self.lr:g}, up to {epochs} ({stop}), {replay}" + (
            f", {scale}" if self.method == "lora" else "")

    def bf16(self, device: torch.device) -> bool:
        """Whether training autocasts to bf16 on ``device`` (--precision; auto: where it is fast)."""
        from .devices import bf16_is_fast

        return self.precision == "bf16" or (self.precision == "auto" and bf16_is_fast(device))

    def base_dtype(self, bf16: bool) -> str:
        """The dtype the base model loads in. Trained weights stay fp32 (bf16 is autocast only); LoRA's frozen base
        is bf16 when autocasting anyway: no per-step casts of the weights, ~12% faster on CPU (measured)."""
        return "bfloat16" if bf16 and self.method == "lora" else "float32"

    def learning_fields(self) -> dict[str, Any]:
        """The settings that decide what is learned (compared on --resume)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in OPERATIONAL_FIELDS}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.learning_fields(), sort_keys=True).encode()).hexdigest()


def add_config_options(
    parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset(), config_class: type = SFTConfig
) -> None:
    """One option per field of ``config_class`` (SFTConfig or a subclass, e.g. dpo.py's) but those named in
    ``skip``, its help from the field's metadata.

    `python -m trainer sft` takes them all; the chat's `/train` skips the ones it sets itself (data, out, ...).
    """
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        help_text = f.metadata["help"]
        if kind == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif kind == "list[str]":
            parser.add_argument(flag, action="append", default=[], metavar="PATH", help=help_text)
        elif f.default is dataclasses.MISSING:
            parser.add_argument(flag, type=_OPTION_TYPES[kind], required=True, help=help_text)
        else:
            choices = MODES if f.name == "progress" else None
            parser.add_argument(flag, type=_OPTION_TYPES[kind], default=f.default, choices=choices, help=help_text)


def validate(config: SFTConfig) -> None:
    """Raise ValueError (one line) for settings that cannot work."""
    if config.method not in (None, "lora", "full"):
        raise ValueError(f"unknown --method {config.method!r}; use lora or full")
    if config.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown --schedule {config.schedule!r}; use cosine, linear or constant")
    if config.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown --precision {config.precision!r}; use auto, bf16 or fp32")
    if config.micro_batch < 1 or config.grad_accum < 1:
        raise ValueError("--micro-batch and --grad-accum must be at least 1")
    if config.replay_loss not in (None, "kl", "ce"):
        raise ValueError(f"unknown --replay-loss {config.replay_loss!r}; use kl or ce")
    if config.replay_loss == "kl" and config.method == "full":
        raise ValueError("--replay-loss kl needs --method lora (a full fine-tune has no base model to match); use ce")
    if config.replay is not None and config.replay < 0:
        raise ValueError("--replay must be 0 or more")
    if config.replay_sentences is not None and config.replay_sentences < 0:
        raise ValueError("--replay-sentences must be 0 (whole answers) or more")
    if config.replay_weight is not None and not config.replay_weight > 0:
        raise ValueError("--replay-weight must be positive (--no-replay turns replay off)")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError("--max-steps must be at least 1")
    if config.epochs is not None and config.epochs <= 0:
        raise ValueError("--epochs must be positive")
    if not 0 <= config.adapter_scale <= 1:
        raise ValueError("--adapter-scale must be between 0 and 1")
    if (config.adapter_scale != 1 or config.choose_adapter_scale) and config.method == "full":
        raise ValueError("--adapter-scale and --choose-adapter-scale need --method lora (they scale the adapter); "
                         "leave them out for full")
    if config.adapter_scale != 1 and config.choose_adapter_scale:
        raise ValueError("--adapter-scale fixes the share and --choose-adapter-scale measures it: give one of them")
    if config.max_length < 16:
        raise ValueError("--max-length must be at least 16 tokens")
    if config.resume and not config.out:
        raise ValueError("--resume needs --out: the run directory to continue")
