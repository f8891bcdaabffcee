"""Compile-time planning: one circuit description in, a list of cheap
tensor operations out. Everything here runs once per :func:`qpeft.compile`
and is plain NumPy data; :mod:`qpeft.compiler.engine` turns it into torch.

1. **Angles.** Every gate angle is affine in the free parameters, so all of
   them come from one matmul: ``angles = values @ weights.T + offset``.
2. **Matrices.** Every parameterized gate in qpeft is a one-angle rotation
   ``exp(-iθG/2) = F + cos(θ/2)·P + sin(θ/2)·S`` with constant F, P, S.
   Rotations of the same size are built together in one batched expression.
3. **Nodes.** Parameter-free gates whose matrix is a signed permutation
   (X, CX, SWAP, Z, CZ, generalized CZ, ±1 diagonals) become index gathers
   and sign flips; runs of consecutive gates on one wire fuse into one
   matrix product. A rotation on wires of total dimension D > ``max_block``
   that mixes basis states only in disjoint pairs (a Givens rotation between
   two levels of a large qudit, a controlled rotation) never becomes a D×D
   matrix when D is large next to N (:data:`PAIR_RATIO`): it is a
   :class:`PairNode`, ``new[i] = A[i]·x[i] + B[i]·x[partner[i]]``, and
   consecutive such rotations on disjoint pairs merge into one node.
4. **Shared controls.** Consecutive matrix nodes that overlap only on wires
   on which each of them is block diagonal (rotations controlled by the same
   wire) commute and form one :class:`SharedControls` group: one block with
   one matrix per level of its control wire (:class:`ApplyControlled`).
5. **Moments.** Nodes are layered as soon as possible; in a moment all
   nodes act on different wires. The signed permutations of a moment merge
   into one full-register gather (often just a ±1 vector), and its matrix
   nodes are grouped into Kronecker blocks of neighbouring wires.
6. **Layout schedule.** The state is a tensor with one axis per wire and
   one for the K columns, stored in an order that changes as the schedule
   runs. A block whose wires lead the order is applied by one batched
   matrix product that also moves those axes to the back (the product
   reads its operand transposed, so nothing is copied); a block whose wires
   end the order is applied in place. Only when a block's wires are
   elsewhere is the state reordered (one copy). For brickwork circuits this
   costs about one copy per moment.

>>> from qpeft.ansatz import pauli
>>> plan = make_plan(pauli(qubits=8, layers=1), max_block=16)
>>> [[block.wires for block in moment.blocks] for moment in plan.moments]
[[(0, 1, 2, 3), (4, 5, 6, 7)], [(1, 2, 3, 4), (5, 6)]]
>>> [len(block.stages) for block in plan.blocks]   # RY, CZ, RY merged into one product
[2, 2, 1, 1]
>>> schedule = make_schedule(plan, columns=4)
>>> len(schedule.prepare), [type(step).__name__ for step in schedule.steps]
(2, ['Reorder', 'ApplyBlock', 'ApplyBlock', 'Reorder'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from qpeft.circuit import Circuit, Gate
from qpeft.circuit.gates import FixedGate
from qpeft.errors import CompileError

#: The axis id of the columns axis in a layout (wires are 0 … n-1).
COLUMNS_AXIS = -1

#: A pairwise rotation on one wire of D levels in an N-dimensional register
#: becomes a pair node when D³ > PAIR_RATIO·N, else a D×D matrix. A run of c
#: rotations as one matrix costs c·D³ (the chain of products) + D·N·K
#: multiply-adds in batched matrix products; as pair nodes, 3·c·N·K
#: elementwise operations, each about 40 times as expensive on a CPU
#: (measured). With K ≈ 4: D³ against ~500·N.
PAIR_RATIO = 512

#: A block of rotations sharing a control wire (:class:`SharedControls`) spans
#: at most this much outside the shared wires: three one-qubit targets. Wider
#: groups save steps but build and multiply larger per-level matrices; narrower
#: ones leave more sign flips between groups. Forward+backward of the Shannon
#: construction (L = 2, K = 4, float32, one thread) at N = 384 / 1536 / 5120 /
#: 3584 / 14336: 6.0 / 10.2 / 25.2 / 26.8 / 72.4 ms with a span of 4;
#: 5.2 / 8.2 / 19.4 / 21.5 / 62.5 ms with 8; 5.7 / 10.0 / 17.7 / 23.9 / 53.3 ms
#: with 16 (docs/compiler.md, "Rotations that share a control").
SHARED_SPAN = 8


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

    def is_diagonal(self, member: int) -> bool:
        """True when member ``member``'s matrix is diagonal for every angle."""
        return all(_is_diagonal(part[member]) for part in (self.fixed, self.projector, self.step))


@dataclass
class MatrixNode:
    """A dense matrix on ``wires``: a product of rotations and constants.

    ``factors`` are applied first to last; each is ``("rotation", size, i)``
    (member i of the rotation group of that size) or ``("constant", array)``.
    """

    wires: tuple[int, ...]
    factors: list[tuple] = field(default_factory=list)

    @property
    def size(self) -> int:
        first = self.factors[0]
        return first[1] if first[0] == "rotation" else first[1].shape[0]


