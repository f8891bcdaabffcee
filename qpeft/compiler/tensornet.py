"""Evaluate a circuit's columns by contracting it as a tensor network.

Every gate is a tensor with one index per wire it reads and one per wire it
writes; the chosen columns of the identity form the input tensors and the
register's final indices plus the column index form the output. Two kinds
of index are shared by more than two tensors (hyperedges), which keeps the
network small:

* the **batch** index ``b``: every tensor that depends on the parameter
  values carries it, so B circuits are contracted at once;
* **diagonal gates** (CZ, sign diagonals, RZ-type rotations, controlled
  phases) are tensors whose input and output index are the same, so they
  add no index at all.

The contraction order is planned once, at construction, by
``opt_einsum.contract_expression`` (greedy, with intermediates limited to a
few multiples of the state size N·K) and reused on every call: each pairwise
step runs as one ``torch.einsum``, so ``torch.compile`` traces the whole
contraction as one graph.

>>> import torch
>>> from qpeft.ansatz import pauli
>>> from qpeft.compiler.plan import make_plan
>>> circuit = pauli(4, 1)
>>> network = TensorNetwork(make_plan(circuit), columns=[0, 1], dtype=torch.float64)
>>> values = torch.randn(3, circuit.num_parameters, dtype=torch.float64)
>>> U = network(values)
>>> U.shape
torch.Size([3, 16, 2])
>>> bool(torch.allclose(U[1], torch.as_tensor(circuit.matrix(values[1]))[:, :2]))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import opt_einsum
import torch
from torch import nn

from qpeft.circuit.gates import COMPLEX_OF
from qpeft.compiler.blocks import MatrixBuilder
from qpeft.compiler.plan import MatrixNode, PairNode, Plan, _is_diagonal, constant_tensor
from qpeft.errors import CompileError

#: Intermediates of the contraction may hold up to this many times B·N·K numbers.
MEMORY_FACTOR = 4
#: The largest network whose contraction order is searched again under that limit
#: when the greedy order exceeds it (see :func:`_pairwise_plan`).
BOUNDED_SEARCH_OPERANDS = 24


class TensorNetwork(nn.Module):
    """The circuit's columns as one opt_einsum contraction (see the module doc).

    ``forward(values)`` maps ``(..., P)`` to ``(..., N, K)``. ``optimize`` is any
    opt_einsum path optimizer name (default ``"greedy"``).
    """

    def __init__(
        self,
        plan: Plan,
        columns: Sequence[int],
        dtype: torch.dtype,
        optimize: str = "greedy",
    ) -> None:
        super().__init__()
        self.plan = plan
        self.columns = [int(c) for c in columns]
        self.real_dtype = dtype
        self.builder = MatrixBuilder(plan, dtype)
        self.work_dtype = self.builder.work_dtype
        self.dimension = plan.dimension
        dims = plan.dims
        cplx = COMPLEX_OF.get(dtype, dtype)
        symbols = _Symbols()
        batch, column = symbols.new(), symbols.new()
        current = [symbols.new() for _ in dims]
        terms: list[str] = []
        shapes: list[tuple[int, ...]] = []
        # operand recipes: ("buffer", name) | ("node", index, diagonal)
        self._operands: list[tuple] = []

        def constant(array: np.ndarray, indices: str) -> None:
            name = f"operand{len(self._operands)}"
            self.register_buffer(name, constant_tensor(array, dtype, cplx), persistent=False)
            self._operands.append(("buffer", name))
            terms.append(indices)
            shapes.append(tuple(array.shape))

        # input: one-hot vectors on wires where all columns share a digit,
        # one joint one-hot tensor on the others (and the column index)
        digits = np.array(np.unravel_index(self.columns, dims)).reshape(len(dims), -1)
        varying = [w for w in range(len(dims)) if len(set(digits[w])) > 1]
        for w in range(len(dims)):
            if w not in varying:
                vector = np.zeros(dims[w])
                vector[digits[w][0]] = 1.0
                constant(vector, current[w])
        joint = np.zeros([dims[w] for w in varying] + [len(self.columns)])
        for k in range(len(self.columns)):
            joint[(*[digits[w][k] for w in varying], k)] = 1.0
        constant(joint, "".join(current[w] for w in varying) + column)

        node_index = {id(node): i for i, node in enumerate(self.builder.nodes)}
        pair_index = {id(pair): i for i, pair in enumerate(plan.pairs)}
        for node in plan.nodes:
            if isinstance(node, PairNode):
                local = tuple(dims[w] for w in node.wires)
                diagonal = node.is_diagonal
                if diagonal:  # a diagonal: input and output index are the same
                    indices = "".join(current[w] for w in node.wires)
                else:
                    outputs = [symbols.new() for _ in node.wires]
                    indices = "".join(outputs) + "".join(current[w] for w in node.wires)
                    for w, s in zip(node.wires, outputs):
                        current[w] = s
                index = pair_index[id(node)]
                if not diagonal:
                    rows, columns = node.off_diagonal()
                    mask = torch.zeros(node.size, node.size, dtype=dtype)
                    mask[torch.as_tensor(rows), torch.as_tensor(columns)] = 1
                    self.register_buffer(f"pair{index}_mask", mask, persistent=False)
                self._operands.append(("pair", index, local, diagonal))
                terms.append(batch + indices)
                shapes.append((1, *local, *(() if diagonal else local)))
                continue
            if isinstance(node, MatrixNode):
                wires = node.wires
                local = tuple(dims[w] for w in wires)
                diagonal = all(_factor_is_diagonal(plan, f) for f in node.factors)
                varies = any(f[0] == "rotation" for f in node.factors)
                if not varies:
                    matrix = _constant_product(node)
                    array = np.diag(matrix).reshape(local) if diagonal else matrix.reshape(
                        local + local)
                else:
                    self._operands.append(("node", node_index[id(node)], diagonal, local))
                if diagonal:
                    indices = "".join(current[w] for w in wires)
                else:
                    outputs = [symbols.new() for _ in wires]
                    indices = "".join(outputs) + "".join(current[w] for w in wires)
                    for w, s in zip(wires, outputs):
                        current[w] = s
                if varies:
                    terms.append(batch + indices)
                    shapes.append((1, *local, *(() if diagonal else local)))
                else:
                    constant(array, indices)
                continue
            _, wires, source, sign = node
            local = tuple(dims[w] for w in wires)
            if np.array_equal(source, np.arange(source.shape[0])):
                constant(np.asarray(sign, dtype=float).reshape(local),
                         "".join(current[w] for w in wires))
                continue
            matrix = np.zeros((source.shape[0], source.shape[0]))
            matrix[np.arange(source.shape[0]), source] = sign
            outputs = [symbols.new() for _ in wires]
            indices = "".join(outputs) + "".join(current[w] for w in wires)
            for w, s in zip(wires, outputs):
                current[w] = s
            constant(matrix.reshape(local + local), indices)

        self.output = batch + "".join(current) + column
        # every batch-free input must still produce the batch index in the output
        if not any(recipe[0] == "node" for recipe in self._operands):
            self._operands.append(("ones",))
            terms.append(batch)
            shapes.append((1,))
        self.equation = ",".join(terms) + "->" + self.output
        state = math.prod(dims) * len(self.columns)
        # the limit must admit the largest operand, or opt_einsum falls back
        # to one einsum over every operand at once
        limit = max(MEMORY_FACTOR * state, *(math.prod(shape) for shape in shapes))
        self.expression = _pairwise_plan(self.equation, shapes, optimize, limit)
        # The planned pairwise steps, each as (operand positions, equation in the letters
        # torch.einsum takes). Running them directly, rather than through opt_einsum's
        # backend dispatch, keeps forward() plain tensor operations that dynamo traces
        # into one graph.
        self._steps = [
            (tuple(positions), opt_einsum.parser.convert_to_valid_einsum_chars(step))
            for positions, _, step, _, _ in self.expression.contraction_list
        ]
        _, info = opt_einsum.contract_path(self.equation, *shapes, shapes=True,
                                           optimize=[positions for positions, _ in self._steps])
        self._cost = {"contraction_flops": int(info.opt_cost),
                      "largest_intermediate": int(info.largest_intermediate)}

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def cost(self) -> dict[str, int]:
        """opt_einsum's flop count and largest intermediate of the planned path (B = 1)."""
        return dict(self._cost)

    def operands(self, values: torch.Tensor) -> list[torch.Tensor]:
        """The network's tensors for parameter values ``(B, P)``."""
        batch = values.shape[0]
        tables = self.builder.node_tables(values) if self.builder.nodes else {}
        pairs = self.builder.pair_tables(self.builder.angles(values)) if self.plan.pairs else []
        out = []
        for recipe in self._operands:
            if recipe[0] == "buffer":
                out.append(getattr(self, recipe[1]))
            elif recipe[0] == "pair":
                _, index, local, diagonal = recipe
                if diagonal:
                    out.append(pairs[index][:, 0].reshape(batch, *local))
                else:  # A on the diagonal, B[i] at (i, partner[i]), placed by a 0/1 mask:
                    # out of place, since inductor (torch 2.13) miscompiles an indexed
                    # write into the complex matrix that then meets the einsum
                    mask = getattr(self, f"pair{index}_mask")
                    coefficients = pairs[index]
                    matrix = (torch.diag_embed(coefficients[:, 0])
                              + coefficients[:, 1, :, None] * mask)
                    out.append(matrix.reshape(batch, *local, *local))
            elif recipe[0] == "ones":
                # from the values, so that a circuit without angles stays on their graph
                out.append(values.sum(-1).mul(0).add(1))
            else:
                _, index, diagonal, local = recipe
                size, row = self.builder.node_row[index]
                matrix = tables[size][:, row]
                if diagonal:
                    if torch.compiler.is_compiling():
                        # inductor (torch 2.13) derives a wrong backward for .diagonal() of
                        # these complex tables; an index gather traces correctly
                        levels = torch.arange(matrix.shape[-1], device=matrix.device)
                        diagonal_values = matrix[..., levels, levels]
                    else:
                        diagonal_values = matrix.diagonal(dim1=-2, dim2=-1)
                    out.append(diagonal_values.reshape(batch, *local))
                else:
                    out.append(matrix.reshape(batch, *local, *local))
        return [t.to(self.work_dtype) for t in out]

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values (..., P) -> (..., N, K)."""
        lead = values.shape[:-1]
        tensors = self.operands(values.reshape(math.prod(lead), values.shape[-1]))
        for positions, step in self._steps:
            inputs = [tensors.pop(position) for position in positions]
            tensors.append(torch.einsum(step, *inputs))
        (result,) = tensors
        return result.reshape(*lead, self.dimension, self.num_columns)

    def extra_repr(self) -> str:
        return f"operands={len(self._operands)}, path_steps={len(self.expression.contraction_list)}"


def _pairwise_plan(equation: str, shapes: list[tuple[int, ...]], optimize: str,
                   limit: int) -> opt_einsum.contract.ContractExpression:
    """A contraction of two operands at a time whose intermediates stay within
    ``limit`` numbers where one is found.

    The greedy plan without a limit is found at once; when its largest
    intermediate fits, it is the plan. Otherwise, for a network of at most
    :data:`BOUNDED_SEARCH_OPERANDS` operands, opt_einsum searches again under the
    limit (depth first: 1.2 s for the 132 operands of ``for_dimension(768, 1,
    method="shannon")``, 45 s for the 402 of ``layers=4``). Where no pairwise order
    fits, that search ends in one step over every remaining operand, often more
    indices than torch.einsum's 52 letters. In both cases the plan without the
    limit is kept, and its intermediates are larger than ``limit``.
    """
    free = opt_einsum.contract_expression(equation, *shapes, optimize=optimize)
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize=optimize)
    plan = free
    if info.largest_intermediate > limit and len(shapes) <= BOUNDED_SEARCH_OPERANDS:
        bounded = opt_einsum.contract_expression(equation, *shapes, optimize=optimize,
                                                 memory_limit=limit)
        if all(len(step[0]) <= 2 for step in bounded.contraction_list):
            plan = bounded
    for _, _, step, _, _ in plan.contraction_list:
        indices = len(set(step) - set(",->"))
        if indices > 52:
            raise CompileError(
                f"the tensor-network plan of this circuit has a step over {indices} indices, "
                "more than torch.einsum's 52; compile it with method='columns'"
            )
    return plan


class _Symbols:
    """Fresh single-character index names (opt_einsum accepts any Unicode letter)."""

    def __init__(self) -> None:
        self.count = 0

    def new(self) -> str:
        symbol = opt_einsum.get_symbol(self.count)
        self.count += 1
        return symbol


def _factor_is_diagonal(plan: Plan, factor: tuple) -> bool:
    if factor[0] == "rotation":
        return plan.group(factor[1]).is_diagonal(factor[2])
    return _is_diagonal(factor[1])


def _constant_product(node: MatrixNode) -> np.ndarray:
    matrix = None
    for factor in node.factors:
        m = np.asarray(factor[1])
        matrix = m if matrix is None else m @ matrix
    return matrix
