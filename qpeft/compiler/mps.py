"""Evaluate a circuit's first columns as a matrix product state.

For circuits on qubits whose gates are one-wire gates and *constant diagonal*
gates on neighbouring wires (CZ, controlled phases with a fixed angle): the
Quantum-PEFT Pauli ansatz and every brickwork of rotations and CZ.

**Bonds.** A diagonal gate ``g`` on wires ``(a, a+1)`` is
``Σ_b |b⟩⟨b| ⊗ diag(g[b, 0], g[b, 1])``: a sum of two products, one term per
value of a *bond bit* ``b`` shared by the two wires. Every column of the
unitary is therefore a matrix product state: wire ``q`` contributes a tensor
``A_q[l, r, x, c]`` (output digit ``x``, input digit ``c``, left and right
bond indices ``l`` and ``r``, of ``χ = 2^E`` values for ``E`` diagonal gates
on a cut), and ``U[x, c] = A_0[·, x_0, c_0] A_1[·, x_1, c_1] ⋯`` as a product
of ``χ × χ`` matrices. With ``L`` layers of the brickwork, ``χ = 2^L``.

**One wire's tensor.** Between diagonal gates, a wire's one-wire gates fuse
into ``T`` segment matrices ``M_t``. With the bond bits fixed, the wire's
operator is ``M_{T−1} D_{T−1} ⋯ D_1 M_0`` with diagonal ``D_t``, so
``A[l, r, x, c] = Σ_y D[(l, r), y] · W[y, x, c]`` where ``y`` runs over the
``2^{T−1}`` digit paths between segments, ``W[y, x, c] = Π_t M_t[y_{t+1}, y_t]``
(one gather and one product for every wire at once) and ``D`` is a constant
±1/0 table fixed at compile time.

**The contraction.** The first ``K`` columns vary only the last
``m = ⌈log₂ K⌉`` input digits, so the other wires' tensors are taken at
``c = 0``. Each group is contracted by a balanced tree of batched matrix
products (``⌈log₂ n⌉`` levels), and one final product of an
``(N/2^m) × χ`` and a ``χ × 4^m`` matrix gives the ``N × 2^m`` block holding
the columns.

**Cost.** ``O(N·2^m·χ)`` multiply-adds for the last product and ``O(N·χ²)``
in the tree, against ``O(L·log N·N·K)`` for the gate-by-gate columns
method; and about 30 tensor operations in all, independent of ``N`` and
``L``: one :class:`torch.autograd.Function` with a written-out backward.

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

from qpeft.circuit import Circuit
from qpeft.circuit.gates import COMPLEX_OF, FixedGate
from qpeft.compiler.blocks import (
    autocast_off,
    plain_operations,
    refuse_forward_mode,
    refuse_second_derivatives,
)
from qpeft.errors import CompileError

#: The most segments on one wire: a wire's tensor sums over 2^(T−1) digit paths.
MAX_SEGMENTS = 12
#: The largest bond dimension χ (2^E for E diagonal gates across one cut).
MAX_BOND = 64


@dataclass
class _Wire:
    """One wire's timeline: segments of one-wire factors, and the diagonal
    gates met between them."""

    segments: list[list[int]] = field(default_factory=lambda: [[]])  # factor rows
    # (slot y_t the gate acts on, cut, bond bit position on that cut, side, 2×2 table)
    events: list[tuple[int, int, int, str, np.ndarray]] = field(default_factory=list)

    def event_slot(self) -> int:
        """The digit slot y_t a diagonal gate meets now (closing the open segment
        unless it is an empty one between two diagonal gates)."""
        last = self.segments[-1]
        if last or len(self.segments) == 1:
            self.segments.append([])
        return len(self.segments) - 1


@dataclass
class Layout:
    """What :class:`MatrixProductNetwork` precomputes from a circuit. Factor
    position ``(q, t, g)`` is factor ``g`` of segment ``t`` of wire ``q``
    (applied in order of ``g``; identity where a segment has fewer)."""

    qubits: int
    segments: int  # T
    depth: int  # G
    bond: int  # χ
    fixed: np.ndarray  # (n, T, G, 2, 2): factor = fixed + cos(θ/2)·projector + sin(θ/2)·step
    projector: np.ndarray
    step: np.ndarray
    weights: np.ndarray  # (n·T·G, P): θ/2 = offset + weights · values
    offset: np.ndarray  # (n·T·G,)
    bond_table: np.ndarray  # (n, χ·χ, 2^(T−1)) the D table of every wire
    is_real: bool


def mps_layout(circuit: Circuit) -> Layout:
    """The circuit's matrix product layout, or a :class:`CompileError` saying
    why the circuit does not have one."""
    if any(d != 2 for d in circuit.dims):
        raise CompileError(
            f"method='mps' needs qubits, and this circuit has wires of {sorted(set(circuit.dims))}"
            " levels; use method='columns'"
        )
    n = circuit.num_wires
    names = {name: i for i, name in enumerate(circuit.parameters)}
    wires = [_Wire() for _ in range(n)]
    factors: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]] = []
    cut_events = [0] * max(n - 1, 0)
    for gate in circuit.gates:
        if gate.is_identity:
            continue
        if len(gate.wires) == 1:
            row = np.zeros(len(names))
            if gate.params:
                generator = gate.generator((2,))
                if generator is None or len(gate.params) != 1:
                    raise CompileError(f"{gate.name} is not a one-angle rotation exp(-iθG/2)")
                square = generator @ generator
                for name, coefficient in gate.params[0].terms:
                    row[names[name]] += coefficient
                factors.append((np.eye(2) - square, square, -1j * generator, row,
                                gate.params[0].constant))
            else:
                zero = np.zeros((2, 2))
                factors.append((np.asarray(_constant(gate)), zero, zero, row, 0.0))
            wires[gate.wires[0]].segments[-1].append(len(factors) - 1)
            continue
        a, b = gate.wires if len(gate.wires) == 2 else (None, None)
        constant = all(expression.is_constant for expression in gate.params)
        matrix = np.asarray(_constant(gate)) if constant and a is not None else None
        if matrix is None or abs(a - b) != 1 or np.abs(matrix - np.diag(np.diag(matrix))).max() > 0:
            raise CompileError(
                f"method='mps' takes one-wire gates and constant diagonal gates on neighbouring "
                f"wires (CZ), and {gate.name} on wires {list(gate.wires)} is neither; use "
                "method='columns'"
            )
        table = np.diag(matrix).reshape(2, 2)  # [digit of a, digit of b]
        if a > b:
            a, b, table = b, a, table.T
        bit = cut_events[a]
        cut_events[a] += 1
        wires[a].events.append((wires[a].event_slot(), a, bit, "left", table))
        wires[b].events.append((wires[b].event_slot(), a, bit, "right", table))
    segments = max(len(w.segments) for w in wires)
    largest_cut = max(cut_events, default=0)
    if segments > MAX_SEGMENTS or 2**largest_cut > MAX_BOND:
        raise CompileError(
            f"method='mps' would sum over {2 ** (segments - 1)} digit paths per wire with a bond "
            f"of {2 ** largest_cut} (limits: {MAX_SEGMENTS} segments, bond {MAX_BOND}): the "
            "circuit has too many diagonal gates per wire; use method='columns'"
        )
    depth = max(1, max(len(s) for w in wires for s in w.segments))
    fixed = np.zeros((n, segments, depth, 2, 2), dtype=complex)
    fixed[...] = np.eye(2)
    projector = np.zeros_like(fixed)
    step = np.zeros_like(fixed)
    weights = np.zeros((n, segments, depth, len(names)))
    offset = np.zeros((n, segments, depth))
    for q, wire in enumerate(wires):
        for t, segment in enumerate(wire.segments):
            for g, index in enumerate(segment):
                f, p, st, row, constant = factors[index]
                fixed[q, t, g], projector[q, t, g], step[q, t, g] = f, p, st
                weights[q, t, g], offset[q, t, g] = 0.5 * row, 0.5 * constant
    bond = 2**largest_cut
    bond_table = _bond_tables(wires, segments, bond, cut_events)
    is_real = all(np.abs(np.imag(part)).max(initial=0.0) == 0
                  for part in (fixed, step, bond_table))
    return Layout(
        qubits=n, segments=segments, depth=depth, bond=bond,
        fixed=fixed, projector=projector, step=step,
        weights=weights.reshape(n * segments * depth, len(names)), offset=offset.reshape(-1),
        bond_table=bond_table, is_real=is_real,
    )


def supports(circuit: Circuit, columns: Sequence[int]) -> bool:
    """Whether :class:`MatrixProductNetwork` can evaluate these columns of ``circuit``."""
    try:
        mps_layout(circuit)
    except CompileError:
        return False
    return int(max(columns)).bit_length() < circuit.num_wires


def _constant(gate) -> np.ndarray:
    dims = (2,) * len(gate.wires)
    if isinstance(gate, FixedGate):
        return gate.constant_matrix(dims)
    return gate.matrix(dims).numpy()


def _bond_tables(wires: list[_Wire], segments: int, bond: int, cut_events: list[int]
                 ) -> np.ndarray:
    """D[q, (l, r), y]: the product of the wire's diagonal factors along the
    digit path ``y = (y_1 … y_{T−1})`` (y_1 most significant) for bond bits
    ``l`` (cut q−1) and ``r`` (cut q); zero for bond values a cut lacks."""
    n = len(wires)
    paths = 2 ** (segments - 1)
    digits = (np.arange(paths)[:, None] >> np.arange(segments - 2, -1, -1)[None, :]) & 1
    digits = np.concatenate([np.zeros((paths, 1), dtype=np.int64), digits], axis=1)  # y_0 unused
    out = np.zeros((n, bond, bond, paths), dtype=complex)
    for q, wire in enumerate(wires):
        left_bits = cut_events[q - 1] if q > 0 else 0
        right_bits = cut_events[q] if q < n - 1 else 0
        for lb in range(2**left_bits):
            for rb in range(2**right_bits):
                value = np.ones(paths, dtype=complex)
                for slot, cut, bit, side, table in wire.events:
                    bits, count = (lb, left_bits) if cut == q - 1 else (rb, right_bits)
                    b = (bits >> (count - 1 - bit)) & 1
                    y = digits[:, slot]
                    value = value * ((y == b) if side == "left" else table[b, y])
                out[q, lb, rb] = value
    return out.reshape(n, bond * bond, paths)


class SegmentBuilder(nn.Module):
    """(B, P) values → (B, n, T, 2, 2) segment matrices (see :class:`Layout`).

    Every factor is ``fixed + cos(θ/2)·projector + sin(θ/2)·step``: one
    product gives all half-angles and their shifts by π/2, one ``sin`` all
    cosines and sines, and one product all factors. :meth:`forward` saves
    what :meth:`backward` needs when given a :class:`_Saved`."""

    def __init__(self, layout: Layout, dtype: torch.dtype) -> None:
        super().__init__()
        cplx = COMPLEX_OF.get(dtype, dtype)
        work = dtype if layout.is_real else cplx
        n, t, g = layout.qubits, layout.segments, layout.depth
        count = n * t * g
        self.shape = (n, t, g)
        self.count = count
        # [θ/2 + π/2, θ/2]: sin gives [cos(θ/2), sin(θ/2)]
        weights = np.concatenate([layout.weights, layout.weights]).T
        offset = np.concatenate([layout.offset + math.pi / 2, layout.offset])
        self.register_buffer("trig_weights", torch.as_tensor(weights.copy(), dtype=dtype),
                             persistent=False)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=dtype),
                             persistent=False)
        # d/dθ of [cos, sin] is [−sin, cos]/2 (the 1/2 is in the weights)
        backward = np.concatenate([-layout.weights, layout.weights])
        self.register_buffer("trig_backward", torch.as_tensor(backward, dtype=dtype),
                             persistent=False)
        mix = np.zeros((2 * count, count * 4), dtype=complex)
        rows = np.arange(count)
        for entry in range(4):
            mix[rows, rows * 4 + entry] = layout.projector.reshape(count, 4)[:, entry]
            mix[count + rows, rows * 4 + entry] = layout.step.reshape(count, 4)[:, entry]
        fixed = layout.fixed.reshape(-1)
        if layout.is_real:
            mix, fixed = mix.real, fixed.real
        self.register_buffer("mix", torch.as_tensor(mix, dtype=work), persistent=False)
        self.register_buffer("fixed", torch.as_tensor(fixed, dtype=work), persistent=False)
        self.work_dtype = work

    def forward(self, values: torch.Tensor, saved: _Saved | None = None) -> torch.Tensor:
        batch = values.shape[0]
        trig = torch.addmm(self.offset, values, self.trig_weights).sin()
        factors = torch.addmm(self.fixed, trig.to(self.work_dtype), self.mix)
        n, t, g = self.shape
        if saved is not None:
            saved.put("trig", trig)
        if g == 1:
            return factors.view(batch, n, t, 2, 2)
        factors = factors.view(batch, n, t, g, 2, 2)
        out = factors[:, :, :, 0]
        chain = [out]
        for k in range(1, g):
            out = factors[:, :, :, k] @ out
            chain.append(out)
        if saved is not None:
            saved.put("factors", factors)
            for k, product in enumerate(chain[:-1]):
                saved.put(f"chain{k}", product)
        return out

    def backward(self, grad: torch.Tensor, saved: _Saved) -> torch.Tensor:
        """The values' gradient (B, P) for the segments' gradient ``grad``."""
        batch = grad.shape[0]
        n, t, g = self.shape
        if g > 1:  # out_k = factor_k @ out_(k−1)
            factors = saved["factors"]
            grads = [grad] * g
            for k in range(g - 1, 0, -1):
                grads[k] = grad @ saved[f"chain{k - 1}"].mH
                grad = factors[:, :, :, k].mH @ grad
            grads[0] = grad
            grad = torch.stack(grads, dim=3)
        grad_trig = torch.mm(grad.reshape(batch, -1), self.mix.mH)
        if grad_trig.is_complex():
            grad_trig = grad_trig.real
        trig = saved["trig"]
        return torch.mm(grad_trig * trig.roll(self.count, 1), self.trig_backward)


class MatrixProductNetwork(nn.Module):
    """The circuit's columns as a matrix product state (see the module doc).

    ``forward(values)`` maps ``(B, P)`` to ``(B, N, K)``. Raises
    :class:`CompileError` at construction for circuits outside its reach
    (qudits, non-diagonal or distant two-wire gates, parameterized two-wire
    gates) and for columns that reach the second half of the register.
    """

    def __init__(self, circuit: Circuit, columns: Sequence[int], dtype: torch.dtype) -> None:
        super().__init__()
        layout = mps_layout(circuit)
        self.columns = [int(c) for c in columns]
        n = layout.qubits
        self.dimension = 2**n
        self.qubits = n
        self.column_wires = int(max(self.columns)).bit_length()
        if self.column_wires >= n:
            raise CompileError(
                f"method='mps' evaluates columns below N/2, and column {max(self.columns)} of "
                f"{self.dimension} is not; use method='columns' or 'dense'"
            )
        self.real_dtype = dtype
        self.work_dtype = dtype if layout.is_real else COMPLEX_OF.get(dtype, dtype)
        self.builder = SegmentBuilder(layout, dtype)
        self.segments, self.bond = layout.segments, layout.bond
        plain, column = _wire_maps(layout.bond_table, layout.bond, self.column_wires)
        work = self.work_dtype
        if layout.is_real:
            plain, column = plain.real, column.real
        self.register_buffer("plain_map", torch.as_tensor(plain, dtype=work), persistent=False)
        self.register_buffer("column_map", torch.as_tensor(column, dtype=work), persistent=False)
        self.register_buffer("path_index", torch.as_tensor(_path_index(layout.segments)),
                             persistent=False)
        self.register_buffer("column_index", torch.as_tensor(self.columns), persistent=False)
        self._whole_block = self.columns == list(range(2**self.column_wires))
        m = self.column_wires
        self._digit_order = [0, 1] + [2 + 2 * i for i in range(m)] + [3 + 2 * i for i in range(m)]
        self._digit_inverse = [int(i) for i in np.argsort(self._digit_order)]

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def cost(self) -> dict[str, int]:
        """One forward pass for one circuit: ``multiply_adds`` (wire tensors,
        tree and final product), ``state_numbers`` (N·K), the ``bond``
        dimension χ and the ``segments`` T of the longest wire."""
        n, chi, m, t = self.qubits, self.bond, self.column_wires, self.segments
        paths = 2 ** (t - 1)
        wire = n * (chi * chi * paths * 4 + paths * 4 * t)
        rows = self.dimension >> m
        return {"multiply_adds": wire + 2 * rows * chi**3 + 2 * 4**m * chi**3 + rows * chi * 4**m,
                "state_numbers": self.dimension * self.num_columns,
                "bond": chi, "segments": t}

    def _apply(self, fn, recurse: bool = True):
        self.__dict__.pop("_batch_steps", None)
        return super()._apply(fn, recurse)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and values.requires_grad and not plain_operations():
            block = NetworkFunction.apply(self, values)
        else:
            block = self.contract(self.builder(values))
        if self._whole_block:
            return block
        return block.index_select(2, self.column_index)

    # -- the contraction, in plain operations (saving what the backward needs)
    def contract(self, matrices: torch.Tensor, saved: _Saved | None = None) -> torch.Tensor:
        """(B, n, T, 2, 2) segment matrices → the (B, N, 2^m) column block."""
        return self._steps(matrices.shape[0]).forward(self, matrices.to(self.work_dtype), saved)

    def contract_backward(self, grad: torch.Tensor, saved: _Saved) -> torch.Tensor:
        """The segment matrices' gradient for the block's gradient ``grad``."""
        return self._steps(grad.shape[0]).backward(self, grad.to(self.work_dtype), saved)

    def _steps(self, batch: int) -> _Steps:
        steps = self.__dict__.setdefault("_batch_steps", {})
        if batch not in steps:
            steps[batch] = _Steps(batch, self.qubits, self.column_wires, self.bond,
                                  self.segments)
        return steps[batch]


class _Steps:
    """The shapes of :meth:`MatrixProductNetwork.contract` for one batch size,
    worked out once (the contraction is launch-bound: Python between the
    tensor operations counts)."""

    def __init__(self, batch: int, qubits: int, column_wires: int, bond: int,
                 segments: int) -> None:
        n, m, chi, t = qubits, column_wires, bond, segments
        paths = 2 ** (t - 1)
        self.m = m
        self.gather = (batch * n, t * 4)
        self.gathered = (batch * n, t, paths * 4)
        self.weights = (batch, n, paths * 4)
        self.plain = (batch, n - m, chi, 2, chi)
        self.column = (batch, m, chi, 4, chi)
        self.rows = 2 ** (n - m)
        self.block = (batch, 2**n, 2**m)
        self.flat_grad = (batch, self.rows, 4**m)
        self.root_left = (batch, chi, self.rows, chi)
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

    def forward(self, network: MatrixProductNetwork, matrices: torch.Tensor,
                saved: _Saved | None) -> torch.Tensor:
        m = self.m
        gathered = matrices.reshape(self.gather).index_select(1, network.path_index)
        gathered = gathered.view(self.gathered)
        # (n, B, y·x·c): the wire tensors are A[l, x, c, r] = Σ_y W[y, x, c] D[l, y, r]
        weights = gathered.prod(1).view(self.weights).transpose(0, 1)
        if saved is not None:
            saved.put("gathered", gathered)
        plain = torch.bmm(weights[: self.split], network.plain_map)  # c = 0: (n − m, B, χ·2·χ)
        plain = plain.transpose(0, 1).reshape(self.plain)
        if m == 0:
            return _tree(plain, saved, "all")[:, 0, :, 0].unsqueeze(-1)
        column = torch.bmm(weights[self.split:], network.column_map)
        column = column.transpose(0, 1).reshape(self.column)
        left = _tree(plain, saved, "left")[:, 0]  # (B, N/2^m, χ)
        right = _tree(column, saved, "right")[..., 0]  # (B, χ, 4^m) digits x₀ c₀ x₁ c₁ …
        right = right.reshape(self.digits).permute(self.order).reshape(self.right)
        if saved is not None:
            saved.put("left", left)
            saved.put("right", right)
        return torch.bmm(left, right).view(self.block)

    def backward(self, network: MatrixProductNetwork, grad: torch.Tensor,
                 saved: _Saved) -> torch.Tensor:
        m = self.m
        if m == 0:
            root = grad.new_zeros(self.root_left)
            root[:, 0, :, 0] = grad[..., 0]
            grad_plain = _tree_backward(root, saved, "all")
        else:
            left, right = saved["left"], saved["right"]
            grad = grad.reshape(self.flat_grad)
            # the left boundary is row 0 (the other rows of the first wire's tensor are zero)
            root = grad.new_zeros(self.root_left)
            torch.bmm(grad, right.mH, out=root[:, 0])
            grad_plain = _tree_backward(root, saved, "left")
            grad_right = torch.bmm(left.mH, grad).view(self.digits).permute(self.inverse)
            root = grad.new_zeros(self.root_right)
            root[..., 0] = grad_right.reshape(self.right)
            grad_column = _tree_backward(root, saved, "right").reshape(self.column_grad)
        grad_weights = grad.new_empty(self.grad_weights)
        torch.bmm(grad_plain.reshape(self.plain_grad).transpose(0, 1), network.plain_map.mH,
                  out=grad_weights[: self.split])
        if m:
            torch.bmm(grad_column.transpose(0, 1), network.column_map.mH,
                      out=grad_weights[self.split:])
        grad_weights = grad_weights.transpose(0, 1).reshape(self.paths_flat)
        grad_gathered = grad_weights * _others_product(saved["gathered"]).conj()
        out = grad.new_zeros(self.out)
        out.index_add_(1, network.path_index, grad_gathered.view(self.out[0], -1))
        return out.view(self.segments)


def _wire_maps(bond_table: np.ndarray, bond: int, column_wires: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The linear maps from a wire's path weights W[y, x, c] to its tensor
    A[l, x, c, r] = Σ_y W[y, x, c] D[l, y, r]: ``(n − m, Y·4, χ·2·χ)`` for the
    wires taken at c = 0 and ``(m, Y·4, χ·4·χ)`` for the column wires."""
    n, paths = bond_table.shape[0], bond_table.shape[2]
    table = bond_table.reshape(n, bond, bond, paths)  # (q, l, r, y)
    full = np.zeros((n, paths, 2, 2, bond, 2, 2, bond), dtype=complex)
    for x in range(2):
        for c in range(2):
            full[:, :, x, c, :, x, c, :] = table.transpose(0, 3, 1, 2)
    full = full.reshape(n, paths * 4, bond, 4, bond)
    plain = full[: n - column_wires, :, :, 0::2].reshape(n - column_wires, paths * 4, -1)
    column = full[n - column_wires:].reshape(column_wires, paths * 4, bond * 4 * bond)
    return np.ascontiguousarray(plain), np.ascontiguousarray(column)


