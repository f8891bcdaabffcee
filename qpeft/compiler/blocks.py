"""Build the matrix of every block of a :class:`~qpeft.compiler.plan.Plan`
from parameter values, forward and backward.

:class:`MatrixBuilder` needs a fixed, small number of batched tensor
operations, whatever the size of the circuit: one matmul for all angles, one
expression per rotation size for all rotation matrices, one gather and a
few products for nodes that are runs of several gates, then **one gather
and one product for the entries of every block matrix at once** (entry
(I, J) of a Kronecker product is a product of one entry per factor, and
the factor lists of all blocks are padded to one length with the constant
1), and one matrix product per extra stage of a block.

The backward pass is written out (:class:`BuildFunction`, one autograd
node): the gradient of each node matrix is the node times a partial trace
of ``Sᴴ·grad`` of its stage (one batched product per stage, then one
gather and one ``index_add`` for all nodes; see
:meth:`MatrixBuilder.backward_tables`), taken through the rotation
expressions to the angles, and through the angle matmul to the values.
Letting autograd record the forward instead costs one graph node per product, view and
gather (about 70 for ``pauli(10, 2)``): forward and backward took 0.56 ms
against 0.52 ms written out for one frame, 2.11 ms against 1.26 ms for 48
frames of ``for_dimension(384, 2)``. The backward is out of place, so it
also runs under vmap; it gives first derivatives only and refuses
``create_graph=True``.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from qpeft.circuit.gates import COMPLEX_OF
from qpeft.compiler.plan import MatrixNode, Plan, constant_tensor
from qpeft.errors import CompileError


def _common(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype == y.dtype:
        return x, y
    common = torch.promote_types(x.dtype, y.dtype)
    return x.to(common), y.to(common)


def _promote(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    return [part.to(dtype) for part in parts]


def _like(grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``grad`` in ``reference``'s dtype; the real part when that is real
    (torch's convention for a real tensor that was promoted to complex)."""
    if grad.is_complex() and not reference.is_complex():
        grad = grad.real
    return grad.to(reference.dtype)


