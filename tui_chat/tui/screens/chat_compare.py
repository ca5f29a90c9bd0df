"""`/compare` in the chat window, as a part of ChatScreen: the worker that writes the two answers, one after the other,
into the compare screen, and what the chat shows once the comparison ends.

A comparison ends when both its worker has finished and its screen has closed, in either order (Esc while an answer
is being written closes the screen at once; the worker stops within a token, or after a model load, which cannot be
interrupted). Only then is a comparison without a pick ended (``skip``) and the branch drawn again: until then the
worker may still be adding an answer to the store. The chat counts as generating meanwhile, so nothing else starts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from textual import work

from tui_chat.chat.compare import Comparison
from tui_chat.inference.contract import Chunk, TextDelta
from tui_chat.tui.screens.compare import CompareScreen
from tui_chat.tui.worker_messages import (
    CompareAnswered,
    CompareAnswerStarted,
    CompareChunk,
    CompareFailed,
    ComparisonEnded,
    PendingText,
)

if TYPE_CHECKING:
    from tui_chat.tui.screens.chat import ChatScreen

    _Base = ChatScreen
else:
    _Base = object


@dataclass(frozen=True)
class CompareJob:
    """What the compare worker needs, fixed when it starts."""

    comparison: Comparison
    view: CompareScreen  # where the answers' text goes
    stop: threading.Event
    pending: tuple[PendingText, PendingText] = field(default_factory=lambda: (PendingText(), PendingText()))


@dataclass
class _Open:
    """A comparison that has not ended yet: whether its worker still runs, and whether its screen is still open."""

    job: CompareJob
    writing: bool = True
    shown: bool = True


class ChatCompare(_Base):
    """The chat window's side of `/compare`; mixed into ChatScreen."""

    _comparing: _Open | None = None

    def action_compare(self) -> None:
        self.compare(None, blind=False)

    def compare(self, spec: str | None, *, blind: bool) -> None:
        """Compare answers to the last prompt (or the one the selected reply answers); see ``Comparison``."""
        if not self.can_generate():
            return
        with self.core_errors():
            comparison = self.session.compare(spec, blind=blind, selected=self.selected_message())
            stop = threading.Event()
            view = CompareScreen(comparison, stop)
            job = CompareJob(comparison, view, stop)
            self._comparing = _Open(job)
            self._stop = stop  # Esc in the chat (after the compare screen closed) stops the answer too
            self.generating = True
            self.app.push_screen(view, lambda _: self._compare_closed(job))
            self.write_answers(job)

    @work(thread=True, exclusive=True, group="generation")
    def write_answers(self, job: CompareJob) -> None:
        """Write both answers, one after the other, posting their text to the compare screen; never touches a widget."""
        try:
            job.view.post_message(CompareAnswerStarted(0))
            try:
                job.comparison.prepare()
            except Exception as exc:
                job.view.post_message(CompareFailed(0, self.describe_error(exc)))
                return
            for index in range(2):
                if job.stop.is_set():
                    return
                if index:
                    job.view.post_message(CompareAnswerStarted(index))
                pending = job.pending[index]

                def on_chunk(chunk: Chunk, index: int = index, pending: PendingText = pending) -> None:
                    if isinstance(chunk, TextDelta) and pending.add(chunk.text):
                        job.view.post_message(CompareChunk(index, pending))

                try:
                    reply = job.comparison.answer(index, on_chunk, stop=job.stop)
                except Exception as exc:  # generate_reply already marked the answer's row failed
                    job.view.post_message(CompareFailed(index, self.describe_error(exc)))
                    return
                job.view.post_message(CompareAnswered(index, reply))
                if reply.status != "complete":
                    return
        finally:
            self.post_message(ComparisonEnded(job.comparison))

    def on_comparison_ended(self, message: ComparisonEnded) -> None:
        state = self._comparing
        if state is None or state.job.comparison is not message.comparison:
            return
        state.writing = False
        self.generating = False
        if not state.shown:
            self.call_later(self._end_comparison, state.job)

    def _compare_closed(self, job: CompareJob) -> None:
        state = self._comparing
        if state is None or state.job is not job:
            return
        state.shown = False
        if not state.writing:
            self.call_later(self._end_comparison, job)

    async def _end_comparison(self, job: CompareJob) -> None:
        """Both the worker and the screen are done: end it without a pick if none was made, and show the branch."""
        self._comparing = None
        comparison = job.comparison
        with self.core_errors():
            comparison.skip()
        conversation = self.conversation
        if conversation is None:
            return
        branch = self.store.active_branch(conversation.id)
        ids = [m.id for m in self.branch]
        index = ids.index(comparison.prompt.id) + 1 if comparison.prompt.id in ids else 0
        await self.show_branch_from(index, branch)
        self._refresh_conversation()
        self.notify(comparison.outcome() + ".", title="Compare", timeout=8)
        self.prompt.focus()
