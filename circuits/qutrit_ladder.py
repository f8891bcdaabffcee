"""A qudit example written directly with the gate API: on wires of any
dimensions (default one qutrit and two qubits, N = 12), each layer rotates
every neighbouring pair of levels of every wire (Givens) and entangles
neighbouring wires with the generalized CZ (-1)^(j·k).

Angles: (L + 1)·Σ (d − 1). Real orthogonal.
"""

from qpeft import Circuit, GeneralizedCZ, Parameter
from qpeft.ansatz import check_counts


def build(dims: tuple = (3, 2, 2), layers: int = 2):
    circuit = Circuit(dims)  # refuses anything but a list of wire dimensions
    dims = circuit.dims
    _, layers = check_counts(len(dims), layers)
    circuit.name = f"qutrit_ladder(dims={dims}, layers={layers})"
    count = 0

    def rotate_all():
        nonlocal count
        for wire, d in enumerate(dims):
            for level in range(d - 1):
                circuit.givens(wire, (level, level + 1), Parameter(f"theta[{count}]"))
                count += 1

    rotate_all()
    for layer in range(layers):
        circuit.barrier(f"layer {layer + 1}")
        for wire in range(len(dims) - 1):
            circuit.append(GeneralizedCZ(wire, wire + 1))
        rotate_all()
    return circuit


def parameter_count(dims: tuple = (3, 2, 2), layers: int = 2) -> int:
    return (layers + 1) * sum(d - 1 for d in dims)
