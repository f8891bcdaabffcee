"""Qiskit conversions: bit order, parameters, library circuits, every gate form."""

from __future__ import annotations

import numpy as np
import pytest
import qiskit
import scipy.linalg
from qiskit.circuit import Parameter as QiskitParameter
from qiskit.circuit import ParameterVectorElement, QuantumCircuit
from qiskit.circuit.library import (
    PauliEvolutionGate,
    RYGate,
    XGate,
    n_local,
    real_amplitudes,
)
from qiskit.quantum_info import Operator, SparseObservable, SparsePauliOp

from qpeft.ansatz import hardware_efficient, pauli
from qpeft.ansatz import real_amplitudes as qpeft_real_amplitudes
from qpeft.circuit import (
    RY,
    Barrier,
    Circuit,
    Parameter,
    ParameterVector,
    PauliRotation,
    SignDiagonal,
    Unitary,
    X,
    controlled,
    unitary,
)
from qpeft.errors import InteropError
from qpeft.interop.qiskit import from_qiskit, qiskit_parameter_values, to_qiskit


def qiskit_matrix(qc: QuantumCircuit, values: dict[str, float]) -> np.ndarray:
    """Qiskit's unitary in qpeft's bit order, parameters assigned by name
    (Qiskit sorts parameters, qpeft orders them by first appearance)."""
    if qc.parameters:
        qc = qc.assign_parameters(qiskit_parameter_values(qc, values))
    return Operator(qc.reverse_bits()).data


def random_values(circuit: Circuit, seed: int = 7) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {name: float(rng.uniform(-np.pi, np.pi)) for name in circuit.parameters}


def test_wire_zero_is_qiskit_qubit_zero_and_reverse_bits_gives_qpeft_order():
    circuit = Circuit(2).x(0)  # |00> -> |10>: index 2 in qpeft's order
    qc = to_qiskit(circuit)
    assert [qc.find_bit(q).index for q in qc.data[0].qubits] == [0]
    identity, flip = np.eye(2), np.array([[0, 1], [1, 0]])
    np.testing.assert_allclose(Operator(qc).data, np.kron(identity, flip))  # qubit 0 = LSB
    np.testing.assert_allclose(Operator(qc.reverse_bits()).data, circuit.matrix())
    np.testing.assert_allclose(circuit.matrix(), np.kron(flip, identity))


def test_parameter_names_vectors_sharing_and_affine_angles():
    theta = ParameterVector("theta", 4)
    alpha = Parameter("alpha")
    circuit = (Circuit(3).ry(0, theta[3]).ry(1, theta[1]).rx(2, 2 * theta[1] + 0.5)
               .rz(0, alpha).ry(2, theta[3]))
    qc = to_qiskit(circuit)
    names = sorted(p.name for p in qc.parameters)
    assert names == ["alpha", "theta[1]", "theta[3]"]
    elements = [p for p in qc.parameters if isinstance(p, ParameterVectorElement)]
    assert {p.vector.name for p in elements} == {"theta"}
    assert len({id(p.vector) for p in elements}) == 1  # one ParameterVector, shared
    assert len(elements[0].vector) == 4
    first, last = qc.data[0].operation.params[0], qc.data[4].operation.params[0]
    assert first is last or first == last  # theta[3] shared by two gates
    values = random_values(circuit)
    np.testing.assert_allclose(qiskit_matrix(qc, values), circuit.matrix(values), atol=1e-12)
    assert from_qiskit(qc) == circuit


def test_pauli_labels_are_reversed_for_qiskit():
    circuit = Circuit(3).pauli_rotation("XYZ", [0, 2, 1], 0.7)
    qc = to_qiskit(circuit)
    operation = qc.data[0].operation
    if operation.name == "pauli_product_rotation":
        assert operation.pauli().to_label() == "ZYX"  # read right to left
    np.testing.assert_allclose(qiskit_matrix(qc, {}), circuit.matrix(), atol=1e-12)
    assert from_qiskit(qc) == circuit


def test_pauli_evolution_gate_is_used_before_qiskit_2_4(monkeypatch):
    monkeypatch.delattr(qiskit.circuit.library, "PauliProductRotationGate")
    circuit = Circuit(3).pauli_rotation("XZY", [2, 0, 1], "a").ry(1, "b")
    qc = to_qiskit(circuit)
    assert qc.data[0].operation.name == "PauliEvolution"
    values = random_values(circuit)
    np.testing.assert_allclose(qiskit_matrix(qc, values), circuit.matrix(values), atol=1e-12)
    assert from_qiskit(qc) == circuit


