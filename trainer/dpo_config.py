"""The DPO settings: SFT's (config.py) with preference pairs as the data and DPO's ``beta``. Torch-free, like
config.py, so the chat's `/train` can read them.

Replay is SFT's (replay.py, distill.py): general conversations answered by the base model, mixed into training and
learned by distillation from it (LoRA) or by cross-entropy, with the same ``--replay``, ``--no-replay`` and
``--replay-loss`` options. DPO's reference term holds the model to the base model only on the pairs' own replies;
the replay holds it on everything else. ``--replay-weight`` is what a micro-batch of replay weighs in a step
against one of pairs (measured in bench/teach_preference.py; the numbers are beside default_dpo_replay).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import SFTConfig
from .schedule import preference_epochs

if TYPE_CHECKING:
    import torch

# Peak learning rate (AdamW, cosine) and beta, LoRA, measured together on the teach-a-preference bench
# (bench/teach_preference.py: 20 pairs, 8 epochs, rank 4, no replay; chosen = the reply opened by "Short answer:";
# trait = unseen prompts whose greedy reply opens that way; retention = 26 general facts the base model answered).
# lr 7e-4 with beta 0.05 taught the opener in 10 of 10 replies on seeds 0-4 and kept 25, 25, 25, 24, 25 of 26 facts
# (92-96%), 21-24 s of training (quiet machine). On seed 2, the seed that forgot most: lr 1e-3 with beta 0.1 (the
# defaults before) kept 21-22 (81-85%; 24 and 24 on seeds 0 and 1); beta 0.2 kept 18 and 0.3 kept 14 (a larger beta
# makes every step larger at the same lr); beta 0.05 at 1e-3 kept 22, 0.02 kept 22; at beta 0.05, lr 6e-4 kept 24
# and 8.5e-4 kept 22; lr 5e-4 at beta 0.1 drove the rejected replies down without raising the chosen ones (DPO's
# known failure): replies turned to rambling, 11 of 26 kept, the opener in 1 of 10. An earlier trait (a sign-off line
# after the reply): 2e-4 kept 25 of 26 but taught nothing, 2e-3 (SFT's rate) taught it and kept 18 of 26.
# Full fine-tuning: not measured here.
DPO_LEARNING_RATES = {"lora": 7e-4, "full": 1e-5}
# beta: how far the policy may move from the reference. The paper's and TRL's default is 0.1; 0.05 with the rate
# above kept more general knowledge on every seed measured (see above).
DEFAULT_BETA = 0.05
# The combined objective (`--sft-data`, what `/train` runs when there are conversations too) keeps lr 1e-3 and beta
# 0.1: there (seed 0, the same pairs with the bench's conversations, SFT's replay) they taught the opener in 9 of 10
# replies and kept 25 of 26 facts, while 7e-4 with beta 0.05 taught it in 0 of 10 (kept 24): the cross-entropy on the
# conversations and the replay pull against the pairs, and the lower pair the weaker.
COMBINED_LEARNING_RATES = {"lora": 1e-3, "full": 1e-5}
COMBINED_BETA = 0.1


def default_beta(combined: bool) -> float:
    """DPO's beta when none is given: ``combined``, for a run that also learns conversations (--sft-data)."""
    return COMBINED_BETA if combined else DEFAULT_BETA
# Replay of a preference run (bench/teach_preference.py, 20 pairs and no conversations; retention = 26 general facts;
# the README has every run): by default only for the conversations a run learns by cross-entropy (--sft-data: what
# `/train` adds), as much as SFT replays for them. On pairs alone it worked against the trait taught (the replies'
# opening words: distillation holds the first tokens of every replayed answer to the base model's): what decided was
# the replay's total weight, conversations x --replay-weight. Without replay the opener was taught in 10 of 10
# replies on seeds 0, 1, 2, keeping 24, 24, 22 of 26 facts; SFT's count (40) at full weight kept 24 (seed 0) and
# taught 3 of 10; 16 at full weight kept 25 and taught 1 of 10 (seed 2, as all below); 8 kept 23 and taught 7; 16 at
# 0.5 kept 24 and taught 3; 32 at 0.25 kept 25 and taught 3; 16 at 0.25 kept 21 and taught 10; 24 at 0.25 kept 23 on
# each of seeds 0, 1, 2 and taught 3, 6, 3. No setting tried kept 90% on every seed and taught the trait.


