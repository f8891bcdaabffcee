"""PennyLane conversions: bit order, templates, gradients, recording modes."""

from __future__ import annotations

import numpy as np
import pennylane as qml
import pytest
import torch

from qpeft.ansatz import pauli
from qpeft.circuit import Circuit, Parameter
from qpeft.errors import InteropError, ParameterError
from qpeft.interop.pennylane import from_pennylane, to_pennylane


def pennylane_matrix(qfunc, wires: int, *args) -> np.ndarray:
    return np.asarray(qml.matrix(qfunc, wire_order=range(wires))(*args))


def test_wire_zero_is_the_most_significant_bit_in_both():
    circuit = Circuit(2).x(0)
    flip, identity = np.array([[0, 1], [1, 0]]), np.eye(2)
    np.testing.assert_allclose(pennylane_matrix(to_pennylane(circuit), 2), np.kron(flip, identity))
    np.testing.assert_allclose(circuit.matrix(), np.kron(flip, identity))


@pytest.mark.parametrize(("qubits", "layers"), [(4, 1), (5, 2), (6, 3)])
def test_pauli_ansatz_is_simplified_two_design(qubits, layers):
    circuit = pauli(qubits, layers)
    theta = np.random.default_rng(qubits).uniform(-np.pi, np.pi, circuit.num_parameters)
    initial = theta[:qubits]
    weights = theta[qubits:].reshape(layers, qubits - 1, 2)

    def template(initial, weights):
        qml.SimplifiedTwoDesign(initial, weights, wires=range(qubits))

    expected = pennylane_matrix(template, qubits, initial, weights)
    np.testing.assert_allclose(circuit.matrix(theta), expected, atol=1e-12)
    # recorded with one parameter per angle, the template *is* the Pauli ansatz
    imported = from_pennylane(template, initial, weights, parameter_names="theta")
    assert imported == pauli(qubits, layers, barriers=False)


def test_templates_and_pauli_rot_import_by_decomposition():
    weights = np.random.default_rng(3).uniform(-np.pi, np.pi, (2, 4))

    def qfunc(weights):
        qml.BasicEntanglerLayers(weights, wires=range(4), rotation=qml.RY)
        qml.PauliRot(0.4, "XZY", wires=[3, 0, 2])
        qml.IsingZZ(0.3, wires=[1, 2])
        qml.CRY(0.2, wires=[0, 3])
        qml.Toffoli(wires=[1, 2, 0])
        qml.PhaseShift(0.9, wires=1)
        qml.Rot(0.1, 0.2, 0.3, wires=2)
        qml.QubitUnitary(qml.matrix(qml.Hadamard(0)), wires=3)
        qml.GlobalPhase(0.25)
        return qml.state()

    circuit, values = from_pennylane(qfunc, weights, parameter_names="w", return_values=True)
    assert circuit.gates[0].name == "RY"
    expected = pennylane_matrix(qfunc, 4, weights)
    np.testing.assert_allclose(circuit.matrix(values), expected, atol=1e-12)
    np.testing.assert_allclose(from_pennylane(qfunc, weights).matrix(), expected, atol=1e-12)


def test_gradients_through_to_pennylane_match_qpeft_autograd():
    circuit = (Circuit(3).ry(0, "a").rx(1, 2 * Parameter("b") - 0.3).cz(0, 1)
               .pauli_rotation("YZ", [1, 2], "a").cx(2, 0))
    apply = to_pennylane(circuit)

    @qml.qnode(qml.device("default.qubit", wires=3), interface="torch")
    def energy(values):
        apply(values)
        return qml.expval(qml.PauliZ(0) @ qml.PauliX(2))

    values = torch.tensor([0.4, -0.7], dtype=torch.float64, requires_grad=True)
    energy(values).backward()

    reference = values.detach().clone().requires_grad_(True)
    U = circuit.matrix(reference, backend="torch")
    z, x = torch.diag(torch.tensor([1.0, -1.0])), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    observable = torch.kron(torch.kron(z, torch.eye(2)), x).to(U.dtype)
    state = U[:, 0]
    torch.real(state.conj() @ observable @ state).backward()
    torch.testing.assert_close(values.grad, reference.grad)