class MatrixBuilder(nn.Module):
    """Builds every node and block matrix of a plan from parameter values.

    The constants live in buffers, so ``.to(device)`` moves them. Calling the
    builder returns the ``(B, D, D)`` matrix of every block in
    ``plan.blocks`` order (``(B, L, d, d)``, one matrix per level, for a block
    with a control wire of L levels), then the ``(B, 2, D)`` coefficients of every pair
    node; :meth:`tables` returns them grouped (one tensor per class of
    equally shaped blocks and per pair size). Calling the builder gives first
    derivatives through :class:`BuildFunction`; :meth:`tables` is plain
    tensor operations, differentiable by autograd to any order.

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
        self._rotation_count = rotation_count

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
        self._table_length = dict(table_length)

        # blocks, classified by signature; block -> (class, position in class)
        node_index = {id(node): i for i, node in enumerate(self.nodes)}
        classes: dict[tuple, list[int]] = defaultdict(list)
        blocks = plan.blocks
        for b, block in enumerate(blocks):
            classes[block.signature(plan.dims)].append(b)
        # Every stage matrix is gathered entry by entry from one flat table that
        # holds all node matrices and the constants ±1: entry (I, J) of a
        # Kronecker product is the product of one entry of each factor (and of
        # the absorbed diagonal's sign for column J). All stages of all classes
        # share one index, their factor lists padded with the constant 1.
        self._table_sizes = sorted(table_length)
        offsets, position = {}, 0
        for size in self._table_sizes:
            offsets[size] = position
            position += table_length[size] * size * size
        sign_offset = position  # the table ends with [1, -1]
        self._flat_length = position + 2
        stage_rows: list[np.ndarray] = []
        trace_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        entry = 0
        # per class, per stage: (first entry, count, matrix shape: (D, D), or (L, d, d) for a
        # block with a control wire of L levels)
        self._classes: list[list[tuple[int, int, tuple[int, ...]]]] = []
        self.block_slot: list[tuple[int, int]] = [(0, 0)] * len(blocks)
        for c, (signature, members) in enumerate(classes.items()):
            stages = [blocks[b].stages for b in members]
            recipe = []
            controlled, layouts = signature
            for s, layout in enumerate(layouts):
                index = _stage_index([chain[s] for chain in stages], layout, controlled, offsets,
                                     sign_offset,
                                     lambda node: self.node_row[node_index[id(node)]][1])
                levels, size = layout[0][0], math.prod(layout[0])
                shape = (levels, size // levels, size // levels) if controlled else (size, size)
                # (count, factors, D·D) -> one row of factor positions per entry
                stage_rows.append(index.transpose(0, 2, 1).reshape(-1, index.shape[1]))
                source, target, sign = _stage_traces([chain[s] for chain in stages], layout,
                                                     controlled, index)
                trace_parts.append((entry + source, target, sign))
                recipe.append((entry, len(members), shape))
                entry += len(members) * math.prod(shape)
            self._classes.append(recipe)
            for j, b in enumerate(members):
                self.block_slot[b] = (c, j)
        self._entries = entry
        if stage_rows:
            width = max(rows.shape[1] for rows in stage_rows)
            padded = np.full((entry, width), sign_offset, dtype=np.int64)
            start = 0
            for rows in stage_rows:
                padded[start: start + rows.shape[0], : rows.shape[1]] = rows
                start += rows.shape[0]
            # factor-major: factor f of every entry is one contiguous run
            self.register_buffer("stage_index", torch.as_tensor(padded.T.reshape(-1)),
                                 persistent=False)
            # the backward pass: which entries of the stages' Sᴴ·grad add to which entry
            # of which node's partial trace, with which sign (see backward_tables)
            source, target, sign = (np.concatenate(part) for part in zip(*trace_parts))
            self.register_buffer("trace_source", torch.as_tensor(source), persistent=False)
            self.register_buffer("trace_target", torch.as_tensor(target), persistent=False)
            self._trace_signs = bool(np.any(sign < 0))
            self.register_buffer("trace_sign", torch.as_tensor(sign, dtype=dtype),
                                 persistent=False)

    # -- forward: plain tensor operations (autograd can differentiate them) ---
    def angles(self, values: torch.Tensor) -> torch.Tensor:
        """(B, P) parameter values -> (B, S) gate angles."""
        if self.offset.shape[0] == 0:
            return values.new_zeros(values.shape[0], 0)
        return torch.addmm(self.offset, values, self.weights_t)

    def rotation_tables(self, angles: torch.Tensor, saved: dict | None = None
                        ) -> dict[int, torch.Tensor]:
        """(B, G, D, D) matrices of every rotation, one tensor per size D."""
        out = {}
        for size in self._group_sizes:
            name = f"rotation{size}"
            half = angles[:, getattr(self, f"{name}_slots")] * 0.5
            cos, sin = torch.cos(half), torch.sin(half)
            if saved is not None:
                saved[f"trig{size}"] = (cos, sin)
            projector = getattr(self, f"{name}_projector")
            step = getattr(self, f"{name}_step")
            matrix = cos[..., None, None] * projector + sin[..., None, None] * step
            if self._has_fixed[size]:
                matrix = matrix + getattr(self, f"{name}_fixed")
            out[size] = matrix
        return out

    def node_tables(self, values: torch.Tensor, saved: dict | None = None,
                    angles: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """(B, n_D, D, D) matrices of every node of size D (rows: :attr:`node_row`)."""
        batch = values.shape[0]
        angles = self.angles(values) if angles is None else angles
        rotations = self.rotation_tables(angles, saved)
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
        if saved is not None:
            saved["factors"] = factors
        pieces: dict[int, list[torch.Tensor]] = defaultdict(list)
        for size, length, name in self._chains:
            table = factors[size]
            if name is None:
                pieces[size].append(table)
                continue
            rows = getattr(self, name)
            matrix = table[:, rows[:, 0]]
            chain = [matrix]
            for k in range(1, length):
                nxt, matrix = _common(table[:, rows[:, k]], matrix)
                matrix = nxt @ matrix
                chain.append(matrix)
            if saved is not None:
                saved[name] = chain
            pieces[size].append(matrix)
        return {size: parts[0] if len(parts) == 1 else torch.cat(list(_promote(parts)), dim=1)
                for size, parts in pieces.items()}

    def flat_table(self, nodes: dict[int, torch.Tensor]) -> torch.Tensor:
        """(B, F): every node matrix flattened, sizes in order, then ``[1, -1]``."""
        batch = next(iter(nodes.values())).shape[0] if nodes else 1
        parts = [nodes[size].reshape(batch, -1) for size in self._table_sizes]
        parts.append(self.signs.expand(batch, 2))
        return torch.cat(_promote(parts), dim=1)

    def pair_groups(self, angles: torch.Tensor, saved: dict | None = None) -> list[torch.Tensor]:
        """(B, n, 2, D) coefficients (A, B) of the pair nodes of each size D."""
        out = []
        for size in self._pair_sizes:
            half = angles[:, getattr(self, f"pair{size}_slot")] * 0.5  # (B, n, D)
            cos, sin = torch.cos(half), torch.sin(half)
            if saved is not None:
                saved[f"pair_trig{size}"] = (cos, sin)
            parts = getattr(self, f"pair{size}_coefficients")  # (n, 2, 3, D)
            table = (parts[:, :, 0] + cos[:, :, None] * parts[:, :, 1]
                     + sin[:, :, None] * parts[:, :, 2])
            out.append(table.to(self.work_dtype))
        return out

    def pair_tables(self, angles: torch.Tensor) -> list[torch.Tensor]:
        """(B, 2, D) coefficients (A, B) of every pair node, in ``plan.pairs`` order."""
        return self._per_pair(self.pair_groups(angles))

    def _per_pair(self, groups: list[torch.Tensor]) -> list[torch.Tensor]:
        """The pair tables of each size split into one (B, 2, D) tensor per pair node."""
        unbound = {size: table.unbind(1) for size, table in zip(self._pair_sizes, groups)}
        return [unbound[size][row] for size, row in self.pair_row]

    def tables(self, values: torch.Tensor, saved: dict | None = None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(B, P) values -> the (B, n_c, D, D) matrices of the blocks of each
        class (rows: :attr:`block_slot`) and the (B, n, 2, D) coefficients of
        the pair nodes of each size. ``saved`` (a dict) receives what
        :meth:`backward_tables` needs."""
        batch = values.shape[0]
        angles = self.angles(values)
        classes = []
        if self._classes:
            nodes = self.node_tables(values, saved, angles)
            flat = self.flat_table(nodes)
            entries = flat.index_select(1, self.stage_index).view(batch, -1, self._entries)
            # a chain of products, not prod(): autograd differentiates prod by dividing
            # by each factor, which gives NaN for subnormal ones (under torch.compile)
            factors = entries.unbind(1)
            products = factors[0]
            for factor in factors[1:]:
                products = products * factor
            kept = []  # per class, per stage: its matrix and the product of the stages before
            for recipe in self._classes:
                matrix = None
                kept.append([])
                for entry, count, shape in recipe:
                    stage = products[:, entry: entry + count * math.prod(shape)]
                    stage = stage.view(batch, count, *shape)
                    kept[-1].append((stage, matrix))
                    matrix = stage if matrix is None else stage @ matrix
                classes.append(matrix.to(self.work_dtype))
            if saved is not None:
                saved["nodes"] = nodes
                saved["stages"] = kept
        pairs = self.pair_groups(angles, saved) if self._pair_sizes else []
        return classes, pairs

    def forward(self, values: torch.Tensor) -> list[torch.Tensor]:
        """(B, P) values -> the (B, D, D) matrix of every block (``(B, L, d, d)``
        for a block with a control wire), in ``plan.blocks`` order, then the
        (B, 2, D) coefficients of every pair node.

        With gradients wanted, one :class:`BuildFunction` node computes them;
        under ``torch.compile`` and ``torch.func`` transforms the plain
        operations run instead (:func:`plain_operations`).
        """
        if torch.is_grad_enabled() and values.requires_grad and not plain_operations():
            out = BuildFunction.apply(self, values)
            classes, pairs = out[: len(self._classes)], out[len(self._classes):]
        else:
            classes, pairs = self.tables(values)
        blocks: list[torch.Tensor] = []
        if self.block_slot:
            unbound = [table.unbind(1) for table in classes]
            blocks = [unbound[c][j] for c, j in self.block_slot]
        return blocks + self._per_pair(pairs)

    # -- backward, written out ------------------------------------------------
    def backward_tables(self, values: torch.Tensor, saved: dict,
                        grad_classes: list[torch.Tensor | None],
                        grad_pairs: list[torch.Tensor | None]) -> torch.Tensor:
        """The gradient with respect to the (B, P) values, given the gradients
        of the outputs of :meth:`tables` (None for an unused one) and what
        :meth:`tables` put in ``saved``.

        Blocks go back to their nodes through **partial traces**, using that
        every node is unitary. A stage is ``S = K·Δ``: ``K`` the product of
        its nodes, which act on different wires or are block diagonal on the
        wires they share, so they commute, and ``Δ`` an absorbed sign
        diagonal (or ``I``). Moving node ``N`` by ``dN`` moves ``S`` by
        ``S·Δ·(Nᴴ dN ⊗ I)·Δ``, so with ``H = Δ·Sᴴ·grad_S·Δ`` the gradient of
        ``N`` is ``N · tr_others(H)``, where ``tr_others`` traces out the
        stage's wires outside ``N``. Each stage's ``H`` costs one batched
        product besides those that take the gradient through a block's
        stages, and the partial traces of all nodes are one gather and one
        ``index_add`` (:func:`_stage_traces` lists the terms): a node of D
        levels in a block of size M reads M·D numbers, where a gradient per
        Kronecker entry multiplies and scatters M² numbers per node.

        Every operation is out of place and no slice spans a whole axis, so
        the backward also runs under vmap (batched gradients, e.g.
        ``torch.autograd.functional.jacobian(..., vectorize=True)``).
        """
        batch = values.shape[0]
        grad_angles = values.new_zeros(batch, self.offset.shape[0])
        if self._classes:
            traces = []  # per stage of each class: Sᴴ · (the gradient of S), flattened
            for kept, grad in zip(saved["stages"], grad_classes):
                if grad is None:
                    traces.extend(stage.new_zeros(batch, stage[0].numel())
                                  for stage, _ in kept)
                    continue
                grad = _like(grad, kept[0][0])
                found = []
                for stage, before in reversed(kept):
                    grad = stage.mH @ grad  # the gradient of the product of the stages before
                    found.append(grad if before is None else grad @ before.mH)
                traces.extend(trace.reshape(batch, -1) for trace in reversed(found))
            flat = torch.cat(traces, 1) if len(traces) > 1 else traces[0]
            contributions = flat.index_select(1, self.trace_source)
            if self._trace_signs:
                contributions = contributions * self.trace_sign
            grad_flat = flat.new_zeros(batch, self._flat_length - 2).index_add(
                1, self.trace_target, contributions)
            grad_angles = grad_angles + self._nodes_backward(grad_flat, saved)
        for size, grad in zip(self._pair_sizes, grad_pairs):
            if grad is None:
                continue
            cos, sin = saved[f"pair_trig{size}"]  # (B, n, D)
            parts = getattr(self, f"pair{size}_coefficients")  # (n, 2, 3, D)
            along_cos = (grad * parts[:, :, 1].conj()).sum(2).real
            along_sin = (grad * parts[:, :, 2].conj()).sum(2).real
            grad_half = along_sin * cos - along_cos * sin
            grad_angles = grad_angles.index_add(1, getattr(self, f"pair{size}_slot").view(-1),
                                                0.5 * grad_half.reshape(batch, -1))
        if grad_angles.shape[1] == 0:
            return values.new_zeros(values.shape)
        return grad_angles @ self.weights_t.T

    def _nodes_backward(self, traces: torch.Tensor, saved: dict) -> torch.Tensor:
        """From the partial traces of the nodes (``(B, F − 2)``, laid out like
        the node tables in the flat table) to the (B, S) angles: the gradient
        of node ``N`` is ``N`` times its partial trace (see :meth:`backward_tables`)."""
        batch = traces.shape[0]
        factors: dict[int, torch.Tensor] = saved["factors"]
        nodes: dict[int, torch.Tensor] = saved["nodes"]
        lengths = [self._table_length[size] * size * size for size in self._table_sizes]
        pieces = traces.split(lengths, dim=1) if len(lengths) > 1 else [traces]
        chain_counts: dict[int, list[int]] = defaultdict(list)
        for size, _, name in self._chains:
            count = factors[size].shape[1] if name is None else getattr(self, name).shape[0]
            chain_counts[size].append(count)
        grad_chains: dict[int, list[torch.Tensor]] = {}
        for size, piece in zip(self._table_sizes, pieces):
            table, trace = _common(nodes[size], piece.reshape(batch, -1, size, size))
            grad_nodes = table @ trace
            counts = chain_counts[size]
            grad_chains[size] = [grad_nodes] if len(counts) == 1 else list(
                grad_nodes.split(counts, dim=1))
        grad_factors: dict[int, torch.Tensor] = {}
        for size, length, name in self._chains:
            table = factors[size]
            grad = grad_chains[size].pop(0)
            if name is None:
                contribution = _like(grad, table)
            else:
                rows = getattr(self, name)
                chain = saved[name]
                contribution = torch.zeros_like(table)
                for k in range(length - 1, 0, -1):
                    before = chain[k - 1].to(chain[k].dtype)
                    nxt = table[:, rows[:, k]].to(chain[k].dtype)
                    grad = _like(grad, chain[k])
                    contribution = contribution.index_add(1, rows[:, k],
                                                          _like(grad @ before.mH, table))
                    grad = nxt.mH @ grad
                contribution = contribution.index_add(1, rows[:, 0], _like(grad, table))
            grad_factors[size] = (contribution if size not in grad_factors
                                  else grad_factors[size] + contribution)
        grad_angles = traces.new_zeros(batch, self.offset.shape[0], dtype=self.offset.dtype)
        for size in self._group_sizes:
            if size not in grad_factors:
                continue
            name = f"rotation{size}"
            cos, sin = saved[f"trig{size}"]
            grad = grad_factors[size]
            count = self._rotation_count[size]
            if count < grad.shape[1]:  # the constants follow the rotations
                grad = grad.narrow(1, 0, count)
            along_cos = (grad * getattr(self, f"{name}_projector").conj()).sum((-2, -1)).real
            along_sin = (grad * getattr(self, f"{name}_step").conj()).sum((-2, -1)).real
            grad_angles = grad_angles.index_add(1, getattr(self, f"{name}_slots"),
                                                0.5 * (along_sin * cos - along_cos * sin))
        return grad_angles


