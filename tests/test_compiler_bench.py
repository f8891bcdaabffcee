"""``qpeft bench unitary`` and its peers: the naive simulator, the Qiskit and
PennyLane helpers (checked against the reference matrix), the JSON report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import qpeft
from qpeft import cli
from qpeft.ansatz import for_dimension, pauli
from qpeft.bench import unitary
from qpeft.bench.cli import max_threads
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


def test_naive_simulator_takes_bound_angles() -> None:
    circuit = mixed_circuit().ry(1, 0.4).pauli_rotation("ZY", [0, 2], -0.7)
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    out = unitary.NaiveSimulator(circuit, 3, torch.float64)(values)
    assert torch.allclose(out, torch.as_tensor(circuit.matrix(values))[:, :3], atol=1e-12)


def test_torch_compile_also_compiles_the_full_mappings() -> None:
    compiled = []

    def recording(module):
        compiled.append(module)
        return module

    config = unitary.BenchmarkConfig(sizes=(8,), columns=2, layers=1,
                                     methods=("columns", "cayley-full"), torch_compile=True)
    with mock.patch.object(torch, "compile", recording):
        measured = unitary._slow_measurement("cayley-full", pauli(3, 1), config,
                                             unitary._SlowTracker())
    assert measured.status == "ok" and "torch.compile" in measured.note
    assert [type(m).__name__ for m in compiled] == ["FullMapping"]


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
        measured[("naive", 64)]["seconds"] / measured[("compiled", 64)]["seconds"])
    assert measured[("compiled", 96)]["note"] == "method 'mps'"  # what qpeft.compile picks
    # where mps does not apply, its cell says why and compiled is the gate schedule
    assert "half the qubits' block" in unitary._unfit_note("mps", pauli(3, 1), 8)
    assert unitary._method_note("compiled", pauli(3, 1), unitary.BenchmarkConfig(
        columns=8)) == "method 'columns'"
    assert report["batched"]["total_frames"] == 12
    assert report["memory"]["recompute_saved_bytes"] < report["memory"]["standard_saved_bytes"]
    statuses = {target["status"] for target in report["targets"]}
    assert statuses <= {"PASS", "FAIL", "not measured"}
    assert measured[("cayley-full", 96)]["status"] == "ok"  # any N, not qubits only
    assert len(report["targets"]) == 5
    assert report["targets"][4]["status"] == "not measured"  # 12 frames, not 72
    # the stacked frames: compiled, its engines and the maps, 3 frames per call
    stacked = report["stacked"]
    assert stacked["frames"] == 3
    cells = {(m["method"], m["dimension"]): m["seconds"] for m in stacked["measurements"]}
    assert {method for method, _ in cells} == set(unitary.STACKED_METHODS)
    assert stacked["ratios"]["96"]["householder"] == pytest.approx(
        cells[("householder", 96)] / cells[("compiled", 96)])


def test_stacked_frames_are_called_with_the_angles_stacked() -> None:
    config = replace(unitary.BenchmarkConfig.quick(), methods=("compiled", "householder"))
    functions = unitary._fast_functions(pauli(3, 1), config, stacked=5)
    assert set(functions) == {"compiled", "householder"}
    for name, run in functions.items():
        gradient, = run()
        assert gradient.shape[0] == 5, name  # one angle vector per frame


def test_stacked_zero_leaves_the_comparison_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "unitary", "--quick", "--json", "--stacked", "0", "--sizes", "16",
                     "--methods", "compiled,householder", "--no-batched"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "stacked" not in report and report["config"]["stacked"] == 0


def test_the_stacked_summary_names_where_compiled_leads() -> None:
    others = {"exponential": 3.0, "givens": 9.0, "taylor": 8.0}
    ratios = {"256": {"householder": 0.5, "cayley": 2.0, **others},
              "1024": {"householder": 1.3, "cayley": 1.1, "columns": 0.2, **others},  # not a map
              "4096": {"householder": 2.0, "cayley": 0.9, **others}}
    assert unitary.stacked_summary({"frames": 2, "ratios": ratios}) == (
        "stacked frames: compiled is not faster than every alternative mapping at the "
        "largest N measured")
    ratios["4096"]["cayley"] = 1.5
    assert unitary.stacked_summary({"frames": 2, "ratios": ratios}) == (
        "stacked frames: compiled faster than every alternative mapping from N = 1024 "
        "(smallest ratio ×1.1, cayley at N = 1024)")
    # a subset of the maps is named, never called "every"
    subset = {n: {"givens": 2.0} for n in ("64", "96")}
    assert unitary.stacked_summary({"frames": 2, "ratios": subset}) == (
        "stacked frames: compiled faster than givens (the mappings measured) from N = 64 "
        "(smallest ratio ×2, givens at N = 64)")
    assert unitary.stacked_summary({"frames": 2, "ratios": {"64": {"columns": 2.0}}}) is None


@pytest.mark.parametrize("methods, sizes, measured", [
    ("compiled,givens", "1024", False),  # one map of five: not "every"
    ("compiled,cayley,exponential,householder,givens,taylor", "64,1024", True),
    ("compiled,cayley,exponential,householder,givens,taylor", "64", False),  # no N >= 1024
])
def test_the_mapping_target_is_judged_on_every_map(capsys: pytest.CaptureFixture[str],
                                                   methods: str, sizes: str,
                                                   measured: bool) -> None:
    assert cli.main(["bench", "unitary", "--quick", "--json", "--methods", methods, "--sizes",
                     sizes, "--no-batched", "--stacked", "0", "--repeats", "1"]) == 0
    targets = json.loads(capsys.readouterr().out)["targets"]
    assert (targets[2]["status"] != "not measured") == measured
    assert targets[3]["status"] == "not measured"  # the full-matrix maps were not run


def test_a_method_skipped_in_the_stacked_frames_says_why(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "unitary", "--quick", "--json", "--construction", "shannon",
                     "--methods", "compiled,mps,householder", "--no-batched", "--sizes",
                     "96", "--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    cells = {m["method"]: m for m in report["stacked"]["measurements"]}
    assert cells["mps"]["status"] == "skipped" and cells["mps"]["seconds"] is None
    assert cells["mps"]["note"]  # the CompileError's reason
    assert "mps" not in report["stacked"]["ratios"]["96"]


def test_the_stacked_bound_applies_only_to_a_stacked_run() -> None:
    config = unitary.BenchmarkConfig(methods=("naive",), sizes=(2**22,), batched=False)
    config.validate()  # nothing is stacked: no bound
    with pytest.raises(ConfigError, match="or --stacked 0 to leave"):
        replace(config, methods=("compiled",)).validate()


@pytest.mark.parametrize("kind", ["cayley", "exponential"])
def test_full_mappings_are_orthogonal_matrices_cut_to_k_columns(kind: str) -> None:
    """The first K columns of the whole orthogonal matrix of a skew-symmetric
    generator: against SciPy's expm and the Cayley formula, with gradients."""
    import scipy.linalg

    frame = unitary.FullMapping(kind, 12, 3, torch.float64)
    assert frame.num_parameters == 66
    values = torch.randn(66, dtype=torch.float64, requires_grad=True)
    U = frame(values)
    upper = np.zeros((12, 12))
    upper[np.triu_indices(12, 1)] = values.detach().numpy()
    generator = upper - upper.T
    eye = np.eye(12)
    whole = (scipy.linalg.expm(generator) if kind == "exponential"
             else np.linalg.solve(eye + generator, eye - generator))
    np.testing.assert_allclose(whole.T @ whole, eye, atol=1e-12)
    np.testing.assert_allclose(U.detach().numpy(), whole[:, :3], atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: frame(v), (values,))


