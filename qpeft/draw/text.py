"""Unicode text diagrams of circuits (box-drawing characters, wire 0 on top).

Each wire is one text row, with a row between neighbouring wires for box
borders and connectors. Qubit wires are light lines (``─``), qudit wires
heavy ones (``━``) and labelled with their dimension. Lines are composed
per cell from the directions that meet there, so a box border meeting a
connector becomes ``┴`` and two stacked boxes share a ``├───┤`` border.

>>> from qpeft.ansatz import pauli
>>> print(draw_text(pauli(qubits=2, layers=1)))
     ┌──────────┐ layer 1   ┌──────────┐
q0: ─┤ RY(θ[0]) ├────┆────●─┤ RY(θ[2]) ├─
     ├──────────┤    ┆    │ ├──────────┤
q1: ─┤ RY(θ[1]) ├────┆────●─┤ RY(θ[3]) ├─
     └──────────┘           └──────────┘
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from rich.cells import get_character_cell_size

from qpeft.circuit import Circuit
from qpeft.circuit.gates import is_integer
from qpeft.draw.layout import (
    CONTROL,
    DOT,
    OPEN_CONTROL,
    SWAP,
    TARGET,
    Box,
    Layout,
    Placement,
    layout,
)
from qpeft.errors import ConfigError

LIGHT, HEAVY = "LIGHT", "HEAVY"
_MARK_SYMBOLS = {CONTROL: "●", OPEN_CONTROL: "○", DOT: "●", TARGET: "⊕", SWAP: "×"}
_BARRIER = "┆"
_CONTINUES, _CONTINUED = "»", "«"


def _line_characters() -> dict[frozenset, str]:
    """Box-drawing characters keyed by the directions they join and the
    weight of each, read from the Unicode names ("… UP LIGHT AND RIGHT HEAVY")."""
    directions = {"UP": "u", "DOWN": "d", "LEFT": "l", "RIGHT": "r",
                  "HORIZONTAL": "lr", "VERTICAL": "ud"}
    table: dict[frozenset, str] = {}
    for code in range(0x2500, 0x2580):
        words = unicodedata.name(chr(code)).split()[2:]
        if not set(words) <= {*directions, LIGHT, HEAVY, "AND"}:
            continue  # dashed, double, arc and diagonal lines
        weights: dict[str, str] = {}
        pending: list[str] = []
        prefix = None
        for word in words:
            if word in (LIGHT, HEAVY):
                if pending:  # "DOWN LIGHT": the weight follows its directions
                    weights.update(dict.fromkeys(pending, word))
                    pending, prefix = [], None
                else:  # "LIGHT DOWN": the weight precedes them
                    prefix = word
            elif word != "AND":
                for direction in directions[word]:
                    if prefix:
                        weights[direction] = prefix
                    else:
                        pending.append(direction)
        table.setdefault(frozenset(weights.items()), chr(code))
    return table


_LINES = _line_characters()


def _cells(text: str) -> list[str]:
    """``text`` split into terminal cells: a double-width character (CJK, most
    emoji) takes its cell and an empty one after it, a zero-width character
    (a combining accent) joins the cell before it, and a control character
    (a newline, a tab) is drawn as its Unicode control picture (``␊``, ``␉``)
    so that it cannot break the rows."""
    cells: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc":
            code = ord(char)
            char = chr(0x2400 + code) if code < 0x20 else "␡" if code == 0x7F else "\ufffd"
        elif category in ("Zl", "Zp"):  # line and paragraph separators break rows too
            char = "␤"
        size = get_character_cell_size(char)
        if size == 0 and cells:
            cells[-1] += char
        elif size == 2:
            cells += [char, ""]
        else:
            cells.append(char)
    return cells


def _width(text: str) -> int:
    """Terminal cells ``text`` takes."""
    return len(_cells(text))


class _Canvas:
    """A grid of cells; each holds either line directions or a literal character."""

    def __init__(self, rows: int, width: int) -> None:
        self.lines: list[list[dict[str, str]]] = [[{} for _ in range(width)] for _ in range(rows)]
        self.chars: list[list[str | None]] = [[None] * width for _ in range(rows)]

    def add(self, row: int, x: int, directions: str, weight: str = LIGHT) -> None:
        """Join more line directions at a cell (merging with what is there)."""
        for direction in directions:
            self.lines[row][x].setdefault(direction, weight)

    def replace(self, row: int, x: int, directions: dict[str, str]) -> None:
        self.lines[row][x] = dict(directions)
        self.chars[row][x] = None

    def put(self, row: int, x: int, text: str) -> None:
        """Write literal characters, over any line, one terminal cell each
        (see :func:`_cells`)."""
        for offset, cell in enumerate(_cells(text)):
            self.chars[row][x + offset] = cell

    def render(self) -> list[str]:
        out = []
        for line_row, char_row in zip(self.lines, self.chars):
            cells = []
            for directions, char in zip(line_row, char_row):
                if char is not None:
                    cells.append(char)
                elif directions:
                    key = frozenset(directions.items())
                    light = frozenset((d, LIGHT) for d in directions)
                    cells.append(_LINES.get(key) or _LINES[light])
                else:
                    cells.append(" ")
            out.append("".join(cells).rstrip())
        return out


@dataclass(frozen=True)
class _Extent:
    """A gate's width around its connector column: ``left`` + 1 + ``right``."""

    left: int
    right: int

    @property
    def width(self) -> int:
        return self.left + 1 + self.right


