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
columns method; about 120 tensor operations for a forward and backward pass
at N = 1024, a number independent of ``L``, in one
:class:`torch.autograd.Function` with a written-out backward. Each wire's table
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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from qpeft.circuit import Circuit
from qpeft.circuit.gates import COMPLEX_OF, FixedGate
from qpeft.compiler.blocks import (
    autocast_off,
    plain_operations,
    refuse_forward_mode,
    refuse_second_derivatives,
)
from qpeft.errors import CompileError

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
    product gives all half-angles and their shifts by π/2, one ``sin`` all
    cosines and sines, and one product all factors. :meth:`forward` saves
    what :meth:`backward` needs, under ``name``, when given a :class:`_Saved`."""

    def __init__(self, group: WireGroup, dtype: torch.dtype, work: torch.dtype, name: str
                 ) -> None:
        super().__init__()
        d = group.dim
        self.shape = (len(group.wires), group.segments, group.depth, d)
        self.count = count = len(group.wires) * group.segments * group.depth
        self.name = name
        # [θ/2 + π/2, θ/2]: sin gives [cos(θ/2), sin(θ/2)]
        weights = np.concatenate([group.weights, group.weights]).T
        offset = np.concatenate([group.offset + math.pi / 2, group.offset])
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

    def forward(self, values: torch.Tensor, saved: _Saved | None = None) -> torch.Tensor:
        batch = values.shape[0]
        wires, t, g, d = self.shape
        trig = torch.addmm(self.offset, values, self.trig_weights).sin()
        factors = torch.addmm(self.fixed, _cast(trig, self.work_dtype), self.mix)
        if saved is not None:
            saved.put(f"{self.name}trig", trig)
        if g == 1:
            return factors.view(batch, wires, t, d, d)
        factors = factors.view(batch, wires, t, g, d, d)
        out = factors[:, :, :, 0]
        chain = [out]
        for k in range(1, g):
            out = factors[:, :, :, k] @ out
            chain.append(out)
        if saved is not None:
            saved.put(f"{self.name}factors", factors)
            for k, product in enumerate(chain[:-1]):
                saved.put(f"{self.name}chain{k}", product)
        return out

    def backward(self, grad: torch.Tensor, saved: _Saved) -> torch.Tensor:
        """The values' gradient (B, P) for the segments' gradient ``grad``."""
        batch = grad.shape[0]
        g = self.shape[2]
        if g > 1:  # out_k = factor_k @ out_(k−1)
            factors = saved[f"{self.name}factors"]
            grads = [grad] * g
            for k in range(g - 1, 0, -1):
                grads[k] = grad @ saved[f"{self.name}chain{k - 1}"].mH
                grad = factors[:, :, :, k].mH @ grad
            grads[0] = grad
            grad = torch.stack(grads, dim=3)
        grad_trig = torch.mm(grad.reshape(batch, -1), self.mix.mH)
        if grad_trig.is_complex():
            grad_trig = grad_trig.real
        trig = saved[f"{self.name}trig"]
        return torch.mm(grad_trig * trig.roll(self.count, 1), self.trig_backward)


class MatrixProductNetwork(nn.Module):
    """The circuit's columns as a matrix product state (see the module doc).

    ``forward(values)`` maps ``(..., P)`` to ``(..., N, K)``. Raises
    :class:`CompileError` at construction for circuits outside its reach
    (non-diagonal, parameterized or distant two-wire gates, wires of more
    levels after a qubit) and for columns that reach the second half of the
    qubits' block.
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
        return super()._apply(fn, recurse)

    def segment_matrices(self, values: torch.Tensor, saved: _Saved | None = None
                         ) -> list[torch.Tensor]:
        """The qubits' (B, n, T, 2, 2) segment matrices, then each head wire's."""
        return [self.builder(values, saved), *(b(values, saved) for b in self.head_builders)]

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values (..., P) -> (..., N, K); the reshapes happen inside the one autograd node."""
        if torch.is_grad_enabled() and values.requires_grad and not plain_operations():
            return NetworkFunction.apply(self, values)
        flat = values.reshape(math.prod(values.shape[:-1]), values.shape[-1])
        return self.frame(self.contract(self.segment_matrices(flat)), values.shape)

    def frame(self, block: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The chosen columns of the (B, N, 2^m) block, shaped ``(..., N, K)`` for
        values of ``shape`` ``(..., P)``."""
        if not self._whole_block:
            block = block.index_select(2, self.column_index)
        return block.reshape(*shape[:-1], self.dimension, self.num_columns)

    def frame_backward(self, grad: torch.Tensor) -> torch.Tensor:
        """The block's gradient for the gradient of :meth:`frame`."""
        grad = grad.reshape(-1, self.dimension, self.num_columns)
        if self._whole_block:
            return grad
        block = grad.new_zeros(grad.shape[0], self.dimension, 2**self.column_wires)
        return block.index_add_(2, self.column_index, grad)

    # -- the contraction, in plain operations (saving what the backward needs)
    def contract(self, matrices: list[torch.Tensor], saved: _Saved | None = None
                 ) -> torch.Tensor:
        """The segment matrices of :meth:`segment_matrices` → the (B, N, 2^m) column block."""
        matrices = [_cast(m, self.work_dtype) for m in matrices]
        return self._steps(matrices[0].shape[0]).forward(self, matrices, saved)

    def contract_backward(self, grad: torch.Tensor, saved: _Saved, in_place: bool = True
                          ) -> list[torch.Tensor]:
        """The segment matrices' gradients for the block's gradient ``grad``."""
        return self._steps(grad.shape[0]).backward(self, _cast(grad, self.work_dtype), saved,
                                                   in_place)

    def _steps(self, batch: int) -> _Steps:
        if not isinstance(batch, int):  # a symbolic size (torch.export's dynamic shapes)
            return _Steps(batch, self)
        steps = self.__dict__.setdefault("_batch_steps", {})
        if batch not in steps:
            steps[batch] = _Steps(batch, self)
        return steps[batch]


