"""Check a circuit against Qiskit and PennyLane: :func:`verify`.

qpeft computes the circuit's columns with the compiled torch function that
adapters run (``qpeft.compile(circuit, columns, dtype=torch.float64)``);
each reference framework computes the same from the converted circuit,
with the same angles; the report gives the largest absolute difference.

* Small circuits (N ≤ 256 when ``columns`` is not given): full unitaries,
  Qiskit ``Operator`` and PennyLane ``qml.matrix``.
* Otherwise K columns: basis state ``|i⟩`` is evolved by Qiskit's
  ``Statevector`` and by a PennyLane ``default.qubit`` QNode
  (``qml.BasisState`` then ``qml.state()``), for each chosen column i.
* Qudit circuits are embedded in qubits (:func:`embed_in_qubits`) and
  compared on the embedded subspace; any amplitude that leaks out of it
  counts as error.

>>> from qpeft.ansatz import pauli
>>> report = verify(pauli(qubits=3, layers=1))
>>> report.ok, [r.name for r in report.results]
(True, ['qiskit', 'pennylane'])
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from qpeft.circuit import Barrier, Circuit, Unitary
from qpeft.circuit.gates import integers, is_integer, is_real_number
from qpeft.circuit.reference import parameter_tensor
from qpeft.errors import ConfigError, InteropError, ParameterError, QpeftError

#: largest N for which ``columns=None`` compares full unitaries
FULL_LIMIT = 256
#: columns compared when ``columns=None`` and N > FULL_LIMIT
DEFAULT_COLUMNS = 8
#: the largest N that verify simulates (a complex128 column of 2^22 numbers is 64 MiB)
MAX_DIMENSION = 2**22
REFERENCES = ("qiskit", "pennylane")


@dataclass
class ReferenceResult:
    """The comparison with one reference framework."""

    name: str
    max_error: float
    passed: bool
    seconds: float
    message: str = ""


@dataclass
class VerificationReport:
    """What :func:`verify` found. ``ok`` is true only if every reference agrees."""

    circuit: str
    dims: tuple[int, ...]
    dimension: int
    num_parameters: int
    columns: tuple[int, ...] | None
    atol: float
    qpeft_seconds: float
    results: list[ReferenceResult] = field(default_factory=list)
    embedded_qubits: int | None = None

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def compared(self) -> str:
        if self.columns is None:
            return "full unitary"
        k = len(self.columns)
        if self.columns == tuple(range(k)):
            return f"first {k} column{'s' if k > 1 else ''}"
        return f"{k} column{'s' if k > 1 else ''} {list(self.columns)}"

    def __str__(self) -> str:
        if all(d == 2 for d in self.dims):
            register = f"{len(self.dims)} qubits"
        else:
            register = f"dims {self.dims} embedded in {self.embedded_qubits} qubits"
        lines = [
            f"verify {self.circuit}: {register}, N = {self.dimension}, "
            f"{self.num_parameters} parameters, {self.compared}, atol {self.atol:g}",
            f"  {'reference':<10} {'max |error|':>12} {'result':>7} {'seconds':>9}",
            f"  {'qpeft':<10} {'':>12} {'':>7} {self.qpeft_seconds:>9.3f}",
        ]
        for r in self.results:
            verdict = "pass" if r.passed else "FAIL"
            lines.append(f"  {r.name:<10} {r.max_error:>12.2e} {verdict:>7} {r.seconds:>9.3f}")
            if r.message:
                lines.append(f"    {r.message}")
        lines.append("ok" if self.ok else "MISMATCH")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# qudits on qubits


def _qubits_per_wire(dims: Sequence[int]) -> list[int]:
    return [max(1, math.ceil(math.log2(d))) for d in dims]


def embedded_index(dims: Sequence[int]) -> np.ndarray:
    """For each basis index of a register with wire dimensions ``dims``, its
    index once each wire sits on ``ceil(log2 d)`` qubits (level l written in
    binary, most significant qubit first).

    >>> embedded_index((3, 2)).tolist()
    [0, 1, 2, 3, 4, 5]
    >>> embedded_index((2, 3)).tolist()
    [0, 1, 2, 4, 5, 6]
    """
    sizes = [2**m for m in _qubits_per_wire(dims)]
    digits = np.indices(tuple(dims)).reshape(len(dims), -1)
    weights = [math.prod(sizes[w + 1:]) for w in range(len(dims))]
    return sum(d * s for d, s in zip(digits, weights)).astype(np.int64)


def embed_in_qubits(circuit: Circuit) -> tuple[Circuit, np.ndarray]:
    """A qubit circuit that acts as ``circuit`` on the embedded subspace, and
    the index map of :func:`embedded_index`.

    Each d-level wire becomes ``ceil(log2 d)`` consecutive qubits. Gates on
    qubit wires are kept (moved to their new wires); every other gate
    becomes a ``Unitary`` equal to its matrix on the valid levels and the
    identity elsewhere. Parameters must be bound first.

    >>> import numpy as np
    >>> from qpeft.circuit import Circuit
    >>> qutrit = Circuit([3, 2]).givens(0, (0, 2), 0.4).gcz(0, 1)
    >>> qubits, index = embed_in_qubits(qutrit)
    >>> qubits.dims, index.tolist()
    ((2, 2, 2), [0, 1, 2, 3, 4, 5])
    >>> bool(np.allclose(qubits.matrix()[np.ix_(index, index)], qutrit.matrix()))
    True
    """
    if circuit.parameters:
        raise ParameterError(
            f"embed_in_qubits needs numbers for every angle; bind the circuit's "
            f"{circuit.num_parameters} parameters first (circuit.bind(values))"
        )
    counts = _qubits_per_wire(circuit.dims)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
    qubits_of = {w: list(range(starts[w], starts[w] + counts[w])) for w in range(len(counts))}
    out = Circuit(sum(counts), name=circuit.name)
    for gate in circuit.gates:
        dims = circuit.wire_dims(gate.wires)
        if all(d == 2 for d in dims):
            out.append(gate.with_wires([starts[w] for w in gate.wires]))
            continue
        new_wires = [q for w in gate.wires for q in qubits_of[w]]
        if isinstance(gate, Barrier):
            out.append(Barrier(tuple(new_wires), gate.text))
            continue
        angles = torch.tensor([e.constant for e in gate.params], dtype=torch.float64)
        small = gate.matrix(dims, angles if gate.params else None, torch.float64)
        small = small.detach().numpy().astype(complex)
        index = embedded_index(dims)
        big = np.eye(2 ** len(new_wires), dtype=complex)
        big[np.ix_(index, index)] = small
        out.append(Unitary(tuple(new_wires), _frozen(big)))
    return out, embedded_index(circuit.dims)


def _frozen(matrix: np.ndarray) -> tuple[tuple[complex, ...], ...]:
    return tuple(tuple(complex(v) for v in row) for row in matrix)


# ---------------------------------------------------------------------------
# the reference computations


def _qiskit_columns(circuit: Circuit, values: dict[str, float], columns) -> np.ndarray:
    from qiskit.quantum_info import Operator, Statevector

    from qpeft.interop.qiskit import qiskit_parameter_values, to_qiskit

    qc = to_qiskit(circuit)
    if qc.parameters:
        qc = qc.assign_parameters(qiskit_parameter_values(qc, values))
    qc = qc.reverse_bits()  # Qiskit's qubit 0 becomes the least significant: qpeft order
    if columns is None:
        return np.asarray(Operator(qc).data)
    n = circuit.dimension
    return np.stack(
        [np.asarray(Statevector.from_int(int(i), n).evolve(qc).data) for i in columns], axis=1
    )


def _pennylane_columns(circuit: Circuit, values: dict[str, float], columns) -> np.ndarray:
    import pennylane as qml

    from qpeft.interop.pennylane import to_pennylane

    apply = to_pennylane(circuit)
    vector = np.array([values[name] for name in circuit.parameters], dtype=float)
    wires = list(range(circuit.num_wires))
    if columns is None:
        return np.asarray(qml.matrix(apply, wire_order=wires)(vector))
    device = qml.device("default.qubit", wires=wires)

    @qml.qnode(device, interface=None)
    def column(bits):
        qml.BasisState(bits, wires=wires)
        apply(vector)
        return qml.state()

    n = circuit.num_wires
    return np.stack(
        [np.asarray(column(np.array([(int(i) >> (n - 1 - w)) & 1 for w in range(n)])))
         for i in columns],
        axis=1,
    )


_COMPUTE = {"qiskit": _qiskit_columns, "pennylane": _pennylane_columns}


def _qpeft_columns(circuit: Circuit, vector: np.ndarray, columns) -> np.ndarray:
    """The compiled circuit (what adapters run): all columns, or the chosen ones."""
    import qpeft

    chosen = None if columns is None else list(columns)
    compiled = qpeft.compile(circuit, columns=chosen, dtype=torch.float64, method="columns")
    with torch.no_grad():
        out = compiled(torch.as_tensor(vector, dtype=torch.float64))
    return out.detach().cpu().numpy()


def _import_reference(name: str) -> None:
    """Import a reference framework before its timing starts."""
    import importlib

    for module in _MODULES[name]:
        importlib.import_module(module)


_MODULES = {
    "qiskit": ("qiskit.quantum_info", "qpeft.interop.qiskit"),
    "pennylane": ("pennylane", "qpeft.interop.pennylane"),
}


# ---------------------------------------------------------------------------
# verify


def _angles(circuit: Circuit, values, seed: int) -> np.ndarray:
    if values is None:
        return np.random.default_rng(seed).uniform(-math.pi, math.pi, circuit.num_parameters)
    return parameter_tensor(circuit, values).numpy()


def _columns(columns, dimension: int) -> tuple[int, ...] | None:
    if columns is None:
        if dimension <= FULL_LIMIT:
            return None
        return tuple(range(min(DEFAULT_COLUMNS, dimension)))
    if is_integer(columns):
        if not 1 <= columns <= dimension:
            raise ParameterError(f"columns = {columns}: choose K between 1 and N = {dimension}")
        return tuple(range(int(columns)))
    # a string or a float is refused, not read digit by digit or truncated
    chosen = integers(columns, "columns (an int K, or a list of column indices)",
                      ParameterError)
    if not chosen or min(chosen) < 0 or max(chosen) >= dimension:
        raise ParameterError(
            f"columns {list(chosen)} must be a non-empty list of indices in 0..{dimension - 1}"
        )
    if len(set(chosen)) != len(chosen):
        raise ParameterError(f"columns {list(chosen)} lists a column twice; give each index once")
    return chosen


def _check_seed(seed) -> None:
    """numpy seeds are whole numbers >= 0; refuse others before any work."""
    if not is_integer(seed) or seed < 0:
        raise ParameterError(f"seed must be a whole number >= 0, got {seed!r}")


def _references(against) -> list[str]:
    if not isinstance(against, (str, Iterable)):
        raise InteropError(
            f"against names the references, as 'qiskit,pennylane' or a list; got {against!r} "
            f"(choose from {', '.join(REFERENCES)})"
        )
    names = against.split(",") if isinstance(against, str) else list(against)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in REFERENCES]
    if unknown or not names:
        raise InteropError(
            f"unknown reference(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(REFERENCES)}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InteropError(
            f"against lists {', '.join(repeated)} more than once ({', '.join(names)}); "
            "name each reference once"
        )
    return names


def check_tolerance(atol: float, what: str) -> None:
    """Raise :class:`ConfigError` unless ``atol`` is a finite number >= 0 (a NaN
    tolerance would fail every comparison, a negative one even exact ones)."""
    if not is_real_number(atol):
        raise ConfigError(f"{what} must be a number, got {atol!r}")
    if not 0 <= atol < math.inf:
        raise ConfigError(f"{what} {atol}: the tolerance must be a finite number >= 0, e.g. 1e-10")


def verify(
    circuit: Circuit,
    against: Sequence[str] | str = REFERENCES,
    values: Mapping[str, float] | Sequence[float] | None = None,
    columns: int | Sequence[int] | None = None,
    atol: float = 1e-10,
    seed: int = 0,
) -> VerificationReport:
    """Compare qpeft's matrix of ``circuit`` with Qiskit's and PennyLane's.

    ``values``: the free parameters (a mapping, or a sequence in
    ``circuit.parameters`` order); by default angles drawn uniformly from
    [−π, π) with ``seed``. ``columns``: ``None`` compares the full unitary
    when N ≤ 256 and the first 8 columns otherwise; an int K the first K
    columns; a list those columns. A reference passes when the largest
    absolute difference is at most ``atol``; a reference that cannot run
    (for example, a gate it cannot express) fails with a message.
    ``against``: the references to compare with, a list or a comma-separated
    string, each named once (a repeated or unknown name raises
    :class:`InteropError` before any work).

    >>> from qpeft.ansatz import pauli
    >>> report = verify(pauli(qubits=10, layers=1), against="qiskit", columns=4)
    >>> report.ok, report.compared
    (True, 'first 4 columns')
    """
    if not isinstance(circuit, Circuit):
        raise InteropError(f"verify takes a qpeft Circuit, got {type(circuit).__name__}")
    check_tolerance(atol, "atol")
    _check_seed(seed)
    names = _references(against)
    simulated = 2 ** sum(_qubits_per_wire(circuit.dims))  # N, or a qudit circuit's embedding
    if simulated > MAX_DIMENSION:
        raise InteropError(
            f"verify compares dense columns, simulated by Qiskit and PennyLane column by "
            f"column on {simulated} amplitudes (N = {circuit.dimension}, on qubits); that is "
            f"above its limit of {MAX_DIMENSION} (2^{MAX_DIMENSION.bit_length() - 1}); verify "
            "a smaller instance of the same ansatz (fewer qubits or a smaller dimension)"
        )
    vector = _angles(circuit, values, seed)
    chosen = _columns(columns, circuit.dimension)

    import qpeft.compiler  # noqa: F401 - imported before the timing starts

    start = time.perf_counter()
    ours = _qpeft_columns(circuit, vector, chosen)
    qpeft_seconds = time.perf_counter() - start

    qubit_register = all(d == 2 for d in circuit.dims)
    bindings = dict(zip(circuit.parameters, vector.tolist()))
    if qubit_register:
        target, index = circuit, None
    else:
        target, index = embed_in_qubits(circuit.bind(bindings))
        bindings = {}
    reference_columns = None
    if chosen is not None:
        reference_columns = chosen if index is None else tuple(int(index[c]) for c in chosen)

    report = VerificationReport(
        circuit=circuit.name or "circuit",
        dims=circuit.dims,
        dimension=circuit.dimension,
        num_parameters=circuit.num_parameters,
        columns=chosen,
        atol=float(atol),
        qpeft_seconds=qpeft_seconds,
        embedded_qubits=None if qubit_register else target.num_wires,
    )
    for name in names:
        try:
            _import_reference(name)
        except ImportError as exc:
            report.results.append(
                ReferenceResult(name, math.inf, False, 0.0, f"cannot import {name}: {exc}")
            )
            continue
        start = time.perf_counter()
        try:
            theirs = _COMPUTE[name](target, bindings, reference_columns)
            error = _difference(ours, theirs, index, chosen)
            message = ""
        except QpeftError as exc:
            error, message = math.inf, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        report.results.append(
            ReferenceResult(name, float(error), bool(error <= atol), seconds, message)
        )
    return report


def _difference(ours: np.ndarray, theirs: np.ndarray, index, chosen) -> float:
    """Largest |ours − theirs| on the compared entries; with an embedding,
    also the largest amplitude outside the embedded subspace."""
    if index is None:
        return float(np.abs(ours - theirs).max(initial=0.0))
    if chosen is None:
        theirs = theirs[:, index]
    outside = np.ones(theirs.shape[0], dtype=bool)
    outside[index] = False
    leak = float(np.abs(theirs[outside]).max(initial=0.0))
    return max(float(np.abs(ours - theirs[index]).max(initial=0.0)), leak)
