"""Teach a preference: DPO with default settings on 20 pairs whose chosen reply opens with "Short answer:" and whose
rejected reply is the same reply without it; then how often the bundled model opens its greedy replies to prompts it
never saw that way, before and after, the retention check, and the training time, for each seed.

The trait is at the start of the reply on purpose: the base model rambles, and a trait at the end (a sign-off line)
cannot show in a reply cut off at the token limit, so a rate measured there says more about length than preference.

`python -m bench teach_preference` (seeds 0 1 2; TEACH_PREFERENCE_SEEDS="0 1" to choose; other settings than the
defaults as TEACH_PREFERENCE_SETTINGS='{"replay": 16, "beta": 0.2}', DPOConfig's fields). Uses the data home
(TUI_CHAT_HOME or the user's), so the base model's retention answers are generated once and cached there.
tests/test_teach_preference.py runs a shorter version (one seed, no retention) in the slow suite.

`python -m bench teach_preference objectives` compares `/train`'s combined objective (one `dpo --sft-data` run: the
chosen replies as conversations by cross-entropy, the pairs by DPO) with SFT on those conversations and then DPO on
the pairs from the SFT model (seed: the first of TEACH_PREFERENCE_SEEDS). Retention of both is against the original
base model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

OPENER = "Short answer:"
# (prompt, a short plain reply): chosen = the opener, then the reply; rejected = the reply alone.
TRAIN = [
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ("What is 7 times 6?", "7 times 6 is 42."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("How do I make a cup of tea?", "Boil water, pour it over a tea bag, wait three minutes, then remove the bag."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What do bees make?", "Bees make honey and wax."),
    ("Give me a synonym for happy.", "A synonym for happy is joyful."),
    ("What is the largest ocean?", "The Pacific Ocean is the largest ocean."),
    ("How can I fall asleep faster?", "Keep a regular bedtime, avoid screens before bed and keep the room dark."),
    ("What language is spoken in Brazil?", "Portuguese is the main language of Brazil."),
    ("Why do leaves change color in autumn?", "Trees stop making chlorophyll, so the yellow and red pigments show."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("Suggest a name for a cat.", "You could call your cat Luna."),
    ("How many continents are there?", "There are seven continents."),
    ("What is photosynthesis?", "Photosynthesis is how plants turn light, water and carbon dioxide into sugar."),
    ("What should I pack for a beach day?", "Pack sunscreen, a towel, water and a hat."),
]
# Held out from training: the run's validation pairs (preference accuracy before / after).
VAL = [
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What animal says moo?", "A cow says moo."),
    ("How do I boil an egg?", "Put the egg in boiling water for about eight minutes."),
]
# Never trained or validated on: the trait rate is measured on the model's greedy replies to these.
UNSEEN = [
    "What is the tallest mountain in the world?",
    "How many minutes are in an hour?",
    "What do cows drink?",
    "Name a vegetable that is green.",
    "What is the main ingredient of bread?",
    "How do I clean a window?",
    "Which animal is known as the king of the jungle?",
    "What is the square root of 81?",
    "What is the color of grass?",
    "Give me a tip for studying.",
]
MAX_NEW_TOKENS = 24  # the opener shows in the first tokens; the rest of the reply is not looked at


def pair_records() -> list[dict[str, Any]]:
    return [
        {"prompt": [{"role": "user", "content": q}], "chosen": f"{OPENER} {a}", "rejected": a, "split": split}
        for split, items in (("train", TRAIN), ("val", VAL)) for q, a in items
    ]


def has_trait(reply: str) -> bool:
    return reply.lstrip().lower().startswith(OPENER.lower())


def trait_rate(model_spec: str, models_dir: Path, prompts: Sequence[str] = UNSEEN) -> tuple[float, list[str]]:
    """(share of greedy replies to ``prompts`` that open with the opener, the replies)."""
    from trainer.devices import bf16_is_fast
    from trainer.evaluate import generate_replies
    from trainer.models import load_model

    loaded = load_model(model_spec, models_dir=models_dir, device="cpu", dtype="bfloat16")
    replies = generate_replies(loaded.model, loaded.tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                               device=loaded.device, bf16=bf16_is_fast(loaded.device), max_new_tokens=MAX_NEW_TOKENS)
    return sum(map(has_trait, replies)) / len(replies), replies


def home_with_bundled() -> Path:
    """The data home (TUI_CHAT_HOME or the user's), with the bundled model converted."""
    from trainer.home import DataHome
    from trainer.models import ensure_bundled

    home = DataHome.locate().ensure()
    ensure_bundled(home.models)
    return home.root


def teach(home: Path, seed: int, out: Path, prompts: Sequence[str] = UNSEEN, **settings: Any) -> dict[str, Any]:
    """One DPO run on the pairs (default settings but ``settings``); its metrics and the trait rate after, on
    ``prompts``."""
    from trainer.dpo import run_dpo
    from trainer.dpo_config import DPOConfig
    from trainer.progress import ProgressReporter

    data = out.parent / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pair_records()), encoding="utf-8")
    config = DPOConfig(data=str(data), home=str(home), out=str(out), seed=seed, progress="none", **settings)
    run_dir = run_dpo(config, ProgressReporter("none"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rate, replies = trait_rate(str(run_dir), home / "models", prompts)
    return {"metrics": metrics, "after": rate, "replies": replies}


def chosen_conversations(path: Path) -> Path:
    """The training pairs' prompts and chosen replies as `messages` JSONL: what an SFT side learns."""
    path.write_text("".join(
        json.dumps({"messages": [*r["prompt"], {"role": "assistant", "content": r["chosen"]}]}) + "\n"
        for r in pair_records() if r["split"] == "train"), encoding="utf-8")
    return path


def retention_against_base(home: Path, model_spec: str) -> Any:
    """The retention check of ``model_spec`` against the bundled base model (its answers cached in ``home``)."""
    from trainer.base_answers import CACHE_DIR, AnswerCache, model_identity
    from trainer.models import load_model
    from trainer.retention import evaluate_retention, measure_baseline

    base = load_model("default", models_dir=home / "models", device="cpu", dtype="bfloat16")
    cache = AnswerCache.of(base.model, base.tokenizer, home / CACHE_DIR, model_identity(base.source, "bfloat16"))
    baseline = measure_baseline(base.model, base.tokenizer, cache, bf16=True)
    trained = load_model(model_spec, models_dir=home / "models", device="cpu", dtype="bfloat16")
    return evaluate_retention(trained.model, trained.tokenizer, baseline, bf16=True)


def compare_objectives(seed: int) -> None:
    from trainer.config import SFTConfig
    from trainer.progress import ProgressReporter
    from trainer.sft import run_sft

    home = home_with_bundled()
    with tempfile.TemporaryDirectory(prefix="teach-preference-objectives-") as folder:
        root = Path(folder)
        chats = chosen_conversations(root / "chats.jsonl")
        (root / "combined").mkdir()
        started = time.perf_counter()
        combined = teach(home, seed, root / "combined" / "run", sft_data=[str(chats)])
        combined_s = time.perf_counter() - started
        m = combined["metrics"]
        print(f"seed {seed} combined (dpo --sft-data): opener {combined['after']:.0%}; retention "
              f"{m['retention']['retention']:.0%} ({m['retention']['facts_kept']}/{m['retention']['facts_total']}); "
              f"train {m['train_time_s']:.0f} s ({m['steps']} steps); whole {combined_s:.0f} s; load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        started = time.perf_counter()
        sft_dir = run_sft(SFTConfig(data=str(chats), home=str(home), out=str(root / "sft"), seed=seed,
                                    progress="none", val_fraction=0.0), ProgressReporter("none"))
        sft = json.loads((sft_dir / "metrics.json").read_text())
        (root / "then").mkdir()
        then = teach(home, seed, root / "then" / "run", model=str(sft_dir))
        then_s = time.perf_counter() - started
        kept = retention_against_base(home, str(root / "then" / "run"))
        d = then["metrics"]
        print(f"seed {seed} SFT then DPO: opener {then['after']:.0%}; retention against the base "
              f"{kept.retention:.0%} ({kept.facts_kept}/{kept.facts_total}; SFT alone kept "
              f"{sft['retention']['facts_kept']}/{sft['retention']['facts_total']}); train "
              f"{sft['train_time_s'] + d['train_time_s']:.0f} s ({sft['steps']} + {d['steps']} steps); whole "
              f"{then_s:.0f} s; load {os.getloadavg()[0]:.1f}", flush=True)
        for reply in then["replies"][:2]:
            print(f"  after: {reply!r}")


def main(options: Sequence[str] | None = None) -> None:
    seeds = list(map(int, os.environ.get("TEACH_PREFERENCE_SEEDS", "0 1 2").split()))
    if options and list(options) == ["objectives"]:
        compare_objectives(seeds[0])
        return
    if options:
        raise SystemExit(f"unknown option {' '.join(options)}; the only one is: objectives")
    settings = json.loads(os.environ.get("TEACH_PREFERENCE_SETTINGS", "{}"))
    home = home_with_bundled()
    before, replies = trait_rate("default", home / "models")
    print(f"base model: opener in {before:.0%} of {len(UNSEEN)} greedy replies to unseen prompts "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    for reply in replies[:3]:
        print(f"  base: {reply!r}")
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="teach-preference-run-") as folder:
            started = time.perf_counter()
            result = teach(home, seed, Path(folder) / "run", **settings)
            m = result["metrics"]
            retention = m["retention"] or {}
            label = f"seed {seed}" + (f" {json.dumps(settings)}" if settings else "")
            print(f"{label}: opener {before:.0%} -> {result['after']:.0%}; held-out preference accuracy "
                  f"{m['before']['reward_accuracy']:.0%} -> {m['after']['reward_accuracy']:.0%} (margin "
                  f"{m['after']['reward_margin']:.2f}); retention {retention.get('retention', float('nan')):.0%} "
                  f"({retention.get('facts_kept')}/{retention.get('facts_total')} facts); train "
                  f"{m['train_time_s']:.0f} s ({m['steps']} steps, {m['epochs']:.0f} epochs, "
                  f"lr {m['schedule']['lr']:g}, beta {m['beta']:g}, {m['replay']['conversations']} replayed "
                  f"({m['replay']['loss']}, weight {m['replay']['weight']:g})); whole run {time.perf_counter() - started:.0f} s; load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            for reply in result["replies"][:2]:
                print(f"  after: {reply!r}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
