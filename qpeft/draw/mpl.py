"""Matplotlib drawings of circuits.

The figure is built on the Agg canvas directly (no pyplot, no window, no
global state): :func:`draw_mpl` returns a :class:`matplotlib.figure.Figure`
to save with ``savefig`` or to show in a notebook. Columns come from
:func:`qpeft.draw.layout.layout`, the same as the text drawer's.

Every gate's main artist carries the gid ``"qpeft-gate"`` and every
barrier line ``"qpeft-barrier"``, so a figure can be inspected (or styled
in an SVG) gate by gate.

>>> from qpeft.ansatz import pauli
>>> figure = draw_mpl(pauli(qubits=3, layers=1))
>>> sum(p.get_gid() == "qpeft-gate" for p in figure.axes[0].patches)
9
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle
from matplotlib.textpath import TextPath

from qpeft.circuit import Circuit
from qpeft.circuit.gates import is_integer, is_real_number
from qpeft.draw.layout import (
    CONTROL,
    DOT,
    OPEN_CONTROL,
    SWAP,
    TARGET,
    Box,
    Layout,
    Mark,
    Placement,
    layout,
)
from qpeft.errors import ConfigError

#: Fill colour of each glyph family (gate text is white on all of them).
FAMILY_COLORS = {
    "rotation": "#1192E8",
    "pauli": "#6929C4",
    "givens": "#007D79",
    "fixed": "#DA1E28",
    "entangler": "#002D9C",
    "sign": "#B28600",
    "unitary": "#6F6F6F",
}
WIRE_COLOR = "#161616"
BARRIER_COLOR = "#8D8D8D"

#: Inches per layout unit (the distance between two wires) at scale 1.
UNIT_INCHES = 0.6
# Font sizes in points at scale 1; the figure and the fonts scale together,
# so every size below in layout units is independent of `scale`.
NAME_SIZE, ANGLE_SIZE, SMALL_SIZE, WIRE_SIZE = 13.0, 9.0, 8.5, 14.0

BOX_HEIGHT = 0.66  # a one-wire box
BOX_PADDING = 0.26  # horizontal room around a label
COLUMN_GAP = 0.24
BARRIER_WIDTH = 0.5
DOT_RADIUS = 0.1
TARGET_RADIUS = 0.21
SWAP_HALF = 0.12
QUBIT_WIRE, QUDIT_WIRE = 1.2, 3.4  # line widths in points
ROW_GAP = 0.8  # between folded rows


@lru_cache(maxsize=4096)
def text_width(text: str, size: float, *, literal: bool = False) -> float:
    """Width of ``text`` (math text allowed, unless ``literal``) at font
    ``size``, in layout units."""
    if not text:
        return 0.0
    if literal:
        text = text.replace("$", r"\$")
    path = TextPath((0, 0), text, size=size, prop=FontProperties(family="DejaVu Sans"))
    return path.get_extents().width / 72.0 / UNIT_INCHES


@dataclass(frozen=True)
class _Extent:
    """How far a gate reaches left and right of its column's centre line."""

    left: float
    right: float


def _box_width(box: Box, show_parameters: bool) -> float:
    width = text_width(box.name.tex, NAME_SIZE)
    if show_parameters and box.angle is not None:
        width = max(width, text_width(box.angle.tex, ANGLE_SIZE))
    if box.pins:
        width += 2 * (max(text_width(t, SMALL_SIZE) for _, t in box.pins) + 0.08)
    return max(BOX_HEIGHT, width + BOX_PADDING)


def _mark_extent(mark: Mark) -> _Extent:
    half = {TARGET: TARGET_RADIUS, SWAP: SWAP_HALF}.get(mark.kind, DOT_RADIUS) + 0.1
    right = half + (text_width(mark.levels, SMALL_SIZE) + 0.05 if mark.levels else 0.0)
    return _Extent(half, right)


def _extent(placement: Placement, show_parameters: bool) -> _Extent:
    if placement.glyph is None:  # a barrier: as wide as its label, drawn centred above it
        label = getattr(placement.gate, "text", "")
        half = max(BARRIER_WIDTH, text_width(label, SMALL_SIZE + 1, literal=True) + 0.1) / 2
        return _Extent(half, half)
    left = right = 0.0
    if placement.glyph.box is not None:
        left = right = _box_width(placement.glyph.box, show_parameters) / 2
    for mark in placement.glyph.marks:
        extent = _mark_extent(mark)
        left, right = max(left, extent.left), max(right, extent.right)
    return _Extent(left, right)


