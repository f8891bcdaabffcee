"""Run a :class:`~qpeft.compiler.plan.Plan` on K columns with torch.

Two parts:

* :class:`~qpeft.compiler.blocks.MatrixBuilder` (in :mod:`qpeft.compiler.blocks`)
  turns parameter values into the matrix of every block with a fixed,
  small number of batched tensor operations, whatever the size of the
  circuit, and has its backward pass written out;
* :class:`ColumnsEngine` runs the layout schedule of
  :func:`~qpeft.compiler.plan.make_schedule` on the state, a ``(B, N·K)``
  tensor: B circuits evaluated together (the leading batch of the parameter
  values), N the register, K the columns. The first moment is built as a
  product state by outer products; then each block costs one batched
  matrix product (a block with a control wire: one matrix per level of
  that wire, broadcast over the other axes), each pair node
  (:class:`~qpeft.compiler.plan.PairNode`) one gather and two products
  (its coefficients come from one expression per size D for all pair
  nodes), and reorders and sign flips are single tensor operations.
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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from qpeft.compiler.blocks import (
    MatrixBuilder,
    autocast_off,
    plain_operations,
    refuse_forward_mode,
    refuse_second_derivatives,
)
from qpeft.compiler.plan import (
    ApplyBlock,
    ApplyControlled,
    ApplyGather,
    ApplyPairs,
    ApplySigns,
    Plan,
    Reorder,
    make_schedule,
)

#: the kinds of step that multiply a block matrix or pair coefficients into the state
BLOCK_STEPS = ("lead", "front", "trail", "controlled", "pairs")

#: A controlled step reads the state in place, as ``before · levels · middle``
#: batched products, up to this many; beyond it, moving the state for one
#: product per level is faster (measured on this CPU: 43 levels of 2 × 2 with
#: 16 × 32 numbers around them, 199 µs in place against 48 µs moved; 5 levels
#: of 8 × 8 with 1 × 512, 12 µs against 16 µs).
IN_PLACE_PRODUCTS = 128


#: A reorder of one circuit that swaps two groups of axes, each of at least this
#: many numbers, is copied as a 2-D transpose, which torch does tile by tile;
#: narrower ones keep the permuted copy, which is faster there. At 16 numbers the
#: two are even, from 32 the tiles win (timings in docs/compiler.md).
TILED_TRANSPOSE = 32


def _in_place(step: tuple) -> bool:
    """Whether a controlled step reads the state in place (see :data:`IN_PLACE_PRODUCTS`)."""
    _, _, _, before, levels, middle, _ = step
    return before * levels * middle <= IN_PLACE_PRODUCTS


class ColumnsEngine(nn.Module):
    """Evaluate the chosen columns of a circuit's matrix (see the module doc).

    ``forward(values)`` maps ``(..., P)`` to ``(..., N, K)``; ``columns`` are the
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
        self._prepare: list[tuple[int | None, str | tuple[int, int]]] = []
        for g, group in enumerate(self.schedule.prepare):
            name = f"prepare{g}"
            if group.block is None:
                vectors = torch.zeros(group.size, len(group.index), dtype=self.work_dtype)
                vectors[torch.as_tensor(group.index), torch.arange(len(group.index))] = 1
                self.register_buffer(name, vectors, persistent=False)
                self._prepare.append((None, name))
                continue
            start = int(group.index[0])
            if np.array_equal(group.index, np.arange(start, start + len(group.index))):
                # a run of columns: a slice, which costs less than a gather
                self._prepare.append((group.block, (start, len(group.index))))
            else:
                self.register_buffer(name, torch.as_tensor(group.index), persistent=False)
                self._prepare.append((group.block, name))

    def _register_step(self, step, name: str) -> tuple:
        if isinstance(step, ApplyBlock):
            return (step.placement, step.block, step.size)
        if isinstance(step, ApplyControlled):
            return ("controlled", step.block, step.size, step.before, step.levels, step.middle,
                    step.after)
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
        steps = self.schedule.steps
        blocks = [s for s in steps if isinstance(s, (ApplyBlock, ApplyControlled))]
        pairs = sum(isinstance(s, ApplyPairs) for s in steps)
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
            elif isinstance(name, tuple):
                factor = matrices[block].narrow(2, *name)  # (B, D, K or 1)
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
        if kind == "front":
            _, block, size = step
            return torch.bmm(matrices[block], state.view(batch, size, -1)).view(batch, -1)
        if kind == "trail":
            _, block, size = step
            return torch.bmm(state.view(batch, -1, size),
                             matrices[block].transpose(1, 2)).view(batch, -1)
        if kind == "controlled":
            return self._apply_controlled(step, state, matrices[step[1]])
        if kind == "reorder":
            _, shape, order = step
            if batch == 1 and len(shape) == 2 and min(shape) >= TILED_TRANSPOSE:
                # one matrix transposed: torch copies a 2-D transpose tile by tile
                return state.reshape(shape).t().contiguous().view(1, -1)
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

    @staticmethod
    def _controlled_view(step: tuple, state: torch.Tensor) -> torch.Tensor:
        """The state as ``(B, before, levels, middle, size, after)``."""
        _, _, size, before, levels, middle, after = step
        return state.view(state.shape[0], before, levels, middle, size, after)

    def _apply_controlled(self, step: tuple, state: torch.Tensor,
                          matrix: torch.Tensor) -> torch.Tensor:
        """One (size × size) matrix per level of the control axis: ``matrix`` is
        ``(B, levels, size, size)``. For at most :data:`IN_PLACE_PRODUCTS`
        products, one batched product over the other axes reads the state in
        place; beyond that the products are too small, and the state is moved
        to ``(B, levels, size, rest)`` for one product per level."""
        batch, levels, size = matrix.shape[0], step[4], step[2]
        view = self._controlled_view(step, state)
        if _in_place(step):
            out = matrix.view(batch, 1, levels, 1, size, size) @ view
            return out.view(state.shape[0], -1)
        b, before, _, middle, _, after = view.shape
        moved = view.permute(0, 2, 4, 1, 3, 5).reshape(b, levels, size, -1)
        out = (matrix @ moved).view(b, levels, size, before, middle, after)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, -1)

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
        if kind == "front":  # x (B, D, R) = Mᴴ y
            _, block, size = step
            return torch.bmm(matrices[block].mH, state.view(batch, size, -1)).view(batch, -1)
        if kind == "trail":  # x (B, R, D) = y conj(M)
            _, block, size = step
            return torch.bmm(state.view(batch, -1, size), matrices[block].conj()).view(batch, -1)
        if kind == "controlled":
            return self._apply_controlled(step, state, matrices[step[1]].mH)
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
        if step[0] == "controlled":  # (B, levels, size, size): summed over the other axes
            grad = self._controlled_view(step, grad_after)
            before = self._controlled_view(step, state_before).conj()
            if _in_place(step):  # products over the other axes, then their sum
                gradient = (grad @ before.transpose(-1, -2)).sum((1, 3))
            else:  # (B, levels, size, rest) @ (B, levels, rest, size)
                levels, size = step[4], step[2]
                grad = grad.permute(0, 2, 4, 1, 3, 5).reshape(batch, levels, size, -1)
                before = before.permute(0, 2, 1, 3, 5, 4).reshape(batch, levels, -1, size)
                gradient = grad @ before
            return gradient
        kind, _, size = step
        if kind == "front":  # (B, D, R) @ (B, R, D)
            return torch.bmm(grad_after.view(batch, size, -1),
                             state_before.view(batch, size, -1).mH)
        grad = grad_after.view(batch, -1, size).transpose(1, 2)  # (B, D, R)
        if kind == "lead":
            before = state_before.view(batch, size, -1).transpose(1, 2)  # (B, R, D)
        else:
            before = state_before.view(batch, -1, size)
        return torch.bmm(grad, before.conj())

    def forward(self, values: torch.Tensor, keep_states: bool = True) -> torch.Tensor:
        """values (..., P) -> (..., N, K).

        The schedule runs as one autograd node (:class:`ScheduleFunction`)
        whose backward is written out step by step. ``keep_states=False``
        stores no intermediate state and recovers each one in the backward
        pass by undoing the steps (see :mod:`qpeft.compiler.recompute`).
        Under ``torch.compile`` (with ``keep_states=True``) and under
        ``torch.func`` transforms (whatever ``keep_states``) the steps run as
        plain tensor operations instead (:func:`~qpeft.compiler.blocks.plain_operations`).
        """
        lead = values.shape[:-1]
        batch = math.prod(lead)
        matrices = self.builder(values.reshape(batch, values.shape[-1]))
        initial = self.initial_state(matrices, batch)
        if plain_operations() and (keep_states or not torch.compiler.is_compiling()):
            # plain tensor operations: the compiler, or autograd under torch.func, derives
            # the backward (under torch.compile the memory-saving one keeps its own node)
            state = initial
            for step in self._steps:
                state = self.apply_step(step, state, matrices)
        else:
            state = ScheduleFunction.apply(self, keep_states, initial, *matrices)
        return state.view(*lead, self.dimension, self.num_columns)


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
            if keep_states and step[0] in BLOCK_STEPS:
                kept.append(state)
            state = engine.apply_step(step, state, matrices)
        ctx.engine = engine
        ctx.keep_states = keep_states
        ctx.count = len(matrices)
        ctx.save_for_backward(*matrices, *(kept if keep_states else [state]))
        # the recompute backward keeps the output itself: the frame handed out is a copy, so
        # that editing it in place (U[..., 0] *= -1) leaves what the backward reads alone
        return state if keep_states else state.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        refuse_second_derivatives()
        with torch.no_grad(), autocast_off(grad.device):
            return ScheduleFunction._backward(ctx, grad)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        refuse_forward_mode()

    @staticmethod
    def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
        engine: ColumnsEngine = ctx.engine
        saved = ctx.saved_tensors
        matrices, rest = saved[: ctx.count], list(saved[ctx.count:])
        wanted = ctx.needs_input_grad[3:]
        grads: list[torch.Tensor | None] = [None] * ctx.count
        grad = grad.to(matrices[0].dtype if matrices else grad.dtype).contiguous()
        state = None if ctx.keep_states else rest[0]
        for index in range(len(engine._steps) - 1, -1, -1):
            kind = engine._steps[index][0]
            block_step = kind in BLOCK_STEPS
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