def _path_index(segments: int) -> np.ndarray:
    """For factor t and path (y_1…y_{T−1}, x, c): the entry ``t·4 + 2·row + col``
    of segment t's matrix on that path (row y_{t+1}, column y_t; y_0 = c,
    y_T = x), flattened factor-major."""
    paths = 2 ** (segments - 1)
    y = (np.arange(paths)[:, None] >> np.arange(segments - 2, -1, -1)[None, :]) & 1  # y_1…y_{T−1}
    index = np.zeros((segments, paths, 2, 2), dtype=np.int64)
    for x in range(2):
        for c in range(2):
            full = np.concatenate([np.full((paths, 1), c), y, np.full((paths, 1), x)], axis=1)
            for t in range(segments):
                index[t, :, x, c] = 4 * t + 2 * full[:, t + 1] + full[:, t]
    return index.reshape(-1)


def _others_product(factors: torch.Tensor) -> torch.Tensor:
    """For (R, T, Q): for each t, the product of the other T−1 factors
    (exact with zero factors: no division)."""
    count = factors.shape[1]
    spread = factors.unsqueeze(1).expand(-1, count, -1, -1).clone()
    spread.diagonal(dim1=1, dim2=2).fill_(1)
    return spread.prod(2)


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


def _tree_backward(grad: torch.Tensor, saved: _Saved, name: str) -> torch.Tensor:
    """The gradient of :func:`_tree` for its result's gradient (B, χ, D^k, χ)."""
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
        out = grad.new_empty(batch, 2 * pairs + (waited and batch == 1), block)
        torch.bmm(flat, second_h, out=out.as_strided((count, chi * size, chi), (2 * block, chi, 1)))
        torch.bmm(first_h, flat, out=out.as_strided((count, chi, size * chi),
                                                    (2 * block, size * chi, 1), block))
        if waited:
            extra = grad_waiting.pop().view(batch, 1, block)
            if batch > 1:
                out = torch.cat([out, extra], dim=1)
            else:
                out[:, -1:] = extra
        grad = out
    return grad.reshape(shape)


class NetworkFunction(torch.autograd.Function):
    """Values → column block as one autograd node: the builder and
    :meth:`MatrixProductNetwork.contract`, with their written-out backward."""

    @staticmethod
    def forward(ctx: Any, network: MatrixProductNetwork, values: torch.Tensor) -> torch.Tensor:
        saved = _Saved()
        out = network.contract(network.builder(values, saved), saved)
        ctx.save_for_backward(*saved.tensors)
        saved.tensors = ()
        ctx.network, ctx.saved = network, saved
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        refuse_second_derivatives()
        network, saved = ctx.network, ctx.saved
        saved.tensors = ctx.saved_tensors
        with torch.no_grad(), autocast_off(grad.device):
            segments = network.contract_backward(grad, saved)
            values = network.builder.backward(segments, saved)
        saved.tensors = ()
        return None, values

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        refuse_forward_mode()
