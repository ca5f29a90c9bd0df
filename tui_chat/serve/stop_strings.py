"""Cutting a streamed reply at the first stop string (OpenAI's ``stop``), across delta boundaries."""

from __future__ import annotations


class StopStrings:
    """Feed the reply's deltas in; get back the text to send. Text that could be the start of a stop string is held
    back until the next delta shows whether it is one, so a stop string split over two tokens is never sent."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.hit = False  # a stop string was found: the reply ends there
        self._held = ""

    def feed(self, text: str) -> str:
        """The part of ``text`` (with what was held back) that is safe to send; "" once a stop string was hit."""
        if self.hit:
            return ""
        text = self._held + text
        found = [index for index in (text.find(stop) for stop in self.stops) if index >= 0]
        if found:
            self.hit, self._held = True, ""
            return text[: min(found)]
        held = self._partial_stop_length(text)
        self._held = text[len(text) - held :]
        return text[: len(text) - held]

    def flush(self) -> str:
        """What is still held back, at the end of the reply (it turned out not to be a stop string)."""
        text, self._held = ("" if self.hit else self._held), ""
        return text

    def _partial_stop_length(self, text: str) -> int:
        """The length of the longest end of ``text`` that some stop string starts with."""
        longest = min(len(text), max((len(stop) - 1 for stop in self.stops), default=0))
        for length in range(longest, 0, -1):
            tail = text[-length:]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0
