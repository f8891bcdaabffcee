"""Run a :class:`~qpeft.compiler.plan.Plan` on K columns with torch.

Two parts:

* :class:`MatrixBuilder` turns parameter values into the matrix of every
  block with a fixed, small number of batched tensor operations, whatever
  the size of the circuit: one matmul for all angles, one expression per
  rotation size for all rotation matrices, one gather and a few products
  for nodes that are runs of several gates, and per class of equally shaped
  blocks one gather and one product over the factors for each stage (entry
  (I, J) of a Kronecker product is a product of one entry per factor).
* :class:`ColumnsEngine` runs the layout schedule of
  :func:`~qpeft.compiler.plan.make_schedule` on the state, a ``(B, N·K)``
  tensor: B circuits evaluated together (the leading batch of the parameter
  values), N the register, K the columns. The first moment is built as a
  product state by outer products; then each block costs one batched
  matrix product, each pair node (:class:`~qpeft.compiler.plan.PairNode`)
  one gather and two products (its coefficients come from one expression
  per size D for all pair nodes), and reorders and sign flips are single
  tensor operations.
  The steps run inside one autograd node (:class:`ScheduleFunction`) whose
  backward pass is written out.

Work per call: O(blocks · N · K · D) multiply-adds with D ≤ ``max_block``,
i.e. O(L · log N · N · K) for the layered ansätze; memory O(N · K) per
circuit, plus the intermediate states autograd keeps for the backward pass
(see :mod:`qpeft.compiler.recompute` for a variant that keeps none).

>>> import torch
>>> from qpeft.ansatz import pauli
>>> from qpeft.compiler.plan import make_plan
>>> engine = ColumnsEngine(make_plan(pauli(3, 1)), columns=[0, 1], dtype=torch.float64)
>>> engine(torch.zeros(2, 7, dtype=torch.float64)).shape   # two circuits at once
torch.Size([2, 8, 2])
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from qpeft.circuit.gates import COMPLEX_OF
from qpeft.compiler.plan import (
    ApplyBlock,
    ApplyGather,
    ApplyPairs,
    ApplySigns,
    MatrixNode,
    Plan,
    Reorder,
    constant_tensor,
    make_schedule,
)


def _common(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype == y.dtype:
        return x, y
    common = torch.promote_types(x.dtype, y.dtype)
    return x.to(common), y.to(common)


class MatrixBuilder(nn.Module):
    """Builds every node and block matrix of a plan from parameter values.

    The constants live in buffers, so ``.to(device)`` moves them; the build
    is differentiable with respect to the values.

    >>> import torch
    >>> from qpeft.ansatz import pauli
    >>> from qpeft.compiler.plan import make_plan
    >>> plan = make_plan(pauli(4, 1))
    >>> builder = MatrixBuilder(plan, torch.float64)
    >>> [tuple(m.shape) for m in builder(torch.zeros(3, 10, dtype=torch.float64))]
    [(3, 16, 16), (3, 4, 4)]
    """

    def __init__(self, plan: Plan, dtype: torch.dtype) -> None:
        super().__init__()
        self.real_dtype = dtype
        self.work_dtype = dtype if plan.is_real else COMPLEX_OF.get(dtype, dtype)
        cplx = COMPLEX_OF.get(dtype, dtype)
        self.register_buffer("weights_t", torch.as_tensor(plan.weights.T.copy(), dtype=dtype),
                             persistent=False)
        self.register_buffer("offset", torch.as_tensor(plan.offset, dtype=dtype), persistent=False)
        self.register_buffer("signs", torch.tensor([[1.0, -1.0]], dtype=dtype), persistent=False)

        # rotation groups, one per matrix size
        self._group_sizes: list[int] = []
        self._has_fixed: dict[int, bool] = {}
        for group in plan.groups:
            name = f"rotation{group.size}"
            self.register_buffer(f"{name}_slots", torch.as_tensor(group.slots, dtype=torch.long),
                                 persistent=False)
            for part in ("fixed", "projector", "step"):
                stacked = constant_tensor(np.stack(getattr(group, part)), dtype, cplx)
                self.register_buffer(f"{name}_{part}", stacked, persistent=False)
            self._group_sizes.append(group.size)
            self._has_fixed[group.size] = bool(np.any(np.stack(group.fixed)))
        rotation_count = {group.size: len(group.slots) for group in plan.groups}

        # pair nodes, one table per size D: slots (n, D) and coefficients (n, 2, 3, D)
        pair_nodes: dict[int, list] = defaultdict(list)
        self.pair_row: list[tuple[int, int]] = []
        for pair in plan.pairs:
            self.pair_row.append((pair.size, len(pair_nodes[pair.size])))
            pair_nodes[pair.size].append(pair)
        self._pair_sizes = sorted(pair_nodes)
        for size, members in pair_nodes.items():
            self.register_buffer(f"pair{size}_slot",
                                 torch.as_tensor(np.stack([m.slot for m in members])),
                                 persistent=False)
            coefficients = np.stack([m.coefficients for m in members])
            self.register_buffer(f"pair{size}_coefficients",
                                 constant_tensor(coefficients, dtype, cplx), persistent=False)

        # every matrix node, classified by (size, number of factors)
        self.nodes: list[MatrixNode] = [node for block in plan.blocks for stage in block.stages
                                        for node in stage.nodes]
        constants: dict[int, list[np.ndarray]] = defaultdict(list)
        chains: dict[tuple[int, int], list[int]] = defaultdict(list)  # (size, length) -> nodes
        factor_rows: list[list[int]] = []
        for index, node in enumerate(self.nodes):
            rows = []
            for factor in node.factors:
                if factor[0] == "rotation":
                    rows.append(factor[2])
                else:
                    size = factor[1].shape[0]
                    rows.append(-1 - len(constants[size]))  # resolved below
                    constants[size].append(factor[1])
            factor_rows.append(rows)
            chains[(node.size, len(rows))].append(index)
        self._constant_sizes = sorted(constants)
        for size in self._constant_sizes:
            self.register_buffer(f"constant{size}",
                                 constant_tensor(np.stack(constants[size]), dtype, cplx),
                                 persistent=False)
        # node tables: for each size, the chain classes in order; node -> (size, row)
        self._chains: list[tuple[int, int, str | None]] = []
        self.node_row: list[tuple[int, int]] = [(0, 0)] * len(self.nodes)
        table_length: dict[int, int] = defaultdict(int)
        for (size, length), members in sorted(chains.items()):
            offset = rotation_count.get(size, 0)
            rows = np.array([[r if r >= 0 else offset - 1 - r for r in factor_rows[i]]
                             for i in members], dtype=np.int64)
            identity = length == 1 and np.array_equal(
                rows[:, 0], np.arange(offset + len(constants.get(size, ())))
            )
            name = None
            if not identity:
                name = f"chain{size}_{length}"
                self.register_buffer(name, torch.as_tensor(rows), persistent=False)
            self._chains.append((size, length, name))
            for j, i in enumerate(members):
                self.node_row[i] = (size, table_length[size] + j)
            table_length[size] += len(members)

        # blocks, classified by signature; block -> (class, position in class)
        node_index = {id(node): i for i, node in enumerate(self.nodes)}
        classes: dict[tuple, list[int]] = defaultdict(list)
        blocks = plan.blocks
        for b, block in enumerate(blocks):
            classes[block.signature].append(b)
        # Every stage matrix is gathered entry by entry from one flat table that
        # holds all node matrices and the constants ±1: entry (I, J) of a
        # Kronecker product is the product of one entry of each factor (and of
        # the absorbed diagonal's sign for column J).
        self._table_sizes = sorted(table_length)
        offsets, position = {}, 0
        for size in self._table_sizes:
            offsets[size] = position
            position += table_length[size] * size * size
        sign_offset = position  # the table ends with [1, -1]
        self._classes: list[list[tuple[str, int]]] = []  # per stage: (index buffer, D)
        self.block_slot: list[tuple[int, int]] = [(0, 0)] * len(blocks)
        for c, (signature, members) in enumerate(classes.items()):
            chains = [blocks[b].stages for b in members]
            recipe = []
            for s, sizes in enumerate(signature):
                index = _stage_index([chain[s] for chain in chains], sizes, offsets, sign_offset,
                                     lambda node: self.node_row[node_index[id(node)]][1])
                name = f"class{c}_stage{s}"
                self.register_buffer(name, torch.as_tensor(index), persistent=False)
                recipe.append((name, math.prod(sizes)))
            self._classes.append(recipe)
            for j, b in enumerate(members):
                self.block_slot[b] = (c, j)

    # -- pieces ---------------------------------------------------------------
    def angles(self, values: torch.Tensor) -> torch.Tensor:
        """(B, P) parameter values -> (B, S) gate angles."""
        if self.offset.shape[0] == 0:
            return values.new_zeros(values.shape[0], 0)
        return torch.addmm(self.offset, values, self.weights_t)

    def rotation_tables(self, angles: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, G, D, D) matrices of every rotation, one tensor per size D."""
        out = {}
        for size in self._group_sizes:
            name = f"rotation{size}"
            half = angles[:, getattr(self, f"{name}_slots")] * 0.5
            cos = torch.cos(half)[..., None, None]
            sin = torch.sin(half)[..., None, None]
            projector = getattr(self, f"{name}_projector")
            step = getattr(self, f"{name}_step")
            matrix = cos * projector + sin * step
            if self._has_fixed[size]:
                matrix = matrix + getattr(self, f"{name}_fixed")
            out[size] = matrix
        return out

    def node_tables(self, values: torch.Tensor) -> dict[int, torch.Tensor]:
        """(B, n_D, D, D) matrices of every node of size D (rows: :attr:`node_row`)."""
        batch = values.shape[0]
        rotations = self.rotation_tables(self.angles(values))
        factors: dict[int, torch.Tensor] = {}
        for size in set(rotations) | set(self._constant_sizes):
            parts = []
            if size in rotations:
                parts.append(rotations[size])
            if size in self._constant_sizes:
                constant = getattr(self, f"constant{size}")
                parts.append(constant.expand(batch, *constant.shape))
            if len(parts) == 2:
                parts = list(_common(*parts))
            factors[size] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        pieces: dict[int, list[torch.Tensor]] = defaultdict(list)
        for size, length, name in self._chains:
            table = factors[size]
            if name is None:
                pieces[size].append(table)
                continue
            rows = getattr(self, name)
            matrix = table[:, rows[:, 0]]
            for k in range(1, length):
                nxt, matrix = _common(table[:, rows[:, k]], matrix)
                matrix = nxt @ matrix
            pieces[size].append(matrix)
        return {size: parts[0] if len(parts) == 1 else torch.cat(list(_promote(parts)), dim=1)
                for size, parts in pieces.items()}

    def flat_table(self, nodes: dict[int, torch.Tensor]) -> torch.Tensor:
        """(B, F): every node matrix flattened, sizes in order, then ``[1, -1]``."""
        batch = next(iter(nodes.values())).shape[0] if nodes else 1
        parts = [nodes[size].reshape(batch, -1) for size in self._table_sizes]
        parts.append(self.signs.expand(batch, 2))
        return torch.cat(_promote(parts), dim=1)

    def block_tables(self, nodes: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """(B, n_c, D, D) matrices of the blocks of each class (in the work dtype):
        per stage the Kronecker product of its nodes times its ±1 diagonal
        (one gather and one product), and the product of the stages."""
        flat = self.flat_table(nodes)
        batch = flat.shape[0]
        out = []
        for recipe in self._classes:
            matrix = None
            for name, size in recipe:
                index = getattr(self, name)  # (n_c, factors, D·D)
                entries = flat.index_select(1, index.view(-1)).view(batch, *index.shape)
                # a chain of products: its backward is cheaper than prod's
                parts = entries.unbind(2)
                stage = parts[0]
                for part in parts[1:]:
                    stage = stage * part
                stage = stage.view(batch, -1, size, size)
                matrix = stage if matrix is None else stage @ matrix
            out.append(matrix.to(self.work_dtype))
        return out

    def pair_tables(self, angles: torch.Tensor) -> list[torch.Tensor]:
        """(B, 2, D) coefficients (A, B) of every pair node, in ``plan.pairs`` order."""
        tables = {}
        for size in self._pair_sizes:
            half = angles[:, getattr(self, f"pair{size}_slot")] * 0.5  # (B, n, D)
            parts = getattr(self, f"pair{size}_coefficients")  # (n, 2, 3, D)
            table = (parts[:, :, 0] + torch.cos(half)[:, :, None] * parts[:, :, 1]
                     + torch.sin(half)[:, :, None] * parts[:, :, 2])
            tables[size] = table.to(self.work_dtype).unbind(1)
        return [tables[size][row] for size, row in self.pair_row]

    def forward(self, values: torch.Tensor) -> list[torch.Tensor]:
        """(B, P) values -> the (B, D, D) matrix of every block, in ``plan.blocks``
        order, then the (B, 2, D) coefficients of every pair node."""
        blocks: list[torch.Tensor] = []
        if self.block_slot:
            tables = [table.unbind(1) for table in self.block_tables(self.node_tables(values))]
            blocks = [tables[c][j] for c, j in self.block_slot]
        if not self._pair_sizes:
            return blocks
        return blocks + self.pair_tables(self.angles(values))


def _stage_index(stages: list, sizes: tuple[int, ...], offsets: dict[int, int],
                 sign_offset: int, row_of) -> np.ndarray:
    """``index[b, f, I·D + J]``: where factor f of entry (I, J) of stage ``b``'s
    matrix sits in the flat table (the last factor is the sign of column J
    when any stage of the class has an absorbed diagonal)."""
    size = math.prod(sizes)
    rows = np.indices((size, size)).reshape(2, -1)
    digits = [np.array(np.unravel_index(axis, sizes)).reshape(len(sizes), -1) for axis in rows]
    with_signs = any(stage.diagonal is not None for stage in stages)
    index = np.empty((len(stages), len(sizes) + with_signs, size * size), dtype=np.int64)
    for b, stage in enumerate(stages):
        for f, (node, d) in enumerate(zip(stage.nodes, sizes)):
            index[b, f] = offsets[d] + row_of(node) * d * d + digits[0][f] * d + digits[1][f]
        if with_signs:
            signs = np.ones(size) if stage.diagonal is None else stage.diagonal
            index[b, -1] = sign_offset + (signs[rows[1]] < 0)
    return index


def _promote(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    return [part.to(dtype) for part in parts]


class ColumnsEngine(nn.Module):
    """Evaluate the chosen columns of a circuit's matrix (see the module doc).

    ``forward(values)`` maps ``(B, P)`` to ``(B, N, K)``; ``columns`` are the
    indices of the basis states the circuit is applied to.
    """

    def __init__(self, plan: Plan, columns: list[int], dtype: torch.dtype) -> None:
        super().__init__()
        self.plan = plan
        self.columns = list(columns)
        self.real_dtype = dtype
        self.builder = MatrixBuilder(plan, dtype)
        self.work_dtype = self.builder.work_dtype
        self.dimension = plan.dimension
        self.schedule = make_schedule(plan, self.columns)
        # the schedule as (kind, arguments) tuples with buffer names for the arrays
        self._steps: list[tuple] = []
        self._inverse_steps: list[tuple] = []
        for i, step in enumerate(self.schedule.steps):
            forward = self._register_step(step, f"s{i}")
            self._steps.append(forward)
            if isinstance(step, (Reorder, ApplyGather)):
                self._inverse_steps.append(self._register_step(step.inverse(), f"s{i}_inverse"))
            else:  # blocks are inverted in undo_step; sign flips are their own inverse
                self._inverse_steps.append(forward)
        initial = torch.zeros(plan.dimension, len(self.columns), dtype=self.work_dtype)
        initial[self.columns, torch.arange(len(self.columns))] = 1
        self.register_buffer("initial", initial.reshape(-1), persistent=False)
        # the product state after the first moment (see Schedule.prepare)
        self._prepare: list[tuple[int | None, str]] = []
        for g, group in enumerate(self.schedule.prepare):
            name = f"prepare{g}"
            if group.block is None:
                vectors = torch.zeros(group.size, len(group.index), dtype=self.work_dtype)
                vectors[torch.as_tensor(group.index), torch.arange(len(group.index))] = 1
                self.register_buffer(name, vectors, persistent=False)
            else:
                self.register_buffer(name, torch.as_tensor(group.index), persistent=False)
            self._prepare.append((group.block, name))

    def _register_step(self, step, name: str) -> tuple:
        if isinstance(step, ApplyBlock):
            return ("lead" if step.leading else "trail", step.block, step.size)
        if isinstance(step, ApplyPairs):
            partner = self.plan.pairs[step.pair].partner
            self.register_buffer(f"{name}_partner", torch.as_tensor(partner), persistent=False)
            return ("pairs", len(self.plan.blocks) + step.pair, step.before, step.size,
                    step.after, f"{name}_partner")
        if isinstance(step, Reorder):
            return ("reorder", step.shape, tuple(o + 1 for o in step.order))
        if isinstance(step, ApplySigns):
            self.register_buffer(f"{name}_sign", torch.as_tensor(step.sign, dtype=self.real_dtype),
                                 persistent=False)
            return ("signs", f"{name}_sign", step.sign.shape[0], step.sign.shape[2])
        assert isinstance(step, ApplyGather)
        self.register_buffer(f"{name}_source", torch.as_tensor(step.source), persistent=False)
        self.register_buffer(f"{name}_sign", torch.as_tensor(step.sign, dtype=self.real_dtype),
                             persistent=False)
        return ("gather", f"{name}_source", f"{name}_sign")

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def cost(self) -> dict[str, int]:
        """Multiply-adds and state size of one forward pass for one circuit.

        ``multiply_adds``: D·N·K per block product, N·K per outer product
        of the product state and 2·N·K per pair step; ``state_numbers``:
        N·K; ``block_products``: the number of N-sized products;
        ``pair_steps``: pair nodes applied; ``reorders``: copies of the state.
        """
        state = self.dimension * self.num_columns
        blocks = [s for s in self.schedule.steps if isinstance(s, ApplyBlock)]
        pairs = sum(isinstance(s, ApplyPairs) for s in self.schedule.steps)
        return {
            "multiply_adds": sum(s.size for s in blocks) * state
            + max(len(self._prepare) - 1, 0) * state + 2 * pairs * state,
            "state_numbers": state,
            "block_products": len(blocks),
            "pair_steps": pairs,
            "reorders": sum(isinstance(s, Reorder) for s in self.schedule.steps),
        }

    # -- evaluation -----------------------------------------------------------
    def initial_state(self, matrices: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
        """The flat (B, N·K) state the steps start from: the chosen columns of
        the identity, or the product state after the first moment."""
        if not self._prepare:
            return self.initial.expand(batch, self.initial.shape[0])
        state = None
        for block, name in self._prepare:
            if block is None:
                factor = getattr(self, name).unsqueeze(0)  # (1, D, K or 1)
            else:
                factor = matrices[block][:, :, getattr(self, name)]  # (B, D, K or 1)
            if state is None:
                state = factor
                continue
            product = state[:, :, None, :] * factor[:, None, :, :]
            state = product.reshape(product.shape[0], -1, product.shape[-1])
        state = state.expand(batch, self.dimension, self.num_columns)
        return state.reshape(batch, -1)

    def run(self, matrices: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
        """Apply the schedule (without autograd bookkeeping inside: use
        :meth:`forward` for gradients); returns the flat (B, N·K) state."""
        state = self.initial_state(matrices, batch)
        for step in self._steps:
            state = self.apply_step(step, state, matrices)
        return state

    def apply_step(self, step: tuple, state: torch.Tensor,
                   matrices: Sequence[torch.Tensor]) -> torch.Tensor:
        """One step of the schedule on a flat ``(B, N·K)`` state."""
        kind = step[0]
        batch = state.shape[0]
        if kind == "lead":
            _, block, size = step
            view = state.view(batch, size, -1).transpose(1, 2)
            return torch.bmm(view, matrices[block].transpose(1, 2)).view(batch, -1)
        if kind == "trail":
            _, block, size = step
            return torch.bmm(state.view(batch, -1, size),
                             matrices[block].transpose(1, 2)).view(batch, -1)
        if kind == "reorder":
            _, shape, order = step
            return state.reshape(batch, *shape).permute(0, *order).reshape(batch, -1)
        if kind == "signs":
            _, sign, before, after = step
            view = state.view(batch, before, -1, after)
            return (view * getattr(self, sign)).view(batch, -1)
        if kind == "pairs":
            coefficients = matrices[step[1]]
            return self._apply_pairs(step, state, coefficients[:, 0], coefficients[:, 1])
        _, source, sign = step
        k = self.num_columns
        view = state.view(batch, -1, k).index_select(1, getattr(self, source))
        return (view * getattr(self, sign)[:, None]).view(batch, -1)

    def _apply_pairs(self, step: tuple, state: torch.Tensor, diagonal: torch.Tensor,
                     paired: torch.Tensor) -> torch.Tensor:
        """``new[i] = diagonal[i]·x[i] + paired[i]·x[partner[i]]`` on the step's axis."""
        _, _, before, size, after, partner = step
        batch = state.shape[0]
        view = state.view(batch, before, size, after)
        moved = view.index_select(2, getattr(self, partner))
        new = diagonal.view(-1, 1, size, 1) * view + paired.view(-1, 1, size, 1) * moved
        return new.reshape(batch, -1)

    def undo_step(self, index: int, state: torch.Tensor,
                  matrices: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of step ``index`` (its adjoint: every step is unitary).

        Applied to a state it recovers the state before the step; applied to
        the gradient with respect to the step's output it gives the gradient
        with respect to its input.
        """
        step = self._inverse_steps[index]
        kind = step[0]
        batch = state.shape[0]
        if kind == "lead":  # x (B, D, R) = Mᴴ yᵀ
            _, block, size = step
            view = state.view(batch, -1, size).transpose(1, 2)
            return torch.bmm(matrices[block].mH, view).reshape(batch, -1)
        if kind == "trail":  # x (B, R, D) = y conj(M)
            _, block, size = step
            return torch.bmm(state.view(batch, -1, size), matrices[block].conj()).view(batch, -1)
        if kind == "pairs":  # the adjoint pairs the same indices
            coefficients = matrices[step[1]]
            partner = getattr(self, step[5])
            return self._apply_pairs(step, state, coefficients[:, 0].conj(),
                                     coefficients[:, 1][:, partner].conj())
        return self.apply_step(step, state, matrices)

    def matrix_gradient(self, index: int, grad_after: torch.Tensor,
                        state_before: torch.Tensor) -> torch.Tensor:
        """dL/dM (torch's convention ``grad · xᴴ``) of block step ``index``; for a
        pair step the (B, 2, D) gradient of its coefficients."""
        step = self._steps[index]
        batch = grad_after.shape[0]
        if step[0] == "pairs":
            _, _, before, size, after, partner = step
            grad = grad_after.view(batch, before, size, after)
            state = state_before.view(batch, before, size, after).conj()
            moved = state.index_select(2, getattr(self, partner))
            return torch.stack([(grad * state).sum((1, 3)), (grad * moved).sum((1, 3))], dim=1)
        kind, _, size = step
        grad = grad_after.view(batch, -1, size).transpose(1, 2)  # (B, D, R)
        if kind == "lead":
            before = state_before.view(batch, size, -1).transpose(1, 2)  # (B, R, D)
        else:
            before = state_before.view(batch, -1, size)
        return torch.bmm(grad, before.conj())

    def forward(self, values: torch.Tensor, keep_states: bool = True) -> torch.Tensor:
        """values (B, P) -> (B, N, K).

        The schedule runs as one autograd node (:class:`ScheduleFunction`)
        whose backward is written out step by step. ``keep_states=False``
        stores no intermediate state and recovers each one in the backward
        pass by undoing the steps (see :mod:`qpeft.compiler.recompute`).
        Under ``torch.compile`` (with ``keep_states=True``) the steps are
        traced as plain tensor operations instead.
        """
        batch = values.shape[0]
        matrices = self.builder(values)
        initial = self.initial_state(matrices, batch)
        if keep_states and torch.compiler.is_compiling():
            # traced as plain tensor operations: the compiler derives (and fuses) the backward
            state = initial
            for step in self._steps:
                state = self.apply_step(step, state, matrices)
        else:
            state = ScheduleFunction.apply(self, keep_states, initial, *matrices)
        return state.view(batch, self.dimension, self.num_columns)


class ScheduleFunction(torch.autograd.Function):
    """The schedule of a :class:`ColumnsEngine` as one autograd node.

    Inputs: the engine, whether to keep the states, the initial state and
    the block matrices; output: the flat ``(B, N·K)`` state. The backward pass
    walks the steps in reverse: the gradient goes back through each step's
    adjoint (which is its inverse), and each block matrix receives
    ``grad_after · state_beforeᴴ``. The state before a block is either
    kept from the forward pass or recovered by undoing the later steps.
    Letting autograd record every step instead costs one graph node per
    view and a copy per transposed product in the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, engine: ColumnsEngine, keep_states: bool, initial: torch.Tensor,
                *matrices: torch.Tensor) -> torch.Tensor:
        kept: list[torch.Tensor] = []
        state = initial
        for step in engine._steps:
            if keep_states and step[0] in ("lead", "trail", "pairs"):
                kept.append(state)
            state = engine.apply_step(step, state, matrices)
        ctx.engine = engine
        ctx.keep_states = keep_states
        ctx.count = len(matrices)
        ctx.save_for_backward(*matrices, *(kept if keep_states else [state]))
        return state

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        engine: ColumnsEngine = ctx.engine
        saved = ctx.saved_tensors
        matrices, rest = saved[: ctx.count], list(saved[ctx.count:])
        wanted = ctx.needs_input_grad[3:]
        grads: list[torch.Tensor | None] = [None] * ctx.count
        grad = grad.to(matrices[0].dtype if matrices else grad.dtype).contiguous()
        state = None if ctx.keep_states else rest[0]
        for index in range(len(engine._steps) - 1, -1, -1):
            kind = engine._steps[index][0]
            block_step = kind in ("lead", "trail", "pairs")
            if ctx.keep_states:
                before = rest.pop() if block_step else None
            else:
                before = engine.undo_step(index, state, matrices)
            if block_step:
                block = engine._steps[index][1]
                if wanted[block]:
                    gradient = engine.matrix_gradient(index, grad, before)
                    grads[block] = gradient if grads[block] is None else grads[block] + gradient
            grad = engine.undo_step(index, grad, matrices)
            state = before
        return (None, None, grad if ctx.needs_input_grad[2] else None, *grads)
