"""The paper's Pauli ansatz: RY on every qubit, then L blocks of CZ on the
pairs (0,1),(2,3),… with RY on both qubits of each pair, and CZ on the
pairs (1,2),(3,4),… with RY on both qubits of each pair.

Angles: exactly (2L + 1)·n − 2L (n = 10: L=1 → 28, L=2 → 46).
Real orthogonal: every gate is RY or CZ.
"""

from qpeft.ansatz import pauli


def build(qubits: int = 4, layers: int = 2):
    return pauli(qubits=qubits, layers=layers)


def parameter_count(qubits: int = 4, layers: int = 2) -> int:
    return (2 * layers + 1) * qubits - 2 * layers
