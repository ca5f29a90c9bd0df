"""The left column: a search box over the conversation list (or, while searching, the matching messages)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, OptionList

import sessions

from tui_chat.tui.widgets.conversation_list import ConversationList
from tui_chat.tui.widgets.search_results import SearchResults

SEARCH_DELAY_S = 0.15  # wait for a pause in typing before querying
SEARCH_LIMIT = 50  # matching messages shown


class Sidebar(Vertical):
    BINDINGS = [Binding("escape", "clear_search", "Clear search", show=False)]

    @dataclass
    class ConversationChosen(Message):
        conversation_id: int
        message_id: int | None  # a search hit: the message to show

    def __init__(self, store: sessions.Store, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.store = store
        self._search_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Search all chats  (Ctrl+F)", id="search", compact=True)
        yield ConversationList(self.store, id="conversations")
        yield SearchResults(id="search-results")

    @property
    def conversations(self) -> ConversationList:
        return self.query_one(ConversationList)

    @property
    def results(self) -> SearchResults:
        return self.query_one(SearchResults)

    def on_mount(self) -> None:
        self.results.display = False

    def focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DELAY_S, self.run_search)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the search box: search now and move to the results."""
        event.stop()
        self.run_search()
        if self.results.display:
            self.results.focus()

    def run_search(self) -> None:
        query = self.query_one("#search", Input).value.strip()
        searching = bool(query)
        if searching:
            self.results.show_hits(self.store.search(query, limit=SEARCH_LIMIT), query)
        self.results.display = searching
        self.conversations.display = not searching

    def action_clear_search(self) -> None:
        search = self.query_one("#search", Input)
        if not search.value:
            raise SkipAction()  # nothing to clear: Escape goes on to the screen (it stops a reply)
        search.value = ""
        self.run_search()
        search.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if isinstance(event.option_list, SearchResults):
            hit = self.results.hit_at(event.option_index)
            if hit is not None:
                self.post_message(self.ConversationChosen(hit.conversation_id, hit.message_id))
        else:
            self.post_message(self.ConversationChosen(self.conversations.conversation_id_at(event.option_index), None))