def _pack(tree: Any, tensors: list[torch.Tensor]) -> Any:
    """``tree`` with every tensor replaced by its position in ``tensors``."""
    if isinstance(tree, torch.Tensor):
        tensors.append(tree)
        return ("tensor", len(tensors) - 1)
    if isinstance(tree, dict):
        return ("dict", {key: _pack(value, tensors) for key, value in tree.items()})
    if isinstance(tree, (list, tuple)):
        return ("list", [_pack(value, tensors) for value in tree])
    return ("value", tree)


def _unpack(spec: Any, tensors: tuple[torch.Tensor, ...]) -> Any:
    kind, content = spec
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {key: _unpack(value, tensors) for key, value in content.items()}
    if kind == "list":
        return [_unpack(value, tensors) for value in content]
    return content


class BuildFunction(torch.autograd.Function):
    """:meth:`MatrixBuilder.tables` as one autograd node whose backward is
    :meth:`MatrixBuilder.backward_tables`. Inputs: the builder and the (B, P)
    values; outputs: the class tables, then the pair tables."""

    @staticmethod
    def forward(ctx: Any, builder: MatrixBuilder, values: torch.Tensor) -> tuple:
        saved: dict = {}
        classes, pairs = builder.tables(values, saved)
        tensors: list[torch.Tensor] = []
        ctx.spec = _pack(saved, tensors)
        ctx.builder = builder
        ctx.classes = len(classes)
        ctx.save_for_backward(values, *tensors)
        return (*classes, *pairs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        refuse_second_derivatives()
        values, *tensors = ctx.saved_tensors
        saved = _unpack(ctx.spec, tuple(tensors))
        with torch.no_grad(), autocast_off(values.device):
            grad = ctx.builder.backward_tables(values, saved, list(grads[: ctx.classes]),
                                               list(grads[ctx.classes:]))
        return None, grad

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        refuse_forward_mode()


def plain_operations() -> bool:
    """Whether plain tensor operations stand in for the written-out backward
    passes: under ``torch.compile``, which traces them and derives (and fuses)
    the backward, and under ``torch.func`` transforms (``vmap``, ``grad``,
    ``jacrev``, ``jacfwd``, ``hessian``), which autograd's recording supports
    to any order. Data-dependent checks are skipped there too."""
    if torch.compiler.is_compiling():
        return True
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active is not None and active())