def test_to_pennylane_checks_the_number_of_values():
    apply = to_pennylane(Circuit(1).ry(0, "a"))
    with pytest.raises(InteropError, match="1 free parameters"):
        qml.matrix(apply, wire_order=[0])()
    with pytest.raises(InteropError, match="expected 1 values"):
        qml.matrix(apply, wire_order=[0])([0.1, 0.2])
    with pytest.raises(InteropError, match="in circuit.parameters order"):
        qml.matrix(apply, wire_order=[0])({"a": 0.1})  # once a KeyError: 0
    with pytest.raises(InteropError, match="in circuit.parameters order"):
        qml.matrix(apply, wire_order=[0])(0.1)
    for values in ([True], [0.3 + 2j], np.array([0.3 + 2j])):
        with pytest.raises(ParameterError, match="is not an angle"):
            qml.matrix(apply, wire_order=[0])(values)


@pytest.mark.parametrize("options, message", [
    ({"wires": 2.5}, "a count N"), ({"wires": True}, "a count N"),
    ({"wires": 0}, "not a count of wires"), ({"parameter_names": 5}, "a prefix string"),
])
def test_from_pennylane_refuses_options_of_the_wrong_type(options, message):
    def qfunc():
        qml.RY(0.3, wires=0)

    with pytest.raises(InteropError, match=message):
        from_pennylane(qfunc, **options)


def test_wire_labels_and_explicit_wire_order():
    def qfunc():
        qml.RY(0.3, wires="a")
        qml.CNOT(wires=["a", "b"])

    default = from_pennylane(qfunc)
    assert [g.wires for g in default.gates] == [(0,), (0, 1)]
    swapped = from_pennylane(qfunc, wires=["b", "a"])
    assert [g.wires for g in swapped.gates] == [(1,), (1, 0)]
    with pytest.raises(InteropError, match="not in the wire order"):
        from_pennylane(qfunc, wires=["a"])

    def gap():
        qml.Hadamard(wires=2)

    assert from_pennylane(gap).num_wires == 3  # integer labels keep their positions


def test_parameter_name_lists_share_and_are_checked():
    def qfunc(x):
        qml.RY(x, wires=0)
        qml.RY(x, wires=1)
        qml.RX(0.5, wires=0)

    circuit, values = from_pennylane(qfunc, 0.2, parameter_names=["x", "x", "c"],
                                     return_values=True)
    assert circuit.parameters == ("x", "c") and values == [0.2, 0.5]
    with pytest.raises(InteropError, match="different recorded values"):
        from_pennylane(qfunc, 0.2, parameter_names=["x", "x", "x"])
    with pytest.raises(InteropError, match="one name per recorded angle"):
        from_pennylane(qfunc, 0.2, parameter_names=["x", "y"])
    with pytest.raises(InteropError, match="one name per recorded angle"):
        from_pennylane(qfunc, 0.2, parameter_names=["x", "y", "z", "w"])


def test_qnodes_and_tapes_are_accepted():
    @qml.qnode(qml.device("default.qubit", wires=2))
    def bell(angle):
        qml.RY(angle, wires=0)
        qml.CNOT(wires=[0, 1])
        return qml.probs()

    from_qnode = from_pennylane(bell, 0.7)
    tape = qml.tape.make_qscript(bell.func)(0.7)
    assert from_pennylane(tape) == from_qnode == Circuit(2).ry(0, 0.7).cx(0, 1)
    with pytest.raises(InteropError, match="a tape needs none"):
        from_pennylane(tape, 0.7)


def test_state_preparation_and_qudits_are_refused():
    def prepare():
        qml.BasisState(np.array([1, 0]), wires=[0, 1])
        qml.Hadamard(0)

    with pytest.raises(InteropError, match="prepares a state"):
        from_pennylane(prepare)
    with pytest.raises(InteropError, match="embed_in_qubits"):
        to_pennylane(Circuit([3, 2]).gcz(0, 1))


def test_a_barrier_on_no_wires_is_imported_as_nothing():
    def qfunc():
        qml.Hadamard(0)
        qml.Barrier(wires=[])
        qml.CNOT([0, 1])

    assert [g.name for g in from_pennylane(qfunc).gates] == ["H", "CX"]


@pytest.mark.parametrize("record, message", [
    (lambda: qml.RX(float("inf"), wires=0), "an angle is inf"),
    (lambda: qml.RY(float("nan"), wires=0), "an angle is nan"),
    (lambda: [qml.GlobalPhase(1.7e308, wires=0) for _ in range(2)], "out of range"),
])
def test_nan_and_infinite_angles_are_refused(record, message):
    with pytest.raises(InteropError, match=message):
        from_pennylane(record, wires=1)