def test_real_amplitudes_function_imports_with_the_same_matrix():
    qc = real_amplitudes(4, reps=2)  # parameters θ[0] … θ[11]
    circuit = from_qiskit(qc)
    assert circuit.parameters == tuple(f"theta[{k}]" for k in range(12))
    values = random_values(circuit)
    by_qiskit_name = {p.name: values[p.name.replace("θ", "theta")] for p in qc.parameters}
    np.testing.assert_allclose(circuit.matrix(values), qiskit_matrix(qc, by_qiskit_name),
                               atol=1e-12)
    # qpeft's own builder has the same structure (reverse-linear CX entanglers)
    builder = qpeft_real_amplitudes(4, 2)
    np.testing.assert_allclose(builder.matrix(values), circuit.matrix(values), atol=1e-12)


@pytest.mark.parametrize("entanglement", ["linear", "reverse_linear", "circular", "full"])
@pytest.mark.parametrize("qubits", [2, 3, 4])
def test_real_amplitudes_entanglements_are_qiskits(entanglement, qubits):
    qc = real_amplitudes(qubits, reps=2, entanglement=entanglement)
    circuit = from_qiskit(qc)
    values = random_values(circuit)
    builder = qpeft_real_amplitudes(qubits, 2, entanglement=entanglement)
    np.testing.assert_allclose(builder.matrix(values), circuit.matrix(values), atol=1e-12)


def test_n_local_ry_cz_imports_with_the_same_matrix():
    qc = n_local(4, "ry", "cz", reps=2, entanglement="linear")
    circuit = from_qiskit(qc)
    assert {g.name for g in circuit.gates} == {"RY", "CZ"}
    values = random_values(circuit)
    by_qiskit_name = {p.name: values[p.name.replace("θ", "theta")] for p in qc.parameters}
    np.testing.assert_allclose(circuit.matrix(values), qiskit_matrix(qc, by_qiskit_name),
                               atol=1e-12)
    builder = hardware_efficient(4, 2, entanglement="linear")
    np.testing.assert_allclose(builder.matrix(values), circuit.matrix(values), atol=1e-12)


def test_custom_parameterized_block_is_decomposed():
    a, b = QiskitParameter("a"), QiskitParameter("b")
    block = QuantumCircuit(2, name="block")
    block.ry(a, 0)
    block.cx(0, 1)
    block.rzz(2 * b - 0.25, 0, 1)
    block.rzx(a, 1, 0)
    block.ryy(-b, 0, 1)
    block.sx(1)
    block.t(0)
    qc = QuantumCircuit(3)
    qc.append(block.to_gate(), [2, 0])
    qc.append(block.to_gate(), [0, 1])
    circuit = from_qiskit(qc)
    values = {"a": 0.4, "b": -1.3}
    np.testing.assert_allclose(circuit.matrix(values), qiskit_matrix(qc, values), atol=1e-12)


def test_u_and_phase_gates_keep_their_global_phase():
    a, b = QiskitParameter("a"), QiskitParameter("b")
    qc = QuantumCircuit(2)
    qc.u(a, 0.2, b, 0)
    qc.p(a, 1)
    qc.cp(0.4, 0, 1)
    qc.global_phase = 0.3
    circuit = from_qiskit(qc)
    values = {"a": 0.9, "b": -0.4}
    np.testing.assert_allclose(circuit.matrix(values), qiskit_matrix(qc, values), atol=1e-12)


def test_constant_global_phase_becomes_a_real_sign_or_a_phase_matrix():
    qc = QuantumCircuit(2)
    qc.ry(0.3, 0)
    qc.global_phase = np.pi
    circuit = from_qiskit(qc)
    assert isinstance(circuit.gates[-1], SignDiagonal) and circuit.is_real
    np.testing.assert_allclose(circuit.matrix(), qiskit_matrix(qc, {}), atol=1e-12)
    qc.global_phase = 0.7
    circuit = from_qiskit(qc)
    assert isinstance(circuit.gates[-1], Unitary)
    np.testing.assert_allclose(circuit.matrix(), qiskit_matrix(qc, {}), atol=1e-12)


def test_controlled_gates_in_every_form():
    a = QiskitParameter("a")
    qc = QuantumCircuit(4)
    qc.cry(a, 2, 0, ctrl_state=0)
    qc.ccx(0, 3, 1)
    qc.append(XGate().control(3, ctrl_state="010", annotated=False), [3, 1, 0, 2])
    qc.append(RYGate(2 * a).control(2, ctrl_state=1, annotated=True), [1, 2, 3])
    qc.cswap(1, 0, 3)
    qc.cu(0.3, 0.2, 0.1, 0.4, 0, 2)  # CU carries an extra phase parameter
    qc.ch(3, 2)
    circuit = from_qiskit(qc)
    values = {"a": 0.65}
    np.testing.assert_allclose(circuit.matrix(values), qiskit_matrix(qc, values), atol=1e-12)


