"""Tables that fit the terminal: one house style, and column groups split into several tables when too wide.

Rich cuts cells with ``…`` when a table is wider than the console. Every table bap prints goes through
:func:`fit`, which renders the whole table when it fits the width and otherwise splits the columns after the key
column(s) into consecutive tables that each fit (the key columns repeat in each), so no cell is ever cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["Grid", "fit", "grid_fits", "needed_width", "print_grid"]


@dataclass
class Grid:
    """A table as data: column headers, rows of cell strings (rich markup allowed), alignment, separators.

    ``right`` holds the indices of right-aligned columns, ``wrap`` those whose cells may wrap at spaces (free
    text); ``key`` leading columns repeat in every part of a split table; a separator follows each row in ``sections``.
    """

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str | None = None
    caption: str | None = None
    right: set[int] = field(default_factory=set)
    key: int = 1
    sections: set[int] = field(default_factory=set)
    wrap: set[int] = field(default_factory=set)

    def add_row(self, *cells: str, section: bool = False) -> None:
        """Append a row (``section``: draw a separator under it)."""
        if section:
            self.sections.add(len(self.rows))
        self.rows.append(list(cells))


def _table(grid: Grid, columns: Sequence[int], strict: bool = True) -> Table:
    """The columns of ``grid`` in the house style; ``strict``: only the ``wrap`` columns may wrap."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for i in columns:  # "fold" never cuts with an ellipsis, even when a single word is wider than the console
        no_wrap = strict and i not in grid.wrap
        t.add_column(grid.headers[i], justify="right" if i in grid.right else "left", no_wrap=no_wrap, overflow="fold")
    for r, row in enumerate(grid.rows):
        t.add_row(*(row[i] for i in columns), end_section=r in grid.sections)
    return t


def _longest_word(cell: str) -> str:
    return escape(max(Text.from_markup(cell).plain.split() or [""], key=len))


def needed_width(grid: Grid, columns: Sequence[int], console: Console) -> int:
    """Columns a table of ``columns`` needs: every cell on one line, ``wrap`` columns as wide as their longest word."""
    probe = Grid(
        [_longest_word(h) if i in grid.wrap else h for i, h in enumerate(grid.headers)],
        [[_longest_word(c) if i in grid.wrap else c for i, c in enumerate(row)] for row in grid.rows],
        right=grid.right,
    )
    unbounded = console.options.update_width(1 << 20)  # the natural width, not the one clamped to the console
    return Measurement.get(console, unbounded, _table(probe, columns)).maximum


def grid_fits(grid: Grid, console: Console, width: int | None = None) -> bool:
    """Whether all of ``grid`` fits in one table of ``width`` (default: the console's) with no cell cut."""
    return needed_width(grid, range(len(grid.headers)), console) <= (width or console.width)


def fit(grid: Grid, console: Console, width: int | None = None) -> list[Table]:
    """``grid`` as one table if it fits ``width`` (default: the console's), else as column groups that each fit.

    Title and caption are not part of the tables (:func:`print_grid` prints them as lines wrapped at the width).
    """
    width = width or console.width
    cols = list(range(len(grid.headers)))
    if needed_width(grid, cols, console) <= width:
        return [_table(grid, cols)]
    if len(cols) <= grid.key + 1:
        return [_table(grid, cols, strict=False)]
    keys, rest = cols[: grid.key], cols[grid.key :]
    groups: list[list[int]] = [[rest[0]]]
    for c in rest[1:]:
        if needed_width(grid, [*keys, *groups[-1], c], console) <= width:
            groups[-1].append(c)
        else:
            groups.append([c])
    # a lone column too wide for the console (never seen in practice) wraps and folds instead of being cropped
    return [_table(grid, [*keys, *g], strict=needed_width(grid, [*keys, *g], console) <= width) for g in groups]


def print_grid(grid: Grid, console: Console) -> None:
    """Print ``grid`` fitted to ``console``: its title, the table(s), its caption (plain text wrapped at words)."""
    if grid.title:
        console.print(Text(grid.title, style="bold"))
    for t in fit(grid, console):
        console.print(t)
    if grid.caption:
        console.print(Text(grid.caption, style="dim"))