def reduced_precision_matmuls() -> bool:
    """Whether float32 matrix products on a CUDA GPU may run in reduced
    precision (TF32 or bfloat16: ``torch.set_float32_matmul_precision("high")``,
    ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` or the older
    ``allow_tf32 = True``). Where torch refuses to tell (legacy and new settings
    mixed), the answer is yes."""
    matmul = torch.backends.cuda.matmul
    try:
        precision = getattr(matmul, "fp32_precision", None)
        if precision not in (None, "none"):
            return precision != "ieee"
        return bool(matmul.allow_tf32)
    except RuntimeError:
        return True


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Run in full precision inside ``torch.autocast``: the compiled frames'
    forward and their written-out backward, which a training loop may call
    with autocast still on (``loss.backward()`` inside the ``with`` block).
    Outside autocast, a context that does nothing (entering ``torch.autocast``
    costs a few microseconds per call)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def refuse_forward_mode() -> None:
    """The written-out passes give reverse-mode derivatives only."""
    raise CompileError(
        "the compiled circuit's backward pass is written out for reverse mode, and forward-mode "
        "AD (torch.autograd.forward_ad, jacobian(strategy='forward-mode')) was asked for; use "
        "torch.func.jvp or torch.func.jacfwd, under which the plain operations run, or compile "
        "with method='tensornet', which autograd differentiates in both modes"
    )


