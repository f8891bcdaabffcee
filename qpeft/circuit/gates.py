"""Gates as plain, immutable data.

Every gate knows its wires, its symbolic angles, whether it is real, its
inverse, its generator (for rotations, ``matrix(θ) = exp(-iθG/2)``) and its
matrix as a torch function of the angles. Circuits and the compiler never
special-case gate names; they only ask these questions.

Matrices use the register's bit order: the first wire of a gate is the most
significant index of its matrix (as in PennyLane).

>>> import torch
>>> RY(0, 0.5).matrix((2,), torch.tensor([0.5]))
tensor([[ 0.9689, -0.2474],
        [ 0.2474,  0.9689]], dtype=torch.float64)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import reduce

import numpy as np
import torch

from qpeft.circuit.parameters import Expression, ExpressionLike, as_expression
from qpeft.errors import DescriptionError, NotUnitaryError, ParameterError, WireError

_PAULI = {
    "I": np.eye(2, dtype=complex),
    "X": np.array([[0, 1], [1, 0]], dtype=complex),
    "Y": np.array([[0, -1j], [1j, 0]], dtype=complex),
    "Z": np.array([[1, 0], [0, -1]], dtype=complex),
}

_STANDARD = {
    "H": np.array([[1, 1], [1, -1]], dtype=complex) / math.sqrt(2),
    "X": _PAULI["X"],
    "Y": _PAULI["Y"],
    "Z": _PAULI["Z"],
    "CZ": np.diag([1, 1, 1, -1]).astype(complex),
    "CX": np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=complex),
    "SWAP": np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=complex),
}

#: dtype of the complex counterpart of each real dtype
COMPLEX_OF = {
    torch.float16: torch.complex32,
    torch.bfloat16: torch.complex64,
    torch.float32: torch.complex64,
    torch.float64: torch.complex128,
}


def _tensor(array: np.ndarray, dtype: torch.dtype, device=None) -> torch.Tensor:
    """A numpy matrix as a torch tensor, real when it has no imaginary part."""
    if np.iscomplexobj(array) and np.abs(array.imag).max(initial=0.0) > 0:
        return torch.as_tensor(array, dtype=COMPLEX_OF.get(dtype, dtype), device=device)
    return torch.as_tensor(np.real(array), dtype=dtype, device=device)


def is_integer(value: object) -> bool:
    """True for a Python, numpy or 0-d torch integer; False for bools, floats and strings."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not (
            value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
        )
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real_number(value: object) -> bool:
    """True for a Python or numpy integer or float (NaN and infinities
    included: check the range separately); False for bools, complex numbers,
    strings and tensors.

    >>> is_real_number(np.float32(2.5)), is_real_number(np.int64(3)), is_real_number(True)
    (True, True, False)
    """
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def integers(values, what: str, error: type[Exception] = WireError) -> tuple[int, ...]:
    """A sequence of integers as a tuple of ints, refusing anything else.

    Floats, bools and strings are refused rather than truncated: ``1.7`` is
    not wire 1, and ``"01"`` is not the wires ``[0, 1]``.
    """
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise error(f"{what} must be a list of integers, got {values!r}")
    items = list(values)
    bad = [v for v in items if not is_integer(v)]
    if bad:
        raise error(
            f"{what} must be integers, got {bad[0]!r} ({type(bad[0]).__name__}) in {items!r}"
        )
    return tuple(int(v) for v in items)


def _tuple_of_ints(values: Sequence[int] | int, what: str) -> tuple[int, ...]:
    if is_integer(values):
        return (int(values),)
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise WireError(
            f"{what} must be an integer or a sequence of integers, got {values!r}"
        )
    return integers(values, what)


def _expressions(params) -> tuple[Expression, ...]:
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Iterable):
        raise ParameterError(f"a gate's angles must be given as a sequence, got {params!r}")
    return tuple(as_expression(p) for p in params)


def _wires_of(gate: Gate, what: str) -> tuple[int, ...]:
    """``gate.wires`` as a tuple of ints, refusing an empty list: a gate on
    no wires (a bare phase) would change nothing or only a global phase."""
    wires = integers(gate.wires, "wires")
    if not wires:
        raise WireError(
            f"a {what} needs at least one wire, got none; a global phase is a gate on a wire "
            "(e.g. unitary(e^{iφ}·I, [0]))"
        )
    return wires


