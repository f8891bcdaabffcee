"""Builders for the standard ansätze.

* :func:`pauli` — the paper's RY/CZ circuit on n qubits, (2L+1)·n − 2L angles;
* :func:`for_dimension` — a real orthogonal N×N circuit for *any* N, either
  on a mixed-radix register of qudits and qubits (``method="qudit"``) or as a
  Shannon-style direct sum of power-of-two blocks joined by cosine–sine
  rotations (``method="shannon"``);
* :func:`real_amplitudes` (RY + CX) and :func:`hardware_efficient` (RY + CZ).

>>> pauli(qubits=10, layers=2).num_parameters
46
>>> for_dimension(768, layers=2).dims
(3, 2, 2, 2, 2, 2, 2, 2, 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from qpeft.circuit import (
    RY,
    Circuit,
    GeneralizedCZ,
    Parameter,
    ParameterVector,
    SignDiagonal,
    controlled,
)
from qpeft.circuit.circuit import MAX_WIRE_DIMENSION
from qpeft.circuit.gates import is_integer
from qpeft.errors import ConfigError


def pauli_parameter_count(qubits: int, layers: int) -> int:
    """(2L + 1)·n − 2L, the angle count of :func:`pauli` (PAPER.md §2)."""
    return (2 * layers + 1) * qubits - 2 * layers


def check_counts(qubits: int, layers: int, what: str = "qubits") -> tuple[int, int]:
    """The counts as Python ints (numpy integers accepted; bools and floats refused)."""
    if not is_integer(qubits) or qubits < 1:
        raise ConfigError(f"{what} must be a positive integer, got {qubits!r}")
    if not is_integer(layers) or layers < 0:
        raise ConfigError(f"layers must be an integer >= 0, got {layers!r}")
    return int(qubits), int(layers)


def brickwork(
    circuit: Circuit,
    wires: int,
    layers: int,
    rotate: Callable[[int], None],
    entangle: Callable[[int, int], None],
    barriers: bool = True,
) -> Circuit:
    """The layout shared by :func:`pauli` and the mixed-radix ansatz.

    A rotation on every wire, then ``layers`` blocks; a block entangles the
    pairs (0,1), (2,3), … and rotates both wires of each pair, then does the
    same on (1,2), (3,4), …  Rotations that would directly follow another
    rotation on the same wire are never emitted (they would merge), which is
    what makes the count (2L + 1)·n − 2L on qubits.
    """
    for w in range(wires):
        rotate(w)
    for layer in range(layers):
        if barriers:
            circuit.barrier(f"layer {layer + 1}")
        for start in (0, 1):
            for a in range(start, wires - 1, 2):
                entangle(a, a + 1)
                rotate(a)
                rotate(a + 1)
    return circuit


def pauli(qubits: int, layers: int = 1, *, name: str = "theta", barriers: bool = True) -> Circuit:
    """The paper's Pauli ansatz: RY on all qubits, then ``layers`` blocks of
    CZ on even pairs + RY on those qubits, CZ on odd pairs + RY on those.

    Exactly (2L + 1)·n − 2L angles, ``theta[0] …`` in gate order.

    >>> c = pauli(qubits=4, layers=1)
    >>> c.num_parameters, c.dimension, c.is_real
    (10, 16, True)
    """
    qubits, layers = check_counts(qubits, layers)
    theta = iter(ParameterVector(name, pauli_parameter_count(qubits, layers)))
    circuit = Circuit(qubits, name=f"pauli(qubits={qubits}, layers={layers})")
    return brickwork(
        circuit,
        qubits,
        layers,
        rotate=lambda w: circuit.ry(w, next(theta)),
        entangle=circuit.cz,
        barriers=barriers,
    )


def _factor_dimension(dimension: int) -> tuple[int, int]:
    """dimension = odd · 2**power."""
    power = 0
    while dimension % 2 == 0:
        dimension //= 2
        power += 1
    return dimension, power


#: the largest trial divisor: √(2³¹ − 1), the root of the largest wire dimension
_LARGEST_TRIAL = math.isqrt(MAX_WIRE_DIMENSION)


def _prime_factors(n: int) -> list[int]:
    """The odd ``n``'s prime factors, largest first: the qudit register's wires.

    Trial division stops at √(2³¹ − 1), the largest wire dimension's root: what
    is left above 2³¹ − 1 would need a wire larger than any register allows (or
    two wires of more than 46 000 levels each), and factoring it could take hours.
    """
    out, p = [], 3
    while p * p <= n and p <= _LARGEST_TRIAL:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 2
    if n > MAX_WIRE_DIMENSION:
        raise ConfigError(
            f"the odd part of the dimension has no prime factor up to {_LARGEST_TRIAL} and "
            f"{n} is left, more levels than a qudit wire may have ({MAX_WIRE_DIMENSION}); "
            "choose a dimension whose odd part is a product of small primes (a power of two "
            "times 3, 5, 7, …)"
        )
    if n > 1:
        out.append(n)
    return sorted(out, reverse=True)


def _names(prefix: str) -> Iterator[Parameter]:
    k = 0
    while True:
        yield Parameter(f"{prefix}[{k}]")
        k += 1


def for_dimension(
    dimension: int,
    layers: int = 1,
    *,
    method: str = "qudit",
    name: str = "theta",
    barriers: bool = True,
) -> Circuit:
    """A real orthogonal ``dimension × dimension`` circuit for any dimension.

    ``method="qudit"`` (default): write N = p₁·p₂·…·2^c (odd primes first)
    and use one wire per factor. The brickwork of :func:`pauli` runs on this
    mixed-radix register; a rotation on a d-level wire is a chain of d − 1
    Givens rotations between neighbouring levels, an entangler is the
    generalized CZ ``(-1)^(j·k)``. A power of two gives exactly :func:`pauli`.

    ``method="shannon"``: N = m·2^c with m odd, m = Σ 2^eᵢ; the space is the
    direct sum of blocks of size 2^(eᵢ+c). Each block holds its own Pauli
    ansatz; two such direct-sum stages are joined by cosine–sine rotations
    between neighbouring blocks (one angle per pair of rows paired across
    blocks on the block-select wire). See docs/ansatz.md for the trade-off.

    >>> for_dimension(384, layers=2).num_parameters
    39
    >>> for_dimension(384, layers=2, method="shannon").num_parameters
    135
    """
    if not is_integer(dimension) or dimension < 2:
        raise ConfigError(f"dimension must be an integer >= 2, got {dimension!r}")
    dimension = int(dimension)
    _, layers = check_counts(1, layers)
    odd, power = _factor_dimension(dimension)
    if method == "qudit":
        return _qudit(dimension, odd, power, layers, name, barriers)
    if method == "shannon":
        return _shannon(dimension, odd, power, layers, name, barriers)
    raise ConfigError(f"unknown method {method!r}; use 'qudit' or 'shannon'")


def _qudit(dimension, odd, power, layers, name, barriers) -> Circuit:
    dims = _prime_factors(odd) + [2] * power
    circuit = Circuit(dims, name=f"for_dimension({dimension}, layers={layers}, method='qudit')")
    theta = _names(name)

    def rotate(w: int) -> None:
        if dims[w] == 2:
            circuit.ry(w, next(theta))
        else:
            for level in range(dims[w] - 1):
                circuit.givens(w, (level, level + 1), next(theta))

    def entangle(a: int, b: int) -> None:
        if dims[a] == dims[b] == 2:
            circuit.cz(a, b)
        else:
            circuit.append(GeneralizedCZ(a, b))

    return brickwork(circuit, len(dims), layers, rotate, entangle, barriers)


def _shannon(dimension, odd, power, layers, name, barriers) -> Circuit:
    if odd == 1:  # a single power-of-two block: nothing to join
        circuit = pauli(power, layers, name=name, barriers=barriers)
        circuit.name = f"for_dimension({dimension}, layers={layers}, method='shannon')"
        return circuit
    exponents = [e for e in range(odd.bit_length() - 1, -1, -1) if odd >> e & 1]
    offsets = [sum(2**e for e in exponents[:i]) for i in range(len(exponents))]
    dims = [odd] + [2] * power
    circuit = Circuit(dims, name=f"for_dimension({dimension}, layers={layers}, method='shannon')")

    def stage(tag: str) -> None:
        for index, (e, offset) in enumerate(zip(exponents, offsets)):
            _shannon_block(circuit, e, offset, odd, power, layers, _names(f"{name}_{tag}{index}"),
                           barriers)

    stage("b")
    if barriers:
        circuit.barrier("cosine-sine")
    cs = _names(f"{name}_cs")
    for i in range(len(exponents) - 1):
        for j in range(2 ** exponents[i + 1]):
            circuit.givens(0, (offsets[i] + j, offsets[i + 1] + j), next(cs))
    stage("a")
    return circuit


def _shannon_block(circuit, e, offset, odd, power, layers, theta, barriers) -> None:
    """A Pauli ansatz on the block ``levels offset … offset+2^e−1`` of wire 0
    (its e 'virtual' qubits) times the ``power`` real qubits on wires 1…"""
    levels = list(range(offset, offset + 2**e))
    logical = e + power

    def bit(level: int, k: int) -> int:  # value of virtual qubit k at a level
        return (level - offset) >> (e - 1 - k) & 1

    def rotate(k: int) -> None:
        angle = next(theta)
        if k < e:  # one Givens gate on every pair of levels that differ in bit k
            step = 2 ** (e - 1 - k)
            circuit.givens(0, [(level, level + step) for level in levels if not bit(level, k)],
                           angle)
        else:
            circuit.append(controlled(RY(k - e + 1, angle), 0, [levels]))

    def entangle(a: int, b: int) -> None:
        # -1 on the block's states where both logical qubits are 1
        real = [k - e + 1 for k in (a, b) if k >= e]
        wires = (0, *real)
        signs = []
        for level in range(odd):
            for bits in range(2 ** len(real)):
                values = [bit(level, k) for k in (a, b) if k < e]
                values += [bits >> (len(real) - 1 - i) & 1 for i in range(len(real))]
                inside = level in levels
                signs.append(-1 if inside and all(values) else 1)
        circuit.append(SignDiagonal(wires, tuple(signs)))

    brickwork(circuit, logical, layers, rotate, entangle, barriers=False)


def real_amplitudes(
    qubits: int, layers: int = 1, *, entanglement: str = "reverse_linear", name: str = "theta"
) -> Circuit:
    """RY layers with CX entanglers, (L + 1)·n angles — the structure of
    Qiskit's ``real_amplitudes``. ``entanglement``: ``linear`` (CX(i, i+1)
    for i = 0…), ``reverse_linear`` (the same pairs in reverse order),
    ``circular`` (CX(n−1, 0), then linear, as in Qiskit) or ``full`` (every
    i < j)."""
    return _rotation_entangler(qubits, layers, entanglement, name, "cx",
                               f"real_amplitudes(qubits={qubits}, layers={layers})")


def hardware_efficient(
    qubits: int, layers: int = 1, *, entanglement: str = "linear", name: str = "theta"
) -> Circuit:
    """RY layers with CZ entanglers (the hardware-efficient real ansatz),
    (L + 1)·n angles; ``entanglement`` as in :func:`real_amplitudes`."""
    return _rotation_entangler(qubits, layers, entanglement, name, "cz",
                               f"hardware_efficient(qubits={qubits}, layers={layers})")


def entangling_pairs(qubits: int, entanglement: str) -> list[tuple[int, int]]:
    linear = [(i, i + 1) for i in range(qubits - 1)]
    if entanglement == "linear":
        return linear
    if entanglement == "reverse_linear":
        return linear[::-1]
    if entanglement == "circular":
        return ([(qubits - 1, 0)] if qubits > 2 else []) + linear  # Qiskit's order
    if entanglement == "full":
        return [(i, j) for i in range(qubits) for j in range(i + 1, qubits)]
    raise ConfigError(
        f"unknown entanglement {entanglement!r}; use linear, reverse_linear, circular or full"
    )


def _rotation_entangler(qubits, layers, entanglement, name, gate, title) -> Circuit:
    qubits, layers = check_counts(qubits, layers)
    pairs = entangling_pairs(qubits, entanglement)
    theta = iter(ParameterVector(name, (layers + 1) * qubits))
    circuit = Circuit(qubits, name=title)
    for w in range(qubits):
        circuit.ry(w, next(theta))
    for layer in range(layers):
        circuit.barrier(f"layer {layer + 1}")
        for a, b in pairs:
            getattr(circuit, gate)(a, b)
        for w in range(qubits):
            circuit.ry(w, next(theta))
    return circuit
