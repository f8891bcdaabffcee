"""Compile-time planning: one circuit description in, a list of cheap
tensor operations out. Everything here runs once per :func:`qpeft.compile`.

1. **Angles.** Every gate angle is affine in the free parameters, so all of
   them come from one matmul: ``angles = values @ weights.T + offset``.
2. **Matrices.** Every parameterized gate in qpeft is a one-angle rotation
   ``exp(-iθG/2) = F + cos(θ/2)·P + sin(θ/2)·S`` with constant F, P, S.
   Rotations of the same size are built together in one batched expression.
3. **Nodes.** Parameter-free gates whose matrix is a signed permutation
   (X, CX, SWAP, Z, CZ, generalized CZ, ±1 diagonals) become index gathers
   and sign flips; runs of consecutive gates on one wire fuse into one
   matrix product.
4. **Moments.** Nodes are layered as soon as possible; in a moment all
   nodes act on different wires. The signed permutations of a moment merge
   into one full-register gather (often just a ±1 vector), and its matrix
   nodes are grouped into Kronecker blocks of neighbouring wires applied by
   one reshape-and-matmul each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from qpeft.circuit import Circuit, Gate
from qpeft.circuit.gates import FixedGate
from qpeft.errors import CompileError


@dataclass
class RotationGroup:
    """All rotations with a D×D matrix: ``F + cos(θ/2) P + sin(θ/2) S``."""

    size: int
    slots: list[int] = field(default_factory=list)  # angle slot of each member
    fixed: list[np.ndarray] = field(default_factory=list)
    projector: list[np.ndarray] = field(default_factory=list)
    step: list[np.ndarray] = field(default_factory=list)

    @property
    def is_real(self) -> bool:
        return all(np.abs(s.imag).max(initial=0.0) == 0 for s in self.step)


@dataclass
class MatrixNode:
    """A dense matrix on ``wires``: a product of rotations and constants.

    ``factors`` are applied first to last; each is ``("rotation", group, i)``
    or ``("constant", array)``.
    """

    wires: tuple[int, ...]
    factors: list[tuple] = field(default_factory=list)


@dataclass
class SignedPermutation:
    """``new_state[i] = sign[i] * state[source[i]]`` on the full register."""

    source: np.ndarray
    sign: np.ndarray

    def then(self, other: SignedPermutation) -> SignedPermutation:
        """This permutation followed by ``other``."""
        return SignedPermutation(self.source[other.source], other.sign * self.sign[other.source])

    @property
    def is_diagonal(self) -> bool:
        return bool(np.array_equal(self.source, np.arange(self.source.shape[0])))


@dataclass
class Block:
    """Matrix nodes on disjoint wires, applied together as one Kronecker block."""

    nodes: list[MatrixNode]

    @property
    def wires(self) -> tuple[int, ...]:
        return tuple(w for node in self.nodes for w in node.wires)


@dataclass
class Moment:
    permutation: SignedPermutation | None
    blocks: list[Block]


@dataclass
class Plan:
    dims: tuple[int, ...]
    num_parameters: int
    weights: np.ndarray  # (slots, P)
    offset: np.ndarray  # (slots,)
    groups: list[RotationGroup]
    moments: list[Moment]
    nodes: list  # MatrixNode | (SignedPermutation-on-wires tuple), in circuit order
    is_real: bool

    @property
    def dimension(self) -> int:
        return math.prod(self.dims)


def _signed_permutation_of(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(source, sign) if ``matrix`` has one ±1 per row and column, else None."""
    m = np.asarray(matrix)
    if np.iscomplexobj(m):
        if np.abs(m.imag).max(initial=0.0) > 0:
            return None
        m = m.real
    nonzero = np.abs(m) > 1e-12
    if not (nonzero.sum(axis=1) == 1).all() or not (nonzero.sum(axis=0) == 1).all():
        return None
    source = nonzero.argmax(axis=1)
    sign = m[np.arange(m.shape[0]), source]
    if not np.allclose(np.abs(sign), 1.0, atol=1e-12):
        return None
    return source, np.sign(sign)


def expand_signed_permutation(
    source: np.ndarray, sign: np.ndarray, wires: tuple[int, ...], dims: tuple[int, ...]
) -> SignedPermutation:
    """A signed permutation on ``wires`` as one on the whole register."""
    total = math.prod(dims)
    index = np.arange(total).reshape(dims)
    # digits of every basis state on the gate's wires, as the gate's local index
    local = np.zeros(dims, dtype=np.int64)
    for w in wires:
        local = local * dims[w] + np.indices(dims)[w]
    local = local.reshape(-1)
    new_local = source[local]
    # rebuild the full index with the gate's wires replaced by new_local digits
    digits = [np.indices(dims)[w].reshape(-1).copy() for w in range(len(dims))]
    remaining = new_local.copy()
    for w in reversed(wires):
        digits[w] = remaining % dims[w]
        remaining //= dims[w]
    full_source = np.ravel_multi_index(digits, dims)
    del index
    return SignedPermutation(full_source.astype(np.int64), sign[local].astype(float))


