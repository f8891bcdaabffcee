"""OpenQASM 2 and 3 out and in: the round trip keeps the matrix (phase included)."""

from __future__ import annotations

import numpy as np
import pytest

from qpeft.ansatz import pauli
from qpeft.circuit import CZ, RX, RY, SWAP, Circuit, Parameter, ParameterVector, X, controlled
from qpeft.errors import InteropError, QpeftError
from qpeft.interop import qasm
from qpeft.interop.qasm import from_qasm, to_qasm


def mixed_circuit() -> Circuit:
    """Every kind of qubit gate, a shared vector parameter, affine angles and
    an all-identity rotation (a global phase, which OpenQASM cannot state)."""
    theta = ParameterVector("theta", 3)
    circuit = (Circuit(3).ry(0, theta[0]).rx(1, 2 * theta[2] + 0.3).cz(0, 1)
               .pauli_rotation("XIY", [2, 0, 1], theta[0]).swap(0, 2).h(1).y(2)
               .append(controlled(RY(2, Parameter("b")), [0, 1], [[1], [0]]))
               .unitary(np.linalg.qr(np.arange(16.0).reshape(4, 4) + np.eye(4))[0], [2, 0])
               .gcz(1, 2).barrier("end"))
    return circuit.pauli_rotation("II", [0, 1], theta[2])


VALUES = {"theta[0]": 0.37, "theta[2]": -1.1, "b": 0.8}


def test_openqasm_2_round_trip_keeps_the_matrix_and_phase():
    circuit = mixed_circuit().bind(VALUES)
    text = to_qasm(circuit, version=2)
    assert text.startswith("OPENQASM 2.0;")
    back = from_qasm(text)
    np.testing.assert_allclose(back.matrix(), circuit.matrix(), atol=1e-10)


def test_openqasm_2_uses_only_the_gates_of_the_original_qelib1():
    # p, swap, crx, cry and cswap are Qiskit's additions to qelib1.inc; Qiskit's
    # own reader refuses them without its legacy custom instructions
    from qiskit import qasm2
    from qiskit.quantum_info import Operator

    circuit = (mixed_circuit().append(controlled(RX(2, 0.4), [0]))
               .append(controlled(RY(1, -0.7), [2], [[0]]))
               .append(controlled(SWAP(1, 2), [0])).bind(VALUES))
    text = to_qasm(circuit, version=2)
    body = text.splitlines()[3:]  # after the header, the include and the register
    assert {line.split("(")[0].split(" ")[0] for line in body} <= {*qasm.QASM2_GATES, "barrier"}
    strict = qasm2.loads(text)  # the paper's qelib1.inc only
    np.testing.assert_allclose(Operator(strict.reverse_bits()).data, circuit.matrix(),
                               atol=1e-12, rtol=0)
    np.testing.assert_allclose(from_qasm(text).matrix(), circuit.matrix(), atol=1e-12, rtol=0)


def test_openqasm_3_keeps_parameters_as_inputs():
    text = to_qasm(mixed_circuit())
    assert text.startswith("OPENQASM 3.0;")
    assert "input float[64] b;" in text
    assert "input float[64] theta_0_;" in text  # theta[0] as an identifier
    # every input, in the circuit's parameter order
    order = ", ".join(f'"{name.replace("[", "_").replace("]", "_")}": "{name}"'
                      for name in mixed_circuit().parameters)
    assert text.splitlines()[1] == "// qpeft parameters: {" + order + "}"


def test_openqasm_3_round_trip_when_the_importer_is_installed():
    circuit = mixed_circuit()
    back = from_qasm(to_qasm(circuit))
    assert set(back.parameters) == {"theta[0]", "theta[2]", "b"}
    np.testing.assert_allclose(back.matrix(VALUES), circuit.matrix(VALUES), atol=1e-10)


def test_openqasm_3_restores_names_that_escape_onto_each_other():
    """theta[2], _theta_2_ (Qiskit's escape of theta[2]) and theta_2_ (the
    identifier of theta[2]) come back as themselves, not merged or swapped."""
    circuit = (Circuit(2).ry(0, "theta[2]").ry(1, "_theta_2_").cz(0, 1)
               .ry(0, "theta_2_").rx(1, "a[0]"))
    text = to_qasm(circuit)
    back = from_qasm(text)
    assert back.parameters == circuit.parameters
    values = np.linspace(-1, 1, circuit.num_parameters)
    np.testing.assert_allclose(back.matrix(values), circuit.matrix(values), atol=1e-12)
    # without the names line: Qiskit's escapes are undone where the name is free
    foreign = from_qasm("\n".join(line for line in text.splitlines()
                                  if not line.startswith(qasm.NAMES_COMMENT)))
    assert set(foreign.parameters) == {"theta[2]", "theta_2_", "theta_2__1", "a_0_"}


