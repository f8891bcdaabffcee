"""Any dimension N as a direct sum of power-of-two blocks (N = m·2^c, m odd,
m = Σ 2^e): a Pauli ansatz per block, two such stages joined by
cosine–sine rotations between neighbouring blocks (a Shannon-style
decomposition). Real orthogonal N×N.

Angles: 2·Σ_blocks ((2L + 1)·q − 2L) + (cosine–sine pairs), q = e + c;
384 at L=2 → 135.
"""

from qpeft.ansatz import for_dimension


def build(dimension: int = 384, layers: int = 2):
    return for_dimension(dimension, layers=layers, method="shannon")


def parameter_count(dimension: int = 384, layers: int = 2) -> int:
    odd, power = dimension, 0
    while odd % 2 == 0:
        odd, power = odd // 2, power + 1
    if odd == 1:
        return (2 * layers + 1) * power - 2 * layers
    exponents = [e for e in range(odd.bit_length()) if odd >> e & 1]
    blocks = sum((2 * layers + 1) * (e + power) - 2 * layers for e in exponents)
    joins = sum(2**e for e in sorted(exponents)[:-1])  # every block but the largest
    return 2 * blocks + joins