@dataclass
class PairNode:
    """Rotations on ``wires`` that each mix basis states in disjoint pairs.

    Over the local index i of the wires (size D):
    ``new[i] = A[i]·x[i] + B[i]·x[partner[i]]`` where
    ``A = a₀ + a₁·cos(θ/2) + a₂·sin(θ/2)`` (likewise B) with θ the angle in
    slot ``slot[i]``. ``coefficients[r, c]`` holds (A, B)[r] and
    (constant, cos, sin)[c]. An untouched index has A = 1, B = 0.
    """

    wires: tuple[int, ...]
    partner: np.ndarray  # (D,) int64, an involution
    slot: np.ndarray  # (D,) int64
    coefficients: np.ndarray  # (2, 3, D)
    touched: np.ndarray  # (D,) bool

    @property
    def size(self) -> int:
        return int(self.partner.shape[0])

    @property
    def is_real(self) -> bool:
        return bool(np.abs(np.imag(self.coefficients)).max(initial=0.0) == 0)

    def merge(self, other: PairNode) -> bool:
        """Absorb ``other`` (acting after this node) when it is on the same
        wires and touches none of this node's indices; returns whether it did."""
        if other.wires != self.wires or np.any(self.touched & other.touched):
            return False
        take = other.touched
        self.partner = np.where(take, other.partner, self.partner)
        self.slot = np.where(take, other.slot, self.slot)
        self.coefficients = np.where(take, other.coefficients, self.coefficients)
        self.touched = self.touched | take
        return True

    @property
    def is_diagonal(self) -> bool:
        """True when no index is paired with another (A alone acts)."""
        return bool(np.array_equal(self.partner, np.arange(self.size)))

    def off_diagonal(self) -> tuple[np.ndarray, np.ndarray]:
        """Where B sits in the node's D×D matrix: rows ``i`` paired with another
        index, and their columns ``partner[i]`` (A fills the diagonal)."""
        rows = np.flatnonzero(self.partner != np.arange(self.size))
        return rows, self.partner[rows]


def pair_structure(generator: np.ndarray) -> np.ndarray | None:
    """``partner`` when every row of ``generator`` has at most one nonzero
    entry off the diagonal and the pattern pairs rows off symmetrically,
    else None."""
    nonzero = generator != 0
    size = generator.shape[0]
    rows = np.arange(size)
    off = nonzero.copy()
    off[rows, rows] = False
    counts = off.sum(axis=1)
    if np.any(counts > 1):
        return None
    partner = np.where(counts == 1, off.argmax(axis=1), rows)
    if not np.array_equal(partner[partner], rows) or not np.array_equal(off[partner, rows],
                                                                        counts == 1):
        return None
    return partner


