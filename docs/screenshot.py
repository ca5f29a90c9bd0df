"""Regenerate docs/screenshot.svg: the chat window with realistic content, rendered headless by Textual.

    .venv/bin/python docs/screenshot.py

The replies come from a scripted engine (the screenshot must not depend on sampling), named like the bundled model.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sessions import Store, memory_database
from tests.fakes import FakeEngine
from trainer.home import DataHome
from tui_chat.tui.app import make_app
from tui_chat.inference.contract import EngineInfo

OUT = ROOT / "docs" / "screenshot.svg"
SIZE = (120, 38)

HISTORY = [
    ("Plan a 3-day trip to Lisbon", 3 * 86400),
    ("Explain Python decorators", 26 * 3600),
    ("Sourdough starter keeps failing", 5 * 3600),
    ("Regex for ISO dates", 40 * 60),
]
QUESTION = "How do I read a large CSV file in Python without running out of memory?"
REPLY = """Read it in **chunks** instead of all at once. With pandas:

```python
import pandas as pd

total = 0
for chunk in pd.read_csv("big.csv", chunksize=100_000):
    total += chunk["amount"].sum()
print(total)
```

- `chunksize` sets how many rows are in memory at a time.
- Pass `usecols=[...]` to load only the columns you need.
- For plain rows, the built-in `csv` module streams line by line."""


class ScriptedEngine(FakeEngine):
    def info(self) -> EngineInfo:
        return EngineInfo(name=self.name, device="cpu", dtype="bfloat16", context_limit=8192)


async def main() -> None:
    store = Store(memory_database())
    now = time.time()
    for title, age_s in HISTORY:
        conversation = store.create_conversation(title, created_at=now - age_s)
        store.add_message(conversation.id, "user", title, created_at=now - age_s)
    engine = ScriptedEngine(
        ["Use `pandas.read_csv` with a smaller `dtype`.", REPLY], name="smollm2", delay_s=0.05, context_limit=8192
    )
    with tempfile.TemporaryDirectory() as root:
        app = make_app(store, engine, home=DataHome(Path(root)), engine_factory=lambda spec: engine)
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            while screen.engine is None:
                await pilot.pause(0.05)
            await screen.action_new_chat()
            await screen.send(QUESTION)
            while screen.generating:
                await pilot.pause(0.05)
            await screen.action_regenerate()  # a second version, so the header shows "2/2"
            while screen.generating:
                await pilot.pause(0.05)
            screen.rate(1)
            await pilot.pause(3.5)  # let the notifications fade
            app.save_screenshot(filename=OUT.name, path=str(OUT.parent))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
