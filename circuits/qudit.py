"""Any dimension N on a mixed-radix register (odd prime factors as qudits,
then qubits): the Pauli brickwork with Givens-chain rotations on qudits and
generalized CZ entanglers. Real orthogonal N×N; N = 2^n gives ``pauli``.

Angles: Σ over rotation slots of (d − 1) for a wire of dimension d;
384 at L=2 → 39, 768 → 44, 3072 → 54.
"""

from qpeft.ansatz import for_dimension


def build(dimension: int = 384, layers: int = 2):
    return for_dimension(dimension, layers=layers, method="qudit")


def parameter_count(dimension: int = 384, layers: int = 2) -> int:
    dims = list(build(dimension, 0).dims)
    slots = sum(d - 1 for d in dims)
    pairs = sum((dims[a] - 1) + (dims[a + 1] - 1) for a in range(len(dims) - 1))
    return slots + layers * pairs