def test_openqasm_3_restores_names_qiskit_would_rename() -> None:
    """Qiskit renames inputs that clash with a keyword, a constant or a gate name
    (gate, pi, input, h); they get identifiers of their own, and the names line
    gives every name back, also next to names that look like Qiskit's renames."""
    circuit = (Circuit(2).ry(0, "h").ry(1, "h_0").cz(0, 1).rx(0, "pi").ry(1, "input")
               .rx(1, "h_").ry(0, "gate").rx(0, "theta[2]"))
    back = from_qasm(to_qasm(circuit))
    assert sorted(back.parameters) == sorted(circuit.parameters)
    values = dict(zip(circuit.parameters, np.linspace(-1, 1, circuit.num_parameters)))
    np.testing.assert_allclose(back.matrix(values), circuit.matrix(values), atol=1e-12)


@pytest.mark.parametrize("line, message", [
    ('// qpeft parameters: [1, 2]', "JSON object"),
    ('// qpeft parameters: {"zz": "q[1]"}', "names input.s. zz that the program does not"),
    ('// qpeft parameters: {"b": "theta_2_"}', "do not fit"),  # b onto another input
])
def test_a_broken_names_line_is_an_interop_error(line: str, message: str) -> None:
    text = to_qasm(mixed_circuit()).splitlines()
    text[1] = line
    with pytest.raises(InteropError, match=message):
        from_qasm("\n".join(text))


def test_reading_openqasm_3_without_the_importer_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(qasm, "qasm3_import_available", lambda: False)
    with pytest.raises(InteropError, match="pip install qiskit-qasm3-import"):
        from_qasm(to_qasm(pauli(2, 1)))


def test_pauli_ansatz_round_trips_through_openqasm_2():
    circuit = pauli(3, 1)
    values = np.linspace(-1, 1, circuit.num_parameters)
    back = from_qasm(to_qasm(circuit.bind(values), version=2))
    assert {g.name for g in back.gates} == {"RY", "CZ", "barrier"}
    np.testing.assert_allclose(back.matrix(), circuit.matrix(values), atol=1e-12)


@pytest.mark.parametrize("version", [4, 1, "3", 2.0, True, None])
def test_an_unknown_version_is_refused_before_any_lowering(monkeypatch, version):
    def refuse_lowering(circuit):
        raise AssertionError("the circuit was lowered before the version was checked")

    monkeypatch.setattr(qasm, "_lowered", refuse_lowering)
    with pytest.raises(InteropError, match=r"unknown OpenQASM version .*; use 2 or 3") as caught:
        to_qasm(pauli(2, 1), version=version)
    assert isinstance(caught.value, QpeftError)


def test_helpful_errors():
    with pytest.raises(InteropError, match="bind them first"):
        to_qasm(pauli(2, 1), version=2)
    with pytest.raises(InteropError, match="use 2 or 3"):
        to_qasm(Circuit(1).h(0), version=4)
    with pytest.raises(InteropError, match="header"):
        from_qasm("qreg q[1];")
    with pytest.raises(InteropError, match="invalid OpenQASM 2"):
        from_qasm("OPENQASM 2.0;\nqreg q[1];\nfoo q[0];")
    with pytest.raises(InteropError, match="embed_in_qubits"):
        to_qasm(Circuit([3]).givens(0, (0, 2), 0.1))


def test_openqasm_3_keeps_the_parameter_order_when_lowering_reorders_gates():
    """Qiskit's lowering emits gates on different wires by wire; the names line
    carries the order, so the same vector of values drives the same gates."""
    circuit = Circuit(3).ry(2, "a").ry(1, "b").rx(0, "c").cz(0, 2)
    back = from_qasm(to_qasm(circuit))
    assert back.parameters == ("a", "b", "c")
    values = [0.3, -0.7, 1.1]
    np.testing.assert_allclose(back.matrix(values), circuit.matrix(values), atol=1e-12)


@pytest.mark.parametrize("name", ["true", "false", "switch", "case", "default", "input", "pi"])
def test_openqasm_3_keywords_as_names_give_a_readable_program(name: str) -> None:
    circuit = Circuit(2).ry(0, name).ry(1, "x").cz(0, 1)
    text = to_qasm(circuit)
    assert f"input float[64] {name};" not in text
    back = from_qasm(text)
    assert back.parameters == (name, "x")
    np.testing.assert_allclose(back.matrix([0.4, -0.2]), circuit.matrix([0.4, -0.2]), atol=1e-12)


def test_a_name_that_looks_like_a_qiskit_escape_survives():
    circuit = Circuit(1).ry(0, "_theta_0_")
    assert from_qasm(to_qasm(circuit)).parameters == ("_theta_0_",)


