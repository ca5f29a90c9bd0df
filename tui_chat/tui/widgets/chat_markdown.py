"""Textual's Markdown widget with fewer widgets per list item.

Textual draws each list item as four widgets (a row holding the bullet and a column holding the paragraph). Every
frame of a streaming reply lays out and repaints each widget of the reply, and lists made up about a third of a
frame's cost (bench/tui_stream.py). Here an item that is a single paragraph, as most items a model writes are, is
one widget: its marker, and its text wrapped beside it (continuation lines line up under the text, not the marker).
Items holding more (several paragraphs, a nested list, code) keep Textual's layout. While a list streams, the items
it already shows are updated in place instead of the whole list being removed and mounted again. Lists, code blocks
and the document keep their arrangement while the reply grows (``StableArrangement``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from rich.segment import Segment
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.css.styles import RulesMap
from textual.geometry import Size
from textual.selection import Selection
from textual.strip import Strip
from textual.style import Style
from textual.visual import RenderOptions, Visual
from textual.widget import Widget
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownBlock, MarkdownFence

# The list and item classes are not re-exported by textual.widgets.markdown; tests/test_chat_markdown.py renders
# lists through this module, so a Textual release that moves them fails there, not in front of a user.
from textual.widgets._markdown import (
    MarkdownBullet,
    MarkdownBulletList,
    MarkdownListItem,
    MarkdownOrderedList,
    MarkdownParagraph,
)


class MarkedText(Visual):
    """A marker (``1. ``, ``• ``) on the first line, and text wrapped in the width beside it."""

    def __init__(self, marker: Content, text: Content) -> None:
        self.marker = marker
        self.text = text
        self.indent = marker.cell_length

    def get_optimal_width(self, rules: RulesMap, container_width: int) -> int:
        return self.indent + self.text.get_optimal_width(rules, container_width - self.indent)

    def get_minimal_width(self, rules: RulesMap) -> int:
        return self.indent + self.text.get_minimal_width(rules)

    def get_height(self, rules: RulesMap, width: int) -> int:
        return max(1, self.text.get_height(rules, max(1, width - self.indent)))

    def render_strips(self, width: int, height: int | None, style: Style, options: RenderOptions) -> list[Strip]:
        text_width = max(1, width - self.indent)
        # The text carries the selection offsets (the widget's get_selection extracts from it); the marker does not.
        lines = self.text.render_strips(text_width, height, style, options) or [Strip.blank(text_width)]
        marker = Strip(
            [
                Segment(text, (style + part_style).rich_style)
                for text, part_style in self.marker.render(style, end="", parse_style=options.get_style)
            ],
            self.indent,
        )
        gap = Strip.blank(self.indent, style.background_style.rich_style)
        return [Strip.join([marker if y == 0 else gap, line]) for y, line in enumerate(lines)]


class ListItemText(MarkdownBlock):
    """A list item that is one paragraph: its marker and its text in one widget."""

    COMPONENT_CLASSES = {"list-marker"}
    DEFAULT_CSS = """
    ListItemText {
        width: 1fr;
        height: auto;
        & > .list-marker {
            color: $text-primary;
        }
        &:light > .list-marker {
            color: $text-secondary;
        }
    }
    """

    def __init__(self, markdown: Markdown, item: MarkdownListItem, marker: str, text: Content) -> None:
        self.marker = marker
        super().__init__(markdown, item._token)
        self.set_content(text)

    def set_content(self, content: Content) -> None:
        self._content = content
        self.update(MarkedText(Content.styled(self.marker, ".list-marker"), content))

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        """The selected text; with the marker when the selection takes the item from its start (a copied list)."""
        marker = self.marker.lstrip() if selection.start is None else ""
        return marker + selection.extract(self._content.plain), "\n"


def list_rows(markdown: Markdown, items: Iterable[tuple[str, MarkdownListItem]]) -> list[Widget]:
    """A widget per list item: one ListItemText for a single paragraph (or none yet, as a streaming item starts),
    Textual's row of bullet and column else."""
    rows: list[Widget] = []
    for marker, item in items:
        blocks = item._blocks
        if not blocks:
            rows.append(ListItemText(markdown, item, marker, Content()))
        elif len(blocks) == 1 and isinstance(blocks[0], MarkdownParagraph):
            rows.append(ListItemText(markdown, item, marker, blocks[0]._content))
        else:
            bullet = MarkdownBullet()
            bullet.symbol = marker
            rows.append(Horizontal(bullet, Vertical(*blocks)))
    return rows


