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