def make_plan(circuit: Circuit, *, max_block: int = 16) -> Plan:
    """Plan the evaluation of ``circuit`` (see the module docstring)."""
    if not isinstance(circuit, Circuit):
        raise CompileError(f"qpeft.compile needs a Circuit, got {type(circuit).__name__}")
    dims = circuit.dims
    names = circuit.parameters
    index = {n: i for i, n in enumerate(names)}

    weights_rows: list[np.ndarray] = []
    offsets: list[float] = []
    groups: dict[int, RotationGroup] = {}
    raw_nodes: list = []  # MatrixNode or ("perm", wires, source, sign)

    for gate in circuit.gates:
        if gate.is_identity:
            continue
        gate_dims = circuit.wire_dims(gate.wires)
        if gate.params:
            raw_nodes.append(_rotation_node(gate, gate_dims, index, weights_rows, offsets, groups,
                                            len(names)))
            continue
        assert isinstance(gate, FixedGate) or not gate.params
        constant = gate.matrix(gate_dims).numpy() if not isinstance(gate, FixedGate) else (
            np.asarray(gate.constant_matrix(gate_dims))
        )
        perm = _signed_permutation_of(constant)
        if perm is not None:
            raw_nodes.append(("perm", gate.wires, *perm))
        else:
            raw_nodes.append(MatrixNode(gate.wires, [("constant", constant)]))

    nodes = _fuse_single_wire_runs(raw_nodes)
    moments = _moments(nodes, dims, max_block)
    group_list = [groups[k] for k in sorted(groups)]
    weights = np.array(weights_rows, dtype=float).reshape(len(offsets), len(names))
    return Plan(
        dims=dims,
        num_parameters=len(names),
        weights=weights,
        offset=np.array(offsets, dtype=float),
        groups=group_list,
        moments=moments,
        nodes=nodes,
        is_real=circuit.is_real,
    )


def _rotation_node(gate: Gate, gate_dims, index, weights_rows, offsets, groups, num_params):
    generator = gate.generator(gate_dims)
    if generator is None or len(gate.params) != 1:
        raise CompileError(
            f"{gate.name} is parameterized but is not a one-angle rotation with a generator; "
            "qpeft compiles rotations exp(-iθG/2) only"
        )
    expr = gate.params[0]
    row = np.zeros(num_params)
    for name, coeff in expr.terms:
        row[index[name]] += coeff
    slot = len(offsets)
    weights_rows.append(row)
    offsets.append(expr.constant)
    size = generator.shape[0]
    group = groups.setdefault(size, RotationGroup(size))
    projector = generator @ generator
    group.slots.append(slot)
    group.fixed.append(np.eye(size) - projector)
    group.projector.append(projector)
    group.step.append(-1j * generator)
    return MatrixNode(gate.wires, [("rotation", size, len(group.slots) - 1)])


def _fuse_single_wire_runs(raw_nodes: list) -> list:
    """Merge consecutive one-wire matrix nodes on the same wire."""
    out: list = []
    open_run: dict[int, MatrixNode] = {}
    for node in raw_nodes:
        if isinstance(node, MatrixNode) and len(node.wires) == 1:
            wire = node.wires[0]
            if wire in open_run:
                open_run[wire].factors.extend(node.factors)
                continue
            fresh = MatrixNode(node.wires, list(node.factors))
            open_run[wire] = fresh
            out.append(fresh)
            continue
        wires = node.wires if isinstance(node, MatrixNode) else node[1]
        for w in wires:
            open_run.pop(w, None)
        out.append(node)
    return out


def _moments(nodes: list, dims: tuple[int, ...], max_block: int) -> list[Moment]:
    level = [0] * len(dims)
    layered: dict[int, list] = {}
    for node in nodes:
        wires = node.wires if isinstance(node, MatrixNode) else node[1]
        top = max(level[w] for w in wires)
        for w in wires:
            level[w] = top + 1
        layered.setdefault(top, []).append(node)

    moments: list[Moment] = []
    for depth in sorted(layered):
        perm: SignedPermutation | None = None
        matrices: list[MatrixNode] = []
        for node in layered[depth]:
            if isinstance(node, MatrixNode):
                matrices.append(node)
            else:
                _, wires, source, sign = node
                step = expand_signed_permutation(source, sign, wires, dims)
                perm = step if perm is None else perm.then(step)
        blocks = _blocks(matrices, dims, max_block)
        if not blocks and moments and moments[-1].blocks == [] and perm is not None:
            previous = moments[-1].permutation
            moments[-1] = Moment(previous.then(perm) if previous else perm, [])
            continue
        moments.append(Moment(perm, blocks))
    return moments


def _blocks(nodes: list[MatrixNode], dims, max_block: int) -> list[Block]:
    """Group nodes of one moment into Kronecker blocks of neighbouring wires."""
    blocks: list[Block] = []
    for node in sorted(nodes, key=lambda n: min(n.wires)):
        size = math.prod(dims[w] for w in node.wires)
        if blocks:
            last = blocks[-1]
            last_size = math.prod(dims[w] for w in last.wires)
            contiguous = min(node.wires) == max(last.wires) + 1
            if contiguous and last_size * size <= max_block and _is_ascending(last.wires + node.wires):
                last.nodes.append(node)
                continue
        blocks.append(Block([node]))
    return blocks


def _is_ascending(wires: tuple[int, ...]) -> bool:
    return all(b == a + 1 for a, b in zip(wires, wires[1:]))


def constant_tensor(array: np.ndarray, dtype: torch.dtype, complex_dtype: torch.dtype):
    if np.iscomplexobj(array) and np.abs(array.imag).max(initial=0.0) > 0:
        return torch.as_tensor(array, dtype=complex_dtype)
    return torch.as_tensor(np.real(array), dtype=dtype)
