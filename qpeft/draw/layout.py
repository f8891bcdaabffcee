"""What both drawers share: where each gate goes and what it looks like.

:func:`layout` places every gate of a circuit in a column: a gate goes in
the first column after the last gate on any wire it spans, counting the
wires between its lowest and highest wire (the vertical connector of a
two-wire gate crosses them). A barrier takes a column of its own across
all wires. Each placed gate carries a :class:`Glyph`, an output-neutral
description (a labelled box, control dots, ⊕ targets, swap crosses) that
the text and matplotlib drawers render in their own medium.

Labels come in two spellings: plain Unicode for text (``RY(θ[3])``) and
matplotlib math text for images (``$R_Y$``, ``$\\theta_{3}$``).

>>> from qpeft.ansatz import pauli
>>> drawing = layout(pauli(qubits=3, layers=1))
>>> drawing.num_columns
6
>>> [p.glyph.box.name.text for p in drawing.column(0)]
['RY', 'RY', 'RY']
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from qpeft.circuit import (
    Barrier,
    Circuit,
    Controlled,
    Expression,
    Gate,
    Givens,
    PauliRotation,
    SignDiagonal,
    StandardGate,
    Unitary,
    barrier_of,
)
from qpeft.circuit.gates import is_integer
from qpeft.errors import ConfigError

#: Glyph families; the matplotlib drawer colours each family differently.
FAMILIES = ("rotation", "pauli", "givens", "fixed", "entangler", "sign", "unitary")

# Greek parameter names drawn as letters (``theta[3]`` -> θ[3], $\theta_{3}$).
# "pi" is left out on purpose: π is how bound multiples of pi are written.
_GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "zeta": "ζ",
    "eta": "η", "theta": "θ", "iota": "ι", "kappa": "κ", "lambda": "λ", "mu": "μ",
    "nu": "ν", "xi": "ξ", "rho": "ρ", "sigma": "σ", "tau": "τ", "upsilon": "υ",
    "phi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
}

# a bracket index as it can appear in a parameter name (``w[1]``, never ``w[01]``)
_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")

# Marks: what a gate draws on a single wire.
CONTROL = "control"  # filled dot: active when the wire is in the given level(s)
OPEN_CONTROL = "open_control"  # hollow dot: a qubit control active on |0>
DOT = "dot"  # one end of a symmetric phase gate (CZ)
TARGET = "target"  # ⊕ of a CX
SWAP = "swap"  # × of a SWAP


@dataclass(frozen=True)
class Label:
    """A label in both spellings: ``text`` (Unicode) and ``tex`` (math text)."""

    text: str
    tex: str


@dataclass(frozen=True)
class Mark:
    """A symbol on one wire: a control dot, a ⊕ target, a swap cross.

    ``levels`` names the control levels where they are not the obvious
    ``|1>`` of a qubit (``"[0,1]"`` for a qutrit control active on 0 and 1).
    """

    wire: int
    kind: str
    levels: str = ""


@dataclass(frozen=True)
class Box:
    """A labelled box covering wires ``top`` … ``bottom`` (all wires between,
    too). ``pins`` are short texts written at the box's left edge on single
    wires: the Pauli letter of a multi-qubit rotation, a wire's position in
    the gate's matrix, a control dot that falls inside the box."""

    top: int
    bottom: int
    name: Label
    angle: Label | None = None
    pins: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Glyph:
    """How one gate looks: an optional box, marks on single wires, and a
    vertical connector joining them when there is more than one element."""

    family: str
    box: Box | None = None
    marks: tuple[Mark, ...] = ()

    @property
    def elements(self) -> list[tuple[int, int, bool]]:
        """``(top wire, bottom wire, is_box)`` of every element, top first."""
        items = [(m.wire, m.wire, False) for m in self.marks]
        if self.box is not None:
            items.append((self.box.top, self.box.bottom, True))
        return sorted(items)


@dataclass(frozen=True)
class Placement:
    """One gate in its column. ``glyph`` is ``None`` for a barrier, and
    ``gate`` then the barrier itself (for a controlled barrier too)."""

    index: int
    gate: Gate
    column: int
    glyph: Glyph | None

    @property
    def is_barrier(self) -> bool:
        return self.glyph is None

    @property
    def top(self) -> int:
        return min(self.gate.wires)

    @property
    def bottom(self) -> int:
        return max(self.gate.wires)