def refuse_second_derivatives() -> None:
    """Raise when a written-out backward is asked to build a graph itself
    (``create_graph=True``): its operations would not be differentiated, and
    a Hessian would silently miss their part."""
    if torch.is_grad_enabled():
        raise CompileError(
            "the compiled circuit's backward pass is written out and gives first derivatives "
            "only, but a graph of the gradient was asked for (create_graph=True, e.g. for a "
            "Hessian); use torch.func (torch.func.hessian, jacfwd, jacrev), under which the "
            "plain operations run, or compile with method='tensornet', which autograd "
            "differentiates to any order"
        )


def _entry_digits(dims: tuple[int, ...], controlled: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """The row and column ``(2, E)`` of every listed entry of a stage matrix on
    wires of dimensions ``dims``, and the digits ``(wires, E)`` of each: all
    D·D entries, or (``controlled``) those of the diagonal blocks of the first
    wire, level by level, i.e. entries (ℓ, i, j) of an ``(L, d, d)`` tensor."""
    size = math.prod(dims)
    if controlled:
        levels, inner = dims[0], size // dims[0]
        level, i, j = np.indices((levels, inner, inner)).reshape(3, -1)
        rows = np.stack([level * inner + i, level * inner + j])
    else:
        rows = np.indices((size, size)).reshape(2, -1)
    return rows, [np.array(np.unravel_index(axis, dims)).reshape(len(dims), -1) for axis in rows]


def _stage_traces(stages: list, layout: tuple, controlled: bool,
                  index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How the backward pass reads the partial traces of a class's nodes at
    one stage (see :meth:`MatrixBuilder.backward_tables`).

    Entry (I, J) of ``H = Sᴴ·grad`` of member ``b`` adds to entry (a, c) of
    node f's partial trace when I and J have the same digits on every wire
    outside node f; (a, c) are their digits on f's wires. Returns, for every
    such term, the entry's position among the class's listed entries
    (``b·E + e``), the trace entry's position in the flat table (the
    position of node f's factor of that entry, from ``index``), and the
    sign ``δ_I·δ_J`` of an absorbed diagonal ``δ`` (``S = K·diag(δ)``).
    """
    dims, positions = layout
    rows, (row_digits, column_digits) = _entry_digits(dims, controlled)
    count, entries = len(stages), rows.shape[1]
    member = np.arange(count)[:, None]
    sources, targets, signs = [], [], []
    for f, places in enumerate(positions):
        outside = [w for w in range(len(dims)) if w not in places]
        (agree,) = np.nonzero(np.all(row_digits[outside] == column_digits[outside], axis=0))
        sources.append((member * entries + agree).reshape(-1))
        targets.append(index[:, f, agree].reshape(-1))
        sign = np.ones((count, len(agree)))
        for b, stage in enumerate(stages):
            if stage.diagonal is not None:
                sign[b] = stage.diagonal[rows[0, agree]] * stage.diagonal[rows[1, agree]]
        signs.append(sign.reshape(-1))
    return np.concatenate(sources), np.concatenate(targets), np.concatenate(signs)


def _stage_index(stages: list, layout: tuple, controlled: bool, offsets: dict[int, int],
                 sign_offset: int, row_of) -> np.ndarray:
    """``index[b, f, I·D + J]``: where factor f of entry (I, J) of stage ``b``'s
    matrix sits in the flat table (the last factor is the sign of column J
    when any stage of the class has an absorbed diagonal).

    ``layout``: the dimensions of the stages' wires and the positions of
    each node's wires among them (:meth:`~qpeft.compiler.plan.Block.layout`).
    ``controlled``: the stages are block diagonal on their first wire, and
    only the entries of its diagonal blocks are listed, level by level.
    Node f's factor of entry (I, J) is its entry at the digits of I and J on
    its wires; a node that shares a wire with another is block diagonal on
    it, so that entry is 0 where I and J differ there, as it must be.
    """
    dims, positions = layout
    size = math.prod(dims)
    rows, digits = _entry_digits(dims, controlled)
    with_signs = any(stage.diagonal is not None for stage in stages)
    index = np.empty((len(stages), len(positions) + with_signs, rows.shape[1]), dtype=np.int64)
    local = []  # per node: its size d and its (row, column) index for every entry
    for places in positions:
        node_dims = [dims[p] for p in places]
        d = math.prod(node_dims)
        local.append((d, *(np.ravel_multi_index([axis[p] for p in places], node_dims)
                           for axis in digits)))
    for b, stage in enumerate(stages):
        for f, (node, (d, row, column)) in enumerate(zip(stage.nodes, local)):
            index[b, f] = offsets[d] + row_of(node) * d * d + row * d + column
        if with_signs:
            signs = np.ones(size) if stage.diagonal is None else stage.diagonal
            index[b, -1] = sign_offset + (signs[rows[1]] < 0)
    return index
