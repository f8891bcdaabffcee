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
        if method not in METHODS:
            raise CompileError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise CompileError(
                f"dtype must be a real floating dtype (float32 or float64), got {dtype}; complex "
                "circuits are computed in the matching complex dtype automatically"
            )
        self.circuit = circuit
        self.dimension = circuit.dimension
        self.num_parameters = circuit.num_parameters
        self.parameters_names = circuit.parameters
        self.columns = _resolve_columns(columns, circuit.dimension)
        self.method = "columns" if method == "auto" else method
        self.recompute_backward = recompute_backward
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
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values)
        if values.dim() == 0 or values.shape[-1] != self.num_parameters:
            raise ParameterError(
                f"expected parameter values of shape (..., {self.num_parameters}) in "
                f"circuit.parameters order, got {tuple(values.shape)}"
            )
        if not torch.is_floating_point(values):
            values = values.to(self.engine.real_dtype)
        if torch.is_grad_enabled() is False or not values.requires_grad:
            pass
        lead = values.shape[:-1]
        flat = values.reshape(-1, self.num_parameters).to(self.engine.real_dtype)
        if not torch.compiler.is_compiling() and not torch.isfinite(flat).all():
            raise ParameterError("parameter values contain NaN or infinity")
        if self.recompute_backward and self.method != "tensornet":
            from qpeft.compiler.recompute import recomputed_forward

            out = recomputed_forward(self.engine, flat)
        else:
            out = self.engine(flat)
        if self.method == "dense":
            out = out[..., self.columns]
        return out.reshape(*lead, *out.shape[-2:])

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
    if isinstance(columns, int):
        if not 1 <= columns <= dimension:
            raise CompileError(
                f"columns={columns} is out of range for a {dimension}×{dimension} unitary; "
                f"use 1 <= K <= {dimension}"
            )
        return list(range(columns))
    chosen = [int(c) for c in columns]
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
    applying each gate's inverse (the gates are orthogonal/unitary).
    """
    return CompiledCircuit(circuit, columns, method, dtype, device, max_block, recompute_backward)


__all__ = ["CompiledCircuit", "METHODS", "compile_circuit"]