def default_dpo_replay(n_conversations: int) -> int:
    """Replay conversations for a preference run that learns ``n_conversations`` by cross-entropy besides its pairs:
    what SFT would replay for them, none on pairs alone (see above)."""
    from .replay import default_replay_count  # replay.py imports torch; this module must not (the chat reads it)

    return default_replay_count(n_conversations) if n_conversations else 0


# SFT options a DPO run does not act on: it keeps every epoch (DPO's held-out loss is not SFT's validation loss, and
# a falling DPO loss can still be a model drifting away), and it saves the whole LoRA update.
NOT_FOR_DPO = frozenset({"no_early_stop", "adapter_scale", "choose_adapter_scale"})


@dataclass
class DPOConfig(SFTConfig):
    data: str = field(metadata={
        "help": 'preference pairs: JSONL of {"prompt": [messages], "chosen": str, "rejected": str} '
        "(`tui-chat export --format preference`; a `split` field is honoured)"
    })
    out: str | None = field(
        default=None, metadata={"help": "run directory (default: the data home's models/<model>-dpo-<time>)"}
    )
    extra_data: list[str] = field(
        default_factory=list, metadata={"help": "more preference JSONL mixed into training only (repeatable)"}
    )
    micro_batch: int = field(default=4, metadata={"help": "pairs per forward pass (each is two rows)"})
    max_length: int = field(
        default=1024, metadata={"help": "tokens per prompt + reply; a pair with a longer side is dropped"}
    )
    sft_data: list[str] = field(
        default_factory=list,
        metadata={"help": "conversations (`messages` JSONL) learned by cross-entropy in the same run: the combined "
                  "objective `/train` uses when there are pairs (repeatable)"},
    )
    replay: int | None = field(
        default=None,
        metadata={"help": "general prompts answered by the base model, mixed in so it keeps what it knew "
                  "(default: as SFT's for the --sft-data conversations; none on pairs alone)"},
    )
    replay_weight: float = field(
        default=1.0,
        metadata={"help": "what a micro-batch of replay weighs in a step against one of pairs or conversations"},
    )
    beta: float | None = field(
        default=None,
        metadata={"help": f"DPO beta: how strongly each pair pulls (default {DEFAULT_BETA}, {COMBINED_BETA} with "
                  "--sft-data: measured, see trainer/dpo_config.py)"},
    )

    def resolved(self, device: "torch.device", n_conversations: int = 1) -> "DPOConfig":
        """SFT's automatic choices (method, replay loss), with DPO's learning rates and passes; ``n_conversations``:
        training pairs and conversations."""
        resolved = super().resolved(device, n_conversations)
        combined = bool(self.sft_data)
        rates = COMBINED_LEARNING_RATES if combined else DPO_LEARNING_RATES
        return dataclasses.replace(resolved, lr=self.lr if self.lr is not None else rates[resolved.method],
                                   epochs=self.epochs if self.epochs is not None else preference_epochs(n_conversations),
                                   beta=self.beta if self.beta is not None else default_beta(combined))


def validate_dpo(config: DPOConfig) -> None:
    """Raise ValueError (one line) for DPO settings that cannot work (SFT's own are checked by config.validate)."""
    if config.beta is not None and not config.beta > 0:
        raise ValueError("--beta must be positive (0.1 is the usual value)")
    if not config.replay_weight > 0:
        raise ValueError("--replay-weight must be positive (--no-replay turns replay off)")
