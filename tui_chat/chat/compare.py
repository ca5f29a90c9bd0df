"""`/compare`: the last prompt answered twice, by the current model and another (or by two samples of the current
one), and the user's pick between the two.

A ``Comparison`` is made by ``ChatSession.compare`` and carried out by a front end: it loads both models
(``prepare()``), then asks for each answer in turn (``answer(0)``, then ``answer(1)``: one model at a time, which is
what a CPU can afford), shows them side by
side or one after the other, and ends it with ``pick``. The rules are here, so the window and the REPL agree:

- Both answers are new replies to the same prompt, siblings of the reply it had (so they are versions, ‹ 2/3 ›).
- A pick rates the chosen one up (+1) and the other down (-1), which makes them a preference pair in the export, and
  makes the chosen one the branch the conversation goes on from. Neither: both are rated down and the user's ideal
  answer, when given, becomes the correction of each (two pairs: the correction over each answer); A goes on.
- No pick (Esc, Enter in the REPL, an answer stopped or failed): nothing is rated and the conversation goes on from
  the reply it had; the answers stay as other versions.
- Blind: the two are shown as "A" and "B" only, in an order shuffled by the comparison's seed (stored with it), until
  the pick. A comparison counts as blind in the win rate only if the models stayed hidden until then.

Every comparison is stored (``Store.record_comparison``), picks between a run and its base add up to its win rate.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass
from typing import Callable

from sessions import Message, Store
from trainer.model_names import engine_name

from tui_chat.chat.commands import CommandError
from tui_chat.chat.replies import generate_reply
from tui_chat.inference.contract import Chunk, Engine, GenerationParams

# Two samples of one model must differ, so they are sampled even when the chat is greedy (temperature 0): at the
# chat's default temperature.
SAMPLE_TEMPERATURE = GenerationParams().temperature
LABELS = ("A", "B")
PICKS = {"1": "a", "a": "a", "2": "b", "b": "b", "n": "neither", "neither": "neither"}

EngineFor = Callable[[str, bool], Engine]  # (model spec, load quietly) -> its engine, loaded


class CompareError(CommandError):
    """A comparison that cannot go on as asked (picking before both answers are in); one line saying what to do."""


@dataclass(frozen=True)
class Side:
    spec: str  # the model that writes this answer
    params: GenerationParams

    @property
    def model(self) -> str:
        return engine_name(self.spec)


def plan_sides(model: str, other: str | None, params: GenerationParams, seed: int) -> tuple[Side, Side]:
    """The two answers in the order shown: ``model`` against ``other``, or two samples of ``model`` (different
    seeds, sampled) when there is no other. The order is shuffled by ``seed``: the current model is not always A."""
    if other is None or engine_name(other) == engine_name(model):
        sampled = dataclasses.replace(params, temperature=params.temperature or SAMPLE_TEMPERATURE)
        sides = [Side(model, dataclasses.replace(sampled, seed=seed + index)) for index in range(2)]
    else:
        sides = [Side(model, params), Side(other, params)]
    if random.Random(seed).random() < 0.5:
        sides.reverse()
    return sides[0], sides[1]


class Comparison:
    """One comparison in progress; see the module docstring. ``replies[i]`` is answer ``i`` once it is written."""

    def __init__(
        self,
        store: Store,
        prompt: Message,
        previous_tip: int | None,
        sides: tuple[Side, Side],
        *,
        seed: int,
        blind: bool,
        engine_for: EngineFor,
    ) -> None:
        self.store = store
        self.prompt = prompt
        self.previous_tip = previous_tip  # where the conversation goes on from without a pick
        self.sides = sides
        self.seed = seed
        self.blind = blind  # the models are hidden now
        self.stayed_blind = blind  # ... and have been since the start (what the win rate counts as blind)
        self.replies: list[Message | None] = [None, None]
        self.choice: str | None = None
        self.decided = False
        self._engine_for = engine_for

    @property
    def same_model(self) -> bool:
        """Two samples of one model, not two models."""
        return self.sides[0].model == self.sides[1].model

    def label(self, index: int) -> str:
        """``A``, or ``A · smollm2`` when the models are shown."""
        return LABELS[index] if self.blind else f"{LABELS[index]} · {self.sides[index].model}"

    def toggle_blind(self) -> bool:
        """Hide or show the models; once shown, the comparison no longer counts as blind. Returns ``blind``."""
        self.blind = not self.blind
        if not self.blind:
            self.stayed_blind = False
        return self.blind

    # ---- answering -------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load both models before the first answer (slow when one is not loaded yet: a front end says so). Both
        before A, whichever is A: in blind mode a model loading between the answers would tell which is which, and
        so would the loading's progress, which is not shown then."""
        for side in self.sides:
            self._engine_for(side.spec, self.blind)

    def answer(
        self, index: int, on_chunk: Callable[[Chunk], None] | None = None, *, stop: threading.Event | None = None
    ) -> Message:
        """Write answer ``index`` into the store as it streams, in this thread (loading its model first if needed)."""
        side = self.sides[index]
        engine = self._engine_for(side.spec, self.blind)
        reply = generate_reply(
            self.store, engine, self.prompt.conversation_id, side.params,
            parent_id=self.prompt.id, stop=stop, on_chunk=on_chunk,
        )
        self.replies[index] = reply
        return reply

    @property
    def answered(self) -> bool:
        """Both answers are in and complete: there is something to pick from."""
        return all(reply is not None and reply.status == "complete" for reply in self.replies)

    # ---- ending it -------------------------------------------------------------------------------------------

    def pick(self, choice: str, correction: str | None = None) -> Message:
        """Keep the pick (``"a"``, ``"b"``, ``"neither"``, or a key: 1, 2, n) and return the reply that continues the
        conversation. ``correction``: with neither, the ideal answer (kept as the correction of both)."""
        choice = PICKS.get(choice.strip().lower(), choice)
        if choice not in ("a", "b", "neither"):
            raise CompareError(f"pick 1 (A), 2 (B) or n (neither), not {choice!r}")
        if not self.answered:
            raise CompareError("wait for both answers, then pick one (or leave without a pick)")
        a, b = self.replies
        assert a is not None and b is not None
        if choice == "neither":
            ratings = {a.id: -1, b.id: -1}
            chosen = a
        else:
            chosen, rejected = (a, b) if choice == "a" else (b, a)
            ratings = {chosen.id: 1, rejected.id: -1}
        with self.store.transaction():
            self._record(choice, ratings)
            if choice == "neither" and correction and correction.strip():
                for reply in (a, b):
                    self.store.set_correction(reply.id, correction)
            self.store.switch_branch(chosen.id)
        self.choice, self.blind = choice, False
        return self.store.get_message(chosen.id)

    def skip(self) -> None:
        """End without a pick: nothing is rated and the conversation goes on from the reply it had. Kept as a
        comparison with no choice when both answers were written."""
        if self.decided:
            return
        a, b = self.replies
        with self.store.transaction():
            if a is not None and b is not None:
                self._record(None, {})
            self.store.set_tip(self.prompt.conversation_id, self.previous_tip)
        self.decided = True

    def _record(self, choice: str | None, ratings: dict[int, int]) -> None:
        if self.decided:
            raise CompareError("this comparison has already ended; /compare starts another")
        a, b = self.replies
        assert a is not None and b is not None
        self.store.record_comparison(
            self.prompt.id, a.id, b.id, seed=self.seed, blind=self.stayed_blind, choice=choice, ratings=ratings
        )
        self.decided = True

    def outcome(self) -> str:
        """The pick in words, with the models revealed: what the front end says when it is made."""
        if self.same_model:
            who = ["", ""]
            whose = f" (two samples of {self.sides[0].model})"
        else:
            who = [f" ({self.sides[index].model})" for index in range(2)]
            whose = ""
        if self.choice == "neither":
            return (f"Neither: both answers rated down (A{who[0]}, B{who[1]}){whose}; A goes on, with your ideal "
                    "answer if you wrote one")
        if self.choice in ("a", "b"):
            won = 0 if self.choice == "a" else 1
            return (f"You picked {LABELS[won]}{who[won]} over {LABELS[1 - won]}{who[1 - won]}{whose}: kept as a "
                    "preference pair, and the conversation goes on from it")
        if not any(self.replies):
            return "No pick: nothing was written, and the conversation goes on as it was"
        return "No pick: nothing rated; the conversation goes on from the reply it had (the answers stay as versions)"
