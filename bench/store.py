"""Store speed at scale: full-text search over 100k messages and the first page of 10k conversations.

Targets (issue 2): a search < 50 ms, the first page of the conversation list < 50 ms. The data is generated
(Zipf-distributed words, so some query words are common and some rare) into a temporary on-disk database with
``Store.import_conversations``, the same bulk path imports use.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from sessions import NewConversation, NewMessage, Store

CONVERSATIONS = 10_000
MESSAGES_PER_CONVERSATION = 10  # 100k messages in all
TARGET_MS = 50.0
REPEATS = 20
COMMON = ["the", "model", "answer", "question", "python", "data", "train", "chat", "error", "file"]


def _vocabulary(rng: random.Random, size: int = 5_000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)}
    return COMMON + sorted(words)


def generate(store: Store, seed: int = 0) -> int:
    """Fill ``store`` with the benchmark's conversations; returns the number of messages."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    weights = [1 / rank for rank in range(1, len(words) + 1)]  # Zipf: the k-th word is 1/k as frequent
    started = 1_700_000_000.0
    conversations = []
    for n in range(CONVERSATIONS):
        texts = rng.choices(words, weights, k=MESSAGES_PER_CONVERSATION * 30)
        messages = [
            NewMessage(
                "user" if m % 2 == 0 else "assistant",
                " ".join(texts[m * 30 : m * 30 + rng.randint(8, 30)]),
                parent=m - 1 if m else None,
                created_at=started + n * 60 + m,
            )
            for m in range(MESSAGES_PER_CONVERSATION)
        ]
        conversations.append(
            NewConversation(f"conversation {n}", messages, created_at=started + n * 60, updated_at=started + n * 60 + 9)
        )
    store.import_conversations(conversations)
    return CONVERSATIONS * MESSAGES_PER_CONVERSATION


def _list_page(store: Store) -> None:
    """What `tui-chat sessions list` reads: the total, the first page, and its message counts."""
    store.count_conversations()
    store.message_counts([c.id for c in store.list_conversations(limit=50)])


def _median_ms(action: Callable[[], object]) -> float:
    action()  # warm the page cache and the statement cache
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(Path(folder) / "bench.db")
        start = time.perf_counter()
        count = generate(store)
        fill_s = time.perf_counter() - start
        print(f"generated {CONVERSATIONS} conversations, {count} messages in {fill_s:.1f} s "
              f"({count / fill_s:,.0f} messages/s, FTS index included)")  # fmt: skip
        rare = _vocabulary(random.Random(0))[-1]  # the least frequent word of the generated text
        cases: list[tuple[str, Callable[[], object], float | None]] = [
            (f"search {COMMON[0]!r} (in most messages)", lambda: store.search(COMMON[0]), TARGET_MS),
            (f"search {COMMON[4]!r} (common)", lambda: store.search(COMMON[4]), TARGET_MS),
            (f"search {rare!r} (rare)", lambda: store.search(rare), TARGET_MS),
            (
                f"search '{COMMON[1]} {COMMON[6]}' (two words)",
                lambda: store.search(f"{COMMON[1]} {COMMON[6]}"),
                TARGET_MS,
            ),
            ("search 'pyth' (prefix)", lambda: store.search("pyth"), TARGET_MS),
            ("list first page (50)", lambda: store.list_conversations(limit=50), TARGET_MS),
            (
                "list first page + total + message counts (`sessions list`)",
                lambda: _list_page(store),
                TARGET_MS,
            ),
            ("list page 100 (offset 4950)", lambda: store.list_conversations(limit=50, offset=4_950), None),
        ]
        print(f"{'operation':<62}{'median ms':>10}{'target':>9}{'x target':>10}")
        for name, action, target in cases:
            ms = _median_ms(action)
            verdict = f"{ms / target:>9.2f}x" if target else f"{'':>10}"
            mark = "" if target is None else ("  ok" if ms < target else "  SLOW")
            print(f"{name:<62}{ms:>10.2f}{(f'{target:.0f}' if target else '-'):>9}{verdict}{mark}")
        print("(medians of 20 runs; the machine is shared with other work, so expect noise)")
        store.close()


if __name__ == "__main__":
    main()
