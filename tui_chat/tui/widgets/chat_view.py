"""The main pane: the active branch of the open conversation, one MessageView per message.

Only the newest messages are mounted (a page of them); scrolling to the top, or Home, mounts the page before.
A 200-message chat therefore opens as fast as a short one, and a streaming reply relayouts a few widgets, not
hundreds. It stays anchored to the bottom while replies stream, unless the user scrolls up (``anchor()``). With
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

from tui_chat.tui.widgets.message_view import MessageView

PAGE_SIZE = 8  # messages mounted at a time: a few screenfuls; every mounted widget costs layout time per frame

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

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.hidden: list[sessions.Message] = []  # the branch's older messages, not mounted (yet)
        self._positions: dict[int, tuple[int, int]] = {}

    def on_mount(self) -> None:
        self.anchor()

    def views(self) -> list[MessageView]:
        return [child for child in self.children if isinstance(child, MessageView)]

    @property
    def offset(self) -> int:
        """The branch index of the first mounted message."""
        return len(self.hidden)

    async def show(
        self,
        branch: list[sessions.Message],
        positions: dict[int, tuple[int, int]],
        system_prompt: str | None,
        reveal: int | None = None,
    ) -> None:
        """Show a branch (a conversation opened): its last page, or from ``reveal`` (a branch index) on."""
        start = max(0, len(branch) - PAGE_SIZE)
        if reveal is not None:
            start = min(start, reveal)
        self.hidden, self._positions = list(branch[:start]), positions
        views = [self.view_of(message) for message in branch[start:]]
        self.selected = None
        with self.app.batch_update():
            await self.remove_children()
            intro = self._intro(system_prompt, bool(branch))
            await self.mount_all([*intro, *self._earlier_marker(), *views])
        self.anchor()
        self.call_after_refresh(self._fill_viewport)

    async def _fill_viewport(self) -> None:
        """Short messages may not fill the window: mount earlier pages until they do (or none are left)."""
        if self.hidden and self.virtual_size.height <= self.scrollable_content_region.height:
            await self.show_earlier()
            self.call_after_refresh(self._fill_viewport)

    def view_of(self, message: sessions.Message) -> MessageView:
        return MessageView(message, version=self._positions.get(message.id, (1, 1)))

    def set_positions(self, positions: dict[int, tuple[int, int]]) -> None:
        """New version counts (a reply regenerated, a message edited, a version flipped)."""
        self._positions = positions
        for view in self.views():
            if view.message_id is not None:
                view.set_version(positions.get(view.message_id, (1, 1)))

    def set_position(self, message_id: int, position: tuple[int, int]) -> None:
        """One message's version count (a reply just finished: no other message's count changed)."""
        self._positions = {**self._positions, message_id: position}
        for view in self.views():
            if view.message_id == message_id:
                view.set_version(position)

    def _earlier_marker(self) -> list[Static]:
        if not self.hidden:
            return []
        label = f"↑ {len(self.hidden)} earlier messages: scroll up, or select a message and press Home"
        return [Static(Text(label, style="dim italic"), classes="earlier")]

    async def show_earlier(self, count: int = PAGE_SIZE) -> None:
        """Mount the page of messages before the first one shown, keeping the view where it was."""
        if not self.hidden:
            return
        count = min(count, len(self.hidden))
        views = [self.view_of(message) for message in self.hidden[-count:]]
        self.hidden = self.hidden[:-count]
        first = self.views()[0] if self.views() else None
        selected = self.selected
        with self.app.batch_update():
            for marker in self.query(".earlier"):
                await marker.remove()
            await self.mount_all([*self._earlier_marker(), *views], before=first)
        if selected is not None:
            self.selected = selected + count
        if first is not None:
            self.call_after_refresh(self.scroll_to_widget, first, animate=False, top=True)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.hidden and new_value <= 0 < old_value:
            self.run_worker(self.show_earlier(), group="earlier", exclusive=True)

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
        """Drop the messages from branch index ``index`` on (the branch is about to continue differently)."""
        if index < self.offset:
            self.hidden = self.hidden[:index]
            index = self.offset
        doomed = self.views()[index - self.offset :]
        if doomed:
            await self.remove_children(doomed)
        if self.selected is not None and self.selected >= index - self.offset:
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

    def select_message(self, message_id: int) -> None:
        view = next((view for view in self.views() if view.message_id == message_id), None)
        if view is not None:
            self.select_view(view)

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

    async def action_select(self, step: int) -> None:
        if step < 0 and self.selected == 0 and self.hidden:
            await self.show_earlier()  # moving up past the first message shown mounts the page before it
        count = len(self.views())
        if count:
            current = self.selected if self.selected is not None else count
            self.selected = max(0, min(count - 1, current + step))

    async def action_select_edge(self, index: int) -> None:
        if index == 0 and self.hidden:
            await self.show_earlier(len(self.hidden))  # Home: the whole conversation, from its first message
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
