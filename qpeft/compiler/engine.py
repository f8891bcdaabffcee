"""Run a :class:`~qpeft.compiler.plan.Plan` on K columns with torch.

The state is a ``(B, N, K)`` tensor: B circuits evaluated together (the
leading batch of the parameter values), N the register, K the columns kept
last. A Kronecker block on wires ``i..j`` views the state as
``(B, left, D, right·K)`` and multiplies by the block's ``D×D`` matrix; a
signed permutation is one gather (or a ±1 multiply when it is diagonal).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from qpeft.circuit.gates import COMPLEX_OF
from qpeft.compiler.plan import Block, MatrixNode, Plan, constant_tensor


class ColumnsEngine(nn.Module):
    """Evaluate the chosen columns of a circuit's matrix (see module doc)."""

    def __init__(self, plan: Plan, columns: list[int], dtype: torch.dtype) -> None:
        super().__init__()
        self.plan = plan
        self.columns = list(columns)
        self.real_dtype = dtype
        self.work_dtype = dtype if plan.is_real else COMPLEX_OF.get(dtype, dtype)
        cplx = COMPLEX_OF.get(dtype, dtype)
        self.register_buffer("weights", torch.as_tensor(plan.weights, dtype=dtype), persistent=False)
        self.register_buffer("offset", torch.as_tensor(plan.offset, dtype=dtype), persistent=False)
        # rotation constants, one stacked set per matrix size
        self._groups = []
        for k, group in enumerate(plan.groups):
            slots = torch.as_tensor(group.slots, dtype=torch.long)
            self.register_buffer(f"g{k}_slots", slots, persistent=False)
            for part in ("fixed", "projector", "step"):
                stacked = constant_tensor(np.stack(getattr(group, part)), dtype, cplx)
                self.register_buffer(f"g{k}_{part}", stacked, persistent=False)
            self._groups.append(group.size)
        self._group_index = {size: k for k, size in enumerate(self._groups)}
        # constants of fixed dense gates and the moment schedule
        self._constants: dict[int, str] = {}
        self._schedule: list[tuple] = []
        counter = 0
        for moment in plan.moments:
            if moment.permutation is not None:
                perm = moment.permutation
                name = f"p{counter}"
                counter += 1
                self.register_buffer(f"{name}_sign", torch.as_tensor(perm.sign, dtype=dtype),
                                     persistent=False)
                source = None
                if not perm.is_diagonal:
                    self.register_buffer(f"{name}_source", torch.as_tensor(perm.source),
                                         persistent=False)
                    source = f"{name}_source"
                self._schedule.append(("perm", f"{name}_sign", source))
            for block in moment.blocks:
                for node in block.nodes:
                    for i, factor in enumerate(node.factors):
                        if factor[0] == "constant":
                            name = f"c{counter}"
                            counter += 1
                            self.register_buffer(name, constant_tensor(factor[1], dtype, cplx),
                                                 persistent=False)
                            node.factors[i] = ("constant", factor[1], name)
                self._schedule.append(("block", block, _block_geometry(block, plan.dims)))
        initial = torch.zeros(plan.dimension, len(self.columns), dtype=self.work_dtype)
        initial[self.columns, torch.arange(len(self.columns))] = 1
        self.register_buffer("initial", initial, persistent=False)

    # -- matrices -------------------------------------------------------------
    def rotation_matrices(self, angles: torch.Tensor) -> list[torch.Tensor]:
        """(B, G, D, D) matrices of every rotation group."""
        out = []
        for k in range(len(self._groups)):
            theta = angles[:, getattr(self, f"g{k}_slots")] / 2
            cos = torch.cos(theta)[..., None, None]
            sin = torch.sin(theta)[..., None, None]
            fixed = getattr(self, f"g{k}_fixed")
            proj = getattr(self, f"g{k}_projector")
            step = getattr(self, f"g{k}_step")
            out.append(fixed + cos.to(proj.dtype) * proj + sin.to(step.dtype) * step)
        return out

    def node_matrix(self, node: MatrixNode, rotations: list[torch.Tensor]) -> torch.Tensor:
        matrix = None
        for factor in node.factors:
            if factor[0] == "rotation":
                m = rotations[self._group_index[factor[1]]][:, factor[2]]
            else:
                m = getattr(self, factor[2])
            if matrix is None:
                matrix = m
            else:
                if m.dtype != matrix.dtype:
                    common = torch.promote_types(m.dtype, matrix.dtype)
                    m, matrix = m.to(common), matrix.to(common)
                matrix = m @ matrix
        return matrix

    def block_matrix(self, block: Block, rotations: list[torch.Tensor]) -> torch.Tensor:
        matrix = None
        for node in block.nodes:
            m = self.node_matrix(node, rotations)
            if matrix is None:
                matrix = m
                continue
            if m.dtype != matrix.dtype:
                common = torch.promote_types(m.dtype, matrix.dtype)
                m, matrix = m.to(common), matrix.to(common)
            a, b = matrix.shape[-1], m.shape[-1]
            kron = matrix[..., :, None, :, None] * m[..., None, :, None, :]
            matrix = kron.reshape(*kron.shape[:-4], a * b, a * b)
        return matrix

    # -- evaluation -----------------------------------------------------------
    def angles(self, values: torch.Tensor) -> torch.Tensor:
        return values @ self.weights.T + self.offset

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values (B, P) -> (B, N, K)."""
        batch = values.shape[0]
        rotations = self.rotation_matrices(self.angles(values))
        state = self.initial.expand(batch, *self.initial.shape)
        for step in self._schedule:
            if step[0] == "perm":
                _, sign_name, source_name = step
                if source_name is not None:
                    state = state[:, getattr(self, source_name)]
                state = state * getattr(self, sign_name)[:, None].to(state.dtype)
            else:
                _, block, geometry = step
                state = apply_block(state, self.block_matrix(block, rotations), geometry)
        return state


def _block_geometry(block: Block, dims: tuple[int, ...]) -> tuple:
    wires = block.wires
    if all(b == a + 1 for a, b in zip(wires, wires[1:])):
        left = math.prod(dims[: wires[0]])
        size = math.prod(dims[w] for w in wires)
        right = math.prod(dims[wires[-1] + 1 :])
        return ("contiguous", left, size, right)
    # general case: move the block's wires to the front, apply, move back
    rest = [w for w in range(len(dims)) if w not in wires]
    order = list(wires) + rest
    inverse = [order.index(w) for w in range(len(dims))]
    return ("permuted", tuple(dims), tuple(order), tuple(inverse),
            math.prod(dims[w] for w in wires))


def apply_block(state: torch.Tensor, matrix: torch.Tensor, geometry: tuple) -> torch.Tensor:
    """Multiply a (B or 1, D, D) matrix into the block's wires of (B, N, K)."""
    if matrix.dtype != state.dtype:
        common = torch.promote_types(matrix.dtype, state.dtype)
        matrix, state = matrix.to(common), state.to(common)
    batch, total, k = state.shape
    if matrix.dim() == 2:
        matrix = matrix.unsqueeze(0)
    if geometry[0] == "contiguous":
        _, left, size, right = geometry
        view = state.reshape(batch, left, size, right * k)
        # (left·right·K) small products against one D×D matrix per circuit:
        # batched (R×D)@(D×D) is the fastest layout on CPU for small D
        out = view.transpose(-1, -2) @ matrix.transpose(-1, -2).unsqueeze(1)
        return out.transpose(-1, -2).reshape(batch, total, k)
    _, dims, order, inverse, size = geometry
    tensor = state.reshape(batch, *dims, k)
    moved = tensor.permute(0, *[1 + w for w in order], len(dims) + 1)
    shape = moved.shape
    flat = moved.reshape(batch, size, -1)
    out = torch.matmul(matrix.expand(batch, size, size), flat).reshape(shape)
    back = out.permute(0, *[1 + p for p in inverse], len(dims) + 1)
    return back.reshape(batch, total, k)
