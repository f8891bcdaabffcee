"""Evaluate a circuit's first columns as a matrix product state.

For circuits whose gates are one-wire gates and *constant diagonal* gates on
neighbouring wires (CZ, the generalized CZ, controlled phases with a fixed
angle), on qubits that may follow wires of more levels: the Quantum-PEFT
Pauli ansatz, the qudit ansatz of ``for_dimension`` and every brickwork of
rotations and CZ.

**Bonds.** A diagonal gate ``g`` on wires ``(a, a+1)`` is
``Σ_b |b⟩⟨b| ⊗ diag(g[b, ·])`` (the projector on the wire of fewer levels): a
sum of products, one term per value of a *bond* ``b`` shared by the two
wires. Every column of the unitary is therefore a matrix product state: wire
``q`` contributes a tensor ``A_q[l, x, c, r]`` (output digit ``x``, input
digit ``c``, left and right bond indices ``l`` and ``r``, ``χ = 2^E`` values
for ``E`` diagonal gates across a cut of qubits), and
``U[x, c] = A_0[·, x_0, c_0, ·] A_1[·, x_1, c_1, ·] ⋯`` as a product of small
matrices. With ``L`` layers of the brickwork, ``χ = 2^L``.

**One wire's tensor.** Between diagonal gates, a wire's one-wire gates fuse
into ``T`` segment matrices ``M_t``. With the bonds fixed, the wire's
operator is ``M_{T−1} D_{T−1} ⋯ D_1 M_0`` with diagonal ``D_t``, so
``A[l, x, c, r] = Σ_y D[l, y, r] · W[y, x, c]`` where ``y`` runs over the
``d^{T−1}`` digit paths between segments, ``W[y, x, c] = Π_t M_t[y_{t+1}, y_t]``
(one gather and one product for all qubits at once) and ``D`` is a constant
table fixed at compile time.

**The contraction.** The first ``K`` columns vary only the last
``m = ⌈log₂ K⌉`` input digits, so the other wires are taken at ``c = 0``.
The qubits are contracted by balanced trees of batched matrix products
(``⌈log₂ n⌉`` levels), the wires of more levels before them one after the
other, and one final product of an ``(N/2^m) × χ`` and a ``χ × 4^m`` matrix
gives the ``N × 2^m`` block holding the columns.

**Cost.** ``O(N·2^m·χ)`` multiply-adds for the last product and
``O(N·χ²/2^m)`` in the tree, against ``O(L·log N·N·K)`` for the gate-by-gate
columns method; 44 tensor calls for a forward and backward pass at
N = 1024, a number independent of ``L``, in one :class:`torch.autograd.Function`
with a written-out backward that, in eager mode, writes into a
:class:`_Workspace` and replays its recorded operations. Each wire's table
grows as ``χ² · 2^T`` (``2^(4L+4)`` numbers for the brickwork), so
``method="auto"`` takes this method up to :data:`AUTO_TABLE`.

>>> import torch
>>> from qpeft.ansatz import pauli
>>> circuit = pauli(6, 2)
>>> network = MatrixProductNetwork(circuit, columns=[0, 1, 2], dtype=torch.float64)
>>> values = torch.randn(4, circuit.num_parameters, dtype=torch.float64)
>>> U = network(values)
>>> U.shape
torch.Size([4, 64, 3])
>>> bool(torch.allclose(U[2], torch.as_tensor(circuit.matrix(values[2]))[:, :3]))
True
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn import functional
from torch.overrides import TorchFunctionMode

from qpeft.circuit import Circuit
from qpeft.circuit.gates import COMPLEX_OF, FixedGate
from qpeft.compiler.blocks import (
    autocast_off,
    plain_operations,
    refuse_forward_mode,
    refuse_second_derivatives,
)
from qpeft.errors import CompileError, ParameterError

#: The most numbers in one wire's table, the linear map from its d^(T−1)·d·2 path
#: weights (T segments, d levels) to its χ_l·d·2·χ_r tensor: 2^20 takes the Pauli
#: brickwork up to L = 4 (2^(2L+2) · 2^(2L+2) numbers for L layers).
MAX_TABLE = 2**20
#: ``method="auto"`` picks mps up to this size (L ≤ 3): beyond it the tables and the
#: tree's χ³ products cost more than the gate schedule (pauli(10, 4), K = 4:
#: 3.87 ms against 1.26 ms forward and backward; pauli(10, 3): 0.48 against 0.97 ms).
AUTO_TABLE = 2**16
#: ... and while the tree of the m column wires (the last input digits the columns
#: vary), 4^m·χ² numbers, stays within this many times the N·K frame, or within
#: AUTO_TABLE numbers (where both methods are bound by their count of operations).
#: Columns spread out ([0, N/2 − 1]: m = log₂ N − 1) or a K near N/2 make it grow as
#: 4^m, where the gate schedule's cost grows as K (forward and backward, one thread:
#: pauli(8, 2), K = 128: 1.75 ms against 0.98 ms for the schedule; K = 64: 0.64
#: against 0.83 ms; pauli(12, 2), K = 128: 2.33 against 13.8 ms).
AUTO_BLOCK = 4


@dataclass
class _Wire:
    """One wire's timeline: segments of one-wire factors, and the diagonal
    gates met between them."""

    dim: int
    segments: list[list[int]] = field(default_factory=lambda: [[]])  # factor rows
    # (digit slot y_t, cut, position on that cut, projector side?, table[projector, own digit])
    events: list[tuple[int, int, int, bool, np.ndarray]] = field(default_factory=list)

    def event_slot(self) -> int:
        """The digit slot y_t a diagonal gate meets now (closing the open segment
        unless it is an empty one between two diagonal gates)."""
        last = self.segments[-1]
        if last or len(self.segments) == 1:
            self.segments.append([])
        return len(self.segments) - 1


@dataclass
class WireGroup:
    """Wires of one dimension d whose tensors are built together. Factor
    position ``(w, t, g)`` is factor ``g`` of segment ``t`` of the group's
    wire ``w`` (applied in order of ``g``; identity where a segment has fewer)."""

    wires: tuple[int, ...]
    dim: int  # d
    segments: int  # T
    depth: int  # G
    fixed: np.ndarray  # (w, T, G, d, d): factor = fixed + cos(θ/2)·projector + sin(θ/2)·step
    projector: np.ndarray
    step: np.ndarray
    weights: np.ndarray  # (w·T·G, P): θ/2 = offset + weights · values
    offset: np.ndarray  # (w·T·G,)
    bond_table: np.ndarray  # (w, χ_l, d^(T−1), χ_r): the diagonal factors along each path

    @property
    def is_real(self) -> bool:
        return all(np.abs(np.imag(part)).max(initial=0.0) == 0
                   for part in (self.fixed, self.step, self.bond_table))


@dataclass
class Layout:
    """What :class:`MatrixProductNetwork` precomputes from a circuit: the qubit
    wires as one group, and each wire of more levels before them on its own."""

    head: list[WireGroup]
    qubits: WireGroup
    bond: int  # χ of the qubits' cuts
    table: int  # numbers in the largest wire's table (see MAX_TABLE)

    @property
    def is_real(self) -> bool:
        return self.qubits.is_real and all(group.is_real for group in self.head)


def mps_layout(circuit: Circuit) -> Layout:
    """The circuit's matrix product layout, or a :class:`CompileError` saying
    why the circuit does not have one."""
    dims = circuit.dims
    head = next((w for w, d in enumerate(dims) if d == 2), len(dims))
    if head == len(dims) or any(d != 2 for d in dims[head:]):
        raise CompileError(
            f"method='mps' needs qubit wires, after any wires of more levels (the layout of "
            f"for_dimension), and this circuit has wires of {list(dims)} levels; use "
            "method='columns'"
        )
    n = len(dims)
    names = {name: i for i, name in enumerate(circuit.parameters)}
    wires = [_Wire(d) for d in dims]
    factors: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]] = []
    radices: list[list[int]] = [[] for _ in range(max(n - 1, 0))]  # per cut, per event
    for gate in circuit.gates:
        if gate.is_identity:
            continue
        if len(gate.wires) == 1:
            factors.append(_factor(gate, dims[gate.wires[0]], names))
            wires[gate.wires[0]].segments[-1].append(len(factors) - 1)
            continue
        a, b = gate.wires if len(gate.wires) == 2 else (None, None)
        constant = all(expression.is_constant for expression in gate.params)
        local = tuple(dims[w] for w in gate.wires)
        matrix = np.asarray(_constant(gate, local)) if constant and a is not None else None
        if matrix is None or abs(a - b) != 1 or np.abs(matrix - np.diag(np.diag(matrix))).max() > 0:
            raise CompileError(
                f"method='mps' takes one-wire gates and constant diagonal gates on neighbouring "
                f"wires (CZ), and {gate.name} on wires {list(gate.wires)} is neither; use "
                "method='columns'"
            )
        table = np.diag(matrix).reshape(dims[a], dims[b])  # [digit of a, digit of b]
        if a > b:
            a, b, table = b, a, table.T
        projector = a if dims[a] <= dims[b] else b  # the bond takes its levels
        last = [wires[w].events[-1] if wires[w].events else None for w in (a, b)]
        if (all(e is not None and e[1] == a and e[2] == len(radices[a]) - 1 for e in last)
                and not wires[a].segments[-1] and not wires[b].segments[-1]):
            # nothing on either wire since the last diagonal gate on this cut: one gate
            table = table * (last[0][4] if projector == a else last[0][4].T)
            for w in (a, b):
                wires[w].events.pop()
            radices[a].pop()
        oriented = table if projector == a else table.T
        position = len(radices[a])
        radices[a].append(dims[projector])
        for wire in (a, b):
            wires[wire].events.append((wires[wire].event_slot(), a, position, wire == projector,
                                       oriented))
    sizes = [math.prod(cut) for cut in radices]
    bond = max([1, *sizes[max(head - 1, 0):]])

    def padded(cut: int) -> tuple[list[int], int]:
        """The radices of a cut and the size its index is padded to: the qubits'
        cuts (and the cut into the first qubit) to χ, the others to their size."""
        if cut < 0:
            return [], bond if head == 0 else 1
        if cut == n - 1:
            return [], bond
        return radices[cut], bond if cut >= head - 1 else sizes[cut]

    # the largest table, before any is built: the qubits' (with the input digit), each head's
    segments = max(len(w.segments) for w in wires[head:])
    table, largest = 2 ** (segments - 1) * 4 * bond * 4 * bond, head
    for q in range(head):
        d = dims[q]
        size = d ** len(wires[q].segments) * padded(q - 1)[1] * d * padded(q)[1]
        table, largest = max((table, largest), (size, q))
    if table > MAX_TABLE:
        wire = (f"wire {largest} ({dims[largest]} levels, {len(wires[largest].segments) - 1} "
                "diagonal gates)" if largest < head else
                f"the qubit wires ({segments - 1} diagonal gates on one wire, bond {bond})")
        raise CompileError(
            f"method='mps' would build a table of {table} numbers (at most {MAX_TABLE}) for "
            f"{wire}: a table grows as levels^gates times the bond sizes (the Pauli "
            "brickwork takes up to L = 4); use method='columns'"
        )

    def group(members: range) -> WireGroup:
        return _group(members, wires, factors, len(names), padded)

    return Layout(head=[group(range(w, w + 1)) for w in range(head)],
                  qubits=group(range(head, n)), bond=bond, table=table)


def _factor(gate, dim: int, names: dict[str, int]) -> tuple:
    """A one-wire gate as (fixed, projector, step, weights row, constant)."""
    row = np.zeros(len(names))
    if not gate.params:
        zero = np.zeros((dim, dim))
        return np.asarray(_constant(gate, (dim,))), zero, zero, row, 0.0
    generator = gate.generator((dim,))
    if generator is None or len(gate.params) != 1:
        raise CompileError(f"{gate.name} is not a one-angle rotation exp(-iθG/2)")
    square = generator @ generator
    for name, coefficient in gate.params[0].terms:
        row[names[name]] += coefficient
    return np.eye(dim) - square, square, -1j * generator, row, gate.params[0].constant


def _group(members: range, wires: list[_Wire], factors: list, count: int, padded
           ) -> WireGroup:
    """The factor tables and bond tables of ``wires[members]`` (of one dimension)."""
    chosen = [wires[q] for q in members]
    dim = chosen[0].dim
    segments = max(len(w.segments) for w in chosen)
    depth = max(1, max(len(s) for w in chosen for s in w.segments))
    shape = (len(chosen), segments, depth)
    fixed = np.zeros((*shape, dim, dim), dtype=complex)
    fixed[...] = np.eye(dim)
    projector, step = np.zeros_like(fixed), np.zeros_like(fixed)
    weights, offset = np.zeros((*shape, count)), np.zeros(shape)
    for w, wire in enumerate(chosen):
        for t, segment in enumerate(wire.segments):
            for g, index in enumerate(segment):
                f, p, st, row, constant = factors[index]
                fixed[w, t, g], projector[w, t, g], step[w, t, g] = f, p, st
                weights[w, t, g], offset[w, t, g] = 0.5 * row, 0.5 * constant
    tables = [_bond_table(wire, q, segments, padded(q - 1), padded(q))
              for q, wire in zip(members, chosen)]
    return WireGroup(
        wires=tuple(members), dim=dim, segments=segments, depth=depth,
        fixed=fixed, projector=projector, step=step,
        weights=weights.reshape(math.prod(shape), count), offset=offset.reshape(-1),
        bond_table=np.stack(tables),
    )


def _bond_table(wire: _Wire, q: int, segments: int, left: tuple[list[int], int],
                right: tuple[list[int], int]) -> np.ndarray:
    """D[l, y, r]: the product of the wire's diagonal factors along the digit
    path ``y = (y_1 … y_{T−1})`` (base d, y_1 most significant) for bond values
    ``l`` (cut q−1) and ``r`` (cut q), each a mixed-radix number of the bond
    values of its cut's gates (the first gate most significant); zero for the
    padding beyond a cut's size."""
    dim, paths = wire.dim, wire.dim ** (segments - 1)
    digits = np.zeros((paths, segments), dtype=np.int64)  # column 0 (y_0 = c) unused
    for t in range(1, segments):
        digits[:, t] = (np.arange(paths) // dim ** (segments - 1 - t)) % dim
    (left_radices, left_size), (right_radices, right_size) = left, right
    lefts, rights = math.prod(left_radices), math.prod(right_radices)
    value = np.ones((lefts, paths, rights), dtype=complex)
    for slot, cut, position, projector, table in wire.events:
        radix = left_radices if cut == q - 1 else right_radices
        bond = (np.arange(math.prod(radix)) // math.prod(radix[position + 1:])) % radix[position]
        bond = bond[:, None, None] if cut == q - 1 else bond[None, None, :]
        y = digits[:, slot][None, :, None]
        value = value * ((y == bond) if projector else table[bond, y])
    out = np.zeros((left_size, paths, right_size), dtype=complex)
    out[:lefts, :, :rights] = value
    return out


def unsupported_reason(circuit: Circuit, columns: Sequence[int]) -> str | None:
    """Why :class:`MatrixProductNetwork` cannot evaluate these columns of
    ``circuit`` (the :class:`CompileError` it would raise), or None."""
    return _layout_or_reason(circuit, columns)[1]


def preferred(circuit: Circuit, columns: Sequence[int]) -> bool:
    """Whether ``method="auto"`` picks mps: it applies, its tables are small
    (:data:`AUTO_TABLE`) and so is its column block (:data:`AUTO_BLOCK`)."""
    layout, reason = _layout_or_reason(circuit, columns)
    if reason is not None or layout.table > AUTO_TABLE:
        return False
    block = 4 ** int(max(columns)).bit_length() * layout.bond**2
    return block <= max(AUTO_BLOCK * circuit.dimension * len(columns), AUTO_TABLE)


def _layout_or_reason(circuit: Circuit, columns: Sequence[int]
                      ) -> tuple[Layout | None, str | None]:
    try:
        layout = mps_layout(circuit)
    except CompileError as error:
        return None, str(error)
    return layout, _column_limit_error(max(columns), len(layout.qubits.wires),
                                       circuit.dimension)


def _column_limit_error(largest: int, qubits: int, dimension: int) -> str | None:
    if int(largest).bit_length() < qubits:
        return None
    return (f"method='mps' evaluates the columns below 2^{qubits - 1} (half the qubits' "
            f"block), and column {largest} of {dimension} is not; use method='columns' or "
            "'dense'")


def _constant(gate, dims: tuple[int, ...]) -> np.ndarray:
    """The matrix of a gate without free parameters on wires of ``dims`` levels."""
    if isinstance(gate, FixedGate):
        return gate.constant_matrix(dims)
    return gate.matrix(dims).numpy()


class SegmentBuilder(nn.Module):
    """(B, P) values → (B, w, T, d, d) segment matrices of one :class:`WireGroup`.

    Every factor is ``fixed + cos(θ/2)·projector + sin(θ/2)·step``: one
    product gives all half-angles and their shifts by π/2, one ``sin`` gives
    ``[cos, sin, cos]`` of them (the factors read the first two thirds, the
    backward the last two), and one product all factors. Every step works in a
    :class:`_Workspace`: :meth:`angles` reads the values, :meth:`segments` only the
    workspace; :meth:`angle_gradients` only the workspace, :meth:`values_gradient`
    writes the new gradient."""

    def __init__(self, group: WireGroup, dtype: torch.dtype, work: torch.dtype, name: str
                 ) -> None:
        super().__init__()
        d = group.dim
        self.shape = (len(group.wires), group.segments, group.depth, d)
        self.count = count = len(group.wires) * group.segments * group.depth
        self.name = name
        # [θ/2 + π/2, θ/2, θ/2 + π/2]: sin gives [cos(θ/2), sin(θ/2), cos(θ/2)]
        weights = np.concatenate([group.weights] * 3).T
        offset = np.concatenate([group.offset + math.pi / 2, group.offset,
                                 group.offset + math.pi / 2])
        self.register_buffer("trig_weights", torch.as_tensor(weights.copy(), dtype=dtype),
                             persistent=False)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=dtype), persistent=False)
        # d/dθ of [cos, sin] is [−sin, cos]/2 (the 1/2 is in the weights)
        backward = np.concatenate([-group.weights, group.weights])
        self.register_buffer("trig_backward", torch.as_tensor(backward, dtype=dtype),
                             persistent=False)
        mix = np.zeros((2, count, count, d * d), dtype=complex)
        rows = np.arange(count)
        mix[0, rows, rows] = group.projector.reshape(count, d * d)
        mix[1, rows, rows] = group.step.reshape(count, d * d)
        mix = mix.reshape(2 * count, count * d * d)
        fixed = group.fixed.reshape(-1)
        if not work.is_complex:
            mix, fixed = mix.real, fixed.real
        self.register_buffer("mix", torch.as_tensor(mix, dtype=work), persistent=False)
        self.register_buffer("fixed", torch.as_tensor(fixed, dtype=work), persistent=False)
        # for the path products' backward: each of the T segments' others
        self.register_buffer("others", _others_index(group.segments), persistent=False)
        self.work_dtype = work

    def forward(self, values: torch.Tensor, ws: _Workspace) -> torch.Tensor:
        return self.segments(self.angles(values, ws), ws)

    def angles(self, values: torch.Tensor, ws: _Workspace) -> torch.Tensor:
        """The (B, 3F) half-angles and their shifts (the only step that reads the values)."""
        out = ws.out((self.name, "angles"), (values.shape[0], 3 * self.count), values)
        return torch.addmm(self.offset, values, self.trig_weights, out=out)

    def segments(self, angles: torch.Tensor, ws: _Workspace) -> torch.Tensor:
        """The (B, w, T, d, d) segment matrices from the :meth:`angles`."""
        name, count = self.name, self.count
        wires, t, g, d = self.shape
        batch = angles.shape[0]
        trig = angles.sin_() if ws.cached else angles.sin()
        ws.put(name + "trig", trig)
        pair = ws.view((name, "cos-sin"), lambda: trig[:, : 2 * count])
        if pair.dtype != self.work_dtype:  # a complex circuit
            work = ws.out((name, "work"), pair.shape, pair, self.work_dtype)
            pair = pair.to(self.work_dtype) if work is None else work.copy_(pair)
        factors = torch.addmm(self.fixed, pair, self.mix,
                              out=ws.out((name, "factors"), (batch, count * d * d), pair))
        if g == 1:
            return ws.view((name, "segments"), lambda: factors.view(batch, wires, t, d, d))
        factors = ws.view((name, "factor-rows"), lambda: factors.view(batch, wires, t, g, d, d))
        ws.put(name + "factors", factors)
        out = ws.view((name, "factor", 0), lambda: factors[:, :, :, 0])
        for k in range(1, g):  # out_k = factor_k @ out_(k−1)
            ws.put(f"{name}chain{k - 1}", out)
            factor = ws.view((name, "factor", k), lambda: factors[:, :, :, k])
            out = torch.matmul(factor, out, out=ws.out((name, "chain", k), out.shape, out))
        return out

    def angle_gradients(self, grad: torch.Tensor, ws: _Workspace) -> None:
        """The (B, 2F) gradient of the half-angles for the segments' gradient ``grad``."""
        batch, name, count = grad.shape[0], self.name, self.count
        g = self.shape[2]
        if g > 1:
            factors = ws[name + "factors"]
            stacked = ws.out((name, "grad-factors"), factors.shape, grad)
            grads = [grad] * g
            for k in range(g - 1, 0, -1):
                chain = ws[f"{name}chain{k - 1}"]
                grads[k] = torch.matmul(grad, ws.view((name, "chain-h", k), lambda: chain.mH),
                                        out=ws.view((name, "grad-slot", k),
                                                    lambda: _slot(stacked, k)))
                target = (ws.view((name, "grad-slot", 0), lambda: _slot(stacked, 0)) if k == 1
                          else ws.out((name, "grad-chain", k), grad.shape, grad))
                grad = torch.matmul(ws.view((name, "factor-h", k),
                                            lambda: factors[:, :, :, k].mH), grad, out=target)
            grads[0] = grad
            grad = torch.stack(grads, dim=3) if stacked is None else stacked
        flat = ws.view((name, "grad-flat"), lambda: grad.reshape(batch, -1))
        grad_trig = torch.mm(flat, ws.view((name, "mix-h"), lambda: self.mix.mH),
                             out=ws.out((name, "grad-trig"), (batch, 2 * count), flat))
        if grad_trig.is_complex():
            grad_trig = ws.view((name, "grad-trig-real"), lambda: grad_trig.real)
        trig = ws[name + "trig"]
        swapped = ws.view((name, "sin-cos"), lambda: trig[:, count:])  # [sin, cos]
        ws.put(name + "grad-angles", torch.mul(
            grad_trig, swapped, out=ws.out((name, "grad-angles"), swapped.shape, swapped)))

    def values_gradient(self, ws: _Workspace) -> torch.Tensor:
        """The values' gradient (B, P), a new tensor, from :meth:`angle_gradients`."""
        return torch.mm(ws[self.name + "grad-angles"], self.trig_backward)