@dataclass(frozen=True)
class Layout:
    """A circuit cut into columns. ``placements`` are in circuit order."""

    dims: tuple[int, ...]
    placements: tuple[Placement, ...]
    num_columns: int

    @property
    def num_wires(self) -> int:
        return len(self.dims)

    def column(self, index: int) -> list[Placement]:
        """The placements in column ``index``, top wire first."""
        return sorted((p for p in self.placements if p.column == index), key=lambda p: p.top)

    def columns(self) -> list[list[Placement]]:
        """Every column, left to right."""
        out: list[list[Placement]] = [[] for _ in range(self.num_columns)]
        for placement in sorted(self.placements, key=lambda p: p.top):
            out[placement.column].append(placement)
        return out

    def is_barrier_column(self, index: int) -> bool:
        return any(p.is_barrier for p in self.placements if p.column == index)

    def wire_sequence(self, wire: int, *, barriers: bool = False) -> list[Placement]:
        """The gates acting on ``wire``, in drawing order (left to right)."""
        return sorted(
            (p for p in self.placements
             if wire in p.gate.wires and (barriers or not p.is_barrier)),
            key=lambda p: p.column,
        )

    def wire_label(self, wire: int) -> Label:
        """``q0`` for a qubit, ``q0 (d=3)`` for a qudit."""
        d = self.dims[wire]
        suffix = "" if d == 2 else f" (d={d})"
        return Label(f"q{wire}{suffix}", f"$q_{{{wire}}}$")


def layout(circuit: Circuit, *, precision: int = 3) -> Layout:
    """Place the gates of ``circuit`` in columns and describe each one.

    ``precision`` is the number of significant digits of bound angles.
    """
    check_precision(precision)
    level = [0] * circuit.num_wires
    placements = []
    for index, gate in enumerate(circuit.gates):
        barrier = barrier_of(gate)
        if barrier is not None:  # a controlled barrier is drawn as its barrier
            column = max(level)
            level = [column + 1] * circuit.num_wires
            placements.append(Placement(index, barrier, column, None))
            continue
        lo, hi = min(gate.wires), max(gate.wires)
        column = max(level[lo:hi + 1])
        level[lo:hi + 1] = [column + 1] * (hi - lo + 1)
        glyph = describe(gate, circuit.wire_dims(gate.wires), precision)
        placements.append(Placement(index, gate, column, glyph))
    return Layout(circuit.dims, tuple(placements), max(level, default=0))


def check_precision(precision: int) -> None:
    if not is_integer(precision) or precision < 1:
        raise ConfigError(f"precision is a number of significant digits >= 1, got {precision!r}")


# ----------------------------------------------------------------------------
# labels


def format_number(value: float, precision: int = 3, *, tex: bool = False) -> str:
    """A bound angle: a small multiple of π when it is one, else ``precision``
    significant digits.

    >>> format_number(math.pi / 2), format_number(-3 * math.pi / 4), format_number(0.123456)
    ('π/2', '-3π/4', '0.123')
    >>> format_number(2 * math.pi, tex=True)
    '2\\\\pi'
    """
    if value == 0:
        return "0"
    pi = r"\pi" if tex else "π"
    ratio = value / math.pi
    for denominator in range(1, 17):
        numerator = round(ratio * denominator)
        if numerator and abs(numerator) <= 64 and abs(
            value - numerator * math.pi / denominator
        ) < 1e-9:
            sign = "-" if numerator < 0 else ""
            count = "" if abs(numerator) == 1 else str(abs(numerator))
            under = "" if denominator == 1 else f"/{denominator}"
            return f"{sign}{count}{pi}{under}"
    text = f"{value:.{precision}g}"
    if tex and "e" in text:
        mantissa, exponent = text.split("e")
        text = rf"{mantissa}\times10^{{{int(exponent)}}}"
    return text


