"""RY layers with a chain of CZ entanglers (hardware-efficient, real).

Angles: (L + 1)·n. Real orthogonal.
"""

from qpeft.ansatz import hardware_efficient


def build(qubits: int = 4, layers: int = 2, entanglement: str = "linear"):
    return hardware_efficient(qubits, layers, entanglement=entanglement)


def parameter_count(qubits: int = 4, layers: int = 2, entanglement: str = "linear") -> int:
    return (layers + 1) * qubits
