"""RY layers with CX entanglers, the structure of Qiskit's
``real_amplitudes`` (default entanglement ``reverse_linear``).

Angles: (L + 1)·n. Real orthogonal.
"""

from qpeft.ansatz import real_amplitudes


def build(qubits: int = 4, layers: int = 2, entanglement: str = "reverse_linear"):
    return real_amplitudes(qubits, layers, entanglement=entanglement)


def parameter_count(qubits: int = 4, layers: int = 2, entanglement: str = "reverse_linear") -> int:
    return (layers + 1) * qubits