class _Steps:
    """The shapes of :meth:`MatrixProductNetwork.contract` for one batch size,
    worked out once (the contraction is launch-bound: Python between the
    tensor operations counts)."""

    def __init__(self, batch: int, network: MatrixProductNetwork) -> None:
        n, m, chi, t = network.qubits, network.column_wires, network.bond, network.segments
        paths = 2 ** (t - 1)
        self.m = m
        self.gather = (batch * n, t * 4)
        self.gathered = (batch * n, t, paths * 4)
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
        self.grad_weights = (n, batch, paths * 4)
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

    def forward(self, network: MatrixProductNetwork, matrices: list[torch.Tensor],
                saved: _Saved | None) -> torch.Tensor:
        m = self.m
        gathered = matrices[0].reshape(self.gather).index_select(1, network.path_index)
        gathered = gathered.view(self.gathered)
        # (n, B, y·x·c): the wire tensors are A[l, x, c, r] = Σ_y W[y, x, c] D[l, y, r]
        weights = gathered.prod(1).view(self.weights).transpose(0, 1)
        if saved is not None:
            saved.put("gathered", gathered)
        plain = torch.bmm(weights[: self.split], network.plain_map)  # c = 0: (n − m, B, χ·2·χ)
        plain = plain.transpose(0, 1).reshape(self.plain)
        tree = _tree(plain, saved, "left")  # (B, χ, 2^(n−m), χ)
        if self.head:
            head = self._head_forward(network, matrices[1:], saved)  # (B, D_head, χ)
            left = torch.bmm(head, tree.reshape(self.batch, tree.shape[1], -1))
            left = left.view(self.batch, self.rows, -1)
            if saved is not None:
                saved.put("tree", tree)
                saved.put("head_state", head)
        else:
            left = tree[:, 0]  # (B, N/2^m, χ)
        if saved is not None:
            saved.put("left", left)
        if m == 0:
            return left[:, :, :1]
        column = torch.bmm(weights[self.split:], network.column_map)
        column = column.transpose(0, 1).reshape(self.column)
        right = _tree(column, saved, "right")[..., 0]  # (B, χ, 4^m) digits x₀ c₀ x₁ c₁ …
        right = right.reshape(self.digits).permute(self.order).reshape(self.right)
        if saved is not None:
            saved.put("right", right)
        return torch.bmm(left, right).view(self.block)

    def _head_forward(self, network: MatrixProductNetwork, matrices: list[torch.Tensor],
                      saved: _Saved | None) -> torch.Tensor:
        """The wires before the qubits, contracted in turn: (B, D_head, χ)."""
        batch, state = self.batch, None
        for i, (d, left, right, segments, paths, rows) in enumerate(self.head):
            index = getattr(network, f"head_index{i}")
            gathered = matrices[i].reshape(batch, -1).index_select(1, index)
            gathered = gathered.view(batch, segments, paths * d)
            tensor = torch.mm(gathered.prod(1), getattr(network, f"head_map{i}"))
            if state is None:
                state = tensor.view(batch, d, right)  # its left bond has one value
            else:
                if saved is not None:
                    saved.put(f"state{i}", state)
                    saved.put(f"tensor{i}", tensor)
                state = torch.bmm(state, tensor.view(batch, left, d * right))
                state = state.view(batch, rows * d, right)
            if saved is not None:
                saved.put(f"head_gathered{i}", gathered)
        return state

    def backward(self, network: MatrixProductNetwork, grad: torch.Tensor, saved: _Saved,
                 in_place: bool) -> list[torch.Tensor]:
        """``in_place``: write products into place (``out=``), which vmap cannot batch
        (``jacobian(vectorize=True)``, ``is_grads_batched=True``)."""
        m, chi = self.m, self.root[1]
        left = saved["left"]
        if m == 0:
            grad_left = functional.pad(grad, (0, chi - 1))  # (B, N, 1): the right boundary 0
        else:
            right = saved["right"]
            grad = grad.reshape(self.flat_grad)
            grad_left = torch.bmm(grad, right.mH)
            grad_right = torch.bmm(left.mH, grad).view(self.digits).permute(self.inverse)
            root = functional.pad(grad_right.reshape(self.right).unsqueeze(-1), (0, chi - 1))
            grad_column = _tree_backward(root, saved, "right", in_place)
            grad_column = grad_column.reshape(self.column_grad)
        heads = []
        if self.head:
            tree = saved["tree"]
            flat = grad_left.reshape(self.batch, self.head_rows, -1)
            flat_tree = tree.reshape(self.batch, tree.shape[1], -1)
            root = torch.bmm(saved["head_state"].mH, flat).view(self.root)
            heads = self._head_backward(network, torch.bmm(flat, flat_tree.mH), saved)
        else:
            # the left boundary is row 0 (the other rows of the first wire's tensor are zero)
            root = functional.pad(grad_left.unsqueeze(1), (0, 0, 0, 0, 0, chi - 1))
        grad_plain = _tree_backward(root, saved, "left", in_place)
        plain = grad_plain.reshape(self.plain_grad).transpose(0, 1)
        if in_place:
            grad_weights = grad_plain.new_empty(self.grad_weights)
            torch.bmm(plain, network.plain_map.mH, out=grad_weights[: self.split])
            if m:
                torch.bmm(grad_column.transpose(0, 1), network.column_map.mH,
                          out=grad_weights[self.split:])
        else:
            grad_weights = torch.bmm(plain, network.plain_map.mH)
            if m:
                grad_weights = torch.cat([grad_weights, torch.bmm(
                    grad_column.transpose(0, 1), network.column_map.mH)])
        grad_weights = grad_weights.transpose(0, 1).reshape(self.paths_flat)
        grad_gathered = grad_weights * _others_product(saved["gathered"],
                                                       network.builder.others).conj()
        out = grad_plain.new_zeros(self.out).index_add(
            1, network.path_index, grad_gathered.view(self.out[0], -1))
        return [out.view(self.segments), *heads]

    def _head_backward(self, network: MatrixProductNetwork, grad: torch.Tensor,
                       saved: _Saved) -> list[torch.Tensor]:
        """The head wires' segment gradients for the gradient (B, D_head, χ) of their state."""
        batch = self.batch
        grads: list[torch.Tensor] = [None] * len(self.head)
        for i in reversed(range(len(self.head))):
            d, left, right, segments, paths, rows = self.head[i]
            if i:
                state, tensor = saved[f"state{i}"], saved[f"tensor{i}"]
                flat = grad.reshape(batch, rows, d * right)
                grad_tensor = torch.bmm(state.mH, flat).view(batch, -1)
                grad = torch.bmm(flat, tensor.view(batch, left, d * right).mH)
            else:
                grad_tensor = grad.reshape(batch, -1)
            grad_weights = torch.mm(grad_tensor, getattr(network, f"head_map{i}").mH)
            gathered = saved[f"head_gathered{i}"]
            others = network.head_builders[i].others
            grad_gathered = grad_weights.unsqueeze(1) * _others_product(gathered, others).conj()
            out = grad_tensor.new_zeros(batch, segments * d * d).index_add(
                1, getattr(network, f"head_index{i}"), grad_gathered.view(batch, -1))
            grads[i] = out.view(batch, 1, segments, d, d)
        return grads


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


