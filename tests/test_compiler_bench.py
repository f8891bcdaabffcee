"""``qpeft bench unitary`` and its peers: the naive simulator, the Qiskit and
PennyLane helpers (checked against the reference matrix), the JSON report."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
import torch

from qpeft import cli
from qpeft.ansatz import for_dimension, pauli
from qpeft.bench import unitary
from qpeft.circuit import Circuit
from qpeft.errors import ConfigError, InteropError


def mixed_circuit() -> Circuit:
    return (Circuit(3).ry(0, "a").rx(1, "b").cz(0, 1).cx(2, 0).rz(2, "a").h(1)
            .pauli_rotation("YZ", [1, 2], "c").swap(0, 2))


def test_naive_simulator_equals_the_reference() -> None:
    circuit = mixed_circuit()
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    out = unitary.NaiveSimulator(circuit, 3, torch.float64)(values)
    assert torch.allclose(out, torch.as_tensor(circuit.matrix(values))[:, :3], atol=1e-12)


def test_naive_simulator_on_qudits() -> None:
    circuit = for_dimension(24, 1)
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    out = unitary.NaiveSimulator(circuit, 2, torch.float64)(values)
    assert torch.allclose(out, torch.as_tensor(circuit.matrix(values))[:, :2], atol=1e-12)


def test_qiskit_operator_of_the_converted_circuit_is_the_reference() -> None:
    from qiskit.quantum_info import Operator

    circuit = mixed_circuit()
    values = [0.3, -1.1, 0.7]
    assert np.allclose(Operator(unitary.qiskit_circuit(circuit, values)).data,
                       circuit.matrix(values), atol=1e-12)


def test_pennylane_matrix_of_the_converted_circuit_is_the_reference() -> None:
    circuit = mixed_circuit()
    values = torch.tensor([0.3, -1.1, 0.7], dtype=torch.float64)
    matrix = unitary.pennylane_function(circuit)(values)
    assert np.allclose(matrix.detach().numpy(), circuit.matrix(values), atol=1e-12)


def test_peers_refuse_qudit_registers() -> None:
    with pytest.raises(InteropError, match="qubit"):
        unitary.qiskit_circuit(for_dimension(12, 1), [0.0] * for_dimension(12, 1).num_parameters)


def test_bert_frames_count_72_for_six_layers() -> None:
    assert unitary.bert_frames() == {384: 60, 1536: 12}
    assert unitary.bert_frames(layers=1) == {384: 10, 1536: 2}


def test_benchmark_circuit_picks_the_ansatz() -> None:
    assert unitary.benchmark_circuit(256, 2) == pauli(8, 2)
    assert unitary.benchmark_circuit(384, 2).dims == (3, 2, 2, 2, 2, 2, 2, 2)
    assert unitary.benchmark_circuit(384, 2, "shannon") == for_dimension(384, 2, method="shannon")


def test_shannon_construction_is_benchmarked(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["bench", "unitary", "--quick", "--json", "--sizes", "40",
                     "--construction", "shannon", "--methods", "columns,naive"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["construction"] == "shannon"
    assert {m["method"] for m in report["measurements"] if m["status"] == "ok"} == {
        "columns", "naive"}


def test_quick_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "unitary", "--quick", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    measured = {(m["method"], m["dimension"]): m for m in report["measurements"]}
    for method in unitary.ALL_METHODS:
        cell = measured[(method, 64)]
        assert cell["status"] == "ok" and cell["seconds"] > 0, method
    assert measured[("qiskit", 96)]["status"] == "n/a"  # 96 = 3 · 2^5 is a qudit register
    assert report["ratios"]["64"]["naive"] == pytest.approx(
        measured[("naive", 64)]["seconds"] / measured[("columns", 64)]["seconds"])
    assert report["batched"]["total_frames"] == 12
    assert report["memory"]["recompute_saved_bytes"] < report["memory"]["standard_saved_bytes"]
    statuses = {target["status"] for target in report["targets"]}
    assert statuses <= {"PASS", "FAIL", "not measured"}
    assert len(report["targets"]) == 4


def test_table_and_plot(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "unitary.png"
    code = cli.main(["bench", "unitary", "--quick", "--sizes", "32",
                     "--plot", str(plot)])
    assert code == 0
    text = capsys.readouterr().out
    assert "targets" in text and "columns" in text and "ratio" in text
    assert plot.stat().st_size > 1000


def test_bad_arguments_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["bench", "unitary", "--sizes", "12,x"])
    assert "--sizes" in capsys.readouterr().err
    assert cli.main(["bench", "unitary", "--columns", "0"]) == cli.ERROR_EXIT_CODE


def test_torch_compile_option_compiles_before_timing() -> None:
    """--torch-compile wraps the torch methods in torch.compile and compiles
    them up front (dynamo records their graphs); the result is unchanged."""
    from torch._dynamo.utils import counters

    config = unitary.BenchmarkConfig(sizes=(8,), columns=2, layers=1,
                                     methods=("columns", "tensornet", "householder"),
                                     torch_compile=True)
    counters.clear()
    torch.manual_seed(0)
    compiled = unitary._fast_functions(pauli(3, 1), config)
    assert set(compiled) == {"columns", "tensornet", "householder"}
    # one graph each for columns and householder (their value checks are skipped while
    # tracing, so nothing splits them); tensornet stays eager
    assert counters["stats"]["unique_graphs"] == 2
    compiled["tensornet"]()  # its first call: every closure has now drawn its weights
    config.torch_compile = False
    torch.manual_seed(0)
    eager = unitary._fast_functions(pauli(3, 1), config)
    for name in ("columns", "householder", "tensornet"):  # the same order of first calls
        eager[name]()
    for name in compiled:
        for got, expected in zip(compiled[name](), eager[name]()):
            torch.testing.assert_close(got, expected)


def test_torch_compile_failure_is_a_config_error() -> None:
    def broken(module):
        def run(*arguments):
            raise RuntimeError("no working C++ compiler")
        return run

    config = unitary.BenchmarkConfig(sizes=(8,), columns=2, layers=1, methods=("columns",),
                                     torch_compile=True)
    with mock.patch.object(torch, "compile", broken), \
            pytest.raises(ConfigError, match="C\\+\\+ compiler.*without --torch-compile"):
        unitary._fast_functions(pauli(3, 1), config)