def _slot(stacked: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """Factor ``k``'s part of a (B, w, T, G, d, d) buffer (None: no buffer)."""
    return None if stacked is None else stacked[:, :, :, k]


class MatrixProductNetwork(nn.Module):
    """The circuit's columns as a matrix product state (see the module doc).

    ``forward(values)`` maps ``(..., P)`` to ``(..., N, K)``. Raises
    :class:`CompileError` at construction for circuits outside its reach
    (non-diagonal, parameterized or distant two-wire gates, wires of more
    levels after a qubit) and for columns that reach the second half of the
    qubits' block.

    In eager mode every evaluation writes into the buffers of a
    :class:`_Workspace` (one per evaluation in flight, kept for the next of
    the same batch size) and hands out a new frame; traced (``torch.compile``,
    ``torch.func``), it runs plain operations that autograd records.
    """

    def __init__(self, circuit: Circuit, columns: Sequence[int], dtype: torch.dtype) -> None:
        super().__init__()
        layout = mps_layout(circuit)
        self.columns = [int(c) for c in columns]
        self.dimension = circuit.dimension
        self.qubits = len(layout.qubits.wires)
        self.column_wires = m = int(max(self.columns)).bit_length()
        message = _column_limit_error(max(self.columns), self.qubits, self.dimension)
        if message:
            raise CompileError(message)
        self.real_dtype = dtype
        self.work_dtype = work = dtype if layout.is_real else COMPLEX_OF.get(dtype, dtype)
        self.builder = SegmentBuilder(layout.qubits, dtype, work, "q")
        self.head_builders = nn.ModuleList(SegmentBuilder(group, dtype, work, f"h{i}")
                                           for i, group in enumerate(layout.head))
        self.builders = [self.builder, *self.head_builders]  # (a plain list: no lookups)
        self.segments, self.bond = layout.qubits.segments, layout.bond
        self.head_shapes = [(group.dim, group.bond_table.shape[1], group.bond_table.shape[3])
                            for group in layout.head]

        def tensor(array: np.ndarray, dtype: torch.dtype = work) -> torch.Tensor:
            return torch.as_tensor(array.real if layout.is_real else array, dtype=dtype)

        plain, column = _wire_maps(layout.qubits.bond_table, 2, m)
        self.register_buffer("plain_map", tensor(plain), persistent=False)
        self.register_buffer("column_map", tensor(column), persistent=False)
        self.register_buffer("path_index", torch.as_tensor(_path_index(self.segments, 2, True)),
                             persistent=False)
        for i, group in enumerate(layout.head):
            self.register_buffer(f"head_map{i}", tensor(_wire_maps(group.bond_table, group.dim,
                                                                   0)[0][0]), persistent=False)
            self.register_buffer(f"head_index{i}", torch.as_tensor(
                _path_index(group.segments, group.dim, False)), persistent=False)
        self.register_buffer("column_index", torch.as_tensor(self.columns), persistent=False)
        self._whole_block = self.columns == list(range(2**m))

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def cost(self) -> dict[str, int]:
        """One forward pass for one circuit: ``multiply_adds`` (wire tensors,
        tree and final product), ``state_numbers`` (N·K), the ``bond``
        dimension χ and the ``segments`` T of the qubit wires."""
        n, chi, m, t = self.qubits, self.bond, self.column_wires, self.segments
        paths = 2 ** (t - 1)
        wire = n * (chi * chi * paths * 4 + paths * 4 * t)
        rows = self.dimension >> m
        head = sum(d * left * right * (self.dimension >> self.qubits)
                   for d, left, right in self.head_shapes)
        return {"multiply_adds": wire + 2 * rows * chi**3 + 2 * 4**m * chi**3
                + rows * chi * 4**m + head,
                "state_numbers": self.dimension * self.num_columns,
                "bond": chi, "segments": t}

    def _apply(self, fn, recurse: bool = True):
        self.__dict__.pop("_batch_steps", None)
        self.__dict__.pop("_workspaces", None)
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_batch_steps", None)
        state.pop("_workspaces", None)
        return state

    def segment_matrices(self, values: torch.Tensor, ws: _Workspace) -> list[torch.Tensor]:
        """The qubits' (B, n, T, 2, 2) segment matrices, then each head wire's."""
        return [builder(values, ws) for builder in self.builders]

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values (..., P) -> (..., N, K) in one autograd node (eager)."""
        if plain_operations() or not _eager(values):
            flat = values.reshape(math.prod(values.shape[:-1]), values.shape[-1])
            steps = self._steps(flat.shape[0])
            left, right = steps.contract(self, self.segment_matrices(flat, _PLAIN), _PLAIN)
            return self.frame(steps.finish(self, left, right, _PLAIN), values.shape)
        if torch.is_grad_enabled() and values.requires_grad:
            return NetworkFunction.apply(self, values)
        pool, ws = self._lease(values)
        try:
            return self.evaluate(values, ws)
        finally:
            pool.give(ws)

    def evaluate(self, values: torch.Tensor, ws: _Workspace) -> torch.Tensor:
        """values (..., P) → a new (..., N, K) frame, every step in ``ws``'s buffers."""
        lead = values.shape[:-1]
        batch = math.prod(lead)
        flat = values if values.dim() == 2 else values.reshape(batch, values.shape[-1])
        steps = self._steps(batch)
        with autocast_off(values.device):
            angles = [builder.angles(flat, ws) for builder in self.builders]
            left, right = ws.run("forward", lambda: steps.contract(self, [
                builder.segments(part, ws) for builder, part in zip(self.builders, angles)], ws))
            output = flat.new_empty((*lead, self.dimension, self.num_columns),
                                    dtype=self.work_dtype)
            return steps.finish(self, left, right, ws, output)

    def _lease(self, values: torch.Tensor) -> tuple[_Pool, _Workspace]:
        """A free workspace for values of this batch size, dtype and device, and its pool."""
        key = (math.prod(values.shape[:-1]), values.dtype, values.device,
               torch.is_inference_mode_enabled())
        pools = self.__dict__.setdefault("_workspaces", {})
        pool = pools.pop(key, None)
        if pool is None:
            pool = _Pool()
            if len(pools) >= MAX_POOLS:  # the batch size used longest ago goes
                del pools[next(iter(pools))]
        pools[key] = pool  # (last: the most recently used)
        return pool, pool.take() or _Workspace(cached=True, constants=self.buffers())

    def frame(self, block: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The chosen columns of the (B, N, 2^m) block, shaped ``(..., N, K)`` for
        values of ``shape`` ``(..., P)`` (plain operations)."""
        if not self._whole_block:
            block = block.index_select(2, self.column_index)
        return block.reshape(*shape[:-1], self.dimension, self.num_columns)

    def frame_backward(self, grad: torch.Tensor, ws: _Workspace) -> torch.Tensor:
        """The (B, N/2^m, 4^m) block's gradient for the frame's gradient ``grad``."""
        batch = math.prod(grad.shape[:-2])
        steps = self._steps(batch)
        if self._whole_block:
            return grad.reshape(steps.flat_grad)
        block = ws.out("grad-block", steps.flat_grad, grad)
        block = grad.new_zeros(steps.flat_grad) if block is None else block.zero_()
        spread = ws.view("grad-block-columns", lambda: block.view(steps.block))
        spread.index_add_(2, self.column_index, grad.reshape(batch, self.dimension, -1))
        return block

    def _steps(self, batch: int) -> _Steps:
        if not isinstance(batch, int):  # a symbolic size (torch.export's dynamic shapes)
            return _Steps(batch, self)
        steps = self.__dict__.setdefault("_batch_steps", {})
        if batch not in steps:
            steps[batch] = _Steps(batch, self)
        return steps[batch]


def _eager(values: torch.Tensor) -> bool:
    """Whether ``values`` take the workspace path: real tensors on a real
    device, no tensor subclass (fake tensors), no dispatch mode active, no
    forward-mode AD (which ``out=`` operations do not carry) and no ``torch.jit.trace``."""
    return (type(values) in (torch.Tensor, nn.Parameter) and values.device.type != "meta"
            and not torch._C._len_torch_dispatch_stack() and forward_ad._current_level < 0
            and not torch._C._is_tracing())


class _Steps:
    """The shapes of the contraction for one batch size, worked out once (the
    contraction is launch-bound: Python between the tensor operations counts)."""

    def __init__(self, batch: int, network: MatrixProductNetwork) -> None:
        n, m, chi, t = network.qubits, network.column_wires, network.bond, network.segments
        paths = 2 ** (t - 1)
        self.m = m
        self.gather = (batch * n, t * 4)
        self.gathered = (batch * n, t, paths * 4)
        self.products = (batch * n, paths * 4)
        self.weights = (batch, n, paths * 4)
        self.plain = (batch, n - m, chi, 2, chi)
        self.column = (batch, m, chi, 4, chi)
        self.plain_rows = 2 ** (n - m)
        self.rows = network.dimension >> m
        self.block = (batch, network.dimension, 2**m)
        self.flat_grad = (batch, self.rows, 4**m)
        self.root = (batch, chi, self.plain_rows, chi)
        self.root_right = (batch, chi, 4**m, chi)
        self.digits = (batch, chi, *([2] * (2 * m)))
        self.right = (batch, chi, 4**m)
        self.order = [0, 1] + [2 + 2 * i for i in range(m)] + [3 + 2 * i for i in range(m)]
        self.inverse = [int(i) for i in np.argsort(self.order)]
        self.split = n - m
        self.paths_flat = (batch * n, 1, paths * 4)
        self.out = (batch * n, t * 4)
        self.segments = (batch, n, t, 2, 2)
        self.plain_grad = (batch, n - m, -1)
        self.column_grad = (batch, m, -1)
        # the wires of more levels: (levels d, left and right bond, segments T, path count)
        self.head = []
        rows = 1
        for (d, left, right), builder in zip(network.head_shapes, network.head_builders):
            segments = builder.shape[1]
            self.head.append((d, left, right, segments, d ** (segments - 1), rows))
            rows *= d
        self.head_rows = rows
        self.batch = batch

    def contract(self, network: MatrixProductNetwork, matrices: list[torch.Tensor],
                 ws: _Workspace) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The segment matrices → the (B, N/2^m, χ) left and (B, χ, 4^m) right factors
        of the column block (no right factor for m = 0)."""
        m, batch = self.m, self.batch
        flat = ws.view("segments-flat", lambda: matrices[0].reshape(self.gather))
        index = network.path_index
        gathered = torch.index_select(flat, 1, index, out=ws.out(
            "gathered", (self.gather[0], index.numel()), flat))
        gathered = ws.view("gathered", lambda: gathered.view(self.gathered))
        ws.put("gathered", gathered)
        products = torch.prod(gathered, 1, out=ws.out("products", self.products, gathered))
        # (n, B, y·x·c): the wire tensors are A[l, x, c, r] = Σ_y W[y, x, c] D[l, y, r]
        weights = ws.view("weights", lambda: products.view(self.weights).transpose(0, 1))
        plain = _wire_tensors(ws, "plain", ws.view("plain-weights", lambda: weights[: self.split]),
                              network.plain_map, self.plain)  # c = 0
        tree = _tree(plain, ws, "left")  # (B, χ, 2^(n−m), χ)
        if self.head:
            head = self._head_forward(network, matrices[1:], ws)  # (B, D_head, χ)
            flat_tree = ws.view("tree-flat", lambda: tree.reshape(batch, tree.shape[1], -1))
            left = torch.bmm(head, flat_tree, out=ws.out("head-left", (batch, head.shape[1],
                                                                      flat_tree.shape[2]), head))
            left = ws.view("left", lambda: left.view(batch, self.rows, -1))
            ws.put("tree", tree)
            ws.put("head_state", head)
        else:
            left = ws.view("left", lambda: tree[:, 0])  # (B, N/2^m, χ)
        ws.put("left", left)
        if m == 0:
            return left, None
        column = _wire_tensors(ws, "column",
                               ws.view("column-weights", lambda: weights[self.split:]),
                               network.column_map, self.column)
        tree = _tree(column, ws, "right")
        # (B, χ, 4^m): the tree's digits x₀ c₀ x₁ c₁ … as x₀ x₁ … c₀ c₁ …
        digits = ws.view("right-digits", lambda: tree[..., 0].reshape(self.digits)
                         .permute(self.order))
        right = ws.out("right", self.right, tree)
        if right is None:
            right = digits.reshape(self.right)
        else:
            ws.view("right-as-digits", lambda: right.view(self.digits)).copy_(digits)
        ws.put("right", right)
        return left, right

    def finish(self, network: MatrixProductNetwork, left: torch.Tensor,
               right: torch.Tensor | None, ws: _Workspace,
               output: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, N, 2^m) column block, or the frame written into ``output``."""
        batch = self.batch
        if right is None:  # m = 0: the block is the left factor's first column
            corner = ws.view("left-column", lambda: left[:, :, :1])
            if output is None:
                return corner
            output.view(self.block).copy_(corner)
            return output
        if output is None:
            return torch.bmm(left, right).view(self.block)
        if network._whole_block:
            torch.bmm(left, right, out=output.view(self.flat_grad))
            return output
        block = torch.bmm(left, right, out=ws.out("block", self.flat_grad, left))
        torch.index_select(ws.view("block-columns", lambda: block.view(self.block)), 2,
                           network.column_index, out=output.view(batch, network.dimension, -1))
        return output

    def _head_forward(self, network: MatrixProductNetwork, matrices: list[torch.Tensor],
                      ws: _Workspace) -> torch.Tensor:
        """The wires before the qubits, contracted in turn: (B, D_head, χ)."""
        batch, state = self.batch, None
        for i, (d, left, right, segments, paths, rows) in enumerate(self.head):
            index, table = getattr(network, f"head_index{i}"), getattr(network, f"head_map{i}")
            flat = ws.view(("head-segments", i), lambda: matrices[i].reshape(batch, -1))
            gathered = torch.index_select(flat, 1, index, out=ws.out(
                ("head-gathered", i), (batch, index.numel()), flat))
            gathered = ws.view(("head-paths", i),
                               lambda: gathered.view(batch, segments, paths * d))
            ws.put(f"head_gathered{i}", gathered)
            products = torch.prod(gathered, 1, out=ws.out(("head-products", i),
                                                          (batch, paths * d), gathered))
            tensor = torch.mm(products, table, out=ws.out(("head-tensor", i),
                                                          (batch, table.shape[1]), products))
            if state is None:
                state = ws.view(("head-state", i), lambda: tensor.view(batch, d, right))
                continue  # its left bond has one value
            ws.put(f"state{i}", state)
            ws.put(f"tensor{i}", tensor)
            factor = ws.view(("head-factor", i), lambda: tensor.view(batch, left, d * right))
            state = torch.bmm(state, factor, out=ws.out(("head-product", i),
                                                        (batch, state.shape[1], d * right),
                                                        state))
            state = ws.view(("head-state", i), lambda: state.view(batch, rows * d, right))
        return state

    def start_backward(self, network: MatrixProductNetwork, grad: torch.Tensor,
                       ws: _Workspace) -> None:
        """The gradients of the left and right factors for the (B, N/2^m, 4^m) block's
        gradient ``grad`` (the only step of the backward that reads it)."""
        m, chi, cached = self.m, self.root[1], ws.cached
        left = ws["left"]
        if cached and not self.head:
            # into the left tree's root: its left boundary is row 0 (the other rows of the
            # first wire's tensor are zero), so only [:, 0] of the (B, χ, rows, χ) root
            root = ws.zeros("root-left", self.root, grad)
            ws.put("root_left", root)
            target = ws.view("root-left-row", lambda: root[:, 0])
        elif cached and m == 0:
            target = ws.zeros("grad-left-padded", left.shape, grad)
        else:
            target = ws.out("grad-left", left.shape, grad)  # (None: a new tensor)
        if m == 0:  # the right boundary is 0
            if target is None:
                grad_left = functional.pad(grad, (0, chi - 1))
            else:
                grad_left = target
                ws.view("grad-left-column", lambda: target[:, :, :1]).copy_(grad)
        else:
            right = ws["right"]
            grad_left = torch.bmm(grad, ws.view("right-h", lambda: right.mH), out=target)
            ws.put("grad_right", torch.bmm(ws.view("left-h", lambda: left.mH), grad,
                                           out=ws.out("grad-right", self.right, grad)))
        ws.put("grad_left", grad_left)

    def backward(self, network: MatrixProductNetwork, ws: _Workspace) -> None:
        """From :meth:`start_backward` to each builder's angle gradients. A cached
        ``ws`` writes every product into its buffers; otherwise (a backward batched by
        vmap: ``jacobian(vectorize=True)``, ``is_grads_batched=True``) each is a new
        tensor."""
        m, chi, batch, cached = self.m, self.root[1], self.batch, ws.cached
        grad_left = ws["grad_left"]
        if m:
            grad_right = ws["grad_right"]
            if cached:  # into the right tree's root (B, χ, 4^m, χ) at r = 0, in its digit order
                right_root = ws.zeros("root-right", self.root_right, grad_right)
                ws.view("root-right-digits", lambda: right_root[..., 0].reshape(self.digits)
                        .permute(self.order)).copy_(
                    ws.view("grad-right-digits", lambda: grad_right.view(self.digits)))
            else:
                right_root = functional.pad(grad_right.view(self.digits).permute(self.inverse)
                                            .reshape(self.right).unsqueeze(-1), (0, chi - 1))
            grad_column = _tree_backward(right_root, ws, "right")
            grad_column = ws.view("grad-column", lambda: grad_column.reshape(self.column_grad))
        heads = []
        if self.head:
            tree = ws["tree"]
            flat = ws.view("grad-left-head", lambda: grad_left.reshape(batch, self.head_rows, -1))
            flat_tree_h = ws.view("tree-flat-h", lambda: tree.reshape(
                batch, tree.shape[1], -1).mH)
            root = torch.bmm(ws.view("head-state-h", lambda: ws["head_state"].mH), flat,
                             out=ws.out("root-left-head", (batch, tree.shape[1], flat.shape[2]),
                                        flat))
            root = ws.view("root-left-head", lambda: root.view(self.root))
            heads = self._head_backward(network, torch.bmm(
                flat, flat_tree_h, out=ws.out("grad-head", (batch, flat.shape[1], tree.shape[1]),
                                              flat)), ws)
        elif cached:
            root = ws["root_left"]
        else:
            root = functional.pad(grad_left.unsqueeze(1), (0, 0, 0, 0, 0, chi - 1))
        grad_plain = _tree_backward(root, ws, "left")
        plain = ws.view("grad-plain", lambda: grad_plain.reshape(self.plain_grad).transpose(0, 1))
        plain_map_h = ws.view("plain-map-h", lambda: network.plain_map.mH)
        if cached:  # written as (B, n, Y), read as (n, B, Y)
            grad_weights = ws.out("grad-weights", self.weights, grad_plain)
            torch.bmm(plain, plain_map_h, out=ws.view("grad-weights-plain", lambda: grad_weights
                                                      .transpose(0, 1)[: self.split]))
            if m:
                torch.bmm(ws.view("grad-column-t", lambda: grad_column.transpose(0, 1)),
                          ws.view("column-map-h", lambda: network.column_map.mH),
                          out=ws.view("grad-weights-column",
                                      lambda: grad_weights.transpose(0, 1)[self.split:]))
        else:
            grad_weights = torch.bmm(plain, plain_map_h)
            if m:
                grad_weights = torch.cat([grad_weights, torch.bmm(
                    grad_column.transpose(0, 1), network.column_map.mH)])
            grad_weights = grad_weights.transpose(0, 1)
        grad_weights = ws.view("grad-weights-flat", lambda: grad_weights.reshape(self.paths_flat))
        others = _others_product(ws["gathered"], network.builder.others, ws, "q")
        grad_gathered = torch.mul(grad_weights, ws.view("others-conj", lambda: others.conj()),
                                  out=ws.out("grad-gathered", others.shape, others))
        flat = ws.view("grad-gathered-flat", lambda: grad_gathered.view(self.out[0], -1))
        out = ws.zeros("grad-segments", self.out, grad_gathered)
        if out is None:
            out = grad_gathered.new_zeros(self.out).index_add(1, network.path_index, flat)
        else:
            out.zero_().index_add_(1, network.path_index, flat)
        segments = [ws.view("grad-segments", lambda: out.view(self.segments)), *heads]
        for builder, part in zip(network.builders, segments):
            builder.angle_gradients(part, ws)

    def _head_backward(self, network: MatrixProductNetwork, grad: torch.Tensor,
                       ws: _Workspace) -> list[torch.Tensor]:
        """The head wires' segment gradients for the gradient (B, D_head, χ) of their state."""
        batch = self.batch
        grads: list[torch.Tensor] = [None] * len(self.head)
        for i in reversed(range(len(self.head))):
            d, left, right, segments, paths, rows = self.head[i]
            if i:
                state, tensor = ws[f"state{i}"], ws[f"tensor{i}"]
                flat = ws.view(("head-grad", i), lambda: grad.reshape(batch, rows, d * right))
                grad_tensor = torch.bmm(ws.view(("head-state-h", i), lambda: state.mH), flat,
                                        out=ws.out(("head-grad-tensor", i),
                                                   (batch, left, d * right), flat))
                grad_tensor = ws.view(("head-grad-tensor", i),
                                      lambda: grad_tensor.view(batch, -1))
                grad = torch.bmm(flat, ws.view(("head-factor-h", i), lambda: tensor.view(
                    batch, left, d * right).mH), out=ws.out(("head-grad-state", i),
                                                            (batch, rows, left), flat))
            else:
                grad_tensor = ws.view(("head-grad-first", i), lambda: grad.reshape(batch, -1))
            table_h = ws.view(("head-map-h", i), lambda: getattr(network, f"head_map{i}").mH)
            grad_products = torch.mm(grad_tensor, table_h, out=ws.out(
                ("head-grad-products", i), (batch, table_h.shape[1]), grad_tensor))
            others = _others_product(ws[f"head_gathered{i}"], network.head_builders[i].others,
                                     ws, ("h", i))
            grad_gathered = torch.mul(
                ws.view(("head-grad-products3", i), lambda: grad_products.unsqueeze(1)),
                ws.view(("head-others-conj", i), lambda: others.conj()),
                out=ws.out(("head-grad-gathered", i), others.shape, others))
            flat = ws.view(("head-grad-gathered-flat", i), lambda: grad_gathered.view(batch, -1))
            index = getattr(network, f"head_index{i}")
            out = ws.zeros(("head-grad-segments", i), (batch, segments * d * d), grad_gathered)
            if out is None:
                out = grad_gathered.new_zeros(batch, segments * d * d).index_add(1, index, flat)
            else:
                out.zero_().index_add_(1, index, flat)
            grads[i] = ws.view(("head-grad-segments", i),
                               lambda: out.view(batch, 1, segments, d, d))
        return grads


def _wire_tensors(ws: _Workspace, name: str, weights: torch.Tensor, table: torch.Tensor,
                  shape: tuple[int, ...]) -> torch.Tensor:
    """(w, B, Y) path weights times the wires' (w, Y, χ·D·χ) maps: the (B, w, χ, D, χ)
    wire tensors (cached: written in that layout by the product itself)."""
    buffer = ws.out(name, shape, weights)
    if buffer is None:
        return torch.bmm(weights, table).transpose(0, 1).reshape(shape)
    torch.bmm(weights, table, out=ws.view(name + "-out", lambda: buffer.view(
        shape[0], shape[1], -1).transpose(0, 1)))
    return buffer


def _wire_maps(bond_table: np.ndarray, dim: int, column_wires: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The linear maps from a wire's path weights W[y, x, c] to its tensor
    A[l, x, c, r] = Σ_y W[y, x, c] D[l, y, r], for a group's bond tables
    (w, χ_l, Y, χ_r): ``(w − m, Y·d·2, χ_l·d·χ_r)`` for the wires taken at
    c = 0 and ``(m, Y·d·2, χ_l·d·2·χ_r)`` for the last m, the column wires.
    A wire of more than two levels has c = 0 only: ``(w, Y·d, χ_l·d·χ_r)``."""
    wires, chi_l, paths, chi_r = bond_table.shape
    inputs = 2 if dim == 2 else 1
    full = np.zeros((wires, paths, dim, inputs, chi_l, dim, inputs, chi_r), dtype=complex)
    for x in range(dim):
        for c in range(inputs):
            full[:, :, x, c, :, x, c, :] = bond_table.transpose(0, 2, 1, 3)
    full = full.reshape(wires, paths * dim * inputs, chi_l, dim, inputs, chi_r)
    plain = full[: wires - column_wires, :, :, :, 0]
    plain = plain.reshape(wires - column_wires, paths * dim * inputs, chi_l * dim * chi_r)
    column = full[wires - column_wires:].reshape(column_wires, paths * dim * inputs,
                                                 chi_l * dim * inputs * chi_r)
    return np.ascontiguousarray(plain), np.ascontiguousarray(column)


def _path_index(segments: int, dim: int, with_input: bool) -> np.ndarray:
    """For factor t and path (y_1…y_{T−1}, x[, c]): the entry ``t·d² + d·row + col``
    of segment t's matrix on that path (row y_{t+1}, column y_t; y_0 = c, or 0
    without the input digit, and y_T = x), flattened factor-major."""
    paths = dim ** (segments - 1)
    y = np.zeros((paths, segments - 1), dtype=np.int64)  # y_1 … y_{T−1}, y_1 most significant
    for t in range(1, segments):
        y[:, t - 1] = (np.arange(paths) // dim ** (segments - 1 - t)) % dim
    inputs = 2 if with_input else 1
    index = np.zeros((segments, paths, dim, inputs), dtype=np.int64)
    for x in range(dim):
        for c in range(inputs):
            full = np.concatenate([np.full((paths, 1), c), y, np.full((paths, 1), x)], axis=1)
            for t in range(segments):
                index[t, :, x, c] = dim * dim * t + dim * full[:, t + 1] + full[:, t]
    return index.reshape(-1)



def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)``, without the call where nothing changes (this path is
    launch-bound: each tensor call costs about a microsecond)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)



def _others_index(count: int) -> torch.Tensor:
    """For T factors: the indices of the other T−1 factors of each, t-major."""
    return torch.tensor([s for t in range(count) for s in range(count) if s != t],
                        dtype=torch.long)



def _others_product(factors: torch.Tensor, others: torch.Tensor, ws: _Workspace,
                    key: object) -> torch.Tensor:
    """For (R, T, Q): for each t, the product of the other T−1 factors (exact with
    zero factors: no division), from one gather (``others``: :func:`_others_index`)
    and one product."""
    rows, count, size = factors.shape
    spread = torch.index_select(factors, 1, others, out=ws.out(
        ("others", key), (rows, count * (count - 1), size), factors))
    spread = ws.view(("others", key), lambda: spread.view(rows, count, count - 1, size))
    return torch.prod(spread, 2, out=ws.out(("others-product", key), (rows, count, size),
                                            spread))


class _Workspace:
    """The tensors of one evaluation of a :class:`MatrixProductNetwork`.

    What the written-out backward reads is kept by name (:meth:`put`, ``ws[name]``).
    ``cached`` (eager): every buffer an operation writes into (``out=``) and every
    view of one is made on the first evaluation and looked up on the next. The
    contraction is launch-bound, and a view costs about as much as a small
    product: at N = 1024, K = 4 views were 79 of the 128 tensor calls of a forward
    and backward pass. A workspace serves one evaluation at a time, from its
    forward to the end of its backward (:class:`_Lease`), and the frames and
    gradients handed out are new tensors. Not ``cached``: plain operations that
    return new tensors (traced, or a backward batched by vmap)."""

    def __init__(self, cached: bool, saving: bool = True,
                 constants: Sequence[torch.Tensor] = ()) -> None:
        self.cached, self.saving = cached, saving
        self.constants = tuple(constants)  # the module's buffers, which steps read
        self.saved: dict[str, torch.Tensor] = {}
        self.values: dict[str, object] = {}
        self.made: dict[object, Any] = {}
        self.tapes: dict[str, list[Callable[[], object]] | None] = {}
        self.results: dict[str, object] = {}
        self.nbytes, self.counted = -1, 0  # bytes held, counted with this many made
        self.generation = 0  # times taken from its pool

    def count_bytes(self) -> None:
        """Count :attr:`nbytes`: each storage of its own once (not the module's)."""
        skip = {t.untyped_storage().data_ptr() for t in self.constants}
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in self.tensors()}
        self.nbytes = sum(size for pointer, size in storages.items() if pointer not in skip)
        self.counted = len(self.made)

    def reader(self) -> _Workspace:
        """A workspace of plain operations that reads what this one keeps and writes
        nothing into it."""
        other = _Workspace(cached=False)
        other.saved, other.values = dict(self.saved), self.values
        return other

    def run(self, phase: str, steps: Callable[[], Any]) -> Any:
        """``steps()``, a part of a pass that reads and writes only this workspace's
        tensors (and the module's buffers). Cached, its first call makes the buffers
        and views, the second records its tensor operations (:class:`_Recorder`), and
        later calls replay them without running the Python in between."""
        if not self.cached:
            return steps()
        tape = self.tapes.get(phase, ())
        if tape:
            for step in tape:
                step()
            return self.results[phase]
        if tape is None or phase not in self.results:  # unsound, or the first call
            result = self.results[phase] = steps()
            return result
        recorder = _Recorder(self)
        with recorder:
            result = steps()
        sound = recorder.sound and all(id(t) in recorder.owned for t in _tensors(result))
        self.tapes[phase] = recorder.tape if sound else None
        self.results[phase] = result
        return result

    def tensors(self) -> list[torch.Tensor]:
        """The tensors it holds: buffers, views of them and of the module's buffers."""
        return _tensors((self.saved, list(self.made.values())))

    def put(self, name: str, tensor: torch.Tensor) -> None:
        if self.saving:
            self.saved[name] = tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.saved[name]

    def view(self, key: object, build: Callable[[], Any]) -> Any:
        """``build()``: views of this workspace's tensors (or of the module's), made
        once when cached."""
        if not self.cached:
            return build()
        made = self.made.get(("view", key))
        if made is None:
            made = self.made[("view", key)] = build()
        return made

    def out(self, key: object, shape: Sequence[int], like: torch.Tensor,
            dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """The buffer for an ``out=`` argument (None when not cached: a new tensor)."""
        if not self.cached:
            return None
        made = self.made.get(("out", key))
        if made is None:
            made = self.made[("out", key)] = like.new_empty(shape, dtype=dtype or like.dtype)
        return made

    def zeros(self, key: object, shape: Sequence[int], like: torch.Tensor
              ) -> torch.Tensor | None:
        """A buffer made with zeros, of which the caller writes the same part every
        time (None when not cached)."""
        if not self.cached:
            return None
        made = self.made.get(("zeros", key))
        if made is None:
            made = self.made[("zeros", key)] = like.new_zeros(shape)
        return made


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in ``value`` and in the lists, tuples and dicts within it."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


class _Recorder(TorchFunctionMode):
    """Records the tensor operations of a :meth:`_Workspace.run` as calls to replay.

    The tape is *sound* when every operation writes into a tensor (``out=``, or an
    in-place method) and reads and writes only the workspace's tensors and the
    module's buffers: then a replay on the next pass, with the same workspace, is
    the pass itself. Calls that return no tensor (``x.shape``, ``x.is_complex()``)
    only read and are not recorded."""

    def __init__(self, ws: _Workspace) -> None:
        super().__init__()
        held = (*ws.saved.values(), *ws.made.values(), *ws.constants)
        self.owned = {id(t) for t in _tensors(held)}
        self.tape: list[Callable[[], object]] = []
        self.sound = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not any(isinstance(t, torch.Tensor) for t in _tensors(result)):
            return result
        name = getattr(func, "__name__", "")
        writes = "out" in kwargs or (name.endswith("_") and not name.endswith("__"))
        if not writes or any(id(t) not in self.owned for t in _tensors((args, kwargs))):
            self.sound = False
        self.tape.append(functools.partial(func, *args, **kwargs))
        return result


#: Plain operations, nothing kept: the forward that autograd records (traced).
_PLAIN = _Workspace(cached=False, saving=False)
#: The most bytes of free workspaces kept per batch size, dtype and device ...
POOL_BYTES = 2**26
#: ... for this many of them (the one used longest ago goes first).
MAX_POOLS = 8


class _Lease:
    """A workspace lent to one autograd node. It goes back to its pool at the end of
    the node's backward, or with the node if no backward runs, and the node keeps
    only weak references to it: a graph kept after its backward holds nothing. A
    second backward (``retain_graph=True``) takes it back if no other evaluation has
    taken it since (:meth:`reclaim`), and otherwise the node evaluates its forward
    again."""

    __slots__ = ("pool", "workspace", "generation", "returned")

    def __init__(self, pool: _Pool, workspace: _Workspace) -> None:
        self.pool: _Pool | None = pool
        self.workspace: _Workspace | None = workspace  # None once given back
        self.generation = workspace.generation
        self.returned: tuple[weakref.ref, weakref.ref] | None = None

    def give_back(self) -> None:
        workspace, pool = self.workspace, self.pool
        if workspace is not None:
            self.workspace = self.pool = None
            self.returned = (weakref.ref(pool), weakref.ref(workspace))
            pool.give(workspace)

    def reclaim(self) -> bool:
        """Whether the workspace is lent to this node again, as its backward left it."""
        if self.workspace is None and self.returned is not None:
            pool, workspace = (ref() for ref in self.returned)
            if (pool is not None and workspace is not None
                    and workspace.generation == self.generation and pool.remove(workspace)):
                self.pool, self.workspace = pool, workspace
        return self.workspace is not None

    __del__ = give_back


class _Pool:
    """The free workspaces of one batch size, dtype and device: as many as were in
    use at once (a graph that evaluates one module many times), up to
    :data:`POOL_BYTES`."""

    __slots__ = ("free", "bytes", "__weakref__")

    def __init__(self) -> None:
        self.free: list[_Workspace] = []
        self.bytes = 0

    def take(self) -> _Workspace | None:
        if not self.free:
            return None
        workspace = self.free.pop()
        self.bytes -= workspace.nbytes
        workspace.generation += 1  # (a lease that gave it back can no longer reclaim it)
        return workspace

    def remove(self, workspace: _Workspace) -> bool:
        """Take ``workspace`` out of the free ones, if it is there."""
        for index, free in enumerate(self.free):
            if free is workspace:
                del self.free[index]
                self.bytes -= workspace.nbytes
                return True
        return False

    def give(self, workspace: _Workspace) -> None:
        if workspace.nbytes < 0 or len(workspace.made) != workspace.counted:
            workspace.count_bytes()  # (only after new buffers: a pass that made some)
        if self.bytes + workspace.nbytes <= POOL_BYTES:
            self.free.append(workspace)
            self.bytes += workspace.nbytes


def _tree(tensors: torch.Tensor, ws: _Workspace, name: str) -> torch.Tensor:
    """(B, k, χ, D, χ) → (B, χ, D^k, χ): the chain product over k, as a
    balanced tree of batched products; an odd element left over at a level
    waits and joins at the end, in order.

    Cached (eager), each level's operands are strided views of the level's
    input, which is saved for the backward; otherwise plain reshapes (which
    ``torch.func`` transforms and ``torch.compile`` trace)."""
    batch, k, chi, size = tensors.shape[:4]
    levels: list[tuple[int, int, bool]] = []  # (pairs, size, waited) per level
    waiting: list[torch.Tensor] = []
    current = tensors
    while k > 1:
        block, level = chi * size * chi, len(levels)
        waited = k % 2 == 1
        if waited:
            flat = ws.view((name, "level", level), lambda: current.reshape(batch, k, block))
            waiting.append(ws.view((name, "waiting", level), lambda: flat[:, -1]))
            current = ws.view((name, "pairs", level), lambda: flat[:, :-1])
            if batch > 1 and ws.cached:  # the pairs' operands need one stride per pair
                current = ws.out((name, "pairs", level), current.shape, current).copy_(current)
        pairs = k // 2
        if ws.cached:
            ws.put(f"{name}{level}", current)
            first, second = ws.view((name, "operands", level),
                                    lambda: _operands(current, batch * pairs, chi, size))
        else:
            current = current.reshape(batch * pairs, 2, block)
            first = current[:, 0].reshape(batch * pairs, chi * size, chi)
            second = current[:, 1].reshape(batch * pairs, chi, size * chi)
        levels.append((pairs, size, waited))
        # (B·pairs, χ·D, D·χ): the next level's elements
        current = torch.bmm(first, second, out=ws.out((name, "product", level),
                                                      (batch * pairs, chi * size, size * chi),
                                                      first))
        k, size = pairs, size * size
    result = ws.view((name, "result"), lambda: current.reshape(batch, chi, size, chi))
    for index, extra in enumerate(reversed(waiting)):  # the deepest level's is the leftmost
        ws.put(f"{name}-join{index}", result)
        ws.put(f"{name}-extra{index}", extra)
        first = ws.view((name, "join-first", index), lambda: result.reshape(batch, -1, chi))
        second = ws.view((name, "join-second", index), lambda: extra.reshape(batch, chi, -1))
        result = torch.bmm(first, second, out=ws.out((name, "join", index),
                                                     (batch, first.shape[1], second.shape[2]),
                                                     first))
        result = ws.view((name, "joined", index), lambda: result.view(batch, chi, -1, chi))
    if ws.saving:
        ws.values[name] = (levels, len(waiting), tuple(tensors.shape))
    return result


def _operands(current: torch.Tensor, count: int, chi: int, size: int,
              transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The left (count, χ·D, χ) and right (count, χ, D·χ) factors of each pair in
    ``current`` (pairs of consecutive elements of χ·D·χ numbers), as strided
    views; ``transposed``: their adjoints."""
    block = chi * size * chi
    start = current.storage_offset()
    if not transposed:
        return (current.as_strided((count, chi * size, chi), (2 * block, chi, 1), start),
                current.as_strided((count, chi, size * chi), (2 * block, size * chi, 1),
                                   start + block))
    first = current.as_strided((count, chi, chi * size), (2 * block, 1, chi), start)
    second = current.as_strided((count, size * chi, chi), (2 * block, 1, size * chi),
                                start + block)
    if current.is_complex():
        first, second = first.conj(), second.conj()
    return first, second



def _tree_backward(grad: torch.Tensor, ws: _Workspace, name: str) -> torch.Tensor:
    """The gradient of :func:`_tree` for its result's gradient (B, χ, D^k, χ);
    cached: each level's two products written into place."""
    levels, joins, shape = ws.values[name]
    batch, chi, cached = grad.shape[0], grad.shape[1], ws.cached
    grad_waiting = []  # in the order the elements waited (first level first)
    for index in reversed(range(joins)):
        first = ws[f"{name}-join{index}"]
        second = ws[f"{name}-extra{index}"]
        first_h = ws.view((name, "join-first-h", index),
                          lambda: first.reshape(batch, -1, chi).mH)
        second_h = ws.view((name, "join-second-h", index),
                           lambda: second.reshape(batch, chi, -1).mH)
        flat = ws.view((name, "join-grad", index), lambda: grad.reshape(
            batch, first_h.shape[2], second_h.shape[1]))
        grad_waiting.append(torch.bmm(first_h, flat, out=ws.out(
            (name, "grad-extra", index), (batch, chi, flat.shape[2]), flat)))
        grad = torch.bmm(flat, second_h, out=ws.out((name, "grad-join", index),
                                                    (batch, flat.shape[1], chi), flat))
    for level in reversed(range(len(levels))):
        pairs, size, waited = levels[level]
        count, block = batch * pairs, chi * size * chi
        first_h, second_h = ws.view((name, "operands-h", level), lambda: _operands(
            ws[f"{name}{level}"], count, chi, size, transposed=True))
        flat = ws.view((name, "grad", level), lambda: grad.reshape(count, chi * size, size * chi))
        if cached:
            out = ws.out((name, "grad", level), (batch, 2 * pairs + (waited and batch == 1), block),
                         flat)
            left, right = ws.view((name, "grad-halves", level), lambda: (
                out.as_strided((count, chi * size, chi), (2 * block, chi, 1)),
                out.as_strided((count, chi, size * chi), (2 * block, size * chi, 1), block)))
            torch.bmm(flat, second_h, out=left)
            torch.bmm(first_h, flat, out=right)
        else:
            out = torch.cat([torch.bmm(flat, second_h).view(batch, pairs, 1, block),
                             torch.bmm(first_h, flat).view(batch, pairs, 1, block)], dim=2)
            out = out.view(batch, 2 * pairs, block)
        if waited:
            extra = grad_waiting.pop()
            if cached and batch == 1:
                ws.view((name, "grad-last", level), lambda: out[:, -1]).copy_(
                    ws.view((name, "grad-extra-flat", level), lambda: extra.view(batch, block)))
            else:
                extra = ws.view((name, "grad-extra-row", level),
                                lambda: extra.view(batch, 1, block))
                out = torch.cat([out, extra], dim=1, out=ws.out(
                    (name, "grad-joined", level), (batch, 2 * pairs + 1, block), out))
        grad = out
    return ws.view((name, "grad-result"), lambda: grad.reshape(shape))


def _wrapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is batched by a vmap: autograd runs a backward under vmap
    for ``jacobian(vectorize=True)`` and ``is_grads_batched=True``."""
    functorch = torch._C._functorch
    return any(getattr(functorch, name, lambda _: False)(tensor)
               for name in ("is_legacy_batchedtensor", "is_batchedtensor",
                            "is_functorch_wrapped_tensor"))



class NetworkFunction(torch.autograd.Function):
    """Values → frame as one autograd node: :meth:`MatrixProductNetwork.evaluate`
    in a leased :class:`_Workspace`, and its written-out backward."""

    @staticmethod
    def forward(ctx: Any, network: MatrixProductNetwork, values: torch.Tensor) -> torch.Tensor:
        pool, ws = network._lease(values)
        ctx.lease = _Lease(pool, ws)
        # (to evaluate again for a later second backward; its version tells a change)
        ctx.network, ctx.shape, ctx.values = network, values.shape, values
        ctx.version = values._version
        return network.evaluate(values, ws)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        refuse_second_derivatives()
        network = ctx.network
        with torch.no_grad(), autocast_off(grad.device):
            if not ctx.lease.reclaim():  # a second backward, the workspace taken since
                values = ctx.values
                if values._version != ctx.version:
                    raise ParameterError(
                        "the parameter values of a compiled frame were changed in place after "
                        "its forward pass, and a second backward pass of that graph "
                        "(retain_graph=True) would need them; run the forward pass again "
                        "after changing them"
                    )
                ctx.lease = _Lease(*network._lease(values))
                network.evaluate(values, ctx.lease.workspace)
            ws = ctx.lease.workspace
            if plain_operations() or _wrapped(grad) or torch.is_inference_mode_enabled():
                # under vmap (batched gradients) nothing may be written into place, and
                # buffers made in inference mode could not be written outside it: the
                # leased workspace keeps only what the forward put there
                ws = ws.reader()
            try:
                grad = _cast(grad, network.work_dtype)
                block = network.frame_backward(grad, ws)
                steps = network._steps(block.shape[0])
                steps.start_backward(network, block, ws)
                ws.run("backward", lambda: steps.backward(network, ws))
                values = network.builder.values_gradient(ws)
                for builder in network.builders[1:]:
                    values = values + builder.values_gradient(ws)
            finally:
                ctx.lease.give_back()
        return None, values.view(ctx.shape)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        refuse_forward_mode()
