"""The main pane: the active branch of the open conversation, one MessageView per message.

It stays anchored to the bottom while replies stream, unless the user scrolls up (Textual's ``anchor()``). With
focus, Up/Down select a message; copy, rate, correct and the version keys then act on the selection.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

import sessions

from .message_view import MessageView

WELCOME = Text.assemble(
    ("Ask anything.\n\n", "bold"),
    ("Enter sends · Shift+Enter or Ctrl+J adds a line · / starts a command (/help) · F1 lists every key", "dim"),
)


class ChatView(VerticalScroll, can_focus=True):
    BINDINGS = [
        Binding("up,k", "select(-1)", "Previous message", show=False),
        Binding("down,j", "select(1)", "Next message", show=False),
        Binding("home", "select_edge(0)", "First message", show=False),
        Binding("end", "select_edge(-1)", "Last message", show=False),
    ]

    selected: reactive[int | None] = reactive(None, init=False)

    def on_mount(self) -> None:
        self.anchor()

    def views(self) -> list[MessageView]:
        return [child for child in self.children if isinstance(child, MessageView)]

    async def show(self, views: list[MessageView], system_prompt: str | None) -> None:
        """Replace everything with ``views`` (a conversation opened), scrolled to the end."""
        self.selected = None
        with self.app.batch_update():
            await self.remove_children()
            intro = self._intro(system_prompt, bool(views))
            await self.mount_all([*intro, *views])
        self.anchor()

    def _intro(self, system_prompt: str | None, has_messages: bool) -> list[Static]:
        intro = []
        if system_prompt:
            intro.append(Static(Text.assemble(("System prompt  ", "bold"), system_prompt), classes="system-prompt"))
        if not has_messages:
            intro.append(Static(WELCOME, classes="welcome"))
        return intro

    async def set_system_prompt(self, system_prompt: str | None) -> None:
        for intro in self.query(".system-prompt"):
            await intro.remove()
        if system_prompt:
            block = Static(Text.assemble(("System prompt  ", "bold"), system_prompt), classes="system-prompt")
            await self.mount(block, before=0)

    async def add(self, view: MessageView) -> MessageView:
        """Append a message at the bottom (the anchor keeps it in view unless the user scrolled up)."""
        for welcome in self.query(".welcome"):
            await welcome.remove()
        await self.mount(view)
        return view

    async def remove_from(self, index: int) -> None:
        """Drop the views from ``index`` on (a branch is about to continue differently)."""
        doomed = self.views()[index:]
        if doomed:
            await self.remove_children(doomed)
        if self.selected is not None and self.selected >= index:
            self.selected = None

    # ---- selection -------------------------------------------------------------------------------------------

    def selected_view(self) -> MessageView | None:
        """The selected message, only while the chat has focus (otherwise actions target the last reply)."""
        views = self.views()
        if self.has_focus and self.selected is not None and self.selected < len(views):
            return views[self.selected]
        return None

    def select_view(self, view: MessageView) -> None:
        views = self.views()
        if view in views:
            self.selected = views.index(view)

    def watch_selected(self, old: int | None, new: int | None) -> None:
        views = self.views()
        for index in (old, new):
            if index is not None and index < len(views):
                views[index].set_class(index == new, "-selected")
        if new is not None and new < len(views):
            self.scroll_to_widget(views[new], animate=False)

    def on_focus(self) -> None:
        if self.selected is None and self.views():
            self.selected = len(self.views()) - 1

    def action_select(self, step: int) -> None:
        count = len(self.views())
        if count:
            current = self.selected if self.selected is not None else count
            self.selected = max(0, min(count - 1, current + step))

    def action_select_edge(self, index: int) -> None:
        count = len(self.views())
        if count:
            self.selected = index % count

    def on_click(self, event: events.Click) -> None:
        node = event.widget
        while node is not None and not isinstance(node, MessageView):
            node = node.parent
        if isinstance(node, MessageView):
            self.focus()
            self.select_view(node)

    def message_ids(self) -> list[int | None]:
        return [view.message_id for view in self.views()]

    def view_for(self, message: sessions.Message) -> MessageView | None:
        for view in self.views():
            if view.message_id == message.id:
                return view
        return None