def format_symbol(name: str, *, tex: bool = False) -> str:
    """A parameter name: Greek names as letters, the index as a subscript in
    math text. Distinct names give distinct labels in both spellings.

    >>> format_symbol("theta[3]"), format_symbol("theta_b0[2]", tex=True)
    ('θ[3]', '\\\\theta_{b0,2}')
    >>> format_symbol("w", tex=True), format_symbol("scale[1]", tex=True)
    ('w', '\\\\mathrm{scale}_{1}')

    Underscores become subscripts only where the subscripts name one
    parameter: never for an empty part (``x__y``), nor, without a ``[k]``
    index, for a last part that could be one (``w_1`` beside ``w[1]``).
    Those names keep their underscores, as in the text spelling:

    >>> format_symbol("w_1", tex=True), format_symbol("w[1]", tex=True)
    ('w\\\\mathrm{\\\\_1}', 'w_{1}')
    >>> format_symbol("x_y", tex=True), format_symbol("x__y", tex=True)
    ('x_{y}', 'x\\\\mathrm{\\\\_\\\\_y}')
    >>> format_symbol("scale_1", tex=True), format_symbol("_x[2]", tex=True)
    ('\\\\mathrm{scale\\\\_1}', '\\\\mathrm{\\\\_x}_{2}')
    """
    base, bracket, rest = name.partition("[")
    head, *suffixes = base.split("_")
    if not tex:
        return _GREEK.get(head, head) + "".join("_" + s for s in suffixes) + bracket + rest
    index = [rest.rstrip("]")] if bracket else []
    looks_like_index = bool(suffixes) and _INDEX.match(suffixes[-1]) is not None
    if head and all(suffixes) and (bracket or not looks_like_index):
        subscripts = suffixes + index
        return _tex_head(head) + (f"_{{{','.join(subscripts)}}}" if subscripts else "")
    # No letter to hang subscripts on ("_x"), or subscripts that would read as
    # another name: write the underscores out, and only the index below.
    tail = base[len(head):].replace("_", r"\_")
    if head in _GREEK or len(head) == 1:
        symbol = _tex_head(head) + rf"\mathrm{{{tail}}}"
    else:  # a word (or nothing) and its tail in one upright run
        symbol = rf"\mathrm{{{head}{tail}}}"
    return symbol + (f"_{{{index[0]}}}" if index else "")


def _tex_head(head: str) -> str:
    """The math text of a name's head: a Greek letter, an italic single
    letter, or an upright word."""
    if head in _GREEK:
        return "\\" + head
    if len(head) == 1:
        return head
    return rf"\mathrm{{{head}}}"


def format_angle(angle: Expression, precision: int = 3, *, tex: bool = False) -> str:
    """An affine angle ``c + Σ a·θ`` as a short label.

    >>> from qpeft.circuit import Parameter
    >>> format_angle(2 * Parameter("theta[1]") - 0.5)
    '2·θ[1]-0.5'
    >>> format_angle(-Parameter("phi") + math.pi / 2, tex=True)
    '-\\\\phi+\\\\pi/2'
    """
    times = r"\," if tex else "·"
    parts: list[str] = []
    for name, coefficient in angle.terms:
        symbol = format_symbol(name, tex=tex)
        if coefficient == 1.0:
            text = symbol
        elif coefficient == -1.0:
            text = "-" + symbol
        else:
            text = format_number(coefficient, precision, tex=tex) + times + symbol
        parts.append(text if not parts or text.startswith("-") else "+" + text)
    if angle.constant != 0.0 or not parts:
        text = format_number(angle.constant, precision, tex=tex)
        parts.append(text if not parts or text.startswith("-") else "+" + text)
    return "".join(parts)


def _name(text: str, tex: str) -> Label:
    return Label(text, f"${tex}$")


def _angle(gate: Gate, precision: int) -> Label:
    (angle,) = gate.params
    return Label(format_angle(angle, precision), f"${format_angle(angle, precision, tex=True)}$")


def _order_pins(wires: Sequence[int]) -> tuple[tuple[int, str], ...]:
    """Index pins for a multi-wire box whose wire order is not top to bottom
    without gaps (the order of a matrix's factors must then be shown)."""
    if len(wires) < 2 or list(wires) == list(range(wires[0], wires[0] + len(wires))):
        return ()
    return tuple((w, str(i)) for i, w in enumerate(wires))


def _span_box(wires: Sequence[int], name: Label, angle: Label | None = None, pins=()) -> Box:
    return Box(min(wires), max(wires), name, angle, tuple(pins))


# ----------------------------------------------------------------------------
# glyphs


