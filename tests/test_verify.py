"""verify(): agreement with Qiskit and PennyLane, detection of a wrong
circuit, qudit embedding, and the ``qpeft verify`` command."""

from __future__ import annotations

import time

import numpy as np
import pytest

import qpeft.interop.pennylane as pennylane_interop
import qpeft.interop.qiskit as qiskit_interop
from qpeft.ansatz import pauli
from qpeft.circuit import Circuit, GeneralizedCZ
from qpeft.cli import main
from qpeft.errors import ConfigError, InteropError, ParameterError, QpeftError
from qpeft.interop.verify import (
    FULL_LIMIT,
    VerificationReport,
    embed_in_qubits,
    embedded_index,
    verify,
)


def test_pauli_12_qubits_first_8_columns_agree_with_both_in_seconds():
    circuit = pauli(12, 2)
    start = time.perf_counter()
    report = verify(circuit, columns=8)
    elapsed = time.perf_counter() - start
    print(f"\n{report}\nverify(pauli(12, 2), columns=8): {elapsed:.2f} s in all")
    assert report.ok
    assert [r.name for r in report.results] == ["qiskit", "pennylane"]
    assert all(r.max_error <= 1e-10 for r in report.results)
    assert report.columns == tuple(range(8))


def test_small_circuits_compare_full_unitaries():
    report = verify(pauli(4, 2), values=np.linspace(-2, 2, 4 * 5 - 4))
    assert report.ok and report.columns is None and report.compared == "full unitary"
    assert pauli(8, 1).dimension <= FULL_LIMIT < pauli(9, 1).dimension
    assert verify(pauli(9, 1), against="qiskit").columns == tuple(range(8))


def _perturbed(converter):
    """``converter`` applied to the circuit with one gate's angle nudged."""

    def wrong(circuit):
        gates = list(circuit.gates)
        index = next(i for i, g in enumerate(gates) if g.params)
        gates[index] = gates[index].with_params([gates[index].params[0] + 1e-3])
        return converter(Circuit(circuit.dims).extend(gates))

    return wrong


def test_a_wrong_conversion_is_caught(monkeypatch):
    circuit = pauli(5, 1)
    monkeypatch.setattr(qiskit_interop, "to_qiskit", _perturbed(qiskit_interop.to_qiskit))
    report = verify(circuit, columns=[0, 5, 31])
    qiskit_result, pennylane_result = report.results
    assert not qiskit_result.passed and qiskit_result.max_error > 1e-5
    assert pennylane_result.passed
    assert not report.ok
    assert "FAIL" in str(report) and str(report).endswith("MISMATCH")
    monkeypatch.setattr(pennylane_interop, "to_pennylane",
                        _perturbed(pennylane_interop.to_pennylane))
    assert not verify(circuit, against="pennylane").ok


def test_values_by_name_or_in_order_give_the_same_report():
    circuit = Circuit(2).ry(0, "b").rx(1, "a").cz(0, 1)
    by_name = verify(circuit, values={"a": 0.1, "b": 0.2})
    in_order = verify(circuit, values=[0.2, 0.1])
    assert by_name.ok and in_order.ok
    with pytest.raises(ParameterError):
        verify(circuit, values=[0.1])


def test_qudit_circuit_is_verified_on_the_embedded_subspace():
    circuit = (Circuit([3, 2]).givens(0, (0, 1), "a").givens(0, (1, 2), "b").ry(1, "c")
               .append(GeneralizedCZ(0, 1)).givens(0, (0, 2), "a").rx(1, "b"))
    report = verify(circuit)
    assert report.ok, str(report)
    assert report.embedded_qubits == 3
    columns = verify(circuit, columns=[1, 4, 5])
    assert columns.ok


def test_embedding_puts_each_level_on_binary_qubits():
    assert embedded_index((3, 2)).tolist() == [0, 1, 2, 3, 4, 5]
    assert embedded_index((2, 3)).tolist() == [0, 1, 2, 4, 5, 6]
    assert embedded_index((5,)).tolist() == [0, 1, 2, 3, 4]
    circuit = Circuit([2, 3]).givens(1, (0, 2), 0.7).append(GeneralizedCZ(0, 1)).ry(0, 0.3)
    qubits, index = embed_in_qubits(circuit)
    assert qubits.dims == (2, 2, 2)
    full = qubits.matrix()
    np.testing.assert_allclose(full[np.ix_(index, index)], circuit.matrix(), atol=1e-14)
    outside = np.setdiff1d(np.arange(8), index)
    # the embedded subspace is invariant: nothing leaks in or out
    assert np.abs(full[np.ix_(outside, index)]).max() == 0
    assert np.abs(full[np.ix_(index, outside)]).max() == 0
    with pytest.raises(ParameterError, match="bind"):
        embed_in_qubits(Circuit([3]).givens(0, (0, 1), "a"))