def test_controlled_qpeft_gates_including_nested_and_pauli_strings():
    inner = controlled(RY(3, "a"), [2], [[0]])
    circuit = (Circuit(4)
               .append(controlled(inner, [0], [[1]]))
               .append(controlled(PauliRotation("ZX", (1, 3), (Parameter("b")._expr(),)), [0, 2],
                                  [[0], [1]]))
               .append(controlled(X(2), [1, 3], [[1], [1]]))
               .append(controlled(PauliRotation("II", (0, 1), (Parameter("a") * 0.5,)), [3]))
               .append(controlled(SignDiagonal((1, 3), (1, -1, -1, -1)), [0], [[0]]))
               .append(controlled(unitary(np.linalg.qr(np.arange(4.0).reshape(2, 2) + 1)[0], 2),
                                  [3, 1])))
    circuit.rx(0, "a")  # complex anyway: the all-I rotation is a phase
    qc = to_qiskit(circuit)
    values = {"a": 0.8, "b": -2.1}
    np.testing.assert_allclose(qiskit_matrix(qc, values), circuit.matrix(values), atol=1e-12)
    np.testing.assert_allclose(from_qiskit(qc).matrix(values), circuit.matrix(values),
                               atol=1e-12)


def test_pauli_evolution_of_commuting_terms_and_refusal_of_others():
    t = QiskitParameter("t")
    qc = QuantumCircuit(2)
    qc.append(PauliEvolutionGate(SparsePauliOp(["XY", "ZZ"], coeffs=[0.5, -1.0]), t), [0, 1])
    circuit = from_qiskit(qc)
    assert [g.name for g in circuit.gates] == ["R[YX]", "R[ZZ]"]
    np.testing.assert_allclose(circuit.matrix({"t": 0.3}), qiskit_matrix(qc, {"t": 0.3}),
                               atol=1e-12)
    bad = QuantumCircuit(2)
    bad.append(PauliEvolutionGate(SparsePauliOp(["XI", "ZI"]), 0.3), [0, 1])
    with pytest.raises(InteropError, match="non-commuting"):
        from_qiskit(bad)


@pytest.mark.parametrize("operator", [
    [SparsePauliOp("XI"), SparsePauliOp("ZI")],
    SparseObservable.from_list([("XI", 1.0), ("ZI", 0.5)]),
    [SparseObservable.from_list([("XY", 0.5)]), SparsePauliOp("ZI")],
])
def test_pauli_evolution_of_non_commuting_lists_and_sparse_observables_is_refused(operator):
    # these forms once went through Qiskit's Lie-Trotter synthesis: a matrix off by 0.4
    qc = QuantumCircuit(2)
    qc.append(PauliEvolutionGate(operator, 0.7), [0, 1])
    with pytest.raises(InteropError, match="non-commuting"):
        from_qiskit(qc)


@pytest.mark.parametrize("operator", [
    [SparsePauliOp("XY", 0.5), SparsePauliOp("ZZ", -1.0)],
    SparseObservable.from_list([("XY", 0.5), ("ZZ", -1.0)]),
    [SparseObservable.from_list([("XY", 0.5)]), SparsePauliOp("ZZ", -1.0)],
])
def test_pauli_evolution_of_commuting_lists_and_sparse_observables(operator):
    qc = QuantumCircuit(2)
    qc.append(PauliEvolutionGate(operator, QiskitParameter("t")), [0, 1])
    circuit = from_qiskit(qc)
    assert [g.name for g in circuit.gates] == ["R[YX]", "R[ZZ]"]
    reference = SparsePauliOp(["XY", "ZZ"], coeffs=[0.5, -1.0]).to_matrix()
    exact = scipy.linalg.expm(-0.3j * reference)  # exp(-itH), Qiskit's bit order
    np.testing.assert_allclose(Operator(qc.assign_parameters([0.3])).data, exact, atol=1e-12)
    np.testing.assert_allclose(qiskit_matrix(qc, {"t": 0.3}), circuit.matrix({"t": 0.3}),
                               atol=1e-12)


