"""The reference matrix of a circuit: slow, obvious, and the ground truth.

Each gate's small matrix is expanded to the full register
(``kron(gate, I)`` followed by a permutation of the wire axes) and
multiplied into the running product. Cost O(G · N³): for tests and small N.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from qpeft.circuit.parameters import Parameter, real_number, real_values, refuse_non_real
from qpeft.errors import ParameterError


def parameter_tensor(circuit, values) -> torch.Tensor:
    """Free-parameter values as a float64 tensor in ``circuit.parameters`` order."""
    names = circuit.parameters
    if values is None:
        if names:
            raise ParameterError(
                f"the circuit has unbound parameters ({', '.join(names[:6])}"
                f"{', …' if len(names) > 6 else ''}); pass values or bind them first"
            )
        return torch.zeros(0, dtype=torch.float64)
    if isinstance(values, Mapping):
        plain = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
        bindings = circuit._bindings(plain, partial=False)  # names and finiteness checked
        given = {k.name if isinstance(k, Parameter) else k: v for k, v in values.items()}
        if any(isinstance(v, torch.Tensor) for v in given.values()):
            # tensors stay on their graph, so the matrix is differentiable in them
            return torch.stack([torch.as_tensor(given[n], dtype=torch.float64).reshape(())
                                for n in names])
        return torch.tensor([bindings[n] for n in names], dtype=torch.float64)
    if isinstance(values, torch.Tensor):
        refuse_non_real(values, "parameter values")
        tensor = values
    elif (isinstance(values, (list, tuple))
          and any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)):
        # a list of scalar tensors (trained angles) stays on their graph
        for value in values:
            real_number(value, "a parameter value")
        tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(())
                              for v in values])
    else:
        tensor = torch.as_tensor(real_values(values))
    tensor = tensor.to(torch.float64).reshape(-1)
    if tensor.shape[0] != len(names):
        raise ParameterError(
            f"expected {len(names)} values (one per circuit.parameters entry), "
            f"got {tensor.shape[0]}"
        )
    if not torch.isfinite(tensor).all():
        raise ParameterError("parameter values contain NaN or infinity; pass finite angles")
    return tensor


def expression_value(expr, index: Mapping[str, int], values: torch.Tensor) -> torch.Tensor:
    """Evaluate an affine expression on a tensor of free-parameter values."""
    out = torch.tensor(expr.constant, dtype=values.dtype, device=values.device)
    for name, coeff in expr.terms:
        out = out + coeff * values[..., index[name]]
    return out


def expand(matrix: torch.Tensor, wires: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    """A gate matrix on ``wires`` as an N×N matrix on the whole register."""
    n = len(dims)
    total = math.prod(dims)
    rest = [w for w in range(n) if w not in wires]
    size_rest = total // matrix.shape[-1]
    full = torch.kron(matrix, torch.eye(size_rest, dtype=matrix.dtype))
    order = list(wires) + rest  # axis k of `full` is wire order[k]
    shape = [dims[w] for w in order]
    tensor = full.reshape(shape + shape)
    position = [order.index(w) for w in range(n)]
    tensor = tensor.permute(position + [n + p for p in position])
    return tensor.reshape(total, total)


def reference_matrix(circuit, values=None, *, backend: str = "numpy"):
    if backend not in ("numpy", "torch"):
        raise ParameterError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    params = parameter_tensor(circuit, values)
    index = {name: i for i, name in enumerate(circuit.parameters)}
    dtype = torch.float64 if circuit.is_real else torch.complex128
    result = torch.eye(circuit.dimension, dtype=dtype)
    for gate in circuit.gates:
        if gate.is_identity:
            continue
        angles = None
        if gate.params:
            angles = torch.stack([expression_value(e, index, params) for e in gate.params])
        small = gate.matrix(circuit.wire_dims(gate.wires), angles, torch.float64).to(dtype)
        result = expand(small, gate.wires, circuit.dims) @ result
    if backend == "torch":
        return result
    return result.detach().numpy()
