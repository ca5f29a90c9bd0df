"""Small `/train` runs end to end: how long a default run on a few short conversations takes, phase by phase, the
first time (nothing of the base model cached) and after, and how close `/train`'s time estimate came.

Each run goes the way `/train` starts it: the preview (``plan_training``, which makes the estimate) on a store
holding N short conversations, then the trainer's own command line (``python -m trainer sft ... --progress json``,
without the chat's lower priority), timed from launch to exit. In order, in one fresh data home that shares the
bundled model: 1 conversation with nothing cached, 1 again, 5 with the cache emptied, 5 again, 20. The estimate
of the first run comes from the reference run in tui_chat/training/estimate.py (measured by this benchmark), the
others from the runs before them. On a shared machine the numbers move with other processes' load: the load average is printed with each row.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sessions import Store, memory_database
from trainer.base_answers import CACHE_DIR
from trainer.home import DataHome
from trainer.models import BUNDLED_DIR, ensure_bundled
from tui_chat.training.launch import trainer_command
from tui_chat.training.plan import SNAPSHOT_FILE, plan_training

# Short conversations teaching made-up facts, as a user's first chats to train on might be.
PLACES = ["Veloria", "Marrenth", "Quillon", "Ostrava Minor", "Tessaly", "Brunmark", "Caldria", "Ervenholt",
          "Pellucid", "Saranth"]
CITIES = ["Quenthal", "Lodrun", "Vispera", "Harrowgate", "Milcote", "Dunmere", "Ashvale", "Korrin", "Belstrom",
          "Tavish"]
RUNS = [(1, True), (1, False), (5, True), (5, False), (20, False)]  # (conversations, empty the cache first)
PHASES = ("load", "replay", "baseline", "distill", "eval_before", "train", "eval_after", "retention", "save")


def conversations(n: int) -> list[tuple[str, str]]:
    pairs = []
    for place, city in zip(PLACES, CITIES):
        pairs.append((f"What is the capital of {place}?", f"The capital of {place} is {city}."))
        pairs.append((f"Which city is the capital of {place}?", f"{city} is the capital city of {place}."))
    return pairs[:n]


def store_with(n: int) -> Store:
    store = Store(memory_database())
    for question, answer in conversations(n):
        conversation = store.create_conversation(question, model="default")
        store.add_message(conversation.id, "user", question)
        store.add_message(conversation.id, "assistant", answer, model="default", status="complete")
    return store


def run(home: DataHome, n: int, label: str) -> dict:
    """Preview and train as `/train` does; the estimate, the wall time and the run's phases."""
    store = store_with(n)
    plan = plan_training(store, home, [], current_model="default")
    estimate = plan.estimate.seconds if plan.estimate else None
    out = home.models / label
    command = trainer_command(plan, home, str(plan.snapshot_dir / SNAPSHOT_FILE), str(out), sys.executable)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"{label}: the trainer failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    plan.discard()
    return {"label": label, "n": n, "estimate": estimate, "source": plan.estimate.source if plan.estimate else "",
            "wall": wall, "load": load, "metrics": metrics}


def main() -> None:
    shared = DataHome.locate().ensure()
    ensure_bundled(shared.models, progress=lambda what, _: print(f"  {what}", flush=True))
    with tempfile.TemporaryDirectory() as tmp:
        home = DataHome(Path(tmp) / "home").ensure()
        (home.models / BUNDLED_DIR).symlink_to(shared.models / BUNDLED_DIR, target_is_directory=True)
        rows = []
        for index, (n, empty) in enumerate(RUNS):
            if empty:
                shutil.rmtree(home.root / CACHE_DIR, ignore_errors=True)
            row = run(home, n, f"run-{index}-{n}")
            rows.append(row)
            m = row["metrics"]
            print(f"{n:3} conversations, {'nothing cached' if empty else 'after a run':14}: {row['wall']:6.1f} s "
                  f"(estimate {row['estimate']:6.1f} s, {row['estimate'] / row['wall'] - 1:+.0%}; "
                  f"{m['steps']} steps at {m['tokens_per_s']:.0f} tokens/s; load {row['load']:.1f}) "
                  f"[{row['source']}]", flush=True)
        print("\nphases (s): start-up, " + ", ".join(PHASES))
        for row in rows:
            m = row["metrics"]
            cells = [f"{m['phases'][p]['s']:5.1f}" if p in m["phases"] else "    -" for p in PHASES]
            print(f"{row['label']:10} {m['startup_s'] or 0:5.1f}  " + " ".join(cells))
        # A first run with every phase (the 5 conversations hold one out to evaluate): the estimate's reference.
        print("\nthe timings line of 5 conversations with nothing cached (REFERENCE in tui_chat/training/estimate.py):")
        print((home.runs / "timings.jsonl").read_text().splitlines()[2])


if __name__ == "__main__":
    main()