def test_foreign_parameter_names_are_cleaned_and_kept_distinct():
    qc = QuantumCircuit(1)
    qc.ry(QiskitParameter("θ"), 0)
    qc.rx(QiskitParameter("my angle"), 0)
    qc.rz(QiskitParameter("my_angle"), 0)
    # a name that is already valid keeps it; the cleaned one gets the suffix
    assert from_qiskit(qc).parameters == ("theta", "my_angle_2", "my_angle")


def test_qpeft_names_next_to_qiskit_names_that_clean_to_them_are_kept():
    """Binding ``theta[0]`` by name must set the gate that was called so."""
    ours = to_qiskit(Circuit(2).ry(0, "theta[0]").ry(1, "theta[1]"))
    mixed = QuantumCircuit(2)
    mixed.compose(real_amplitudes(2, reps=0), inplace=True)  # θ[0], θ[1]
    mixed.compose(ours, inplace=True)
    circuit = from_qiskit(mixed)
    assert circuit.parameters == ("theta_2[0]", "theta_2[1]", "theta[0]", "theta[1]")
    values = {"theta[0]": 0.3, "theta[1]": -0.4, "theta_2[0]": 1.1, "theta_2[1]": 0.2}
    qiskit_values = {p: values[{"θ[0]": "theta_2[0]", "θ[1]": "theta_2[1]"}.get(p.name, p.name)]
                     for p in mixed.parameters}
    expected = Operator(mixed.assign_parameters(qiskit_values).reverse_bits()).data
    np.testing.assert_allclose(circuit.matrix(values), expected, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: Circuit(2).ry(0, "a").rx(1, "b").cz(0, 1).inverse(),
    lambda: Circuit(3).ry(0, "z").ry(1, "a").ry(2, "m").cz(0, 2),  # Qiskit sorts: a, m, z
    lambda: qpeft_real_amplitudes(3, 1).reorder(
        list(reversed(qpeft_real_amplitudes(3, 1).parameters))),
])
def test_the_round_trip_keeps_the_parameter_order(make):
    """Qiskit sorts parameters by name; the order travels in the metadata, so
    the same vector of values drives the same gates after the round trip."""
    circuit = make()
    qc = to_qiskit(circuit)
    assert qc.metadata["qpeft_parameters"] == list(circuit.parameters)
    back = from_qiskit(qc)
    assert back == circuit
    values = np.linspace(-1.0, 1.3, circuit.num_parameters)
    np.testing.assert_allclose(back.matrix(values), circuit.matrix(values), atol=1e-12)
    lowered = from_qiskit(qiskit.transpile(qc, basis_gates=["ry", "rx", "rz", "cx"],
                                           optimization_level=0))
    assert lowered.parameters == circuit.parameters


def test_a_stale_parameter_order_in_the_metadata_is_ignored():
    qc = to_qiskit(Circuit(2).ry(0, "b").ry(1, "a"))
    qc.metadata = {"qpeft_parameters": ["a", "b", "c"]}
    assert from_qiskit(qc).parameters == ("b", "a")
    qc.metadata = {"qpeft_parameters": "ab"}
    assert from_qiskit(qc).parameters == ("b", "a")
    qc.metadata = {"qpeft_parameters": [["a"], ["b"]]}
    assert from_qiskit(qc).parameters == ("b", "a")


def test_qudit_circuits_are_refused_with_a_pointer_to_the_embedding():
    with pytest.raises(InteropError, match="embed_in_qubits"):
        to_qiskit(Circuit([3, 2]).gcz(0, 1))


def test_measurements_and_non_affine_angles_are_refused():
    qc = QuantumCircuit(1, 1)
    qc.h(0)
    qc.measure(0, 0)
    with pytest.raises(InteropError, match="remove_final_measurements"):
        from_qiskit(qc)
    a = QiskitParameter("a")
    qc = QuantumCircuit(1)
    qc.ry(a * a, 0)
    with pytest.raises(InteropError, match="not affine"):
        from_qiskit(qc)
    with pytest.raises(InteropError, match="QuantumCircuit"):
        from_qiskit("not a circuit")


def test_round_trip_of_the_pauli_ansatz_keeps_barriers_and_names():
    circuit = pauli(4, 2)
    back = from_qiskit(to_qiskit(circuit))
    assert back == circuit
    assert back.name == circuit.name
    assert [g.text for g in back.gates if g.name == "barrier"] == ["layer 1", "layer 2"]