def test_table_and_plot(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "unitary.png"
    code = cli.main(["bench", "unitary", "--quick", "--sizes", "32",
                     "--plot", str(plot)])
    assert code == 0
    text = capsys.readouterr().out
    assert "targets" in text and "columns" in text and "ratio" in text
    assert plot.stat().st_size > 1000
    assert f"plot written to {plot}" in " ".join(text.split())
    assert list(tmp_path.iterdir()) == [plot]  # no temporary file left beside it


def test_the_plot_labels_every_measured_dimension(monkeypatch: pytest.MonkeyPatch) -> None:
    import qpeft.draw

    figures = []
    monkeypatch.setattr(qpeft.draw, "save", lambda figure, name: figures.append(figure))
    measurements = [{"method": method, "dimension": n, "seconds": 1e-3 * n, "status": "ok",
                     "note": ""} for method in unitary.ALL_METHODS for n in (64, 96, 512)]
    unitary.plot({"measurements": measurements, "config": {"columns": 4, "layers": 2}}, "x.png")
    axes = figures[0].axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["64", "96", "512"]
    colours = {line.get_label(): line.get_color() for line in axes.get_lines()}
    assert colours["compiled"] == "black" and colours["householder"] != "black"
    assert len(set(colours.values())) == len(unitary.ALL_METHODS)  # one colour per method


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
    # one graph each (the value checks are skipped while tracing and tensornet runs its
    # planned steps as torch.einsum calls, so nothing splits them)
    assert counters["stats"]["unique_graphs"] == 3
    config.torch_compile = False
    torch.manual_seed(0)
    eager = unitary._fast_functions(pauli(3, 1), config)
    for name in compiled:  # the same order of first calls, which draw the weights
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


def _never_measure(*arguments, **options):
    raise AssertionError("the benchmark ran although its options are wrong")


@pytest.mark.parametrize("name, message", [
    ("missing/unitary.png", "folder .*missing does not exist"),
    ("unitary.xyz", "use a file ending in .png, .svg, .pdf"),
    ("unitary", "use a file ending in"),
    (".", "is a folder"),
])
def test_plot_path_is_checked_before_anything_is_measured(
        tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str, message: str) -> None:
    monkeypatch.setattr(unitary, "run_benchmark", _never_measure)
    code = cli.main(["bench", "unitary", "--quick", "--plot", str(tmp_path / name)])
    assert code == cli.ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith("error: --plot") and "Traceback" not in err
    assert re.search(message, err)
    assert list(tmp_path.iterdir()) == []


def test_plot_folder_must_be_writable(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qpeft.draw.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="not writable"):
        qpeft.draw.image_path(str(tmp_path / "unitary.png"))


def test_quick_sets_defaults_and_explicit_options_win() -> None:
    parser = cli.build_parser("bench")
    quick = unitary.config_from_args(parser.parse_args(["bench", "unitary", "--quick"]))
    assert quick == unitary.BenchmarkConfig.quick()
    given = unitary.config_from_args(parser.parse_args([
        "bench", "unitary", "--quick", "--columns", "3", "--layers", "3", "--repeats", "1",
        "--dtype", "float64", "--slow-limit", "0.001", "--no-batched", "--sizes", "64,64,32",
        "--threads", "1", "--construction", "shannon"]))
    assert given == replace(unitary.BenchmarkConfig.quick(), columns=3, layers=3, repeats=1,
                            dtype="float64", slow_limit=0.001, batched=False, sizes=(64, 32),
                            construction="shannon")
    full = unitary.config_from_args(parser.parse_args(["bench", "unitary", "--layers", "0"]))
    assert full == replace(unitary.BenchmarkConfig(), layers=0)


@pytest.mark.parametrize("arguments, message", [
    (["--threads", "99999"], r"--threads 99999 must lie in 1 … \d+"),
    (["--threads", "0"], "--threads 0 must lie in 1"),
    (["--methods="], "--methods names no method"),
    (["--sizes", "256,1"], r"dimensions 2 <= N <= 2\^24 = 16777216 only, got \[256, 1\]"),
    (["--sizes", str(2**24 + 1)], r"2 <= N <= 2\^24"),
    (["--slow-limit", "0"], "--slow-limit 0.0 must be a positive finite number"),
    (["--slow-limit", "nan"], "--slow-limit nan must be a positive finite number"),
    (["--slow-limit", "inf"], "--slow-limit inf must be a positive finite number"),
    (["--repeats", "0"], "--repeats >= 1"),
    (["--stacked", "-1"], "--stacked -1 must be a number of frames >= 0"),
    (["--stacked", str(10**20)], r"more than 268435456 \(2\^28"),
    (["--device", "gpu0"], "unknown device 'gpu0'; use cpu, cuda"),
])
def test_invalid_options_are_config_errors(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           arguments: list[str], message: str) -> None:
    monkeypatch.setattr(unitary, "run_benchmark", _never_measure)
    assert cli.main(["bench", "unitary", "--quick", *arguments]) == cli.ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_that_is_not_there_is_refused_before_measuring(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(unitary, "run_benchmark", _never_measure)
    assert cli.main(["bench", "unitary", "--quick", "--device", "cuda"]) == cli.ERROR_EXIT_CODE
    assert "no CUDA GPU is visible; use --device cpu" in capsys.readouterr().err


def test_threads_are_bounded_by_the_cpus() -> None:
    limit = max_threads()
    unitary.BenchmarkConfig(threads=limit).validate()
    with pytest.raises(ConfigError, match=f"1 … {limit}"):
        unitary.BenchmarkConfig(threads=limit + 1).validate()


def test_columns_beyond_the_batched_frames_are_refused_before_measuring() -> None:
    with pytest.raises(ConfigError, match="--columns 400 is more than the 384 rows.*--no-batched"):
        unitary.BenchmarkConfig(sizes=(512,), columns=400).validate()
    unitary.BenchmarkConfig(sizes=(512,), columns=400, batched=False).validate()


def test_repeated_sizes_are_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match="names a dimension twice"):
        unitary.BenchmarkConfig(sizes=(64, 64)).validate()


def test_no_ratio_table_without_columns(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["bench", "unitary", "--quick", "--sizes", "16", "--methods", "naive",
                     "--no-batched"])
    assert code == 0
    out = capsys.readouterr().out
    assert "compiled time" not in out
    assert "no ratio table: ratios are to compiled, which --methods leaves out" in out


def test_batched_target_is_measured_at_its_72_frames_only() -> None:
    config = unitary.BenchmarkConfig()
    report = {"ratios": {}, "batched": {"total_frames": 12, "ratio": 9.0}}
    assert unitary._targets(report, config)[-1]["status"] == "not measured"
    assert unitary._targets(report, config)[-1]["measured"] is None
    report["batched"] = {"total_frames": 72, "ratio": 6.0}
    assert unitary._targets(report, config)[-1] == {
        "name": "batched vs separate calls (72 BERT frames)", "threshold": 5.0,
        "measured": 6.0, "status": "PASS"}
    report["batched"]["ratio"] = 4.0
    assert unitary._targets(report, config)[-1]["status"] == "FAIL"


def test_batched_case_uses_the_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled, compile_circuit = [], unitary.compile_circuit

    def recording(circuit, *arguments, **options):
        compiled.append(circuit)
        return compile_circuit(circuit, *arguments, **options)

    monkeypatch.setattr(unitary, "compile_circuit", recording)
    config = replace(unitary.BenchmarkConfig.quick(), construction="shannon", repeats=1)
    unitary.measure_batched(config)
    assert compiled == [for_dimension(384, 1, method="shannon"),
                        for_dimension(1536, 1, method="shannon")]


def test_a_closed_pipe_ends_the_command_without_a_traceback() -> None:
    root = str(Path(qpeft.__file__).resolve().parents[1])
    environment = {**os.environ,
                   "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "qpeft", "bench", "unitary", "--quick", "--json", "--sizes",
         "8", "--methods", "columns", "--no-batched"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    process.stdout.close()  # the reader is gone before anything is written
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_help_shows_defaults_and_names_both_benchmarks(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["bench", "unitary", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: qudit)", "(default: float32)", "(default 4; 2 with --quick)",
                  "default 60; 5 with --quick)", "(default: all)"):
        assert shown in text
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "compiler against its peers (unitary), a training step against peft (train)" in text