def _box_label(box: Box, show_parameters: bool) -> str:
    if show_parameters and box.angle is not None:
        return f"{box.name.text}({box.angle.text})"
    return box.name.text


def _pin_width(box: Box) -> int:
    return max((_width(text) for _, text in box.pins), default=0)


def _box_width(box: Box, show_parameters: bool) -> int:
    """Borders, a space either side of the label, and room for the pins."""
    pins = _pin_width(box)
    return _width(_box_label(box, show_parameters)) + 4 + (pins + 1 if pins else 0)


def _column_box_width(column: list[Placement], show_parameters: bool) -> int:
    """Boxes in one column share the widest box's width, so their borders line up."""
    return max((_box_width(p.glyph.box, show_parameters) for p in column
                if p.glyph is not None and p.glyph.box is not None), default=0)


def _extent(placement: Placement, box_width: int) -> _Extent:
    if placement.glyph is None:
        text = getattr(placement.gate, "text", "")
        width = max(1, _width(text))
        return _Extent((width - 1) // 2, width - 1 - (width - 1) // 2)
    left = right = 0
    if placement.glyph.box is not None:
        left, right = (box_width - 1) // 2, box_width - 1 - (box_width - 1) // 2
    for mark in placement.glyph.marks:
        right = max(right, len(mark.levels))
    return _Extent(left, right)


def draw_text(
    circuit: Circuit,
    *,
    width: int | None = 100,
    precision: int = 3,
    show_parameters: bool = True,
) -> str:
    """The circuit as a Unicode diagram, folded to ``width`` characters.

    ``width=None`` never folds. A folded diagram continues in blocks below,
    separated by a blank line; ``»`` ends a wire that continues and ``«``
    starts its continuation. ``precision`` is the number of significant
    digits of bound angles; ``show_parameters=False`` leaves angles out.

    >>> from qpeft.circuit import Circuit
    >>> print(draw_text(Circuit([3, 2]).givens(0, (0, 1), 0.5).gcz(0, 1)))
               ┌──────────┐ ┌─────┐
    q0 (d=3): ━┥ G01(0.5) ┝━┥     ┝━
               └──────────┘ │ CZd │
          q1: ──────────────┤     ├─
                            └─────┘
    """
    if width is not None and (not is_integer(width) or width < 1):
        raise ConfigError(f"width is a number of characters (>= 1) or None, got {width!r}")
    drawing = layout(circuit, precision=precision)
    columns = drawing.columns()
    box_widths = [_column_box_width(column, show_parameters) for column in columns]
    extents = [[_extent(p, w) for p in column] for column, w in zip(columns, box_widths)]
    widths = [max((e.width for e in column), default=1) for column in extents]
    labels = [drawing.wire_label(w).text for w in range(drawing.num_wires)]
    prefix = max(_width(label) for label in labels) + 2

    # Greedy folding: as many columns per block as fit in `width`.
    blocks: list[list[int]] = [[]]
    used = prefix + 1
    for index, column_width in enumerate(widths):
        # the column, the wire cell after it, and room for a » marker
        if width is not None and blocks[-1] and used + column_width + 2 > width:
            blocks.append([])
            used = prefix + 2  # « and a wire cell
        blocks[-1].append(index)
        used += column_width + 1
    texts = []
    for number, block in enumerate(blocks):
        texts.append(_draw_block(
            drawing, labels, prefix, block, columns, extents, widths, box_widths,
            show_parameters,
            continued=number > 0, continues=number < len(blocks) - 1,
        ))
    return "\n\n".join(texts)


def _draw_block(
    drawing: Layout,
    labels: list[str],
    prefix: int,
    block: list[int],
    columns: list[list[Placement]],
    extents: list[list[_Extent]],
    widths: list[int],
    box_widths: list[int],
    show_parameters: bool,
    *,
    continued: bool,
    continues: bool,
) -> str:
    rows = 2 * drawing.num_wires + 1
    start = prefix + (1 if continued else 0)
    total = start + 1 + sum(widths[c] + 1 for c in block) + (1 if continues else 0)
    canvas = _Canvas(rows, total)
    weights = [LIGHT if d == 2 else HEAVY for d in drawing.dims]
    for wire, label in enumerate(labels):
        row = 2 * wire + 1
        canvas.put(row, prefix - _width(label) - 2, f"{label}: ")
        for x in range(start, total - (1 if continues else 0)):
            canvas.add(row, x, "lr", weights[wire])
        if continued:
            canvas.put(row, prefix, _CONTINUED)
        if continues:
            canvas.put(row, total - 1, _CONTINUES)
    x = start + 1
    for c in block:
        for placement, extent in zip(columns[c], extents[c]):
            centre = x + (widths[c] - extent.width) // 2 + extent.left
            if placement.glyph is None:
                _draw_barrier(canvas, placement, centre, rows)
            else:
                _draw_gate(canvas, placement, centre, weights, box_widths[c], show_parameters)
        x += widths[c] + 1
    lines = canvas.render()
    while lines and not lines[0]:  # no border above the top wire in this block
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _draw_barrier(canvas: _Canvas, placement: Placement, centre: int, rows: int) -> None:
    text = getattr(placement.gate, "text", "")
    if text:
        canvas.put(0, centre - (_width(text) - 1) // 2, text)
    for row in range(2 * placement.top + 1, 2 * placement.bottom + 2):
        canvas.put(row, centre, _BARRIER)


def _draw_gate(
    canvas: _Canvas,
    placement: Placement,
    centre: int,
    weights: list[str],
    box_width: int,
    show_parameters: bool,
) -> None:
    glyph = placement.glyph
    assert glyph is not None
    # Connector: between consecutive elements, through the wires they cross.
    elements = glyph.elements
    for (_, upper_bottom, upper_box), (lower_top, _, lower_box) in zip(elements, elements[1:]):
        first = 2 * upper_bottom + (2 if upper_box else 1)
        last = 2 * lower_top + (0 if lower_box else 1)
        if upper_box:
            canvas.add(first, centre, "d")
        if lower_box:
            canvas.add(last, centre, "u")
        for row in range(first + 1, last):
            canvas.add(row, centre, "ud")
    for mark in glyph.marks:
        canvas.put(2 * mark.wire + 1, centre, _MARK_SYMBOLS[mark.kind] + mark.levels)
    if glyph.box is not None:
        _draw_box(canvas, glyph.box, centre, weights, box_width, show_parameters)


def _draw_box(
    canvas: _Canvas, box: Box, centre: int, weights: list[str], width: int, show_parameters: bool
) -> None:
    left = centre - (width - 1) // 2
    right = left + width - 1
    top, bottom = 2 * box.top, 2 * box.bottom + 2
    canvas.add(top, left, "rd")
    canvas.add(top, right, "ld")
    canvas.add(bottom, left, "ru")
    canvas.add(bottom, right, "lu")
    for x in range(left + 1, right):
        canvas.add(top, x, "lr")
        canvas.add(bottom, x, "lr")
    for row in range(top + 1, bottom):
        if row % 2:  # a wire row: the wire ends at the box's edges
            weight = weights[row // 2]
            canvas.replace(row, left, {"u": LIGHT, "d": LIGHT, "l": weight})
            canvas.replace(row, right, {"u": LIGHT, "d": LIGHT, "r": weight})
        else:
            canvas.add(row, left, "ud")
            canvas.add(row, right, "ud")
        canvas.put(row, left + 1, " " * (width - 2))
    pins = dict(box.pins)
    for wire, text in pins.items():
        canvas.put(2 * wire + 1, left + 1, text)
    # The label is centred, clear of the pins at the left edge.
    label = _box_label(box, show_parameters)
    pin_room = _pin_width(box) + 1 if pins else 0
    offset = max((width - 2 - _width(label)) // 2, pin_room)
    canvas.put(box.top + box.bottom + 1, left + 1 + offset, label)


__all__ = ["draw_text"]
