"""Generalized Pauli rotations: RY on every qubit, then L blocks of
two-qubit rotations exp(-iθ·YZ/2) and exp(-iθ·ZY/2) on neighbouring pairs.
Each string has exactly one Y, so every gate (and the circuit) is real.

Angles: n + 2·L·(n − 1).
"""

from qpeft import Circuit, ParameterVector
from qpeft.ansatz import check_counts


def build(qubits: int = 4, layers: int = 2):
    qubits, layers = check_counts(qubits, layers)
    theta = iter(ParameterVector("theta", qubits + 2 * layers * (qubits - 1)))
    circuit = Circuit(qubits, name=f"pauli_strings(qubits={qubits}, layers={layers})")
    for wire in range(qubits):
        circuit.ry(wire, next(theta))
    for layer in range(layers):
        circuit.barrier(f"layer {layer + 1}")
        for a in range(qubits - 1):
            circuit.pauli_rotation("YZ", [a, a + 1], next(theta))
            circuit.pauli_rotation("ZY", [a, a + 1], next(theta))
    return circuit


def parameter_count(qubits: int = 4, layers: int = 2) -> int:
    return qubits + 2 * layers * (qubits - 1)
