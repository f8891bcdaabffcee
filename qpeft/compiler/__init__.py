"""The compiler: a circuit description in, a fast torch function out.

>>> import torch, qpeft
>>> circuit = qpeft.ansatz.pauli(qubits=6, layers=2)
>>> frame = qpeft.compile(circuit, columns=4, dtype=torch.float64)
>>> U = frame(torch.randn(circuit.num_parameters))
>>> U.shape
torch.Size([64, 4])
>>> bool(torch.allclose(U.T @ U, torch.eye(4, dtype=torch.float64)))
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from qpeft.circuit import Circuit
from qpeft.compiler.engine import ColumnsEngine
from qpeft.compiler.plan import Plan, make_plan
from qpeft.errors import CompileError, ParameterError

METHODS = ("auto", "columns", "dense", "tensornet")


class CompiledCircuit(nn.Module):
    """A circuit compiled to a torch function: values ``(..., P)`` in
    ``circuit.parameters`` order → columns ``(..., N, K)`` (or the full
    ``(..., N, N)`` unitary when ``columns=None``)."""

    def __init__(
        self,
        circuit: Circuit,
        columns: int | Sequence[int] | None = None,
        method: str = "auto",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        max_block: int = 16,
        recompute_backward: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(circuit, Circuit):
            raise CompileError(
                f"qpeft.compile needs a Circuit, got {type(circuit).__name__}; build one with "
                "qpeft.ansatz (e.g. qpeft.ansatz.pauli) or qpeft.load_ansatz"
            )
        if method not in METHODS:
            raise CompileError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if dtype not in (torch.float32, torch.float64):
            raise CompileError(
                f"dtype must be torch.float32 or torch.float64, got {dtype}; complex circuits "
                "are computed in the matching complex dtype automatically, and a frame can be "
                "cast afterwards (U.half())"
            )
        self.circuit = circuit
        self.dimension = circuit.dimension
        self.num_parameters = circuit.num_parameters
        self.parameters_names = circuit.parameters
        self.columns = _resolve_columns(columns, circuit.dimension)
        self.method = "columns" if method == "auto" else method
        if recompute_backward and self.method == "tensornet":
            raise CompileError(
                "recompute_backward=True needs the step-by-step schedule of method='columns' "
                "(or 'dense'); use one of those, or recompute_backward=False with 'tensornet'"
            )
        self.recompute_backward = bool(recompute_backward)
        plan: Plan = make_plan(circuit, max_block=max_block)
        self.plan = plan
        if self.method == "tensornet":
            from qpeft.compiler.tensornet import TensorNetwork

            self.engine = TensorNetwork(plan, self.columns, dtype)
        else:
            engine_columns = (
                list(range(circuit.dimension)) if self.method == "dense" else self.columns
            )
            self.engine = ColumnsEngine(plan, engine_columns, dtype)
        if device is not None:
            self.to(device)

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values ``(..., P)`` (``circuit.parameters`` order) -> ``(..., N, K)``.

        Any leading batch shape is evaluated in one call; values are cast to
        the compiled dtype. Raises :class:`~qpeft.errors.ParameterError` for
        a wrong last axis, complex values, NaN or infinity.
        """
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values)
        if values.dim() == 0 or values.shape[-1] != self.num_parameters:
            raise ParameterError(
                f"expected parameter values of shape (..., {self.num_parameters}) in "
                f"circuit.parameters order, got {tuple(values.shape)}; pass one angle per "
                "circuit parameter in the last axis"
            )
        if values.is_complex():
            raise ParameterError(
                "parameter values must be real angles, got a complex tensor; pass values.real "
                "if the imaginary part is zero"
            )
        expected = self.engine.builder.offset.device
        if values.device != expected:
            raise ParameterError(
                f"the compiled circuit lives on {expected} but the values are on "
                f"{values.device}; move one of them with .to(...)"
            )
        lead = values.shape[:-1]
        flat = values.reshape(math.prod(lead), self.num_parameters).to(self.engine.real_dtype)
        if not torch.compiler.is_compiling() and not torch.isfinite(flat).all():
            raise ParameterError(
                "parameter values contain NaN or infinity; check the optimiser step (learning "
                "rate, gradient clipping) or the values loaded from disk"
            )
        if flat.shape[0] == 0:  # an empty batch: nothing to evaluate
            return flat.new_zeros(*lead, self.dimension, self.num_columns,
                                  dtype=self.engine.work_dtype)
        if self.recompute_backward:
            from qpeft.compiler.recompute import recomputed_forward

            out = recomputed_forward(self.engine, flat)
        else:
            out = self.engine(flat)
        if self.method == "dense":
            out = out[..., self.columns]
        return out.reshape(*lead, *out.shape[-2:])

    def cost(self) -> dict[str, int]:
        """The cost model of one forward pass for one circuit.

        ``columns``/``dense``: ``multiply_adds`` of the state updates,
        ``state_numbers`` (N·K), ``block_products`` and ``reorders`` (see
        :meth:`ColumnsEngine.cost`). ``tensornet``: opt_einsum's
        ``contraction_flops`` and ``largest_intermediate`` for B = 1.

        >>> import torch, qpeft
        >>> frame = qpeft.compile(qpeft.ansatz.pauli(10, 2), columns=4)
        >>> frame.cost()["state_numbers"]
        4096
        """
        return self.engine.cost()

    def extra_repr(self) -> str:
        return (
            f"dimension={self.dimension}, columns={self.num_columns}, "
            f"parameters={self.num_parameters}, method={self.method!r}"
        )


