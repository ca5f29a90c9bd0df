"""The sidebar's conversations, newest first, loaded a page at a time.

An OptionList draws its rows itself (no widget per row), and the rows arrive in pages as the user scrolls or moves
the highlight near the end, so 10k conversations cost one page of queries and no extra widgets at start.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

import sessions

PAGE_SIZE = 100  # conversations per query
LOAD_AHEAD = 20  # rows before the end at which the next page is fetched
TITLE_WIDTH = 28  # characters: the sidebar (34 wide) less its border, padding and scrollbar; narrower, it wraps


def ago(timestamp: float, now: float | None = None) -> str:
    """``just now``, ``5 min ago``, ``3 h ago``, ``2 d ago``, then the date."""
    seconds = max(0.0, (now if now is not None else time.time()) - timestamp)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 7 * 86400:
        return f"{int(seconds // 86400)} d ago"
    return time.strftime("%Y-%m-%d", time.localtime(timestamp))


def conversation_prompt(conversation: sessions.Conversation) -> Text:
    text = Text(sessions.one_line(conversation.title, TITLE_WIDTH), style="bold")
    text.append(f"\n#{conversation.id} · {ago(conversation.updated_at)}", style="dim")
    if conversation.exclude_from_training:
        text.append(" · not for training", style="dim italic")
    return text


def option_id(conversation_id: int) -> str:
    return f"conversation-{conversation_id}"


def rows(shown: list[tuple[int, Text]]) -> list[Option | None]:
    """An option per (conversation id, prompt), each followed by a divider line (``None``)."""
    return [row for conversation_id, prompt in shown for row in (Option(prompt, id=option_id(conversation_id)), None)]


def prompts(conversations: list[sessions.Conversation]) -> list[tuple[int, Text]]:
    return [(conversation.id, conversation_prompt(conversation)) for conversation in conversations]


class ConversationList(OptionList):
    def __init__(self, store: sessions.Store, *, id: str | None = None) -> None:
        super().__init__(id=id, compact=True)
        self.store = store
        self._loaded_ids: set[int] = set()
        self._offset = 0  # rows fetched so far (the next page starts here)
        self._exhausted = False
        self._shown: list[tuple[int, Text]] = []  # (conversation id, prompt) of every row, in order

    def reload(self, active_id: int | None = None) -> None:
        """Fetch again from the top (as many rows as were loaded), highlighting ``active_id`` when present."""
        count = max(PAGE_SIZE, self._offset)
        conversations = self.store.list_conversations(limit=count)
        self._loaded_ids = {conversation.id for conversation in conversations}
        self._offset = len(conversations)
        self._exhausted = len(conversations) < count
        shown = prompts(conversations)
        # Every reply ends with a reload, and mostly nothing shown has changed: setting the options anyway would
        # redraw the whole list in the frame that shows the finished reply.
        if shown != self._shown:
            self._shown = shown
            self.set_options(rows(shown))
        self.highlight_conversation(active_id)

    def load_more(self) -> int:
        """Append the next page; returns how many rows it added."""
        if self._exhausted:
            return 0
        page = self.store.list_conversations(limit=PAGE_SIZE, offset=self._offset)
        self._offset += len(page)
        self._exhausted = len(page) < PAGE_SIZE
        # Another window may have moved a conversation to the top since the last page: skip rows already shown.
        fresh = [c for c in page if c.id not in self._loaded_ids]
        self._loaded_ids.update(c.id for c in fresh)
        shown = prompts(fresh)
        self._shown += shown
        self.add_options(rows(shown))
        return len(fresh)

    @property
    def loaded_count(self) -> int:
        return self.option_count

    def highlight_conversation(self, conversation_id: int | None) -> None:
        if conversation_id is not None and conversation_id in self._loaded_ids:
            self.highlighted = self.get_option_index(option_id(conversation_id))

    def conversation_id_at(self, index: int) -> int:
        option = self.get_option_at_index(index)
        assert option.id is not None
        return int(option.id.rsplit("-", 1)[1])

    def watch_highlighted(self, highlighted: int | None) -> None:
        super().watch_highlighted(highlighted)
        if highlighted is not None and highlighted >= self.option_count - LOAD_AHEAD:
            self.load_more()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value >= self.max_scroll_y - self.scrollable_content_region.height:
            self.load_more()