def _normalise(gate: Gate, **fields) -> None:
    """Store fields of a frozen gate in their canonical form (tuples of ints,
    expressions), so that gates built from lists, numpy integers or plain
    numbers compare, hash and serialise like those the helper functions build."""
    for name, value in fields.items():
        object.__setattr__(gate, name, value)


class Gate(ABC):
    """Common interface of every gate (see the module docstring)."""

    wires: tuple[int, ...]
    params: tuple[Expression, ...]

    #: JSON tag of the gate class
    kind: str = "gate"

    # -- description --------------------------------------------------------
    @property
    @abstractmethod
    def name(self) -> str:
        """Short display name: RY, CZ, Givens, …"""

    @property
    def label(self) -> str:
        """Label for drawings (name and angles)."""
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(str(p) for p in self.params)})"

    @property
    @abstractmethod
    def is_real(self) -> bool:
        """True when the matrix is real for every value of the angles."""

    @property
    def is_identity(self) -> bool:
        return False

    def check(self, dims: Sequence[int]) -> None:  # noqa: B027 - most gates fit any wires
        """Raise :class:`WireError` if the gate does not fit wires of these dims."""

    @abstractmethod
    def inverse(self) -> Gate:
        """The gate whose matrix is the adjoint of this one's."""

    def generator(self, dims: Sequence[int]) -> np.ndarray | None:
        """Hermitian G with ``matrix(θ) = exp(-iθG/2)`` for one-angle rotations."""
        return None

    @abstractmethod
    def matrix(
        self,
        dims: Sequence[int],
        angles: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """The gate's matrix on its own wires, shape ``(..., D, D)``.

        ``angles`` has shape ``(..., len(params))`` (values of the angle
        expressions, not of the free parameters); it may be left out when
        every angle is a constant. Real gates come back in ``dtype``; complex
        ones in its complex counterpart.
        """

    def _angles(self, angles: torch.Tensor | None) -> torch.Tensor:
        """``angles``, or the constant angles when none are given."""
        if angles is not None:
            return angles
        if not all(expr.is_constant for expr in self.params):
            raise ParameterError(
                f"{self.name} has free parameters; pass the values of its angles "
                f"(gate.matrix(dims, angles)), or bind the circuit first"
            )
        return torch.tensor([expr.constant for expr in self.params], dtype=torch.float64)

    # -- data ----------------------------------------------------------------
    def with_params(self, params: Sequence[Expression]) -> Gate:
        return replace(self, params=tuple(params))

    def with_wires(self, wires: Sequence[int]) -> Gate:
        return replace(self, wires=tuple(wires))

    def options(self) -> dict:
        """Extra JSON fields of this gate class."""
        return {}

    def to_json(self) -> dict:
        data = {"gate": self.kind, "wires": list(self.wires)}
        if self.params:
            data["params"] = [p.to_json() for p in self.params]
        data.update(self.options())
        return data


def _angle(value: ExpressionLike) -> tuple[Expression, ...]:
    return (as_expression(value),)


def _require_qubits(gate: Gate, dims: Sequence[int]) -> None:
    for wire, d in zip(gate.wires, dims):
        if d != 2:
            hint = (
                "; use circuit.givens(wire, (i, j), theta) (or qpeft.circuit.givens) for a "
                "rotation between two levels of a qudit"
                if gate.params
                else "; use GeneralizedCZ or SignDiagonal for qudit entanglers"
            )
            raise WireError(
                f"{gate.name} acts on qubits (dimension 2) but wire {wire} has dimension {d}{hint}"
            )


# ----------------------------------------------------------------------------
# rotations


@dataclass(frozen=True)
class PauliRotation(Gate):
    """``exp(-iθP/2)`` for a Pauli string ``P`` (letters I, X, Y, Z); the first
    letter acts on the first listed wire. Real exactly when P has an odd
    number of Y factors. ``RX``, ``RY`` and ``RZ`` are one-letter cases."""

    pauli: str
    wires: tuple[int, ...]
    params: tuple[Expression, ...]
    kind = "PauliRotation"

    def __post_init__(self) -> None:
        _normalise(self, wires=integers(self.wires, "wires"), params=_expressions(self.params))
        if not isinstance(self.pauli, str) or not self.pauli or set(self.pauli) - set("IXYZ"):
            raise WireError(f"invalid Pauli string {self.pauli!r}: use the letters I, X, Y and Z")
        if len(self.pauli) != len(self.wires):
            raise WireError(
                f"Pauli string {self.pauli!r} has {len(self.pauli)} letters but "
                f"{len(self.wires)} wires were given; give one wire per letter"
            )

    @property
    def name(self) -> str:
        return f"R{self.pauli}" if len(self.pauli) == 1 else f"R[{self.pauli}]"

    @property
    def is_real(self) -> bool:
        return self.pauli.count("Y") % 2 == 1

    def check(self, dims: Sequence[int]) -> None:
        _require_qubits(self, dims)

    def inverse(self) -> Gate:
        return replace(self, params=(-self.params[0],))

    def generator(self, dims: Sequence[int]) -> np.ndarray:
        return reduce(np.kron, [_PAULI[p] for p in self.pauli])

    def matrix(self, dims, angles=None, dtype=torch.float64):
        return _rotation_matrix(self.generator(dims), self._angles(angles), dtype)

    def options(self) -> dict:
        return {"pauli": self.pauli}


def _rotation_matrix(generator: np.ndarray, angles: torch.Tensor, dtype: torch.dtype):
    """exp(-iθG/2) for a Hermitian G whose square is a projector P:
    (I - P) + cos(θ/2) P - i sin(θ/2) G."""
    projector = generator @ generator
    identity = np.eye(generator.shape[0])
    theta = angles[..., 0, None, None]
    device = angles.device
    step = -1j * generator
    real = np.abs(step.imag).max(initial=0.0) == 0
    work = dtype if real else COMPLEX_OF.get(dtype, dtype)
    fixed = torch.as_tensor((identity - projector).real, dtype=dtype, device=device)
    proj = torch.as_tensor(projector.real, dtype=dtype, device=device)
    step_t = torch.as_tensor(step.real if real else step, dtype=work, device=device)
    theta = theta.to(dtype)
    return fixed + torch.cos(theta / 2) * proj + torch.sin(theta / 2) * step_t


def RX(wire: int, theta: ExpressionLike) -> PauliRotation:
    """``exp(-iθX/2)`` on one qubit (complex)."""
    return PauliRotation("X", _tuple_of_ints(wire, "wire"), _angle(theta))


def RY(wire: int, theta: ExpressionLike) -> PauliRotation:
    """``exp(-iθY/2)`` = [[cos θ/2, -sin θ/2], [sin θ/2, cos θ/2]] on one qubit (real)."""
    return PauliRotation("Y", _tuple_of_ints(wire, "wire"), _angle(theta))


def RZ(wire: int, theta: ExpressionLike) -> PauliRotation:
    """``exp(-iθZ/2)`` = diag(e^{-iθ/2}, e^{iθ/2}) on one qubit (complex)."""
    return PauliRotation("Z", _tuple_of_ints(wire, "wire"), _angle(theta))


def pauli_rotation(pauli: str, wires: Sequence[int], theta: ExpressionLike) -> PauliRotation:
    """``exp(-iθP/2)`` for the Pauli string ``pauli`` on ``wires``."""
    if not isinstance(pauli, str):
        raise DescriptionError(
            f"a Pauli string is a str of I, X, Y, Z, one letter per wire (e.g. 'XY'), "
            f"got {pauli!r:.60}"
        )
    return PauliRotation(pauli.upper(), _tuple_of_ints(wires, "wires"), _angle(theta))


@dataclass(frozen=True)
class Givens(Gate):
    """A real rotation by θ/2 between two levels ``(i, j)`` of one wire:
    the RY matrix placed on rows/columns i and j, identity elsewhere. On a
    qubit with levels (0, 1) it equals RY.

    ``levels = (i₁, j₁, i₂, j₂, …)`` (all different) applies the same
    rotation to every pair ``(iₖ, jₖ)`` at once: one angle, one gate (an RY
    on a "virtual qubit" of a qudit, as in the Shannon ansatz)."""

    wires: tuple[int, ...]
    levels: tuple[int, ...]
    params: tuple[Expression, ...]
    kind = "Givens"

    def __post_init__(self) -> None:
        _normalise(self, wires=integers(self.wires, "wires"),
                   levels=integers(self.levels, "Givens levels"), params=_expressions(self.params))
        if len(self.wires) != 1:
            raise WireError(f"Givens acts on one wire, got {len(self.wires)}")
        levels = self.levels
        if (len(levels) < 2 or len(levels) % 2 or len(set(levels)) != len(levels)
                or min(levels) < 0):
            raise WireError(
                "Givens needs pairs of different levels (i, j), or (i1, j1, i2, j2, …), all "
                f">= 0 and none twice; got {levels!r}"
            )

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """The level pairs ``((i₁, j₁), (i₂, j₂), …)``."""
        return tuple(zip(self.levels[::2], self.levels[1::2]))

    @property
    def name(self) -> str:
        if len(self.levels) == 2 and max(self.levels) < 10:
            return f"G{self.levels[0]}{self.levels[1]}"
        return "G"

    @property
    def is_real(self) -> bool:
        return True

    def check(self, dims: Sequence[int]) -> None:
        if max(self.levels) >= dims[0]:
            raise WireError(
                f"Givens levels {self.levels} do not exist on wire {self.wires[0]} of dimension "
                f"{dims[0]}; levels run from 0 to {dims[0] - 1}"
            )

    def inverse(self) -> Gate:
        return replace(self, params=(-self.params[0],))

    def generator(self, dims: Sequence[int]) -> np.ndarray:
        g = np.zeros((dims[0], dims[0]), dtype=complex)
        i, j = np.array(self.levels[::2]), np.array(self.levels[1::2])
        g[i, j], g[j, i] = -1j, 1j
        return g

    def matrix(self, dims, angles=None, dtype=torch.float64):
        return _rotation_matrix(self.generator(dims), self._angles(angles), dtype)

    def options(self) -> dict:
        return {"levels": list(self.levels)}


def givens(wire: int, levels: Sequence, theta: ExpressionLike) -> Givens:
    """A real rotation between levels ``levels = (i, j)`` of qudit ``wire``;
    ``levels`` may also list several pairs, ``[(i₁, j₁), (i₂, j₂), …]``,
    rotated together by the same angle."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise DescriptionError(
            f"Givens levels are a pair (i, j) of levels of the wire, or a list of pairs, "
            f"got {levels!r:.60}"
        )
    items = list(levels)
    if len(items) and np.ndim(items[0]) > 0:  # pairs: [(i1, j1), (i2, j2), …]
        items = [v for pair in items for v in np.asarray(pair).reshape(-1).tolist()]
    return Givens(_tuple_of_ints(wire, "wire"), integers(items, "Givens levels"), _angle(theta))


# ----------------------------------------------------------------------------
# fixed gates


class FixedGate(Gate):
    """A gate without angles, given by a constant matrix."""

    params: tuple[Expression, ...] = ()

    @abstractmethod
    def constant_matrix(self, dims: Sequence[int]) -> np.ndarray:
        """The matrix as a numpy array."""

    @property
    def is_real(self) -> bool:
        m = self.constant_matrix(self._dims_hint())
        return not np.iscomplexobj(m) or np.abs(m.imag).max(initial=0.0) == 0

    def _dims_hint(self) -> tuple[int, ...]:
        return (2,) * len(self.wires)

    def matrix(self, dims, angles=None, dtype=torch.float64):
        device = angles.device if angles is not None else None
        return _tensor(self.constant_matrix(dims), dtype, device)


@dataclass(frozen=True)
class StandardGate(FixedGate):
    """A named constant qubit gate: H, X, Y, Z, CZ, CX, SWAP."""

    gate: str
    wires: tuple[int, ...]
    kind = "Standard"

    def __post_init__(self) -> None:
        _normalise(self, wires=integers(self.wires, "wires"))
        if not isinstance(self.gate, str) or self.gate not in _STANDARD:
            raise DescriptionError(
                f"unknown standard gate {self.gate!r}; known: {', '.join(sorted(_STANDARD))}"
            )
        need = round(math.log2(_STANDARD[self.gate].shape[0]))
        if len(self.wires) != need:
            raise WireError(f"{self.gate} acts on {need} wire(s), got {len(self.wires)}")

    @property
    def name(self) -> str:
        return self.gate

    def check(self, dims: Sequence[int]) -> None:
        _require_qubits(self, dims)

    def inverse(self) -> Gate:
        return self  # every standard gate is its own inverse

    def constant_matrix(self, dims):
        return _STANDARD[self.gate]

    def options(self) -> dict:
        return {"name": self.gate}


def _standard(name: str):
    def make(*wires: int) -> StandardGate:
        flat = [w for item in wires for w in _tuple_of_ints(item, "wires")]
        return StandardGate(name, tuple(flat))

    make.__name__ = name
    make.__doc__ = f"The constant {name} gate."
    return make


H = _standard("H")
X = _standard("X")
Y = _standard("Y")
Z = _standard("Z")
CZ = _standard("CZ")
CX = _standard("CX")
SWAP = _standard("SWAP")


@dataclass(frozen=True)
class SignDiagonal(FixedGate):
    """A real ±1 diagonal on any wires; ``signs`` lists the diagonal in the
    register order of ``wires``. ``signs=None`` means the generalized CZ
    ``(-1)^(j·k)`` on two wires of any dimensions (CZ on qubits)."""

    wires: tuple[int, ...]
    signs: tuple[int, ...] | None = None
    kind = "SignDiagonal"

    def __post_init__(self) -> None:
        _normalise(self, wires=_wires_of(self, "sign diagonal"))
        if self.signs is not None:
            _normalise(self, signs=integers(self.signs, "SignDiagonal signs"))
        if self.signs is None and len(self.wires) != 2:
            raise WireError("the generalized CZ acts on exactly two wires")
        if self.signs is not None and set(self.signs) - {1, -1}:
            raise WireError("SignDiagonal signs must each be +1 or -1")

    @property
    def name(self) -> str:
        return "CZd" if self.signs is None else "±1"

    def _dims_hint(self):
        return (2,) * len(self.wires) if self.signs is None else (len(self.signs),)

    def check(self, dims: Sequence[int]) -> None:
        if self.signs is not None and len(self.signs) != math.prod(dims):
            raise WireError(
                f"SignDiagonal on wires {self.wires} of dimensions {tuple(dims)} needs "
                f"{math.prod(dims)} signs, got {len(self.signs)}"
            )

    @property
    def is_real(self) -> bool:
        return True

    def inverse(self) -> Gate:
        return self

    def diagonal(self, dims: Sequence[int]) -> np.ndarray:
        if self.signs is not None:
            return np.asarray(self.signs, dtype=float)
        j = np.arange(dims[0])[:, None]
        k = np.arange(dims[1])[None, :]
        return np.where((j * k) % 2 == 1, -1.0, 1.0).reshape(-1)

    def constant_matrix(self, dims):
        return np.diag(self.diagonal(dims))

    def options(self) -> dict:
        return {} if self.signs is None else {"signs": list(self.signs)}


def GeneralizedCZ(wire_a: int, wire_b: int) -> SignDiagonal:
    """``(-1)^(j·k)`` on two wires of any dimensions (equals CZ on two qubits)."""
    return SignDiagonal(_tuple_of_ints(wire_a, "wire") + _tuple_of_ints(wire_b, "wire"))


def _freeze_matrix(matrix) -> tuple[tuple[complex, ...], ...]:
    if isinstance(matrix, torch.Tensor):  # any dtype, a conjugate view (.mH) too
        matrix = matrix.detach().resolve_conj().resolve_neg().to(torch.complex128).cpu().numpy()
    if isinstance(matrix, (str, bytes)):
        raise NotUnitaryError(f"a gate matrix is a square array of numbers, got {matrix!r:.60}")
    try:
        array = np.asarray(matrix, dtype=complex) + 0.0  # + 0.0: no negative zeros
    except (TypeError, ValueError) as exc:
        raise NotUnitaryError(
            f"a gate matrix is a square array of numbers (rows of equal length): {exc}"
        ) from None
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise NotUnitaryError(f"a gate matrix must be square, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise NotUnitaryError("the gate matrix holds NaN or infinite entries")
    deviation = np.abs(array.conj().T @ array - np.eye(array.shape[0])).max(initial=0.0)
    if deviation > 1e-9:
        raise NotUnitaryError(
            f"the matrix is not unitary (max |M^† M - I| = {deviation:.3g}); pass a unitary "
            "matrix, e.g. orthonormalise it with a QR decomposition"
        )
    return tuple(tuple(complex(v) for v in row) for row in array)


@dataclass(frozen=True)
class Unitary(FixedGate):
    """A fixed unitary given as a matrix on ``wires`` (checked to be unitary)."""

    wires: tuple[int, ...]
    data: tuple[tuple[complex, ...], ...] = field(repr=False)
    kind = "Unitary"

    def __post_init__(self) -> None:
        _normalise(self, wires=_wires_of(self, "unitary gate"), data=_freeze_matrix(self.data))

    @property
    def name(self) -> str:
        return "U"

    def _dims_hint(self):
        return (len(self.data),)

    def check(self, dims: Sequence[int]) -> None:
        if len(self.data) != math.prod(dims):
            raise WireError(
                f"a {len(self.data)}x{len(self.data)} matrix does not fit wires {self.wires} "
                f"of total dimension {math.prod(dims)}"
            )

    def inverse(self) -> Gate:
        return replace(self, data=np.asarray(self.data).conj().T)

    def constant_matrix(self, dims):
        return np.asarray(self.data, dtype=complex)

    def options(self) -> dict:
        array = np.asarray(self.data)
        out = {"real": array.real.tolist()}
        if np.abs(array.imag).max(initial=0.0) > 0:
            out["imag"] = array.imag.tolist()
        return out


def unitary(matrix, wires: Sequence[int] | int) -> Unitary:
    """A fixed unitary gate; raises :class:`NotUnitaryError` if it is not."""
    return Unitary(_tuple_of_ints(wires, "wires"), matrix)


@dataclass(frozen=True)
class Barrier(Gate):
    """A no-op that marks a layer boundary (drawn, never computed)."""

    wires: tuple[int, ...]
    text: str = ""
    params: tuple[Expression, ...] = ()
    kind = "Barrier"

    def __post_init__(self) -> None:
        _normalise(self, wires=_wires_of(self, "barrier"))
        if not isinstance(self.text, str):
            raise DescriptionError(f"a barrier's text must be a string, got {self.text!r:.60}")
        if self.params:
            raise ParameterError("a barrier takes no angles")

    @property
    def name(self) -> str:
        return "barrier"

    @property
    def is_real(self) -> bool:
        return True

    @property
    def is_identity(self) -> bool:
        return True

    def inverse(self) -> Gate:
        return self

    def matrix(self, dims, angles=None, dtype=torch.float64):
        device = angles.device if angles is not None else None
        return torch.eye(math.prod(dims), dtype=dtype, device=device)

    def options(self) -> dict:
        return {"text": self.text} if self.text else {}


# ----------------------------------------------------------------------------
# controlled gates


@dataclass(frozen=True)
class Controlled(Gate):
    """``base`` applied when every control wire is in one of its allowed
    levels (``control_values[i]`` for ``controls[i]``); identity otherwise.
    Default allowed level: the top level (1 for a qubit)."""

    base: Gate
    controls: tuple[int, ...]
    control_values: tuple[tuple[int, ...], ...] | None = None
    kind = "Controlled"

    def __post_init__(self) -> None:
        if not isinstance(self.base, Gate):
            raise WireError(f"only a gate can be controlled, got {type(self.base).__name__}")
        _normalise(self, controls=_tuple_of_ints(self.controls, "controls"))
        if self.control_values is not None:
            if isinstance(self.control_values, (str, bytes)) or not isinstance(
                self.control_values, Iterable
            ):
                raise WireError(
                    f"control values must be one list of allowed levels per control wire, got "
                    f"{self.control_values!r}"
                )
            _normalise(self, control_values=tuple(
                _tuple_of_ints(v, "control values") for v in self.control_values
            ))
        if not self.controls:
            raise WireError("a controlled gate needs at least one control wire")
        if self.control_values is not None and len(self.control_values) != len(self.controls):
            raise WireError(
                f"{len(self.controls)} control wires but {len(self.control_values)} lists of "
                "control values; give one list of allowed levels per control wire"
            )

    @property
    def is_identity(self) -> bool:
        """A controlled identity (a controlled barrier) is the identity."""
        return self.base.is_identity

    @property
    def wires(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.controls + self.base.wires

    @property
    def params(self) -> tuple[Expression, ...]:  # type: ignore[override]
        return self.base.params

    def with_params(self, params):
        return replace(self, base=self.base.with_params(params))

    def with_wires(self, wires):
        n = len(self.controls)
        return replace(self, controls=tuple(wires[:n]), base=self.base.with_wires(wires[n:]))

    @property
    def name(self) -> str:
        return "C" + self.base.name

    @property
    def is_real(self) -> bool:
        return self.base.is_real

    def _allowed(self, dims: Sequence[int]) -> list[tuple[int, ...]]:
        if self.control_values is not None:
            return [tuple(v) for v in self.control_values]
        return [(d - 1,) for d in dims[: len(self.controls)]]

    def check(self, dims: Sequence[int]) -> None:
        n = len(self.controls)
        for wire, d, allowed in zip(self.controls, dims, self._allowed(dims)):
            if not allowed or min(allowed) < 0 or max(allowed) >= d:
                raise WireError(
                    f"control levels {allowed} do not exist on wire {wire} of dimension {d}"
                )
        self.base.check(dims[n:])

    def inverse(self) -> Gate:
        return replace(self, base=self.base.inverse())

    def control_projector(self, dims: Sequence[int]) -> np.ndarray:
        """The diagonal (0/1) of the projector onto the active control states."""
        parts = []
        for d, allowed in zip(dims, self._allowed(dims)):
            v = np.zeros(d)
            v[list(allowed)] = 1.0
            parts.append(v)
        return reduce(np.kron, parts)

    def generator(self, dims: Sequence[int]) -> np.ndarray | None:
        n = len(self.controls)
        g = self.base.generator(dims[n:])
        if g is None:
            return None
        return np.kron(np.diag(self.control_projector(dims[:n])), g)

    def matrix(self, dims, angles=None, dtype=torch.float64):
        n = len(self.controls)
        base = self.base.matrix(dims[n:], angles, dtype)
        p = torch.as_tensor(self.control_projector(dims[:n]), dtype=base.real.dtype,
                            device=base.device).to(base.dtype)
        eye = torch.eye(base.shape[-1], dtype=base.dtype, device=base.device)
        # block diagonal over control states: base where active, identity elsewhere
        blocks = p[:, None, None] * base.unsqueeze(-3) + (1 - p)[:, None, None] * eye
        c, d = p.shape[0], base.shape[-1]
        eye_c = torch.eye(c, dtype=base.dtype, device=base.device)
        out = torch.einsum("...cij,ck->...cikj", blocks, eye_c)
        return out.reshape(*out.shape[:-4], c * d, c * d)

    def options(self) -> dict:
        out = {"controls": list(self.controls), "base": self.base.to_json()}
        if self.control_values is not None:
            out["control_values"] = [list(v) for v in self.control_values]
        return out

    def to_json(self) -> dict:
        return {"gate": self.kind, **self.options()}


def controlled(
    gate: Gate, controls: Sequence[int] | int, control_values: Sequence | None = None
) -> Controlled:
    """``gate`` controlled by ``controls`` (each active in the given levels)."""
    return Controlled(gate, controls, control_values)


def barrier_of(gate: Gate) -> Barrier | None:
    """The barrier ``gate`` is, under any number of controls, else ``None``.

    A barrier is the identity, and so is a controlled one. The exporters and
    the drawers treat a controlled barrier as the plain barrier on its own
    wires, without the controls (what PennyLane's ``qml.ctrl`` makes of a
    barrier, too).

    >>> barrier_of(controlled(Barrier((1, 2), "end"), [0]))
    Barrier(wires=(1, 2), text='end', params=())
    >>> barrier_of(RY(0, 0.1)) is None
    True
    """
    while isinstance(gate, Controlled):
        gate = gate.base
    return gate if isinstance(gate, Barrier) else None


# ----------------------------------------------------------------------------
# JSON


def _json_list(value, what: str) -> list:
    if not isinstance(value, list):
        raise DescriptionError(f"'{what}' must be a JSON list, got {value!r}")
    return value


def _json_matrix(rows: object, what: str) -> np.ndarray:
    """A JSON matrix (a list of rows of numbers) as a float array; strings and
    bools are refused, as ``to_json`` never writes them."""
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for row in rows for v in row
    ):
        raise DescriptionError(
            f"a Unitary's '{what}' must be a list of rows of numbers, got {rows!r:.80}"
        )
    if len({len(row) for row in rows}) > 1:
        raise DescriptionError(f"a Unitary's '{what}' has rows of different lengths")
    return np.asarray(rows, dtype=float).reshape(len(rows), -1)


#: The keys of each gate kind's JSON description (see :meth:`Gate.to_json`).
_GATE_KEYS: dict[str, frozenset[str]] = {
    kind: frozenset({"gate", "wires", "params", *extra}) for kind, extra in (
        ("PauliRotation", ("pauli",)), ("Givens", ("levels",)), ("Standard", ("name",)),
        ("SignDiagonal", ("signs",)), ("Unitary", ("real", "imag")), ("Barrier", ("text",)),
    )
} | {"Controlled": frozenset({"gate", "base", "controls", "control_values"})}


def gate_from_json(data: Mapping) -> Gate:
    """Rebuild a gate from :meth:`Gate.to_json` output."""
    if not isinstance(data, Mapping) or "gate" not in data:
        raise DescriptionError(f"a gate description must be an object with a 'gate' key: {data!r}")
    kind = data["gate"]
    if not isinstance(kind, str) or kind not in _GATE_KEYS:
        raise DescriptionError(f"unknown gate kind {kind!r}; known: {', '.join(_GATE_KEYS)}")
    unknown = sorted(map(str, set(data) - _GATE_KEYS[kind]))
    if unknown:
        # a misspelt optional key ("controlvalues") would otherwise describe another gate
        raise DescriptionError(
            f"a {kind} gate description has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(sorted(_GATE_KEYS[kind]))}"
        )
    try:
        if kind == "Controlled":
            values = data.get("control_values")
            return Controlled(
                gate_from_json(data["base"]),
                integers(data["controls"], "controls", DescriptionError),
                None if values is None else tuple(
                    integers(v, "control values", DescriptionError)
                    for v in _json_list(values, "control_values")
                ),
            )
        wires = integers(data["wires"], "wires", DescriptionError)
        params = tuple(
            Expression.from_json(p) for p in _json_list(data.get("params", []), "params")
        )
        if params and kind not in ("PauliRotation", "Givens"):
            raise DescriptionError(
                f"a {kind} gate takes no angles, but its description lists {len(params)}; "
                "remove 'params' or describe a rotation"
            )
        if kind == "PauliRotation":
            return PauliRotation(str(data["pauli"]), wires, params)
        if kind == "Givens":
            levels = integers(data["levels"], "Givens levels", DescriptionError)
            return Givens(wires, levels, params)
        if kind == "Standard":
            if not isinstance(data["name"], str):
                raise DescriptionError(f"a standard gate's 'name' must be a string, got "
                                       f"{data['name']!r:.60}")
            return StandardGate(data["name"], wires)
        if kind == "SignDiagonal":
            signs = data.get("signs")
            return SignDiagonal(
                wires, None if signs is None else integers(signs, "signs", DescriptionError)
            )
        if kind == "Unitary":
            real = _json_matrix(data["real"], "real")
            imag = _json_matrix(data["imag"], "imag") if "imag" in data else 0 * real
            if imag.shape != real.shape:
                raise DescriptionError(
                    f"a Unitary's 'imag' has shape {imag.shape} but its 'real' has "
                    f"{real.shape}; both list the same square matrix's entries"
                )
            return unitary(real + 1j * imag, wires)
        if kind == "Barrier":
            text = data.get("text", "")
            if not isinstance(text, str):
                raise DescriptionError(f"a barrier's 'text' must be a string, got {text!r:.60}")
            return Barrier(wires, text)
        raise AssertionError(kind)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, (WireError, NotUnitaryError, DescriptionError)):
            raise
        raise DescriptionError(f"malformed {kind} gate description: {exc}") from exc


def expected_params(gate: Gate) -> int:
    """How many angles a gate of this class takes."""
    return 1 if isinstance(gate, (PauliRotation, Givens)) else (
        expected_params(gate.base) if isinstance(gate, Controlled) else 0
    )