def _others_product(factors: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """For (R, T, Q): for each t, the product of the other T−1 factors (exact with
    zero factors: no division), from one gather (``others``: :func:`_others_index`)
    and one product."""
    count = factors.shape[1]
    spread = factors.index_select(1, others)
    return spread.view(factors.shape[0], count, count - 1, factors.shape[2]).prod(2)


class _Saved:
    """What the written-out backward needs: tensors by name (handed to
    ``save_for_backward`` as one flat list) and plain values by name."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] | tuple[torch.Tensor, ...] = []
        self.index: dict[str, int] = {}
        self.values: dict[str, object] = {}

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self.index[name] = len(self.tensors)
        self.tensors.append(tensor)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[self.index[name]]


def _tree(tensors: torch.Tensor, saved: _Saved | None, name: str) -> torch.Tensor:
    """(B, k, χ, D, χ) → (B, χ, D^k, χ): the chain product over k, as a
    balanced tree of batched products; an odd element left over at a level
    waits and joins at the end, in order.

    With ``saved`` (the written-out backward), each level's operands are
    strided views of the level's input, which is saved; without, plain
    reshapes (which ``torch.func`` transforms and ``torch.compile`` trace)."""
    batch, k, chi, size = tensors.shape[:4]
    levels: list[tuple[int, int, bool]] = []  # (pairs, size, waited) per level
    waiting: list[torch.Tensor] = []
    current = tensors.contiguous() if saved is not None else tensors
    while k > 1:
        block = chi * size * chi
        waited = k % 2 == 1
        if waited:
            current = current.reshape(batch, k, block)
            waiting.append(current[:, -1])
            current = current[:, :-1]
            if batch > 1 and saved is not None:
                current = current.contiguous()
        pairs = k // 2
        if saved is None:
            current = current.reshape(batch * pairs, 2, block)
            first = current[:, 0].reshape(batch * pairs, chi * size, chi)
            second = current[:, 1].reshape(batch * pairs, chi, size * chi)
        else:
            saved.put(f"{name}{len(levels)}", current)
            first, second = _operands(current, batch * pairs, chi, size)
        levels.append((pairs, size, waited))
        current = torch.bmm(first, second)  # (B·pairs, χ·D, D·χ): the next level's elements
        k, size = pairs, size * size
    result = current.reshape(batch, chi, size, chi)
    for index, extra in enumerate(reversed(waiting)):  # the deepest level's is the leftmost
        if saved is not None:
            saved.put(f"{name}-join{index}", result)
            saved.put(f"{name}-extra{index}", extra)
        result = torch.bmm(result.reshape(batch, -1, chi), extra.reshape(batch, chi, -1))
        result = result.view(batch, chi, -1, chi)
    if saved is not None:
        saved.values[name] = (levels, len(waiting), tuple(tensors.shape))
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


def _tree_backward(grad: torch.Tensor, saved: _Saved, name: str, in_place: bool
                   ) -> torch.Tensor:
    """The gradient of :func:`_tree` for its result's gradient (B, χ, D^k, χ);
    ``in_place``: each level's two products written into place."""
    levels, joins, shape = saved.values[name]
    batch, chi = grad.shape[0], grad.shape[1]
    grad_waiting = []  # in the order the elements waited (first level first)
    for index in reversed(range(joins)):
        first = saved[f"{name}-join{index}"].reshape(batch, -1, chi)
        second = saved[f"{name}-extra{index}"].reshape(batch, chi, -1)
        flat = grad.reshape(batch, first.shape[1], second.shape[2])
        grad_waiting.append(torch.bmm(first.mH, flat))
        grad = torch.bmm(flat, second.mH)
    for level in reversed(range(len(levels))):
        pairs, size, waited = levels[level]
        count, block = batch * pairs, chi * size * chi
        first_h, second_h = _operands(saved[f"{name}{level}"], count, chi, size, transposed=True)
        flat = grad.reshape(count, chi * size, size * chi)
        if in_place:
            out = grad.new_empty(batch, 2 * pairs + (waited and batch == 1), block)
            torch.bmm(flat, second_h,
                      out=out.as_strided((count, chi * size, chi), (2 * block, chi, 1)))
            torch.bmm(first_h, flat, out=out.as_strided((count, chi, size * chi),
                                                        (2 * block, size * chi, 1), block))
        else:
            out = torch.cat([torch.bmm(flat, second_h).view(batch, pairs, 1, block),
                             torch.bmm(first_h, flat).view(batch, pairs, 1, block)], dim=2)
            out = out.view(batch, 2 * pairs, block)
        if waited:
            extra = grad_waiting.pop().view(batch, 1, block)
            if batch > 1 or not in_place:
                out = torch.cat([out, extra], dim=1)
            else:
                out[:, -1:] = extra
        grad = out
    return grad.reshape(shape)


def _wrapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is batched by a vmap: autograd runs a backward under vmap
    for ``jacobian(vectorize=True)`` and ``is_grads_batched=True``."""
    functorch = torch._C._functorch
    return any(getattr(functorch, name, lambda _: False)(tensor)
               for name in ("is_legacy_batchedtensor", "is_batchedtensor",
                            "is_functorch_wrapped_tensor"))


class NetworkFunction(torch.autograd.Function):
    """Values → column block as one autograd node: the builder and
    :meth:`MatrixProductNetwork.contract`, with their written-out backward."""

    @staticmethod
    def forward(ctx: Any, network: MatrixProductNetwork, values: torch.Tensor) -> torch.Tensor:
        saved = _Saved()
        flat = values.reshape(math.prod(values.shape[:-1]), values.shape[-1])
        block = network.contract(network.segment_matrices(flat, saved), saved)
        ctx.save_for_backward(*saved.tensors)
        saved.tensors = ()
        ctx.network, ctx.saved, ctx.shape = network, saved, values.shape
        frame = network.frame(block, values.shape)
        # autograd refuses in-place changes (U[:, 0] *= -1) to a view made inside a Function
        return frame.clone() if frame._base is not None else frame

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        refuse_second_derivatives()
        network, saved = ctx.network, ctx.saved
        saved.tensors = ctx.saved_tensors
        with torch.no_grad(), autocast_off(grad.device):
            # under vmap (batched gradients) nothing may be written into place
            in_place = not (plain_operations() or _wrapped(grad))
            segments = network.contract_backward(network.frame_backward(grad), saved,
                                                 in_place=in_place)
            builders = [network.builder, *network.head_builders]
            values = builders[0].backward(segments[0], saved)
            for builder, part in zip(builders[1:], segments[1:]):
                values = values + builder.backward(part, saved)
        saved.tensors = ()
        return None, values.view(ctx.shape)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        refuse_forward_mode()