def _resolve_columns(columns, dimension: int) -> list[int]:
    if columns is None:
        return list(range(dimension))
    if isinstance(columns, bool):
        raise CompileError("columns must be None, a count K or a list of column indices")
    if isinstance(columns, numbers.Integral):
        columns = int(columns)
        if not 1 <= columns <= dimension:
            raise CompileError(
                f"columns={columns} is out of range for a {dimension}×{dimension} unitary; "
                f"use 1 <= K <= {dimension}"
            )
        return list(range(columns))
    try:
        chosen = [int(c) for c in columns]
    except (TypeError, ValueError):
        raise CompileError(
            f"columns must be None, a count K or a list of column indices, got {columns!r}"
        ) from None
    if not chosen or any(not 0 <= c < dimension for c in chosen):
        raise CompileError(f"column indices must lie in 0..{dimension - 1}, got {chosen}")
    if len(set(chosen)) != len(chosen):
        raise CompileError(f"column indices must be distinct, got {chosen}")
    return chosen


def compile_circuit(
    circuit: Circuit,
    columns: int | Sequence[int] | None = None,
    *,
    method: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    max_block: int = 16,
    recompute_backward: bool = False,
) -> CompiledCircuit:
    """Compile ``circuit`` into a torch module (see :class:`CompiledCircuit`).

    ``columns``: None (the whole unitary), K (the first K columns) or a list
    of column indices. ``method``: ``"columns"`` simulates only the chosen
    columns (never N×N; the default), ``"dense"`` builds the whole unitary
    and slices it, ``"tensornet"`` contracts the circuit as a tensor network
    along a path planned once by opt_einsum. ``recompute_backward=True``
    stores no intermediate states: the backward pass rebuilds them by
    applying each step's inverse (every step is orthogonal/unitary).
    See docs/compiler.md for the plan, the cost model and the options.

    >>> import torch
    >>> from qpeft.ansatz import for_dimension
    >>> frame = compile_circuit(for_dimension(768, layers=2), [0, 5], dtype=torch.float64)
    >>> frame(torch.zeros(3, frame.num_parameters)).shape
    torch.Size([3, 768, 2])
    """
    return CompiledCircuit(circuit, columns, method, dtype, device, max_block, recompute_backward)


__all__ = ["CompiledCircuit", "METHODS", "compile_circuit"]