def test_arguments_are_checked():
    circuit = pauli(3, 1)
    with pytest.raises(InteropError, match="choose from qiskit, pennylane"):
        verify(circuit, against="cirq")
    with pytest.raises(ParameterError, match="between 1 and N"):
        verify(circuit, columns=9)
    with pytest.raises(ParameterError, match="indices in 0..7"):
        verify(circuit, columns=[0, 8])
    with pytest.raises(InteropError, match="Circuit"):
        verify("pauli")
    with pytest.raises(InteropError, match="above its limit of 4194304"):
        verify(pauli(23, 1))  # refused before any column is computed
    # 13 qutrits: N = 3^13 is under the limit, but the qubit embedding has 2^26 amplitudes
    with pytest.raises(InteropError, match="on 67108864 amplitudes .*above its limit"):
        verify(Circuit([3] * 13))


@pytest.mark.parametrize("against", ["qiskit,qiskit", ["pennylane", "qiskit", "PennyLane"],
                                     "qiskit, Qiskit "])
def test_a_reference_named_twice_is_refused(against, capsys):
    # "qiskit,qiskit" once ran and reported Qiskit twice
    with pytest.raises(InteropError, match="more than once") as caught:
        verify(pauli(2, 1), against=against)
    assert isinstance(caught.value, QpeftError)
    assert "name each reference once" in str(caught.value)
    assert main(["verify", "pauli", "--qubits", "2", "--against", "qiskit,qiskit"]) == 2
    assert "more than once" in capsys.readouterr().err


@pytest.mark.parametrize("against", [None, 3])
def test_references_that_are_not_names_are_refused(against):
    with pytest.raises(InteropError, match="against names the references"):
        verify(pauli(2, 1), against=against)


@pytest.mark.parametrize("columns", ["12", [1.5], 2.5, True, [0, 3, 0]])
def test_columns_that_are_not_distinct_integers_are_refused(columns):
    # "12" once meant the columns [1, 2], and [1.5] the column 1
    with pytest.raises(ParameterError, match="columns"):
        verify(pauli(3, 1), against="qiskit", columns=columns)


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_seeds_that_are_not_whole_numbers_from_zero_are_refused(seed, capsys):
    with pytest.raises(ParameterError, match="seed must be a whole number >= 0"):
        verify(pauli(2, 1), against="qiskit", seed=seed)
    if isinstance(seed, int):
        assert main(["verify", "pauli", "--qubits", "2", "--seed", str(seed)]) == 2
        assert capsys.readouterr().err.startswith("error: seed must be")


def test_report_is_a_readable_table():
    report = verify(pauli(3, 1), against=["qiskit"], seed=3)
    assert isinstance(report, VerificationReport)
    text = str(report)
    assert text.splitlines()[0].startswith("verify pauli(qubits=3, layers=1): 3 qubits, N = 8")
    assert "qiskit" in text and "pass" in text and text.endswith("ok")


def test_command_exit_codes(monkeypatch, capsys):
    assert main(["verify", "pauli", "--qubits", "3", "--layers", "1"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["verify", "qutrit_ladder", "--option", "dims=(3, 2)", "--layers", "1",
                 "--against", "qiskit"]) == 0
    monkeypatch.setattr(qiskit_interop, "to_qiskit", _perturbed(qiskit_interop.to_qiskit))
    assert main(["verify", "pauli", "--qubits", "3", "--columns", "2"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["verify", "no_such_ansatz"]) == 2
    assert main(["verify", "pauli", "--option", "nonsense"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize(("arguments", "message"), [
    (["--qubits", "3", "--option", "qubits=5"],
     "--qubits 3 and --option qubits=5 contradict each other; drop one of them"),
    (["--layers", "1", "--option", "layers=2"],
     "--layers 1 and --option layers=2 contradict each other; drop one of them"),
    (["--qubits", "2", "--option", "layers=1", "--option", "layers=2"],
     "--option layers=1 and --option layers=2 give layers two values; keep one of them"),
])
def test_contradictory_build_options_are_refused(arguments, message, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("nothing is verified after a refusal")

    monkeypatch.setattr("qpeft.interop.verify.verify", never)
    assert main(["verify", "pauli", *arguments]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_build_option_repeated_with_the_same_value_is_accepted(capsys):
    assert main(["verify", "pauli", "--qubits", "3", "--option", "qubits=3", "--option",
                 "layers=1", "--option", "layers=1", "--against", "qiskit"]) == 0
    assert capsys.readouterr().out.startswith("verify pauli(qubits=3, layers=1): 3 qubits")


def test_command_refuses_a_circuit_json_file_with_an_error(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(pauli(2, 1).to_json())
    assert main(["verify", str(path)]) == 2
    assert "not a .py file" in capsys.readouterr().err


@pytest.mark.parametrize("atol", [float("nan"), float("inf"), -1.0])
def test_tolerances_that_are_not_finite_and_non_negative_are_refused(atol, capsys):
    with pytest.raises(ConfigError, match="tolerance"):
        verify(pauli(2, 1), against="qiskit", atol=atol)
    assert main(["verify", "pauli", "--qubits", "2", "--atol", str(atol)]) == 2
    assert capsys.readouterr().err.startswith("error: --atol")