def draw_mpl(
    circuit: Circuit,
    *,
    fold: int | None = 25,
    scale: float = 1.0,
    precision: int = 3,
    show_parameters: bool = True,
) -> Figure:
    """The circuit as a matplotlib figure, ``fold`` columns per row.

    ``fold=None`` draws a single row. ``scale`` enlarges the figure and its
    fonts together. ``precision`` is the number of significant digits of
    bound angles; ``show_parameters=False`` leaves angles out of the boxes.

    >>> from qpeft.ansatz import real_amplitudes
    >>> figure = draw_mpl(real_amplitudes(qubits=3, layers=4), fold=8)  # 17 columns
    >>> sum(text.get_text() == "$q_{0}$" for text in figure.axes[0].texts)  # rows
    3
    """
    if fold is not None and (not is_integer(fold) or fold < 1):
        raise ConfigError(f"fold is a number of columns per row (>= 1) or None, got {fold!r}")
    if not is_real_number(scale) or not 0 < scale < math.inf:
        raise ConfigError(f"scale must be a positive finite number, got {scale!r}")
    drawing = layout(circuit, precision=precision)
    columns = drawing.columns() or [[]]
    extents = [[_extent(p, show_parameters) for p in column] for column in columns]
    lefts = [max((e.left for e in column), default=0.3) for column in extents]
    rights = [max((e.right for e in column), default=0.3) for column in extents]
    per_row = len(columns) if fold is None else fold
    rows = [list(range(start, min(start + per_row, len(columns))))
            for start in range(0, len(columns), per_row)]

    label_width = max(_wire_label_width(drawing, w) for w in range(drawing.num_wires)) + 0.3
    has_labels = any(getattr(p.gate, "text", "") for p in drawing.placements if p.is_barrier)
    top_margin = 0.95 if has_labels else 0.6
    row_height = top_margin + (drawing.num_wires - 1) + 0.6
    row_widths = [
        label_width + 0.25 + sum(lefts[c] + rights[c] + COLUMN_GAP for c in row) + 0.1
        for row in rows
    ]
    width = max(row_widths)
    height = len(rows) * row_height + (len(rows) - 1) * ROW_GAP

    figure = Figure(figsize=(width * UNIT_INCHES * scale, height * UNIT_INCHES * scale))
    FigureCanvasAgg(figure)
    figure.patch.set_facecolor("white")
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, width)
    axes.set_ylim(-height, 0)
    axes.set_axis_off()
    painter = _Painter(axes, scale, show_parameters)

    for number, row in enumerate(rows):
        top = -(number * (row_height + ROW_GAP) + top_margin)  # y of wire 0
        wire_y = [top - w for w in range(drawing.num_wires)]
        painter.wires(drawing, wire_y, label_width, row_widths[number])
        x = label_width + 0.25
        for c in row:
            centre = x + COLUMN_GAP / 2 + lefts[c]
            for placement in columns[c]:
                if placement.glyph is None:
                    painter.barrier(placement, centre, wire_y)
                else:
                    painter.gate(placement, centre, wire_y)
            x += lefts[c] + rights[c] + COLUMN_GAP
    return figure


def _wire_label_width(drawing: Layout, wire: int) -> float:
    width = text_width(drawing.wire_label(wire).tex, WIRE_SIZE)
    if drawing.dims[wire] != 2:
        width = max(width, text_width(f"d={drawing.dims[wire]}", SMALL_SIZE))
    return width


