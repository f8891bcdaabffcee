"""Qiskit in and out: :func:`to_qiskit` and :func:`from_qiskit`.

qpeft wire ``w`` is Qiskit qubit ``w``. Qiskit reads qubit 0 as the least
significant bit, qpeft (like PennyLane) as the most significant, so

    Operator(to_qiskit(circuit).reverse_bits()) == circuit.matrix(values)

once the parameters are assigned by name. Symbolic angles become Qiskit
parameters of the same names (``theta[3]`` an element of
``ParameterVector("theta", n)``), affine angles ``ParameterExpression`` s.

>>> import numpy as np
>>> from qiskit.quantum_info import Operator
>>> from qpeft.circuit import Circuit
>>> circuit = Circuit(2).ry(0, "a").cx(0, 1)
>>> qc = to_qiskit(circuit)
>>> bound = qc.assign_parameters({qc.parameters[0]: 0.3})
>>> bool(np.allclose(Operator(bound.reverse_bits()).data, circuit.matrix([0.3])))
True
>>> from_qiskit(qc) == circuit
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from qpeft.circuit import (
    Barrier,
    Circuit,
    Controlled,
    Expression,
    Gate,
    Givens,
    PauliRotation,
    SignDiagonal,
    StandardGate,
    Unitary,
    barrier_of,
    unitary,
)
from qpeft.errors import InteropError, ParameterError, QpeftError
from qpeft.interop.common import NameTable, phase_gates, real_number, require_qubits

_INDEXED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[([0-9]+)\]$")
#: the key of ``QuantumCircuit.metadata`` that holds the qpeft parameter order
ORDER_KEY = "qpeft_parameters"
_DEFAULT_NAME = re.compile(r"^circuit-[0-9]+$")

# Qiskit gate name -> qpeft standard gate
_STANDARD_FROM = {"h": "H", "x": "X", "y": "Y", "z": "Z", "cz": "CZ", "cx": "CX", "swap": "SWAP"}
_ROTATIONS_FROM = {"rx": "X", "ry": "Y", "rz": "Z", "rxx": "XX", "ryy": "YY", "rzz": "ZZ"}
# not unitary: refuse rather than drop them silently
_NOT_UNITARY = {"measure", "reset", "initialize", "state_preparation", "store", "if_else",
                "while_loop", "for_loop", "switch_case", "box"}


# ---------------------------------------------------------------------------
# qpeft -> Qiskit


class _QiskitParameters:
    """Qiskit parameters for qpeft names: ``name[k]`` becomes element ``k`` of
    one ``ParameterVector(name, max k + 1)``, other names ``Parameter(name)``."""

    def __init__(self, names: Sequence[str]) -> None:
        from qiskit.circuit import Parameter, ParameterVector

        sizes: dict[str, int] = {}
        for name in names:
            match = _INDEXED.match(name)
            if match:
                base, index = match.group(1), int(match.group(2))
                sizes[base] = max(sizes.get(base, 0), index + 1)
        vectors = {base: ParameterVector(base, size) for base, size in sizes.items()}
        self.by_name = {}
        for name in names:
            match = _INDEXED.match(name)
            if match:
                self.by_name[name] = vectors[match.group(1)][int(match.group(2))]
            else:
                self.by_name[name] = Parameter(name)

    def angle(self, expr: Expression):
        """A float, a Parameter or a ParameterExpression for ``expr``."""
        if expr.is_constant:
            return expr.constant
        if len(expr.terms) == 1 and expr.terms[0][1] == 1.0 and expr.constant == 0.0:
            return self.by_name[expr.terms[0][0]]
        total = None
        for name, coeff in expr.terms:
            term = self.by_name[name] if coeff == 1.0 else coeff * self.by_name[name]
            total = term if total is None else total + term
        return total + expr.constant if expr.constant != 0.0 else total


def _pauli_gate(pauli: str, angle):
    """exp(-iθP/2) as one Qiskit gate acting on the wires in qpeft's letter
    order; Qiskit labels read right to left, hence the reversed label."""
    from qiskit.quantum_info import Pauli

    label = pauli[::-1]
    try:
        from qiskit.circuit.library import PauliProductRotationGate
    except ImportError:  # Qiskit < 2.4
        from qiskit.circuit.library import PauliEvolutionGate
        from qiskit.quantum_info import SparsePauliOp

        return PauliEvolutionGate(SparsePauliOp(label), angle / 2)
    return PauliProductRotationGate(Pauli(label), angle)


def _qiskit_gate(gate: Gate, params: _QiskitParameters):
    """``(qiskit gate, qubits)`` for one qpeft gate (barriers, controlled or
    not, excluded: :func:`to_qiskit` writes them)."""
    from qiskit.circuit import library

    if isinstance(gate, PauliRotation):
        angle = params.angle(gate.params[0])
        if set(gate.pauli) == {"I"}:  # exp(-iθI/2): a phase, global or (under control) not
            return library.GlobalPhaseGate(-0.5 * angle), []
        if len(gate.pauli) == 1:
            cls = {"X": library.RXGate, "Y": library.RYGate, "Z": library.RZGate}[gate.pauli]
            return cls(angle), list(gate.wires)
        return _pauli_gate(gate.pauli, angle), list(gate.wires)
    if isinstance(gate, Givens):  # on a qubit: levels (0, 1) is RY, (1, 0) is RY(-θ)
        sign = 1.0 if gate.levels[0] < gate.levels[1] else -1.0
        return library.RYGate(params.angle(gate.params[0] * sign)), list(gate.wires)
    if isinstance(gate, StandardGate):
        cls = {
            "H": library.HGate, "X": library.XGate, "Y": library.YGate, "Z": library.ZGate,
            "CZ": library.CZGate, "CX": library.CXGate, "SWAP": library.SwapGate,
        }[gate.gate]
        return cls(), list(gate.wires)
    if isinstance(gate, SignDiagonal):
        if gate.signs is None:
            return library.CZGate(), list(gate.wires)
        # Qiskit indexes the diagonal with its first qubit least significant
        return library.DiagonalGate([float(s) for s in gate.signs]), list(gate.wires[::-1])
    if isinstance(gate, Unitary):
        return library.UnitaryGate(np.asarray(gate.data)), list(gate.wires[::-1])
    if isinstance(gate, Controlled):
        base, base_wires = _qiskit_gate(gate.base, params)
        controls, state = [], 0
        allowed = gate.control_values or ((1,),) * len(gate.controls)
        for wire, values in zip(gate.controls, allowed):
            if set(values) == {0, 1}:
                continue  # active in both levels: no control at all
            state |= values[0] << len(controls)
            controls.append(wire)
        if not controls:
            return base, base_wires
        from qiskit.circuit import AnnotatedOperation, ControlledGate, ControlModifier

        operation = base.control(len(controls), ctrl_state=state, annotated=False)
        if not isinstance(operation, ControlledGate):  # e.g. a Pauli rotation's own form
            modifier = ControlModifier(num_ctrl_qubits=len(controls), ctrl_state=state)
            operation = AnnotatedOperation(base, [modifier])
        return operation, controls + base_wires
    raise InteropError(f"{type(gate).__name__} gates have no Qiskit counterpart")


def to_qiskit(circuit: Circuit):
    """The Qiskit ``QuantumCircuit`` of a qubit circuit (wire w = qubit w).

    Symbolic angles stay symbolic (Qiskit parameters with the same names);
    assign them by name before simulating. The circuit's parameter order is
    kept in ``qc.metadata["qpeft_parameters"]``, so that :func:`from_qiskit`
    gives it back. ``Operator(qc.reverse_bits())``
    equals ``circuit.matrix(values)``.

    >>> from qpeft.ansatz import pauli
    >>> qc = to_qiskit(pauli(qubits=3, layers=1))
    >>> qc.num_qubits, qc.num_parameters, qc.count_ops()["cz"]
    (3, 7, 2)
    """
    from qiskit.circuit import QuantumCircuit

    require_qubits(circuit, "to_qiskit")
    params = _QiskitParameters(circuit.parameters)
    qc = QuantumCircuit(circuit.num_wires, name=circuit.name or None)
    if circuit.parameters:
        # Qiskit lists parameters sorted by name; from_qiskit restores this order
        qc.metadata = {ORDER_KEY: list(circuit.parameters)}
    for gate in circuit.gates:
        barrier = barrier_of(gate)
        if barrier is not None:  # a controlled barrier too: the identity either way
            qc.barrier(*barrier.wires, label=barrier.text or None)
            continue
        operation, qubits = _qiskit_gate(gate, params)
        qc.append(operation, qubits)
    return qc


def qiskit_parameter_values(quantum_circuit, values: Mapping[str, float]) -> dict:
    """``{qiskit parameter: value}`` for a mapping of parameter names, ready
    for ``quantum_circuit.assign_parameters``; raise if a name is missing.

    >>> from qpeft.circuit import Circuit
    >>> qc = to_qiskit(Circuit(1).ry(0, "a"))
    >>> qc.assign_parameters(qiskit_parameter_values(qc, {"a": 0.5})).num_parameters
    0
    """
    out = {}
    for parameter in quantum_circuit.parameters:
        if parameter.name not in values:
            raise InteropError(
                f"no value for Qiskit parameter {parameter.name!r}; pass a value for every name "
                "in circuit.parameters"
            )
        out[parameter] = float(values[parameter.name])
    return out


# ---------------------------------------------------------------------------
# Qiskit -> qpeft


class _Importer:
    """Walks a QuantumCircuit, descending into gate definitions for gates
    without a direct qpeft counterpart, and collects gates and global phase."""

    def __init__(self, num_qubits: int) -> None:
        self.names = NameTable()
        self.gates: list[Gate] = []
        self.phase = Expression((), 0.0)
        self.dims = (2,) * num_qubits

    # -- angles --------------------------------------------------------------
    def angle(self, value) -> Expression:
        from qiskit.circuit import ParameterExpression

        if not isinstance(value, ParameterExpression):
            return Expression((), real_number(value, "an angle"))
        free = list(value.parameters)
        if not free:
            return Expression((), real_number(complex(value.numeric()), "an angle"))
        terms: dict[str, float] = {}
        for parameter in free:
            slope = value.gradient(parameter)
            if isinstance(slope, ParameterExpression):
                raise InteropError(
                    f"angle {value} is not affine in {parameter.name} (its derivative is "
                    f"{slope}); qpeft angles are a*theta + b. Assign such parameters first with "
                    "quantum_circuit.assign_parameters"
                )
            name = self.names.name(parameter, parameter.name)
            terms[name] = terms.get(name, 0.0) + real_number(slope, f"the slope of {value}")
        constant = value.bind({p: 0.0 for p in free})
        return Expression.make(terms, real_number(complex(constant.numeric()), f"{value} at 0"))

    # -- gates ---------------------------------------------------------------
    def walk(self, quantum_circuit, qubits: Sequence[int]) -> None:
        self.phase = self.phase + self.angle(quantum_circuit.global_phase)
        for instruction in quantum_circuit.data:
            operation = instruction.operation
            wires = [qubits[quantum_circuit.find_bit(q).index] for q in instruction.qubits]
            if instruction.clbits or operation.name in _NOT_UNITARY:
                raise InteropError(
                    f"{operation.name!r} is not a unitary gate; remove measurements and classical "
                    "control first (e.g. quantum_circuit.remove_final_measurements())"
                )
            self.operation(operation, wires)

    def operation(self, operation, wires: list[int]) -> None:
        """Add one operation: directly, through its definition, or as a matrix."""
        gates = self.direct(operation, wires)
        if gates is not None:
            self.gates.extend(gates)
            return
        try:
            definition = getattr(operation, "definition", None)
        except Exception:  # noqa: BLE001 - some gates (HamiltonianGate of a Parameter) raise
            definition = None  # here; as_matrix then gives the typed refusal
        if definition is not None:
            self.walk(definition, wires)
        else:
            self.gates.append(self.as_matrix(operation, wires))

    def isolated(self, operation, wires: list[int]) -> tuple[list[Gate], Expression]:
        """The gates (barriers dropped) and the global phase of ``operation`` alone."""
        inner = _Importer(len(self.dims))
        inner.names = self.names
        inner.operation(operation, wires)
        return [g for g in inner.gates if not isinstance(g, Barrier)], inner.phase

    def direct(self, operation, wires: list[int]) -> list[Gate] | None:
        """qpeft gates for an operation with a direct counterpart, else None.
        Adds to the global phase where the counterpart differs by one."""
        from qiskit.circuit import AnnotatedOperation, ControlledGate

        name = operation.name
        if name in ("id", "delay"):
            return []
        if name == "barrier":  # one on no qubits (Qiskit allows it) marks nothing
            return [Barrier(tuple(wires), operation.label or "")] if wires else []
        if name == "global_phase":
            self.phase = self.phase + self.angle(operation.params[0])
            return []
        if name in _STANDARD_FROM:
            return [StandardGate(_STANDARD_FROM[name], tuple(wires))]
        if name in _ROTATIONS_FROM:
            pauli = _ROTATIONS_FROM[name]
            return [PauliRotation(pauli, tuple(wires), (self.angle(operation.params[0]),))]
        if name == "rzx":  # exp(-iθ/2 Z_{q0} X_{q1})
            return [PauliRotation("ZX", tuple(wires), (self.angle(operation.params[0]),))]
        if name in ("p", "u1"):  # diag(1, e^{iλ}) = e^{iλ/2} RZ(λ)
            angle = self.angle(operation.params[0])
            self.phase = self.phase + angle * 0.5
            return [PauliRotation("Z", tuple(wires), (angle,))]
        if name in ("u", "u3"):  # U(θ, φ, λ) = e^{i(φ+λ)/2} RZ(φ) RY(θ) RZ(λ)
            theta, phi, lam = (self.angle(v) for v in operation.params)
            self.phase = self.phase + (phi + lam) * 0.5
            wire = tuple(wires)
            return [PauliRotation("Z", wire, (lam,)), PauliRotation("Y", wire, (theta,)),
                    PauliRotation("Z", wire, (phi,))]
        if name == "pauli_product_rotation":
            label = operation.pauli().to_label()
            sign = -1.0 if label.startswith("-") else 1.0
            pauli = label.lstrip("-")[::-1]
            angle = self.angle(operation.params[0]) * sign
            return [PauliRotation(pauli, tuple(wires), (angle,))]
        if name == "PauliEvolution":
            return self.pauli_evolution(operation, wires)
        if name == "unitary":
            return [unitary(operation.to_matrix(), wires[::-1])]
        if name == "diagonal":
            diagonal = np.asarray(operation.params, dtype=complex)
            if np.allclose(diagonal.imag, 0) and np.allclose(np.abs(diagonal.real), 1):
                signs = tuple(int(round(v)) for v in diagonal.real)
                return [SignDiagonal(tuple(wires[::-1]), signs)]
            return [unitary(np.diag(diagonal), wires[::-1])]
        if isinstance(operation, ControlledGate):
            return self.controlled(operation, wires)
        if isinstance(operation, AnnotatedOperation):
            return self.annotated(operation, wires)
        return None

    def pauli_evolution(self, operation, wires: list[int]) -> list[Gate] | None:
        """exp(-itH) as one Pauli rotation per term of H, exact when the terms
        commute. H is a SparsePauliOp, a SparseObservable, or a list of them
        (their sum, which Qiskit's synthesis only approximates)."""
        from qiskit.quantum_info import SparseObservable, SparsePauliOp

        operator = operation.operator
        parts = list(operator) if isinstance(operator, (list, tuple)) else [operator]
        if not all(isinstance(p, (SparsePauliOp, SparseObservable)) for p in parts):
            return None
        parts = [p if isinstance(p, SparsePauliOp) else SparsePauliOp.from_sparse_observable(p)
                 for p in parts]
        paulis = [pauli for part in parts for pauli in part.paulis]
        coeffs = [coeff for part in parts for coeff in part.coeffs]
        for i in range(len(paulis)):
            for j in range(i):
                if not paulis[i].commutes(paulis[j]):
                    raise InteropError(
                        "a PauliEvolutionGate of non-commuting terms is only approximated by "
                        "its Qiskit synthesis; convert each term into its own gate, or "
                        "synthesise it explicitly before converting"
                    )
        time = self.angle(operation.params[0])
        gates: list[Gate] = []
        for pauli, coeff in zip(paulis, coeffs):
            scale = 2.0 * real_number(coeff, "a Pauli coefficient")
            label = pauli.to_label()
            if label.startswith("-"):
                scale, label = -scale, label[1:]
            gates.append(PauliRotation(label[::-1], tuple(wires), (time * scale,)))
        return gates

    def controlled(self, operation, wires: list[int]) -> list[Gate] | None:
        """A controlled gate as controlled qpeft gates (control distributes over
        the gates of the base, its phase included)."""
        base = operation.base_gate
        if list(operation.params) != list(base.params):
            return None  # extra parameters (CU's phase): only the definition is safe
        count = operation.num_ctrl_qubits
        if operation.num_qubits != count + base.num_qubits:
            return None  # one base on each of several targets (MCMTGate): the definition
        values = [operation.ctrl_state >> k & 1 for k in range(count)]
        return self.under_control(base, wires[count:], wires[:count], values)

    def annotated(self, operation, wires: list[int]) -> list[Gate] | None:
        """An ``AnnotatedOperation`` made of control modifiers (the form Qiskit
        builds with ``annotated=True``); other modifiers use the matrix."""
        from qiskit.circuit import ControlModifier

        if not all(isinstance(m, ControlModifier) for m in operation.modifiers):
            return [self.as_matrix(operation, wires)]
        size = operation.base_op.num_qubits
        controls, values = [], []
        remaining = wires[: len(wires) - size]
        for modifier in operation.modifiers:  # each modifier's controls go in front
            count = modifier.num_ctrl_qubits
            controls = remaining[len(remaining) - count:] + controls
            values = [modifier.ctrl_state >> k & 1 for k in range(count)] + values
            remaining = remaining[: len(remaining) - count]
        return self.under_control(operation.base_op, wires[len(wires) - size:], controls, values)

    def under_control(self, base, base_wires, controls, values) -> list[Gate]:
        gates, phase = self.isolated(base, base_wires)
        if not base_wires:  # a controlled global phase: a phase on the last control's level
            wire, level = controls[-1], values[-1]
            controls, values = controls[:-1], values[:-1]
            # diag(1, e^{iφ}) = e^{iφ/2} RZ(φ); diag(e^{iφ}, 1) = e^{iφ/2} RZ(-φ)
            gates = [PauliRotation("Z", (wire,), (phase * (1.0 if level else -1.0),))]
            phase = phase * 0.5
            if not controls:
                self.phase = self.phase + phase
                return gates
            base_wires = [wire]
        if not (phase.is_constant and phase.constant == 0.0):
            if phase.is_constant:  # a fixed phase stays a matrix, so is_real stays right
                gates.append(unitary(np.exp(1j * phase.constant) * np.eye(2), [base_wires[0]]))
            else:
                gates.append(PauliRotation("I", (base_wires[0],), (phase * -2.0,)))
        levels = tuple((v,) for v in values)
        return [Controlled(g, tuple(controls), levels) for g in gates]

    def as_matrix(self, operation, wires: list[int]) -> Gate:
        from qiskit.circuit import ParameterExpression

        params = getattr(operation, "params", None) or []
        if any(isinstance(p, ParameterExpression) and p.parameters for p in params):
            raise InteropError(
                f"cannot convert the parameterized {operation.name!r} operation: it has no "
                "definition to decompose; assign its parameters first"
            )
        from qiskit.quantum_info import Operator

        try:
            matrix = Operator(operation).data
        except Exception as exc:  # Qiskit raises CircuitError or others for opaque gates
            raise InteropError(
                f"cannot convert Qiskit operation {operation.name!r}: it has neither a definition "
                f"nor a matrix ({exc})"
            ) from exc
        return unitary(matrix, wires[::-1])


def from_qiskit(quantum_circuit) -> Circuit:
    """A qpeft circuit from a Qiskit ``QuantumCircuit`` (qubit w = wire w).

    RX/RY/RZ, RXX/RYY/RZZ/RZX, Pauli product rotations, ``PauliEvolutionGate`` s
    of commuting terms (others are refused), H/X/Y/Z/CZ/CX/SWAP, controlled
    versions of these, ``unitary``, ``diagonal`` and barriers map gate for
    gate; any other gate is replaced by its definition, recursively (so
    ``real_amplitudes``, ``n_local`` blocks and custom gates work), and a
    constant gate without a definition by its matrix. Parameter names that
    are not valid qpeft names are cleaned (``θ[0]`` becomes ``theta[0]``);
    valid ones are kept, and a cleaned name that meets one of them gets a
    suffix (``my angle`` next to ``my_angle`` becomes ``my_angle_2``). The
    parameters come in the order :func:`to_qiskit` recorded in
    ``metadata["qpeft_parameters"]`` when that lists exactly the circuit's
    parameters, else by first appearance.
    A global phase becomes a gate on wire 0 (see
    :func:`qpeft.interop.common.phase_gates`).

    >>> from qiskit.circuit.library import real_amplitudes
    >>> circuit = from_qiskit(real_amplitudes(3, reps=1))
    >>> circuit.parameters
    ('theta[0]', 'theta[1]', 'theta[2]', 'theta[3]', 'theta[4]', 'theta[5]')
    """
    from qiskit.circuit import QuantumCircuit

    if not isinstance(quantum_circuit, QuantumCircuit):
        raise InteropError(
            f"from_qiskit takes a qiskit QuantumCircuit, got {type(quantum_circuit).__name__}"
        )
    if quantum_circuit.num_qubits < 1:
        raise InteropError("the Qiskit circuit has no qubits")
    importer = _Importer(quantum_circuit.num_qubits)
    importer.names.reserve((p, p.name) for p in quantum_circuit.parameters)
    try:
        importer.walk(quantum_circuit, list(range(quantum_circuit.num_qubits)))
    except ParameterError as exc:  # finite angles whose sum or multiple overflows
        raise InteropError(f"an angle of the Qiskit circuit is out of range: {exc}") from exc
    name = quantum_circuit.name if not _DEFAULT_NAME.match(quantum_circuit.name or "") else ""
    circuit = Circuit(quantum_circuit.num_qubits, name=name)
    try:
        circuit.extend(importer.gates)
        circuit.extend(phase_gates(importer.phase, circuit.dims))
    except QpeftError as exc:
        raise InteropError(f"the converted circuit is not valid: {exc}") from exc
    order = (quantum_circuit.metadata or {}).get(ORDER_KEY) if isinstance(
        quantum_circuit.metadata, dict) else None
    if (isinstance(order, list) and all(isinstance(name, str) for name in order)
            and len(order) == len(circuit.parameters) and set(order) == set(circuit.parameters)):
        circuit = circuit.reorder(order)
    return circuit