class StableArrangement:
    """For blocks whose children are all ``height: auto``: their content height without the container's height.

    Textual measures a container of ``auto`` children by arranging them at the height of its own container, to
    resolve ``fr`` and ``%`` heights. Inside a streaming reply that height grows every frame, so every list and code
    block of the reply was arranged again each frame, finished or not. The children's heights do not depend on it
    here, and arranged at height 0 a finished block's arrangement stays cached while the reply streams on.
    """

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        widget = cast(Widget, self)
        if not widget.children:
            return super().get_content_height(container, viewport, width)
        return widget.arrange(Size(width, 0)).total_region.height


class CompactRows:
    """What both list kinds share: their rows, and updating them in place as a streamed list grows.

    A mixin, not a MarkdownBlock: Textual takes a widget's default CSS from its first widget base only, and the
    lists keep the CSS of Textual's list classes.
    """

    _blocks: list[MarkdownBlock]
    _markdown: Markdown

    def markers(self) -> list[tuple[str, MarkdownListItem]]:
        """Each item with its marker (a bullet here; numbers in ordered lists)."""
        return [(block.bullet, block) for block in self._blocks if isinstance(block, MarkdownListItem)]

    def rows(self) -> list[Widget]:
        return list_rows(self._markdown, self.markers())

    def compose(self) -> ComposeResult:
        yield from self.rows()
        self._blocks.clear()

    async def _update_from_block(self, block: MarkdownBlock) -> None:
        """The stream re-parsed the list with more text: update the items shown, mount the new ones.

        Anything but the same list with the same items so far plus more (an item that became a nested list, a
        marker that widened from ``9.`` to ``10.``) mounts the new list in place of this one, as Textual does.
        """
        shown = list(self.children)
        rows = block.rows() if isinstance(block, CompactRows) and type(block) is type(self) else []
        if len(rows) < len(shown) or not all(
            isinstance(old, ListItemText) and isinstance(new, ListItemText) and old.marker == new.marker
            for old, new in zip(shown, rows)
        ):
            await super()._update_from_block(block)
            return
        for old, new in zip(shown, rows):
            if not old._content.is_same(new._content):
                old.set_content(new._content)
        self._copy_context(block)
        if len(rows) > len(shown):
            await self.mount_all(rows[len(shown) :])


class CompactBulletList(StableArrangement, CompactRows, MarkdownBulletList):
    """A bullet list (Textual's styles) with compact items."""


class CompactOrderedList(StableArrangement, CompactRows, MarkdownOrderedList):
    """A numbered list (Textual's styles) with compact items."""

    def markers(self) -> list[tuple[str, MarkdownListItem]]:
        items = [block for block in self._blocks if isinstance(block, MarkdownListItem)]
        if not items:
            return []
        try:
            start = int(items[0].bullet)
        except ValueError:
            start = 1
        # Right-aligned numbers, as Textual draws them: " 9. " above "10. ".
        width = max(len(f"{number}. ") for number in range(start, start + len(items)))
        return [(f"{number}. ".rjust(width + 1), item) for number, item in enumerate(items, start)]


class ChatFence(StableArrangement, MarkdownFence):
    """A code block (highlighted, as Textual draws it)."""


class ChatMarkdown(StableArrangement, Markdown):
    """Markdown whose lists draw one widget per single-paragraph item, and whose blocks keep their arrangement."""

    BLOCKS = {
        **Markdown.BLOCKS,
        "bullet_list_open": CompactBulletList,
        "ordered_list_open": CompactOrderedList,
        "fence": ChatFence,
        "code_block": ChatFence,
    }