def describe(gate: Gate, dims: Sequence[int], precision: int = 3) -> Glyph:
    """The :class:`Glyph` of one gate on wires of dimensions ``dims``.

    >>> from qpeft.circuit import CX
    >>> describe(CX(0, 2), (2, 2)).marks
    (Mark(wire=0, kind='control', levels=''), Mark(wire=2, kind='target', levels=''))
    """
    if isinstance(gate, PauliRotation):
        if len(gate.wires) == 1:
            name = _name(gate.name, f"R_{gate.pauli}")
            return Glyph("rotation", _span_box(gate.wires, name, _angle(gate, precision)))
        name = _name(gate.name, f"R_{{{gate.pauli}}}")
        pins = tuple(zip(gate.wires, gate.pauli))
        return Glyph("pauli", _span_box(gate.wires, name, _angle(gate, precision), pins))
    if isinstance(gate, Givens):
        if len(gate.pairs) > 1:
            count = len(gate.pairs)
            name = Label(f"G×{count}", f"$G_{{\\times {count}}}$")
            return Glyph("givens", _span_box(gate.wires, name, _angle(gate, precision)))
        i, j = gate.levels
        short = max(gate.levels) < 10
        name = Label(f"G{i}{j}" if short else f"G[{i},{j}]",
                     f"$G_{{{i}{j}}}$" if short else f"$G_{{{i},{j}}}$")
        return Glyph("givens", _span_box(gate.wires, name, _angle(gate, precision)))
    if isinstance(gate, StandardGate):
        a, *rest = gate.wires
        if gate.gate == "CZ":
            return Glyph("entangler", marks=(Mark(a, DOT), Mark(rest[0], DOT)))
        if gate.gate == "CX":
            return Glyph("entangler", marks=(Mark(a, CONTROL), Mark(rest[0], TARGET)))
        if gate.gate == "SWAP":
            return Glyph("entangler", marks=(Mark(a, SWAP), Mark(rest[0], SWAP)))
        return Glyph("fixed", _span_box(gate.wires, _name(gate.gate, gate.gate)))
    if isinstance(gate, SignDiagonal):
        if gate.signs is None:
            if all(d == 2 for d in dims):
                return Glyph("entangler", marks=tuple(Mark(w, DOT) for w in gate.wires))
            return Glyph("entangler", _span_box(gate.wires, _name("CZd", "CZ_d")))
        box = _span_box(gate.wires, _name("±1", r"\pm 1"), pins=_order_pins(gate.wires))
        return Glyph("sign", box)
    if isinstance(gate, Unitary):
        return Glyph("unitary", _span_box(gate.wires, _name("U", "U"),
                                          pins=_order_pins(gate.wires)))
    if isinstance(gate, Controlled):
        return _controlled(gate, dims, precision)
    if isinstance(gate, Barrier):
        raise ConfigError("a barrier has no glyph; layout() draws it as a dashed line")
    # A gate class this drawer does not know: a plain box with its label.
    return Glyph("unitary", _span_box(gate.wires, Label(gate.label, gate.label.replace("$", ""))))


def control_marks(gate: Controlled, dims: Sequence[int]) -> list[Mark]:
    """The dots of a controlled gate's control wires."""
    marks = []
    for position, wire in enumerate(gate.controls):
        d = dims[position]
        allowed = (
            tuple(gate.control_values[position]) if gate.control_values is not None else (d - 1,)
        )
        if d == 2 and allowed == (1,):
            marks.append(Mark(wire, CONTROL))
        elif d == 2 and allowed == (0,):
            marks.append(Mark(wire, OPEN_CONTROL))
        else:
            marks.append(Mark(wire, CONTROL, "[" + ",".join(str(v) for v in allowed) + "]"))
    return marks


def _controlled(gate: Controlled, dims: Sequence[int], precision: int) -> Glyph:
    n = len(gate.controls)
    base = describe(gate.base, dims[n:], precision)
    controls = control_marks(gate, dims)
    box = base.box
    if box is not None and any(box.top <= m.wire <= box.bottom for m in controls):
        # A control between the wires of the base's box: the box grows to every wire
        # of the gate, and every mark inside it (the base's own controls of a nested
        # controlled gate too) is written in it.
        symbols = {CONTROL: "●", OPEN_CONTROL: "○", DOT: "●", TARGET: "⊕", SWAP: "×"}
        marks = tuple(controls) + base.marks
        pins = tuple((m.wire, symbols[m.kind] + m.levels) for m in marks) + box.pins
        box = _span_box([*gate.wires], box.name, box.angle, pins)
        return Glyph(base.family, box, ())
    return Glyph(base.family, box, tuple(controls) + base.marks)


__all__ = [
    "CONTROL", "DOT", "FAMILIES", "OPEN_CONTROL", "SWAP", "TARGET", "Box", "Glyph", "Label",
    "Layout", "Mark", "Placement", "check_precision", "control_marks", "describe",
    "format_angle", "format_number", "format_symbol", "layout",
]
