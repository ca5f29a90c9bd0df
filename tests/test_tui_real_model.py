"""The chat app on the real bundled model (slow: loads SmolLM2-135M-Instruct)."""

from __future__ import annotations

import pytest

from sessions import Store, memory_database
from tui_chat.inference.hf_engine import open_engine

from .tui_helpers import SIZE, build_app, idle, ready, send, wait_for


@pytest.mark.slow
async def test_bundled_model_answers_in_the_chat(bundled_home):
    store = Store(memory_database())
    factory = lambda spec: open_engine(spec, bundled_home)
    app = build_app("default", home=bundled_home, store=store, factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        # Loading includes quantizing to int4 (~5 s of CPU): a busy machine needs more than a minute.
        screen = await ready(pilot, timeout=120)
        await wait_for(pilot, lambda: screen.engine is not None, timeout=60, what="the bundled model")
        assert "smollm2" in str(screen.status.render_text())
        await send(pilot, "/set temperature 0")  # greedy: the answer is known
        await send(pilot, "/set max_new_tokens 24")
        await send(pilot, "What is the capital of France?")
        # Generous limits: the machine running the tests may be busy (2 shared cores here).
        await wait_for(pilot, lambda: screen.chat.views()[-1].text, timeout=60, what="the first streamed text")
        screen = await idle(pilot, timeout=90)
        reply = store.active_branch(screen.conversation.id)[-1]
        assert reply.status == "complete" and "Paris" in reply.content
        assert screen.chat.views()[-1].text == reply.content
        assert reply.model == "smollm2" and reply.tokens_out and reply.ttft_s is not None
        assert "tok/s" in str(screen.status.render_text())