def test_a_controlled_barrier_is_written_as_its_barrier_by_both_exporters():
    # to_qiskit once refused it ("Barrier gates have no Qiskit counterpart")
    import pennylane as qml

    from qpeft.interop.pennylane import to_pennylane

    circuit = (Circuit(3).ry(0, "a").append(controlled(Barrier((1, 2), "mid"), [0]))
               .append(controlled(controlled(Barrier((2,)), [1]), [0], [[0]])).cx(0, 2))
    qc = to_qiskit(circuit)
    barriers = [i for i in qc.data if i.operation.name == "barrier"]
    assert [[qc.find_bit(q).index for q in i.qubits] for i in barriers] == [[1, 2], [2]]
    assert barriers[0].operation.label == "mid"
    operations = qml.tape.make_qscript(to_pennylane(circuit))([0.4]).operations
    assert [list(op.wires) for op in operations if op.name == "Barrier"] == [[1, 2], [2]]
    np.testing.assert_allclose(qiskit_matrix(qc, {"a": 0.4}), circuit.matrix([0.4]),
                               atol=1e-12, rtol=0)
    pennylane_matrix = qml.matrix(to_pennylane(circuit), wire_order=range(3))([0.4])
    np.testing.assert_allclose(pennylane_matrix, circuit.matrix([0.4]), atol=1e-12, rtol=0)
    back = from_qiskit(qc)
    assert [g for g in back.gates if g.name == "barrier"] == [Barrier((1, 2), "mid"),
                                                               Barrier((2,))]


def test_foreign_indices_with_leading_zeros_become_distinct_qpeft_names():
    qc = QuantumCircuit(1)
    qc.ry(QiskitParameter("w[01]"), 0)
    qc.rx(QiskitParameter("w[1]"), 0)
    assert from_qiskit(qc).parameters == ("w_2[1]", "w[1]")  # the valid name keeps it


def test_a_controlled_gate_with_one_base_on_several_targets_uses_its_definition():
    """MCMTGate is a ControlledGate whose 1-qubit base acts on each target."""
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import MCMTGate, RYGate, XGate
    from qiskit.quantum_info import Operator

    for base in (RYGate(0.4), XGate()):
        qc = QuantumCircuit(3)
        qc.append(MCMTGate(base, 1, 2), [0, 1, 2])
        np.testing.assert_allclose(from_qiskit(qc).matrix(), Operator(qc.reverse_bits()).data,
                                   atol=1e-12)


def test_a_barrier_on_no_qubits_is_imported_as_nothing():
    from qiskit.circuit.library import Barrier as QiskitBarrier

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.append(QiskitBarrier(0), [])
    qc.cx(0, 1)
    assert [g.name for g in from_qiskit(qc).gates] == ["H", "CX"]


def test_a_gate_whose_definition_raises_is_a_typed_refusal():
    """HamiltonianGate of a Parameter raises TypeError when asked for its definition."""
    from qiskit.circuit.library import HamiltonianGate

    qc = QuantumCircuit(1)
    qc.append(HamiltonianGate(np.diag([1.0, -1.0]), QiskitParameter("t")), [0])
    with pytest.raises(InteropError, match="assign its parameters first"):
        from_qiskit(qc)


def _one_gate(add) -> QuantumCircuit:
    qc = QuantumCircuit(1)
    add(qc)
    return qc


@pytest.mark.parametrize("qc, message", [
    (_one_gate(lambda qc: qc.ry(float("nan"), 0)), "an angle is nan"),
    (_one_gate(lambda qc: qc.rz(float("-inf"), 0)), "an angle is -inf"),
    (_one_gate(lambda qc: qc.ry(QiskitParameter("a") * 1e308 * 10, 0)), "slope .* is inf"),
    (_one_gate(lambda qc: setattr(qc, "global_phase", float("inf"))), "an angle is nan"),
    (_one_gate(lambda qc: qc.u(0.1, 1e308, 1e308, 0)), "out of range: constant is inf"),
])
def test_nan_and_infinite_angles_are_refused(qc, message):
    """A NaN angle would import as a NaN matrix whose JSON cannot be read back."""
    with pytest.raises(InteropError, match=message):
        from_qiskit(qc)


def test_default_control_levels_come_back_explicit_and_nested_controls_merged():
    """The normalisations docs/interop.md lists for the Qiskit round trip."""
    default = Circuit(2).append(controlled(RY(1, "a"), [0]))
    assert from_qiskit(to_qiskit(default)) == Circuit(2).append(controlled(RY(1, "a"), [0], [[1]]))
    nested = Circuit(3).append(controlled(controlled(RY(2, "a"), [1], [[0]]), [0]))
    merged = Circuit(3).append(controlled(RY(2, "a"), [0, 1], [[1], [0]]))
    assert from_qiskit(to_qiskit(nested)) == merged