def _pair_coefficients(generator: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """(2, 3, D) coefficients of exp(-iθG/2) = (I − G²) + cos(θ/2)·G² − i·sin(θ/2)·G
    on the pairs, computed per 2×2 block without forming G²."""
    rows = np.arange(partner.shape[0])
    paired = partner != rows
    g_ii = generator[rows, rows]
    g_jj = generator[partner, partner]
    g_ij = np.where(paired, generator[rows, partner], 0)
    g_ji = np.where(paired, generator[partner, rows], 0)
    square_ii = g_ii * g_ii + g_ij * g_ji
    square_ij = g_ii * g_ij + g_ij * g_jj
    out = np.empty((2, 3, rows.shape[0]), dtype=complex)
    out[0] = [1 - square_ii, square_ii, -1j * g_ii]
    out[1] = [-square_ij, square_ij, -1j * g_ij]
    if np.abs(out.imag).max(initial=0.0) == 0:
        return out.real.copy()
    return out


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
    """Matrix nodes applied together as one block matrix on :attr:`wires`.

    Usually the nodes act on disjoint wires and the block matrix is
    ``kron(node_0, node_1, …)``: the first node's wires are the most
    significant digits of the block index. Nodes may also share wires on
    which every one of them is block diagonal (a control wire, see
    :class:`SharedControls`): they commute, and entry (I, J) of the block
    matrix is still the product of one entry of each node, the one that
    I and J index on the node's wires (zero where they differ on a shared
    wire).
    """

    nodes: list[MatrixNode]
    #: ±1 diagonal (over the block's index) applied before the block, or None
    diagonal: np.ndarray | None = None
    #: a block on the same wires that acts just before this one, merged into it
    previous: Block | None = None
    #: a wire on which the block is block diagonal (set for :class:`SharedControls`):
    #: its matrix is one (D/L)×(D/L) matrix per level of that wire (see ApplyControlled)
    control: int | None = None

    @property
    def wires(self) -> tuple[int, ...]:
        """The nodes' wires in order of first appearance, or the control and
        then the other wires in ascending order."""
        wires = dict.fromkeys(w for node in self.nodes for w in node.wires)
        if self.control is None:
            return tuple(wires)
        return (self.control, *sorted(w for w in wires if w != self.control))

    @property
    def stages(self) -> list[Block]:
        """The merged blocks, first to act first (the last one is ``self``)."""
        chain = [] if self.previous is None else self.previous.stages
        return [*chain, self]

    def layout(self, dims: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """The dimensions of the block's wires and, for each node, the
        positions of its wires among them."""
        wires = self.wires
        return (tuple(dims[w] for w in wires),
                tuple(tuple(wires.index(w) for w in node.wires) for node in self.nodes))

    def signature(self, dims: tuple[int, ...]) -> tuple:
        """Whether the block has a control wire, and the layout of each stage:
        blocks with equal signatures are built together."""
        return self.control is not None, tuple(stage.layout(dims) for stage in self.stages)


@dataclass
class SharedControls:
    """Consecutive matrix nodes that overlap only on wires on which each of
    them is block diagonal (rotations controlled by the same wire): they
    commute, and together they are one block on the union of their wires
    (see :class:`Block`) instead of one block, and often one reorder, each."""

    nodes: list[MatrixNode]
    #: the first wire that two members share: all members are block diagonal on it
    control: int

    @property
    def wires(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(w for node in self.nodes for w in node.wires))


@dataclass
class Moment:
    permutation: SignedPermutation | None
    blocks: list[Block]
    pairs: list[PairNode] = field(default_factory=list)


@dataclass
class Plan:
    dims: tuple[int, ...]
    num_parameters: int
    weights: np.ndarray  # (slots, P)
    offset: np.ndarray  # (slots,)
    groups: list[RotationGroup]
    moments: list[Moment]
    nodes: list  # MatrixNode | ("perm", wires, source, sign), in circuit order
    is_real: bool

    @property
    def dimension(self) -> int:
        return math.prod(self.dims)

    @property
    def blocks(self) -> list[Block]:
        """Every block, in schedule order (moment by moment)."""
        return [block for moment in self.moments for block in moment.blocks]

    @property
    def pairs(self) -> list[PairNode]:
        """Every pair node, in schedule order (moment by moment)."""
        return [pair for moment in self.moments for pair in moment.pairs]

    def group(self, size: int) -> RotationGroup:
        for group in self.groups:
            if group.size == size:
                return group
        raise KeyError(size)


def _is_diagonal(matrix: np.ndarray) -> bool:
    off = np.asarray(matrix) - np.diag(np.diag(matrix))
    return bool(np.abs(off).max(initial=0.0) == 0)


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
    digits = [axis.reshape(-1) for axis in np.indices(dims)]
    # digits of every basis state on the gate's wires, as the gate's local index
    local = np.zeros(math.prod(dims), dtype=np.int64)
    for w in wires:
        local = local * dims[w] + digits[w]
    new_local = source[local]
    # rebuild the full index with the gate's wires replaced by new_local digits
    new_digits = [d.copy() for d in digits]
    remaining = new_local.copy()
    for w in reversed(wires):
        new_digits[w] = remaining % dims[w]
        remaining //= dims[w]
    full_source = np.ravel_multi_index(new_digits, dims)
    return SignedPermutation(full_source.astype(np.int64), sign[local].astype(float))


def make_plan(circuit: Circuit, *, max_block: int = 16) -> Plan:
    """Plan the evaluation of ``circuit`` (see the module docstring).

    ``max_block`` bounds the size D of a Kronecker block (the product of its
    wires' dimensions); a single gate larger than that is still one block.
    """
    if not isinstance(circuit, Circuit):
        raise CompileError(f"qpeft.compile needs a Circuit, got {type(circuit).__name__}")
    if isinstance(max_block, bool) or not isinstance(max_block, int) or max_block < 2:
        raise CompileError(f"max_block must be an integer >= 2, got {max_block!r}")
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
            generator = _generator(gate, gate_dims)
            slot = _angle_slot(gate, index, weights_rows, offsets, len(names))
            partner = _pair_partner(generator, gate_dims, max_block, circuit.dimension)
            if partner is not None:
                size = partner.shape[0]
                touched = np.any(generator != 0, axis=1)
                raw_nodes.append(PairNode(gate.wires, partner, np.full(size, slot),
                                          _pair_coefficients(generator, partner), touched))
            else:
                raw_nodes.append(_rotation_node(gate.wires, generator, slot, groups))
            continue
        if isinstance(gate, FixedGate):
            constant = np.asarray(gate.constant_matrix(gate_dims))
        else:
            constant = gate.matrix(gate_dims).numpy()
        perm = _signed_permutation_of(constant)
        if perm is not None:
            raw_nodes.append(("perm", gate.wires, *perm))
        else:
            raw_nodes.append(MatrixNode(gate.wires, [("constant", constant)]))

    nodes = _fuse_single_wire_runs(_merge_pair_nodes(raw_nodes))
    moments = _moments(_share_controls(nodes, dims, groups, max_block), dims, max_block)
    group_list = [groups[k] for k in sorted(groups)]
    weights = np.array(weights_rows, dtype=float).reshape(len(offsets), len(names))
    # realness from the matrices themselves (a rotation by an all-identity
    # Pauli string is a complex global phase)
    constants_real = all(
        not np.iscomplexobj(f[1]) or np.abs(np.imag(f[1])).max(initial=0.0) == 0
        for node in nodes if isinstance(node, MatrixNode) for f in node.factors
        if f[0] == "constant"
    )
    return Plan(
        dims=dims,
        num_parameters=len(names),
        weights=weights,
        offset=np.array(offsets, dtype=float),
        groups=group_list,
        moments=moments,
        nodes=nodes,
        is_real=constants_real and all(group.is_real for group in group_list)
        and all(node.is_real for node in nodes if isinstance(node, PairNode)),
    )


def _pair_partner(generator, gate_dims, max_block: int, dimension: int):
    """The partner map when the rotation should be a pair node, else None:
    when D > ``max_block`` and, on one wire, D³ > ``PAIR_RATIO``·N (a run
    of rotations on one small wire is cheaper as one D×D matrix)."""
    size = math.prod(gate_dims)
    if size <= max_block or (len(gate_dims) == 1 and size**3 <= PAIR_RATIO * dimension):
        return None
    return pair_structure(generator)


def _generator(gate: Gate, gate_dims) -> np.ndarray:
    generator = gate.generator(gate_dims)
    if generator is None or len(gate.params) != 1:
        raise CompileError(
            f"{gate.name} is parameterized but is not a one-angle rotation with a generator; "
            "qpeft compiles rotations exp(-iθG/2) only"
        )
    return generator


def _angle_slot(gate: Gate, index, weights_rows, offsets, num_params) -> int:
    """Add the gate's angle (affine in the parameters) as a new slot."""
    expr = gate.params[0]
    row = np.zeros(num_params)
    for name, coeff in expr.terms:
        row[index[name]] += coeff
    weights_rows.append(row)
    offsets.append(expr.constant)
    return len(offsets) - 1


def _rotation_node(wires, generator: np.ndarray, slot: int, groups) -> MatrixNode:
    size = generator.shape[0]
    group = groups.setdefault(size, RotationGroup(size))
    projector = generator @ generator
    group.slots.append(slot)
    group.fixed.append(np.eye(size) - projector)
    group.projector.append(projector)
    group.step.append(-1j * generator)
    return MatrixNode(tuple(wires), [("rotation", size, len(group.slots) - 1)])


def _merge_pair_nodes(raw_nodes: list) -> list:
    """Merge a pair node into the pair node before it on the same wires
    when nothing acts on those wires in between and their pairs are disjoint."""
    out: list = []
    last: dict[int, object] = {}  # wire -> the latest node acting on it
    for node in raw_nodes:
        wires = _wires_of(node)
        if isinstance(node, PairNode):
            before = {id(last.get(w)): last.get(w) for w in wires}
            if len(before) == 1:
                previous = next(iter(before.values()))
                if isinstance(previous, PairNode) and previous.merge(node):
                    continue
        out.append(node)
        for w in wires:
            last[w] = node
    return out


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
        wires = _wires_of(node)
        for w in wires:
            open_run.pop(w, None)
        out.append(node)
    return out


def _wires_of(node) -> tuple[int, ...]:
    return node.wires if isinstance(node, (MatrixNode, PairNode, SharedControls)) else node[1]


def _share_controls(nodes: list, dims: tuple[int, ...], groups: dict[int, RotationGroup],
                    max_block: int) -> list:
    """Gather runs of matrix nodes that overlap only on wires on which all of
    them are block diagonal into :class:`SharedControls`.

    A signed permutation or pair node that commutes with all members of the
    open run (they overlap only on wires where both are block diagonal, as
    the entangling sign flips of a controlled brickwork do) moves ahead of
    the run, which stays open; any other node closes it. A run grows while
    the wires outside the shared ones span at most :data:`SHARED_SPAN` and
    all its wires at most ``max_block²``. Its block then costs d·N·K
    multiply-adds, d the size of its targets, against 2·N·K per one-qubit
    member (4/3 as many for three of them), and saves a block product and
    usually a reorder per member.
    """
    out: list = []
    run: list[MatrixNode] = []
    flat_run: list[set[int]] = []  # the wires each member of the run is block diagonal on

    def close() -> None:
        group = SharedControls(list(run), next(w for w in run[1].wires if w in run[0].wires)
                               ) if len(run) > 1 else None
        if group is not None and len(group.wires) > 1:
            out.append(group)
        else:  # one node, or nodes all on the control alone (rz, cz, rz): nothing to gain
            out.extend(run)
        run.clear()
        flat_run.clear()

    for node in nodes:
        flat = _diagonal_wires(node, dims, groups)
        if isinstance(node, MatrixNode) and run and _joins(run, flat_run, node, flat, dims,
                                                           max_block):
            run.append(node)
            flat_run.append(flat)
            continue
        if run and not isinstance(node, MatrixNode) and all(
                set(_wires_of(node)) & set(member.wires) <= flat & wires
                for member, wires in zip(run, flat_run)):
            out.append(node)  # commutes with the run: it can act first
            continue
        close()
        if isinstance(node, MatrixNode):
            run.append(node)
            flat_run.append(flat)
        else:
            out.append(node)
    close()
    return out


def _joins(run: list[MatrixNode], flat_run: list[set[int]], node: MatrixNode, flat: set[int],
           dims: tuple[int, ...], max_block: int) -> bool:
    """Whether ``node`` (block diagonal on ``flat``) can join ``run``."""
    used = {w for member in run for w in member.wires}
    shared = used & set(node.wires)
    if not shared or not shared <= flat:
        return False
    if any(not (shared & set(member.wires)) <= wires for member, wires in zip(run, flat_run)):
        return False
    members = [*run, node]
    count: dict[int, int] = {}
    for member in members:
        for w in member.wires:
            count[w] = count.get(w, 0) + 1
    total = math.prod(dims[w] for w in count)
    common = math.prod(dims[w] for w, c in count.items() if c > 1)
    return total // common <= SHARED_SPAN and total <= max_block**2


def _diagonal_wires(node, dims: tuple[int, ...], groups: dict[int, RotationGroup]) -> set[int]:
    """The wires on which ``node`` is block diagonal whatever the angles (it
    never changes their digit); none for a pair node."""
    wires = _wires_of(node)
    local = [dims[w] for w in wires]
    if isinstance(node, PairNode):
        return set()
    if not isinstance(node, MatrixNode):  # a signed permutation: source index of each output
        source = np.unravel_index(node[2], local)
        target = np.unravel_index(np.arange(node[2].shape[0]), local)
        return {w for w, a, b in zip(wires, source, target) if np.array_equal(a, b)}
    matrices = []
    for factor in node.factors:
        if factor[0] == "rotation":
            group = groups[factor[1]]
            matrices += [group.fixed[factor[2]], group.projector[factor[2]],
                         group.step[factor[2]]]
        else:
            matrices.append(np.asarray(factor[1]))
    m = len(local)
    flat = set()
    for p, wire in enumerate(wires):
        off = ~np.eye(local[p], dtype=bool)
        if all(not np.any(np.moveaxis(matrix.reshape(local + local), [p, m + p], [0, 1])[off])
               for matrix in matrices):
            flat.add(wire)
    return flat


def _is_sign_node(node) -> bool:
    return isinstance(node, tuple) and bool(np.array_equal(node[2], np.arange(node[2].shape[0])))


def _moments(nodes: list, dims: tuple[int, ...], max_block: int) -> list[Moment]:
    """Layer the nodes as soon as possible, pack each layer's matrix nodes
    into blocks, and absorb ±1 diagonals into the block that acts next on
    all of their wires (diagonals commute, so later diagonals on the same
    wires do not stand in the way). What is left of the signed
    permutations of a layer merges into one full-register permutation."""
    level = [0] * len(dims)
    depth_of: list[int] = []
    layered: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        wires = _wires_of(node)
        top = max(level[w] for w in wires)
        for w in wires:
            level[w] = top + 1
        depth_of.append(top)
        layered.setdefault(top, []).append(i)

    blocks_at = {}
    block_of: dict[int, Block] = {}  # id of a MatrixNode or SharedControls -> its block
    for depth, members in layered.items():
        blocks = _blocks([nodes[i] for i in members if isinstance(nodes[i], MatrixNode)], dims,
                         max_block)
        for block in blocks:
            block_of.update((id(node), block) for node in block.nodes)
        for i in members:
            if isinstance(nodes[i], SharedControls):
                blocks.append(Block(list(nodes[i].nodes), control=nodes[i].control))
                block_of[id(nodes[i])] = blocks[-1]
        blocks_at[depth] = blocks
    absorbed: set[int] = set()
    for i, node in enumerate(nodes):
        if not _is_sign_node(node):
            continue
        targets = set()
        for w in node[1]:
            later = (j for j in range(i + 1, len(nodes))
                     if w in _wires_of(nodes[j]) and not _is_sign_node(nodes[j]))
            j = next(later, None)
            targets.add(None if j is None or id(nodes[j]) not in block_of
                        else id(block_of[id(nodes[j])]))
        if len(targets) != 1 or None in targets:
            continue
        block = next(block_of[id(nodes[j])] for j in range(i + 1, len(nodes))
                     if id(nodes[j]) in block_of and id(block_of[id(nodes[j])]) in targets)
        local = _local_signs(node[1], node[3], block.wires, dims)
        block.diagonal = local if block.diagonal is None else block.diagonal * local
        absorbed.add(i)

    moments: list[Moment] = []
    for depth in sorted(layered):
        perm: SignedPermutation | None = None
        pairs = [nodes[i] for i in layered[depth] if isinstance(nodes[i], PairNode)]
        for i in layered[depth]:
            node = nodes[i]
            if not isinstance(node, tuple) or i in absorbed:
                continue
            _, wires, source, sign = node
            step = expand_signed_permutation(source, sign, wires, dims)
            perm = step if perm is None else perm.then(step)
        blocks = blocks_at[depth]
        if not blocks and not pairs and perm is None:
            continue
        if (not blocks and not pairs and moments and not moments[-1].blocks
                and not moments[-1].pairs):
            previous = moments[-1].permutation
            moments[-1] = Moment(previous.then(perm) if previous else perm, [])
            continue
        moments.append(Moment(perm, blocks, pairs))
    return _merge_repeated_blocks(moments)


def _merge_repeated_blocks(moments: list[Moment]) -> list[Moment]:
    """A block whose wires equal those of a block in the moment before (with
    no permutation in between) absorbs it: one product instead of two."""
    for t in range(1, len(moments)):
        if moments[t].permutation is not None:
            continue
        earlier = moments[t - 1].blocks
        for block in moments[t].blocks:
            if block.control is not None:
                continue
            match = next((b for b in earlier if b.wires == block.wires and b.control is None),
                         None)
            if match is not None:
                block.previous = match
                earlier.remove(match)
    return [m for m in moments if m.blocks or m.pairs or m.permutation is not None]


def _local_signs(wires, sign, block_wires, dims) -> np.ndarray:
    """A ±1 diagonal on ``wires`` as a vector over the index of ``block_wires``."""
    local_dims = [dims[w] for w in block_wires]
    digits = [axis.reshape(-1) for axis in np.indices(local_dims)]
    index = np.zeros(len(digits[0]), dtype=np.int64)
    for w in wires:
        index = index * dims[w] + digits[block_wires.index(w)]
    return np.asarray(sign, dtype=float)[index]


def _blocks(nodes: list[MatrixNode], dims, max_block: int) -> list[Block]:
    """Group nodes of one moment into Kronecker blocks of neighbouring wires."""
    blocks: list[Block] = []
    for node in sorted(nodes, key=lambda n: min(n.wires)):
        size = math.prod(dims[w] for w in node.wires)
        if blocks:
            last = blocks[-1]
            last_size = math.prod(dims[w] for w in last.wires)
            contiguous = min(node.wires) == max(last.wires) + 1
            fits = last_size * size <= max_block
            if contiguous and fits and _is_ascending(last.wires + node.wires):
                last.nodes.append(node)
                continue
        blocks.append(Block([node]))
    return blocks


def _is_ascending(wires: tuple[int, ...]) -> bool:
    return all(b == a + 1 for a, b in zip(wires, wires[1:]))


def constant_tensor(array: np.ndarray, dtype: torch.dtype, complex_dtype: torch.dtype):
    """A numpy array as a real tensor when it has no imaginary part, else complex."""
    if np.iscomplexobj(array) and np.abs(array.imag).max(initial=0.0) > 0:
        return torch.as_tensor(array, dtype=complex_dtype)
    return torch.as_tensor(np.real(array), dtype=dtype)


# ---------------------------------------------------------------------------
# layout schedule


@dataclass(frozen=True)
class ApplyBlock:
    """Multiply block ``block`` (a D×D matrix) into the state, by ``placement``:

    * ``"lead"``: the block's axes lead the layout; the state is read as
      ``(B, D, R)`` and written as ``(B, R, D) = xᵀMᵀ``, which moves those axes
      to the back (so the next block's axes lead);
    * ``"front"``: the same axes, written as ``(B, D, R) = M·x``, which keeps
      the layout (used right before a reorder, see :func:`_products_in_place`);
    * ``"trail"``: the block's axes end the layout; ``(B, R, D) @ Mᵀ`` keeps it.
    """

    block: int
    size: int
    placement: str


@dataclass(frozen=True)
class ApplyControlled:
    """Multiply block ``block``, one ``size × size`` matrix per level of its
    control wire, into the state, which is read as ``(B, before, levels,
    middle, size, after)``: the control's axis, then the run of the
    block's other axes. The layout does not change.
    """

    block: int
    size: int
    before: int
    levels: int
    middle: int
    after: int


@dataclass(frozen=True)
class Reorder:
    """Permute the state's axes: view it as ``shape`` and permute by ``order``
    (axes that stay neighbours are merged into one, so ``shape`` is short)."""

    shape: tuple[int, ...]
    order: tuple[int, ...]

    def inverse(self) -> Reorder:
        shape = tuple(self.shape[o] for o in self.order)
        order = tuple(int(i) for i in np.argsort(self.order))
        return Reorder(shape, order)


@dataclass(frozen=True, eq=False)
class ApplySigns:
    """Multiply the state, viewed as ``(B, before, K, after)``, by ``sign``
    of shape ``(before, 1, after)`` (a product of diagonal ±1 gates)."""

    sign: np.ndarray


@dataclass(frozen=True)
class ApplyPairs:
    """Apply pair node ``pair``: the state viewed as ``(B, before, size, after)``
    with the node's wires as the middle axis."""

    pair: int
    before: int
    size: int
    after: int


@dataclass(frozen=True, eq=False)
class ApplyGather:
    """With the columns axis last, ``new[:, p] = sign[p] * old[:, source[p]]``
    along the register positions of the current layout."""

    source: np.ndarray
    sign: np.ndarray

    def inverse(self) -> ApplyGather:
        inverse = np.empty_like(self.source)
        inverse[self.source] = np.arange(self.source.shape[0])
        return ApplyGather(inverse, self.sign[inverse])


@dataclass(frozen=True, eq=False)
class PrepareGroup:
    """One factor of a product state: the columns ``index[k]`` of block
    ``block``'s matrix, or (``block`` None) the basis vectors ``index[k]`` of
    ``size`` levels. ``index`` has length K, or 1 when all columns agree."""

    block: int | None
    size: int
    index: np.ndarray


@dataclass
class Schedule:
    """The steps that take the initial columns (canonical layout
    ``(wire 0, …, wire n-1, columns)``) to the final state in the same layout.

    ``prepare``: when the first moment is a set of blocks on runs of
    neighbouring wires, the state after it is a product of one factor per
    block (and per run of untouched wires): column k is the Kronecker
    product of the blocks' columns selected by k's digits. It is built by
    outer products instead of block products, and ``steps`` start after it.
    """

    steps: list
    layouts: list[tuple[int, ...]]  # the axis order after each step
    sizes: dict[int, int]  # axis id -> size
    prepare: list[PrepareGroup] = field(default_factory=list)


def canonical_layout(num_wires: int) -> tuple[int, ...]:
    return (*range(num_wires), COLUMNS_AXIS)


def make_schedule(plan: Plan, columns: int | list[int]) -> Schedule:
    """Order the blocks of every moment and insert the reorders they need.

    ``columns``: the column indices (or K, meaning ``0 … K-1``).
    """
    columns = list(range(columns)) if isinstance(columns, int) else list(columns)
    num_wires = len(plan.dims)
    sizes = {w: d for w, d in enumerate(plan.dims)}
    sizes[COLUMNS_AXIS] = len(columns)
    layout = canonical_layout(num_wires)
    steps: list = []
    layouts: list[tuple[int, ...]] = []
    blocks = plan.blocks
    block_id = {id(block): i for i, block in enumerate(blocks)}
    pair_id = {id(pair): i for i, pair in enumerate(plan.pairs)}
    moments = plan.moments
    prepare = _product_state(moments[0], plan.dims, columns, block_id) if moments else []
    if prepare:
        moments = moments[1:]

    def reorder(target: tuple[int, ...]) -> None:
        nonlocal layout
        if target != layout:
            steps.append(_reorder_step(layout, target, sizes))
            layouts.append(target)
            layout = target

    def controlled(wires: tuple[int, ...], block: int) -> ApplyControlled:
        """The step for a control wire ``wires[0]`` and targets ``wires[1:]``,
        after reordering unless the targets are a run after the control."""
        control, *targets = wires
        start = _find_run(layout, tuple(targets))
        if start is None or layout.index(control) > start:
            # back to the canonical order if that suits, else the block's axes first
            target = canonical_layout(num_wires)
            start = _find_run(target, tuple(targets))
            if start is None or target.index(control) > start:
                target = (control, *targets) + tuple(
                    a for a in layout if a != control and a not in targets)
                start = 1
            reorder(target)
        at = layout.index(control)
        end = start + len(targets)
        return ApplyControlled(
            block, math.prod(sizes[a] for a in targets),
            math.prod(sizes[a] for a in layout[:at]), sizes[control],
            math.prod(sizes[a] for a in layout[at + 1:start]),
            math.prod(sizes[a] for a in layout[end:]))

    for moment in moments:
        perm = moment.permutation
        if perm is not None:
            if perm.is_diagonal:
                steps.append(_signs_step(perm.sign, layout, plan.dims))
            else:
                if layout[-1] != COLUMNS_AXIS:
                    reorder(tuple(a for a in layout if a != COLUMNS_AXIS) + (COLUMNS_AXIS,))
                steps.append(_gather_step(perm, layout, plan.dims))
            layouts.append(layout)
        for pair in moment.pairs:
            start = _find_run(layout, pair.wires)
            if start is None:
                reorder(pair.wires + tuple(a for a in layout if a not in pair.wires))
                start = 0
            end = start + len(pair.wires)
            steps.append(ApplyPairs(pair_id[id(pair)], math.prod(sizes[a] for a in layout[:start]),
                                    pair.size, math.prod(sizes[a] for a in layout[end:])))
            layouts.append(layout)
        remaining = list(moment.blocks)
        while remaining:
            block, placement = _next_block(remaining, layout)
            remaining.remove(block)
            if block.control is not None:
                steps.append(controlled(block.wires, block_id[id(block)]))
                layouts.append(layout)
                continue
            wires = block.wires
            m = len(wires)
            if placement == "rotate":
                start = _find_run(layout, wires)
                reorder(layout[start:] + layout[:start])
            elif placement == "move":
                reorder(wires + tuple(a for a in layout if a not in wires))
            size = math.prod(plan.dims[w] for w in wires)
            leading = placement != "trailing"
            steps.append(ApplyBlock(block_id[id(block)], size, "lead" if leading else "trail"))
            if leading:
                layout = layout[m:] + layout[:m]
            layouts.append(layout)
    reorder(canonical_layout(num_wires))
    steps, layouts = _products_in_place(steps, layouts, canonical_layout(num_wires), sizes)
    return Schedule(steps, layouts, sizes, prepare)


def _products_in_place(steps: list, layouts: list, start: tuple[int, ...],
                       sizes: dict[int, int]) -> tuple[list, list]:
    """Leading blocks whose next step is a reorder, applied as ``M·x``.

    A leading block moves its axes to the back so that the next block leads,
    but a reorder right after it moves the axes anyway. ``M·x`` keeps the
    layout and reads and writes the state contiguously, which is cheaper,
    above all for small blocks (measured in docs/compiler.md). The reorder then
    starts from the layout before the block (``start`` before the first step;
    every step ends in the layout it ended in before), or disappears when that
    layout is already its target.
    """
    out_steps: list = []
    out_layouts: list = []
    skip = False
    for i, step in enumerate(steps):
        if skip:
            skip = False
            continue
        before = layouts[i - 1] if i else start
        if (isinstance(step, ApplyBlock) and step.placement == "lead" and i + 1 < len(steps)
                and isinstance(steps[i + 1], Reorder)):
            out_steps.append(replace(step, placement="front"))
            out_layouts.append(before)
            target = layouts[i + 1]
            if target != before:
                out_steps.append(_reorder_step(before, target, sizes))
                out_layouts.append(target)
            skip = True
            continue
        out_steps.append(step)
        out_layouts.append(layouts[i])
    return out_steps, out_layouts


def _product_state(moment: Moment, dims, columns: list[int], block_id) -> list[PrepareGroup]:
    """The factors of the state after the first moment, or [] if it is not a product."""
    if moment.permutation is not None or moment.pairs or not moment.blocks:
        return []
    if not all(_is_ascending(block.wires) and block.control is None for block in moment.blocks):
        return []
    digits = np.array(np.unravel_index(columns, dims)).reshape(len(dims), -1)
    starts = {block.wires[0]: block for block in moment.blocks}
    groups: list[PrepareGroup] = []
    wire = 0
    while wire < len(dims):
        block = starts.get(wire)
        wires = block.wires if block is not None else (wire,)
        index = np.zeros(len(columns), dtype=np.int64)
        for w in wires:
            index = index * dims[w] + digits[w]
        if np.all(index == index[0]):
            index = index[:1]
        size = math.prod(dims[w] for w in wires)
        if block is None and groups and groups[-1].block is None:
            previous = groups[-1]  # merge runs of untouched wires into one factor
            merged = previous.index * size + index
            if np.all(merged == merged[0]):
                merged = merged[:1]
            groups[-1] = PrepareGroup(None, previous.size * size, merged)
        else:
            groups.append(PrepareGroup(None if block is None else block_id[id(block)], size,
                                       index))
        wire += len(wires)
    return groups


def _next_block(remaining: list[Block], layout: tuple[int, ...]) -> tuple[Block, str]:
    """The cheapest block to apply next, and how: at the front, at the back,
    after rotating the layout (one copy) or after moving its axes (one copy)."""
    for block in remaining:
        if layout[: len(block.wires)] == block.wires:
            return block, "leading"
    for block in remaining:
        if layout[-len(block.wires):] == block.wires:
            return block, "trailing"
    runs = [(start, block) for block in remaining
            if (start := _find_run(layout, block.wires)) is not None]
    if runs:
        return min(runs, key=lambda item: item[0])[1], "rotate"
    return remaining[0], "move"


def _find_run(layout: tuple[int, ...], wires: tuple[int, ...]) -> int | None:
    """Where ``wires`` appear consecutively, in order, in ``layout`` (or None)."""
    if wires[0] not in layout:
        return None
    start = layout.index(wires[0])
    if layout[start:start + len(wires)] == wires:
        return start
    return None


def _reorder_step(layout, target, sizes) -> Reorder:
    # merge axes that are neighbours in both orders into groups
    groups: list[list[int]] = []
    for axis in layout:
        if groups and target.index(axis) == target.index(groups[-1][-1]) + 1:
            groups[-1].append(axis)
        else:
            groups.append([axis])
    shape = tuple(math.prod(sizes[a] for a in g) for g in groups)
    order = tuple(sorted(range(len(groups)), key=lambda i: target.index(groups[i][0])))
    return Reorder(shape, order)


def _register_positions(layout: tuple[int, ...], dims: tuple[int, ...]) -> np.ndarray:
    """``reg[p]``: the canonical register index stored at register position p of ``layout``."""
    wires = [a for a in layout if a != COLUMNS_AXIS]
    canonical = np.arange(math.prod(dims)).reshape(dims)
    return canonical.transpose(wires).reshape(-1)


def _signs_step(sign: np.ndarray, layout, dims) -> ApplySigns:
    reg = _register_positions(layout, dims)
    split = layout.index(COLUMNS_AXIS)
    before = math.prod(dims[a] for a in layout[:split])
    return ApplySigns(sign[reg].reshape(before, 1, -1))


def _gather_step(perm: SignedPermutation, layout, dims) -> ApplyGather:
    reg = _register_positions(layout, dims)
    position = np.empty_like(reg)
    position[reg] = np.arange(reg.shape[0])
    return ApplyGather(position[perm.source[reg]], perm.sign[reg])