class _Painter:
    """Adds the artists of wires, gates and barriers to one axes."""

    def __init__(self, axes, scale: float, show_parameters: bool) -> None:
        self.axes = axes
        self.scale = scale
        self.show_parameters = show_parameters

    def text(self, x: float, y: float, text: str, size: float, **options) -> None:
        options.setdefault("ha", "center")
        options.setdefault("va", "center")
        options.setdefault("color", "white")
        self.axes.text(x, y, text, fontsize=size * self.scale, zorder=5, **options)

    def line(self, xs, ys, color: str, width: float, zorder: float, **options) -> Line2D:
        line = Line2D(xs, ys, color=color, linewidth=width * self.scale, zorder=zorder,
                      solid_capstyle="butt", **options)
        self.axes.add_line(line)
        return line

    def wires(self, drawing: Layout, wire_y: list[float], label_width: float, end: float) -> None:
        for wire, y in enumerate(wire_y):
            d = drawing.dims[wire]
            self.line([label_width + 0.15, end], [y, y], WIRE_COLOR,
                      QUBIT_WIRE if d == 2 else QUDIT_WIRE, zorder=1)
            label = drawing.wire_label(wire).tex
            if d == 2:
                self.text(label_width, y, label, WIRE_SIZE, ha="right", color=WIRE_COLOR)
            else:
                self.text(label_width, y + 0.12, label, WIRE_SIZE, ha="right", color=WIRE_COLOR)
                self.text(label_width, y - 0.26, f"d={d}", SMALL_SIZE, ha="right",
                          color=WIRE_COLOR)

    def barrier(self, placement: Placement, x: float, wire_y: list[float]) -> None:
        y_top, y_bottom = wire_y[placement.top] + 0.45, wire_y[placement.bottom] - 0.45
        self.axes.add_patch(Rectangle(
            (x - 0.13, y_bottom), 0.26, y_top - y_bottom, facecolor="#E0E0E0",
            edgecolor="none", zorder=1.5,
        ))
        line = self.line([x, x], [y_bottom, y_top], BARRIER_COLOR, 1.3, zorder=1.6,
                         linestyle=(0, (4, 3)))
        line.set_gid("qpeft-barrier")
        text = getattr(placement.gate, "text", "")
        if text:
            self.text(x, y_top + 0.08, text, SMALL_SIZE + 1, va="bottom", color=WIRE_COLOR,
                      parse_math=False)  # the user's words, drawn as written

    def gate(self, placement: Placement, x: float, wire_y: list[float]) -> None:
        glyph = placement.glyph
        assert glyph is not None
        color = FAMILY_COLORS[glyph.family]
        first = None
        elements = glyph.elements
        if len(elements) > 1:
            ys = [wire_y[elements[0][0]], wire_y[elements[-1][1]]]
            self.line([x, x], ys, color, 2.0, zorder=2)
        if glyph.box is not None:
            first = self.box(glyph.box, x, wire_y, color)
        for mark in glyph.marks:
            patch = self.mark(mark, x, wire_y[mark.wire], color)
            first = first or patch
        assert first is not None
        first.set_gid("qpeft-gate")

    def box(self, box: Box, x: float, wire_y: list[float], color: str) -> FancyBboxPatch:
        width = _box_width(box, self.show_parameters)
        top = wire_y[box.top] + BOX_HEIGHT / 2
        bottom = wire_y[box.bottom] - BOX_HEIGHT / 2
        patch = FancyBboxPatch(
            (x - width / 2, bottom), width, top - bottom,
            boxstyle="round,pad=0,rounding_size=0.07", facecolor=color, edgecolor=color,
            linewidth=0.8 * self.scale, zorder=3,
        )
        self.axes.add_patch(patch)
        middle = (top + bottom) / 2
        if self.show_parameters and box.angle is not None:
            self.text(x, middle + 0.12, box.name.tex, NAME_SIZE)
            self.text(x, middle - 0.17, box.angle.tex, ANGLE_SIZE)
        else:
            self.text(x, middle, box.name.tex, NAME_SIZE)
        for wire, pin in box.pins:
            self.text(x - width / 2 + 0.07, wire_y[wire], pin, SMALL_SIZE, ha="left")
        return patch

    def mark(self, mark: Mark, x: float, y: float, color: str):
        if mark.kind in (CONTROL, DOT):
            patch = Circle((x, y), DOT_RADIUS, facecolor=color, edgecolor=color, zorder=3)
        elif mark.kind == OPEN_CONTROL:
            patch = Circle((x, y), DOT_RADIUS, facecolor="white", edgecolor=color,
                           linewidth=2 * self.scale, zorder=3)
        elif mark.kind == TARGET:
            patch = Circle((x, y), TARGET_RADIUS, facecolor=color, edgecolor=color, zorder=3)
            arm = TARGET_RADIUS * 0.6
            self.line([x - arm, x + arm], [y, y], "white", 2.0, zorder=4)
            self.line([x, x], [y - arm, y + arm], "white", 2.0, zorder=4)
        elif mark.kind == SWAP:
            # an invisible disc holds the gid; the cross is two lines
            patch = Circle((x, y), SWAP_HALF, facecolor="none", edgecolor="none", zorder=3)
            for sign in (1, -1):
                self.line([x - SWAP_HALF, x + SWAP_HALF], [y - sign * SWAP_HALF,
                          y + sign * SWAP_HALF], color, 2.2, zorder=3)
        else:  # pragma: no cover - every mark kind is handled above
            raise ConfigError(f"unknown mark {mark.kind!r}")
        self.axes.add_patch(patch)
        if mark.levels:
            self.text(x + DOT_RADIUS + 0.04, y + DOT_RADIUS, mark.levels, SMALL_SIZE,
                      ha="left", va="bottom", color=color)
        return patch


__all__ = ["BARRIER_COLOR", "FAMILY_COLORS", "UNIT_INCHES", "WIRE_COLOR", "draw_mpl",
           "text_width"]
