"""The sidebar's search results: one row per matching message, its conversation's title over a snippet."""

from __future__ import annotations

import re

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

import sessions

from tui_chat.tui.widgets.conversation_list import TITLE_WIDTH

ROLE_LABELS = {"user": "You", "assistant": "Reply", "system": "System"}
_MATCH = re.compile(r"\[([^\[\]]*)\]")  # Store.search marks the matched words [like this]


def hit_prompt(hit: sessions.SearchHit) -> Text:
    text = Text(sessions.one_line(hit.title, TITLE_WIDTH), style="bold")
    text.append(f"\n{ROLE_LABELS.get(hit.role, hit.role)}: ", style="dim")
    snippet = " ".join(hit.snippet.split())
    position = 0
    for match in _MATCH.finditer(snippet):
        text.append(snippet[position : match.start()])
        text.append(match.group(1), style="bold reverse")
        position = match.end()
    text.append(snippet[position:])
    return text


class SearchResults(OptionList):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, compact=True)
        self.hits: list[sessions.SearchHit] = []

    def show_hits(self, hits: list[sessions.SearchHit], query: str) -> None:
        self.hits = hits
        if hits:
            self.set_options([row for hit in hits for row in (Option(hit_prompt(hit)), None)])
            self.highlighted = 0
        else:
            self.set_options([Option(Text(f"No message matches “{query}”", style="dim italic"), disabled=True)])

    def hit_at(self, index: int) -> sessions.SearchHit | None:
        return self.hits[index] if index < len(self.hits) else None
