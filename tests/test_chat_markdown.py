"""ChatMarkdown: Textual's Markdown with one widget per simple list item, drawn exactly as Textual draws it."""

from __future__ import annotations

import textual.widget
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.geometry import Offset
from textual.selection import Selection
from textual.widgets import Markdown
from textual.widgets._markdown import MarkdownBullet

from tui_chat.tui.widgets.chat_markdown import ChatMarkdown, CompactOrderedList, ListItemText

HALF = 60  # columns of each side of the app below
DOCUMENT = """Intro with **bold** and `code`.

1. A first item long enough that it has to wrap onto a second line, which lines up under its text.
2. Second *item*.

- bullet one
- bullet two
  - nested a
  - nested b

8. starts at eight
9. nine
10. ten

* an item with two paragraphs

  its second paragraph

```python
def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)
```

> a quote
> - with a list

End.
"""
SIMPLE_ITEMS = 9  # one-paragraph items above: 1., 2., bullet one, nested a and b, 8., 9., 10., the quote's


class SideBySide(App):
    """Textual's Markdown on the left, ChatMarkdown on the right, both given the same text."""

    CSS = "Markdown { width: 1fr; }"

    def __init__(self, document: str | None) -> None:
        super().__init__()
        self.document = document

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Markdown(self.document)
            yield ChatMarkdown(self.document)


def screen_cells(app: App) -> list[list[tuple[str, object, object, bool, bool]]]:
    """Each screen line as (character, colour, background, bold, italic) per cell."""
    return [
        [
            (character, segment.style.color, segment.style.bgcolor, segment.style.bold, segment.style.italic)
            for segment in strip
            for character in segment.text
        ]
        for strip in app.screen._compositor.render_strips()
    ]


def differences(app: App) -> list[tuple[int, int]]:
    """Cells where the right side differs from the left (a blank cell's unseen text colour aside)."""
    found = []
    for y, line in enumerate(screen_cells(app)):
        for x, (left, right) in enumerate(zip(line[:HALF], line[HALF : 2 * HALF])):
            if left != right and not (left[0] == right[0] == " " and left[2] == right[2]):
                found.append((y, x))
    return found


async def test_lists_look_like_textuals_with_one_widget_per_simple_item():
    for theme in ("textual-dark", "textual-light"):
        app = SideBySide(DOCUMENT)
        async with app.run_test(size=(2 * HALF, 60)) as pilot:
            app.theme = theme
            await pilot.pause(0.2)
            assert differences(app) == []
            text = "\n".join("".join(cell[0] for cell in line) for line in screen_cells(app))
            assert "lines up under its text" in text and "10. ten" in text  # (the test would pass on a blank screen)
            compact = app.query_one(ChatMarkdown)
            assert len(compact.query(ListItemText)) == SIMPLE_ITEMS
            # Items holding more than a paragraph (a nested list, two paragraphs) keep Textual's layout.
            assert len(compact.query(MarkdownBullet)) == 2
            assert len(compact.query("*")) < len(app.query_one(Markdown).query("*"))


async def test_a_streaming_list_updates_its_items_in_place():
    app = SideBySide(None)
    async with app.run_test(size=(2 * HALF, 60)) as pilot:
        textual_view, compact = app.query_one(Markdown), app.query_one(ChatMarkdown)
        streams = [Markdown.get_stream(textual_view), Markdown.get_stream(compact)]
        first_item = None
        for start in range(0, len(DOCUMENT), 8):
            for stream in streams:
                await stream.write(DOCUMENT[start : start + 8])
            await pilot.pause()
            items = compact.query(ListItemText)
            if first_item is None and items:
                first_item = items.first()
        for stream in streams:
            await stream.stop()
        await pilot.pause(0.2)
        assert first_item is not None and first_item is compact.query(ListItemText).first()  # never remounted
        assert len(compact.query(ListItemText)) == SIMPLE_ITEMS
        assert differences(app) == []


async def test_a_finished_list_is_not_arranged_again_as_the_reply_grows(monkeypatch):
    app = SideBySide("1. one\n2. two\n\nAfter the list.")
    async with app.run_test(size=(2 * HALF, 40)) as pilot:
        compact = app.query_one(ChatMarkdown)
        stream = Markdown.get_stream(compact)
        await pilot.pause()
        arranged: list[object] = []
        arrange = textual.widget.arrange  # called only when a widget's cached arrangement does not fit

        def counting(widget, *args, **kwargs):
            arranged.append(widget)
            return arrange(widget, *args, **kwargs)

        monkeypatch.setattr(textual.widget, "arrange", counting)
        for number in range(10):  # each paragraph makes the document, the list's container, taller
            await stream.write(f" More text, line {number}.\n\n")
            await pilot.pause()
        await stream.stop()
        assert arranged, "the growing document itself is arranged again"
        assert not [widget for widget in arranged if isinstance(widget, CompactOrderedList)]


async def test_a_selected_item_copies_as_a_list_item():
    app = SideBySide("1. the item text")
    async with app.run_test(size=(2 * HALF, 10)) as pilot:
        await pilot.pause()
        item = app.query_one(ListItemText)
        assert item.get_selection(Selection(None, None)) == ("1. the item text", "\n")  # the whole item
        assert item.get_selection(Selection(Offset(4, 0), None)) == ("item text", "\n")  # from inside its text
