"""PennyLane in and out: :func:`to_pennylane` and :func:`from_pennylane`.

qpeft and PennyLane agree on bit order (wire 0 is the most significant
bit) and on every gate definition, so

    qml.matrix(to_pennylane(circuit), wire_order=range(n))(values)
        == circuit.matrix(values)

>>> import numpy as np
>>> import pennylane as qml
>>> from qpeft.circuit import Circuit
>>> circuit = Circuit(2).ry(0, "a").cz(0, 1).rx(1, "b")
>>> apply = to_pennylane(circuit)
>>> U = qml.matrix(apply, wire_order=[0, 1])([0.3, -0.2])
>>> bool(np.allclose(U, circuit.matrix([0.3, -0.2])))
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from qpeft.circuit import (
    Barrier,
    Circuit,
    Controlled,
    Expression,
    Gate,
    Givens,
    Parameter,
    PauliRotation,
    SignDiagonal,
    StandardGate,
    Unitary,
    barrier_of,
    unitary,
)
from qpeft.circuit.parameters import refuse_non_real
from qpeft.errors import InteropError, ParameterError, QpeftError
from qpeft.interop.common import phase_gates, real_number, require_qubits

# ---------------------------------------------------------------------------
# qpeft -> PennyLane

_STANDARD_OPS = {
    "H": "Hadamard", "X": "PauliX", "Y": "PauliY", "Z": "PauliZ", "CZ": "CZ", "CX": "CNOT",
    "SWAP": "SWAP",
}


def _value(expr: Expression, index: dict[str, int], values):
    """An angle from the free-parameter ``values``; stays differentiable in
    whatever array type ``values`` is (autograd, torch, jax)."""
    if expr.is_constant:
        return expr.constant
    total = None
    for name, coeff in expr.terms:
        term = values[index[name]]
        term = term if coeff == 1.0 else coeff * term
        total = term if total is None else total + term
    return total + expr.constant if expr.constant != 0.0 else total


def _emitter(gate: Gate, index: dict[str, int]) -> Callable:
    """A function ``emit(values)`` that queues the PennyLane ops of ``gate``."""
    import pennylane as qml

    barrier = barrier_of(gate)
    if barrier is not None:  # a controlled barrier too: the identity either way
        return lambda values: qml.Barrier(wires=list(barrier.wires))
    wires = list(gate.wires)
    if isinstance(gate, PauliRotation):
        expr = gate.params[0]
        if len(gate.pauli) == 1 and gate.pauli != "I":
            op = {"X": qml.RX, "Y": qml.RY, "Z": qml.RZ}[gate.pauli]
            return lambda values: op(_value(expr, index, values), wires=wires)
        return lambda values: qml.PauliRot(_value(expr, index, values), gate.pauli, wires=wires)
    if isinstance(gate, Givens):  # on a qubit: levels (0, 1) is RY, (1, 0) is RY(-θ)
        expr = gate.params[0] * (1.0 if gate.levels[0] < gate.levels[1] else -1.0)
        return lambda values: qml.RY(_value(expr, index, values), wires=wires)
    if isinstance(gate, StandardGate):
        op = getattr(qml, _STANDARD_OPS[gate.gate])
        return lambda values: op(wires=wires)
    if isinstance(gate, SignDiagonal):
        if gate.signs is None:
            return lambda values: qml.CZ(wires=wires)
        signs = np.asarray(gate.signs, dtype=float)
        return lambda values: qml.DiagonalQubitUnitary(signs, wires=wires)
    if isinstance(gate, Unitary):
        matrix = np.asarray(gate.data, dtype=complex)
        return lambda values: qml.QubitUnitary(matrix, wires=wires)
    if isinstance(gate, Controlled):
        base = _emitter(gate.base, index)
        controls, levels = [], []
        allowed_levels = gate.control_values or ((1,),) * len(gate.controls)
        for wire, allowed in zip(gate.controls, allowed_levels):
            if set(allowed) != {0, 1}:  # active in both levels: no control at all
                controls.append(wire)
                levels.append(bool(allowed[0]))
        if not controls:
            return base
        return lambda values: qml.ctrl(base, control=controls, control_values=levels)(values)
    raise InteropError(f"{type(gate).__name__} gates have no PennyLane counterpart")


def to_pennylane(circuit: Circuit) -> Callable:
    """A quantum function ``apply(values=None)`` that queues the circuit's
    gates as PennyLane operations on wires ``0 … n−1``.

    ``values`` holds the free parameters in ``circuit.parameters`` order, as
    any array PennyLane differentiates (``pennylane.numpy``, torch, jax);
    angles are computed from it with ordinary arithmetic, so gradients flow.
    Use it inside a QNode or with ``qml.matrix``.

    >>> import pennylane as qml
    >>> from qpeft.ansatz import pauli
    >>> circuit = pauli(qubits=2, layers=1)
    >>> apply = to_pennylane(circuit)
    >>> @qml.qnode(qml.device("default.qubit", wires=2))
    ... def expectation(values):
    ...     apply(values)
    ...     return qml.expval(qml.PauliZ(0))
    >>> round(float(expectation([0.0] * circuit.num_parameters)), 6)
    1.0
    """
    require_qubits(circuit, "to_pennylane")
    index = {name: i for i, name in enumerate(circuit.parameters)}
    emitters = [_emitter(gate, index) for gate in circuit.gates]
    count = circuit.num_parameters

    def apply(values=None) -> None:
        if values is None:
            if count:
                raise InteropError(
                    f"this circuit has {count} free parameters; call apply(values) with one "
                    "value per circuit.parameters entry"
                )
            values = ()
        elif isinstance(values, (Mapping, str)) or not hasattr(values, "__len__"):
            raise InteropError(
                f"apply takes the values as a sequence or array in circuit.parameters order "
                f"{circuit.parameters}, got {type(values).__name__}; for a dict use "
                "[values[name] for name in circuit.parameters]"
            )
        elif len(values) != count:
            raise InteropError(
                f"expected {count} values (one per circuit.parameters entry), got {len(values)}"
            )
        # complex or boolean values would give PennyLane a non-unitary or a wrong matrix
        for value in values if isinstance(values, (list, tuple)) else [values]:
            refuse_non_real(value, "apply's values")
        for emit in emitters:
            emit(values)

    apply.__name__ = f"qpeft_{circuit.name or 'circuit'}".replace(" ", "_")
    apply.__doc__ = f"Queue the gates of {circuit!r} as PennyLane operations."
    return apply


# ---------------------------------------------------------------------------
# PennyLane -> qpeft

_ROTATIONS = {"RX": "X", "RY": "Y", "RZ": "Z", "IsingXX": "XX", "IsingYY": "YY", "IsingZZ": "ZZ"}
_STANDARD_FROM = {v: k for k, v in _STANDARD_OPS.items()}


class _Recorder:
    """Turns PennyLane operations into qpeft gates; each recorded angle is
    a constant, or the next parameter name when names were asked for."""

    def __init__(self, wire_index: dict, names: Callable[[int], str] | None) -> None:
        self.wire_index = wire_index
        self.names = names
        self.values: dict[str, float] = {}
        self.count = 0
        self.phase = Expression((), 0.0)

    def wires(self, op, labels=None) -> tuple[int, ...]:
        """qpeft wires of ``op`` (or of the PennyLane wire ``labels``)."""
        try:
            return tuple(self.wire_index[w] for w in (op.wires if labels is None else labels))
        except KeyError as exc:
            raise InteropError(
                f"{op.name} acts on wire {exc.args[0]!r}, which is not in the wire order "
                f"{list(self.wire_index)}; pass wires=[...] listing every wire"
            ) from None

    def angle(self, value) -> Expression:
        import pennylane as qml

        number = qml.math.toarray(qml.math.unwrap(value))
        if np.ndim(number) != 0:
            raise InteropError(
                f"a batched angle of shape {np.shape(number)} cannot become one circuit; record "
                "the tape with scalar angles"
            )
        number = real_number(complex(number), "an angle")
        if self.names is None:
            return Expression((), number)
        name = self.names(self.count)
        self.count += 1
        if name in self.values and abs(self.values[name] - number) > 1e-12:
            raise InteropError(
                f"parameter {name!r} was given to two angles with different recorded values "
                f"({self.values[name]} and {number}); give them different names"
            )
        self.values.setdefault(name, number)
        return Parameter(name)._expr()

    def convert(self, op) -> list[Gate]:
        import pennylane as qml

        gates = self.direct(op)
        if gates is not None:
            return gates
        if isinstance(op, qml.operation.StatePrepBase):
            raise InteropError(
                f"{op.name} prepares a state, it is not a gate; keep state preparation out of "
                "the function you convert"
            )
        if op.has_decomposition:
            return [g for part in op.decomposition() for g in self.convert(part)]
        if op.has_matrix:
            return [unitary(qml.matrix(op, wire_order=op.wires), self.wires(op))]
        raise InteropError(f"cannot convert PennyLane operation {op.name}: no decomposition")

    def direct(self, op) -> list[Gate] | None:
        import pennylane as qml

        name = op.name
        if name in ("Identity", "Snapshot"):
            return []
        if name == "Barrier":  # one on no wires (PennyLane allows it) marks nothing
            wires = self.wires(op)
            return [Barrier(wires)] if wires else []
        if name == "GlobalPhase":  # exp(-iφ)
            self.phase = self.phase - self.angle(op.data[0])
            return []
        if name in _STANDARD_FROM:
            return [StandardGate(_STANDARD_FROM[name], self.wires(op))]
        if name in _ROTATIONS:
            return [PauliRotation(_ROTATIONS[name], self.wires(op), (self.angle(op.data[0]),))]
        if name == "PauliRot":
            word = op.hyperparameters["pauli_word"]
            return [PauliRotation(word, self.wires(op), (self.angle(op.data[0]),))]
        if name == "PhaseShift":  # diag(1, e^{iφ}) = e^{iφ/2} RZ(φ)
            angle = self.angle(op.data[0])
            self.phase = self.phase + angle * 0.5
            return [PauliRotation("Z", self.wires(op), (angle,))]
        if name == "QubitUnitary":
            return [unitary(qml.math.toarray(op.data[0]), self.wires(op))]
        if name == "DiagonalQubitUnitary":
            diagonal = np.asarray(qml.math.toarray(op.data[0]), dtype=complex)
            if np.allclose(diagonal.imag, 0) and np.allclose(np.abs(diagonal.real), 1):
                return [SignDiagonal(self.wires(op), tuple(int(round(v)) for v in diagonal.real))]
            return [unitary(np.diag(diagonal), self.wires(op))]
        if isinstance(op, qml.ops.op_math.Controlled):
            return self.controlled(op)
        return None

    def controlled(self, op) -> list[Gate] | None:
        saved_phase, saved_count, saved_values = self.phase, self.count, dict(self.values)
        self.phase = Expression((), 0.0)
        base = self.direct(op.base)
        if base is None or len(base) != 1 or self.phase != Expression((), 0.0):
            # a phase under control is not global: decompose instead
            self.phase, self.count, self.values = saved_phase, saved_count, saved_values
            return None
        self.phase = saved_phase
        values = tuple((int(bool(v)),) for v in op.control_values)
        return [Controlled(base[0], self.wires(op, op.control_wires), values)]


def _record(qfunc, args, kwargs):
    """The tape of ``qfunc(*args, **kwargs)`` (a tape is returned as it is)."""
    import pennylane as qml

    if isinstance(qfunc, qml.tape.QuantumScript):
        if args or kwargs:
            raise InteropError("arguments were given, but a tape needs none: it is recorded")
        return qfunc
    if isinstance(qfunc, qml.QNode):
        qfunc = qfunc.func
    if not callable(qfunc):
        raise InteropError(
            f"from_pennylane takes a quantum function, a QNode or a tape, got "
            f"{type(qfunc).__name__}"
        )
    return qml.tape.make_qscript(qfunc)(*args, **kwargs)


def _wire_order(tape, wires) -> list:
    if wires is None:
        labels = list(tape.wires)
        if not labels:
            raise InteropError("the recorded operations act on no wire; pass wires=N")
        if all(isinstance(w, (int, np.integer)) and w >= 0 for w in labels):
            return list(range(int(max(labels)) + 1))
        return labels
    if isinstance(wires, (int, np.integer)) and not isinstance(wires, bool):
        if wires < 1:
            raise InteropError(f"wires={wires} is not a count of wires; give N >= 1 or a list")
        return list(range(int(wires)))
    if isinstance(wires, (str, bytes)) or not isinstance(wires, Iterable):
        raise InteropError(
            f"wires is a count N (for range(N)) or a list of PennyLane wire labels, got "
            f"{wires!r}"
        )
    order = list(wires)
    if len(set(order)) != len(order):
        raise InteropError(f"wires lists a wire twice: {order}")
    return order


def _namer(parameter_names) -> tuple[Callable[[int], str] | None, int | None]:
    """The name of the k-th recorded angle, and how many names a list holds."""
    if parameter_names is None:
        return None, None
    if isinstance(parameter_names, str):
        Parameter(f"{parameter_names}[0]")  # validates the prefix
        return (lambda k: f"{parameter_names}[{k}]"), None
    if not isinstance(parameter_names, Iterable):
        raise InteropError(
            f"parameter_names is None, a prefix string or a list of names, got "
            f"{parameter_names!r}"
        )
    names = [str(n) for n in parameter_names]
    for n in names:
        Parameter(n)

    def pick(k: int) -> str:
        if k >= len(names):
            raise InteropError(
                f"parameter_names lists {len(names)} names, but the tape records more angles; "
                "give one name per recorded angle (or a prefix string)"
            )
        return names[k]

    return pick, len(names)


def from_pennylane(
    qfunc,
    *args,
    wires: int | Sequence | None = None,
    parameter_names: str | Sequence[str] | None = None,
    return_values: bool = False,
    **kwargs,
) -> Circuit | tuple[Circuit, list[float]]:
    """A qpeft circuit from a PennyLane quantum function, QNode or tape.

    The function is recorded with ``qml.tape.make_qscript(qfunc)(*args,
    **kwargs)``; measurements are ignored. RX/RY/RZ, PauliRot,
    IsingXX/YY/ZZ, PhaseShift, Hadamard, PauliX/Y/Z, CZ, CNOT, SWAP,
    QubitUnitary, DiagonalQubitUnitary, Barrier, GlobalPhase and controlled
    versions of these map gate for gate; anything else (templates such as
    ``SimplifiedTwoDesign`` or ``BasicEntanglerLayers``) is decomposed
    first, recursively.

    ``wires``: the PennyLane wire that becomes qpeft wire 0, 1, … (a list),
    or a count N for ``range(N)``; by default ``range(max + 1)`` for integer
    labels, else the tape's wire order.

    Angles: a tape records numbers, not symbols. With
    ``parameter_names=None`` every angle becomes a constant. With a prefix
    string ``"w"`` the k-th recorded angle becomes the parameter ``w[k]``;
    with a list of names, the k-th angle gets the k-th name (repeat a name to
    share one parameter between angles with equal values). Gates that are
    kept as matrices (``QubitUnitary``) carry no parameter.
    ``return_values=True`` also returns the recorded values, in
    ``circuit.parameters`` order.

    >>> import numpy as np
    >>> import pennylane as qml
    >>> def layer(weights):
    ...     qml.BasicEntanglerLayers(weights, wires=range(3), rotation=qml.RY)
    >>> weights = np.array([[0.1, 0.2, 0.3]])
    >>> circuit, values = from_pennylane(layer, weights, parameter_names="w",
    ...                                  return_values=True)
    >>> circuit.parameters, values
    (('w[0]', 'w[1]', 'w[2]'), [0.1, 0.2, 0.3])
    >>> U = qml.matrix(layer, wire_order=range(3))(weights)
    >>> bool(np.allclose(circuit.matrix(values), U))
    True
    """
    tape = _record(qfunc, args, kwargs)
    order = _wire_order(tape, wires)
    namer, expected = _namer(parameter_names)
    recorder = _Recorder({w: i for i, w in enumerate(order)}, namer)
    try:
        gates = [g for op in tape.operations for g in recorder.convert(op)]
    except ParameterError as exc:  # finite angles whose sum or multiple overflows
        raise InteropError(f"an angle of the PennyLane operations is out of range: "
                           f"{exc}") from exc
    if expected is not None and recorder.count != expected:
        raise InteropError(
            f"parameter_names lists {expected} names but the tape records {recorder.count} "
            "angles; give one name per recorded angle"
        )
    circuit = Circuit(len(order))
    try:
        circuit.extend(gates)
        circuit.extend(phase_gates(recorder.phase, circuit.dims))
    except QpeftError as exc:
        raise InteropError(f"the converted circuit is not valid: {exc}") from exc
    if return_values:
        return circuit, [recorder.values[n] for n in circuit.parameters]
    return circuit