def test_a_syntax_error_is_an_interop_error(capfd):
    with pytest.raises(InteropError, match="invalid OpenQASM 3 program"):
        from_qasm('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nry( q[0];\n')
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("circuit", [
    Circuit(5).append(controlled(SWAP(2, 3), [0, 1])),  # wire 4 idle throughout
    Circuit(5).append(controlled(X(3), [0, 1, 2])).h(4),  # wire 4 used only later
    Circuit(5).append(controlled(CZ(2, 3), [0, 1])),
    Circuit(6).append(controlled(RY(4, 0.3), [0, 1, 2, 3])).cz(5, 0),
])
def test_multi_controlled_gates_keep_the_whole_matrix_with_spare_wires(circuit, version):
    """The lowering may not use a wire that is idle so far as a |0> scratch qubit:
    that is exact on inputs with the wire in |0> only."""
    back = from_qasm(to_qasm(circuit, version=version))
    np.testing.assert_allclose(back.matrix(), circuit.matrix(), atol=1e-12)


def test_comments_may_come_before_the_header():
    text = ('// ported from an OPENQASM 2 file\n/* OPENQASM 2.0; */\nOPENQASM 3.0;\n'
            'include "stdgates.inc";\nqubit[1] q;\nh q[0];\n')
    assert from_qasm(text) == Circuit(1).h(0)


@pytest.mark.parametrize("text", [
    'OPENQASM 2.0;\ninclude "qelib1.inc";\ninclude "{path}";\nqreg q[1];\n',
    'OPENQASM 3.0;\ninclude "{path}";\nqubit[1] q;\n',
    'OPENQASM 2.0;\ninclude "stdgates.inc";\nqreg q[1];\n',
])
def test_a_program_cannot_include_other_files(tmp_path, text):
    """Only the standard gate library: a program handed to us cannot make
    from_qasm read a file on this machine, even one that holds valid gates."""
    target = tmp_path / "defs.inc"
    target.write_text("gate g a { h a; }\n")
    with pytest.raises(InteropError, match="reads no other file than the standard"):
        from_qasm(text.format(path=target))


@pytest.mark.parametrize("line", ["h q[3];", "cx q[0];", "for int i in [0:1] { h q[i]; }"])
def test_faults_the_openqasm_3_importer_misses_are_interop_errors(line):
    with pytest.raises(InteropError, match="invalid OpenQASM 3 program"):
        from_qasm(f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n{line}\n')


QASM2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\n'
QASM3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\n'


@pytest.mark.parametrize("text, message", [
    (QASM2 + "ry(1e400*0) q[0];\n", "an angle is nan"),
    (QASM2 + "ry(1e400) q[0];\n", "an angle is inf"),
    (QASM2 + "u3(0.1,1e308,1e308) q[0];\n", "out of range"),
    (QASM3 + "ry(1e400) q[0];\n", "an angle is inf"),
    (QASM3 + "ry(-1e400*0) q[0];\n", "an angle is nan"),
])
def test_nan_and_infinite_angles_are_interop_errors(text, message):
    with pytest.raises(InteropError, match=message):
        from_qasm(text)


@pytest.mark.parametrize("line, message", [
    ("ry(1/0) q[0];", "ZeroDivisionError"),
    ("ry(1.0/0.0) q[0];", "ZeroDivisionError"),
    ("pi q[0];", "AttributeError"),
    ("ry(" + "(" * 3000 + "1" + ")" * 3000 + ") q[0];", "nests too deeply"),
    ("ry(" + "-" * 3000 + "1) q[0];", "nests too deeply"),
])
def test_faults_of_the_openqasm_3_evaluator_are_interop_errors(line, message):
    with pytest.raises(InteropError, match=message):
        from_qasm(QASM3 + line + "\n")


def test_an_interop_error_says_something_when_the_parser_says_nothing():
    text = QASM3 + "input float[64] pragma;\nry(pragma) q[0];\n"
    with pytest.raises(InteropError, match=r"program: \w+Error \(no message\)"):
        from_qasm(text)


def test_openqasm_3_writes_angles_exactly():
    """Qiskit's default writes an angle within 1e-9 of a multiple of pi/k as
    that multiple, and a tiny one as 0."""
    a = Parameter("a")
    for circuit, values in [(Circuit(1).ry(0, np.pi + 9e-10), []),
                            (Circuit(1).ry(0, 4e-10), []),
                            (Circuit(1).ry(0, a + (np.pi / 2 + 8e-10)), [0.3])]:
        back = from_qasm(to_qasm(circuit))
        np.testing.assert_allclose(back.matrix(values), circuit.matrix(values), atol=1e-12,
                                   rtol=0)
        assert back == circuit


def test_pragma_is_a_reserved_openqasm_3_name():
    assert "pragma" in qasm.RESERVED
    circuit = Circuit(1).ry(0, "pragma")
    assert "input float[64] pragma_;" in to_qasm(circuit)
    assert from_qasm(to_qasm(circuit)) == circuit


@pytest.mark.parametrize("number", [9.2e18, 2.0**63, 1e19, -1e19, 1.2345678901234567e20, 1e300])
def test_large_whole_coefficients_and_constants_read_back(number):
    """Qiskit writes them with all their digits, as integers its reader refuses
    beyond 64 bits; to_qasm writes them as floats."""
    a = Parameter("a")
    for angle in (number * a, a + number, number * a - number):
        circuit = Circuit(1).ry(0, angle)
        assert from_qasm(to_qasm(circuit)) == circuit
