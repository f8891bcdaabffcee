"""Helpers shared by the Qiskit, PennyLane and OpenQASM conversions.

* :func:`require_qubits` refuses qudit circuits with a hint at the embedding
  that :func:`qpeft.interop.verify.embed_in_qubits` provides;
* :class:`NameTable` turns foreign parameter names into valid qpeft names
  (``θ[3]`` becomes ``theta[3]``), keeping distinct parameters distinct;
* :func:`phase_gates` writes a global phase ``e^{iφ}`` (which a qpeft
  circuit has no field for) as gates on wire 0.
"""

from __future__ import annotations

import cmath
import math
import re
from collections.abc import Hashable, Iterable

import numpy as np

from qpeft.circuit import Circuit, Expression, Gate, PauliRotation, SignDiagonal, unitary
from qpeft.errors import InteropError

_VALID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INDEXED = re.compile(r"^(.*)\[([0-9]+)\]$")
_GREEK = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "ζ": "zeta",
    "η": "eta", "θ": "theta", "ι": "iota", "κ": "kappa", "λ": "lambda", "μ": "mu", "ν": "nu",
    "ξ": "xi", "π": "pi", "ρ": "rho", "σ": "sigma", "τ": "tau", "υ": "upsilon", "φ": "phi",
    "ϕ": "phi", "χ": "chi", "ψ": "psi", "ω": "omega",
}


def require_qubits(circuit: Circuit, what: str) -> None:
    """Raise :class:`InteropError` unless every wire of ``circuit`` is a qubit."""
    if not isinstance(circuit, Circuit):
        raise InteropError(f"{what} takes a qpeft Circuit, got {type(circuit).__name__}")
    if any(d != 2 for d in circuit.dims):
        raise InteropError(
            f"{what} converts qubit circuits only, but this circuit has wire dimensions "
            f"{circuit.dims}. Embed it in qubits first: "
            "qpeft.interop.verify.embed_in_qubits(circuit.bind(values)) puts each d-level wire "
            "on ceil(log2 d) qubits (qpeft.verify does this by itself)"
        )


def clean_name(raw: str) -> str:
    """A valid qpeft parameter name close to ``raw``: Greek letters spelled
    out, other characters outside ``[A-Za-z0-9_]`` replaced by ``_``, a
    trailing ``[k]`` index kept.

    >>> clean_name("θ[3]"), clean_name("my angle"), clean_name("2x"), clean_name("w[007]")
    ('theta[3]', 'my_angle', 'p_2x', 'w[7]')
    """
    match = _INDEXED.match(raw)
    # an index loses its leading zeros: qpeft names never have them
    base, index = (match.group(1), f"[{int(match.group(2))}]") if match else (raw, "")
    base = "".join(_GREEK.get(ch, ch) for ch in base)
    base = re.sub(r"[^A-Za-z0-9_]", "_", base)
    if not base or not _VALID.match(base):
        base = "p_" + base
    return base + index


class NameTable:
    """Gives each foreign parameter (any hashable key) one qpeft name; two
    different keys never share a name, even when their cleaned names agree
    (the later one gets a ``_2``, ``_3`` … suffix on its base name).

    :meth:`reserve` first gives every parameter whose name is already a valid
    qpeft name that very name, so only names that had to be cleaned get
    suffixes: ``my angle`` and ``my_angle`` become ``my_angle_2`` and
    ``my_angle``, whichever comes first.

    >>> table = NameTable()
    >>> table.reserve([("k2", "my_angle")])
    >>> table.name("k1", "my angle"), table.name("k2", "my_angle")
    ('my_angle_2', 'my_angle')
    """

    def __init__(self) -> None:
        self._names: dict[Hashable, str] = {}
        self._taken: set[str] = set()

    def reserve(self, parameters: Iterable[tuple[Hashable, str]]) -> None:
        """Give each ``(key, raw name)`` whose raw name is a valid qpeft name,
        and not yet taken, that name."""
        for key, raw in parameters:
            if key not in self._names and raw not in self._taken and clean_name(raw) == raw:
                self._names[key] = raw
                self._taken.add(raw)

    def name(self, key: Hashable, raw: str) -> str:
        if key in self._names:
            return self._names[key]
        candidate = clean_name(raw)
        match = _INDEXED.match(candidate)
        base, index = (match.group(1), f"[{match.group(2)}]") if match else (candidate, "")
        suffix = 1
        while candidate in self._taken:
            suffix += 1
            candidate = f"{base}_{suffix}{index}"
        self._names[key] = candidate
        self._taken.add(candidate)
        return candidate


def phase_gates(phase: float | Expression, dims: tuple[int, ...]) -> list[Gate]:
    """Gates on wire 0 whose product is the global phase ``e^{iφ}``.

    A constant phase of 0 gives no gate, a phase of π a real ``-1`` sign
    diagonal, any other constant a ``Unitary``; a symbolic phase an all-``I``
    Pauli rotation by ``-2φ`` (``exp(-i(-2φ)I/2) = e^{iφ}``), which needs
    wire 0 to be a qubit.
    """
    if isinstance(phase, Expression) and not phase.is_constant:
        if dims[0] != 2:
            raise InteropError("a symbolic global phase needs wire 0 to be a qubit")
        return [PauliRotation("I", (0,), (phase * -2.0,))]
    value = phase.constant if isinstance(phase, Expression) else float(phase)
    turns = math.remainder(value, 2 * math.pi)
    if abs(turns) < 1e-14:
        return []
    if abs(abs(turns) - math.pi) < 1e-14:
        return [SignDiagonal((0,), (-1,) * dims[0])]
    return [unitary(cmath.exp(1j * value) * np.eye(dims[0]), [0])]


def real_number(value: complex, what: str) -> float:
    """``value`` as a finite float; raise :class:`InteropError` if it has an
    imaginary part or is NaN or infinite.

    >>> real_number(0.5 + 0j, "an angle")
    0.5
    >>> real_number(float("nan"), "an angle")
    Traceback (most recent call last):
    ...
    qpeft.errors.InteropError: an angle is nan; angles must be finite numbers (...)
    """
    try:
        number = complex(value)
    except OverflowError:
        raise InteropError(f"{what} is too large for a float; angles must be finite "
                           "numbers") from None
    if not cmath.isfinite(number):
        shown = number.real if number.imag == 0 else number
        raise InteropError(f"{what} is {shown}; angles must be finite numbers (check the "
                           "source for a division by zero or an overflowing constant)")
    if abs(number.imag) > 1e-12 * max(1.0, abs(number.real)):
        raise InteropError(f"{what} is complex ({number}); angles must be real")
    return float(number.real) + 0.0
