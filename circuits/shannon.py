"""Any dimension N as a direct sum of power-of-two blocks (N = m·2^c, m odd,
m = Σ 2^e): a Pauli ansatz per block, two such stages joined by
cosine–sine rotations between neighbouring blocks (a Shannon-style
decomposition). Real orthogonal N×N.

Angles: 2·Σ_blocks P(q) + (cosine–sine pairs), q = e + c, where
P(q) = (2L + 1)·q − 2L for q ≥ 1 and P(0) = 0 (a one-level block, which an
odd N has, holds no angle); 384 at L=2 → 135.
"""

from qpeft.ansatz import check_counts, for_dimension


def build(dimension: int = 384, layers: int = 2):
    return for_dimension(dimension, layers=layers, method="shannon")


def parameter_count(dimension: int = 384, layers: int = 2) -> int:
    dimension, layers = check_counts(dimension, layers, "dimension")
    odd, power = dimension, 0
    while odd % 2 == 0:
        odd, power = odd // 2, power + 1
    if odd == 1:
        return _pauli_count(power, layers)
    exponents = [e for e in range(odd.bit_length()) if odd >> e & 1]
    blocks = sum(_pauli_count(e + power, layers) for e in exponents)
    joins = sum(2**e for e in sorted(exponents)[:-1])  # every block but the largest
    return 2 * blocks + joins


def _pauli_count(qubits: int, layers: int) -> int:
    """Angles of a Pauli ansatz on a block of 2^qubits levels; a one-level
    block (qubits = 0, from an odd N) has none."""
    return (2 * layers + 1) * qubits - 2 * layers if qubits else 0
