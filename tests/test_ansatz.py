"""Builders and the catalog."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import qpeft
from qpeft.ansatz import catalog_names, for_dimension, load_ansatz, pauli, pauli_parameter_count
from qpeft.errors import CatalogError, ConfigError, QpeftError

TRANSFORMER_WIDTHS = [384, 768, 1536, 3072, 5120, 11008]


@pytest.mark.parametrize("qubits", range(2, 17))
@pytest.mark.parametrize("layers", range(0, 7))
def test_pauli_parameter_count(qubits, layers):
    c = pauli(qubits=qubits, layers=layers)
    assert c.num_parameters == (2 * layers + 1) * qubits - 2 * layers
    assert c.num_parameters == pauli_parameter_count(qubits, layers)
    assert c.is_real and c.dimension == 2**qubits


def test_pauli_known_counts():
    assert pauli(10, 1).num_parameters == 28
    assert pauli(10, 2).num_parameters == 46
    assert pauli(12, 2).num_parameters == 56


@pytest.mark.parametrize("qubits,layers", [(2, 1), (3, 2), (4, 2), (5, 1)])
def test_pauli_is_orthogonal(qubits, layers):
    c = pauli(qubits, layers)
    m = c.matrix(np.random.default_rng(1).normal(size=c.num_parameters))
    np.testing.assert_allclose(m.T @ m, np.eye(c.dimension), atol=1e-12)


@pytest.mark.parametrize("dimension", TRANSFORMER_WIDTHS)
@pytest.mark.parametrize("method", ["qudit", "shannon"])
def test_for_dimension_builds_any_width(dimension, method):
    c = for_dimension(dimension, layers=2, method=method)
    assert c.dimension == dimension
    assert c.is_real
    module = importlib.import_module(f"qpeft.catalog.{method}")
    assert c.num_parameters == module.parameter_count(dimension, 2)


@pytest.mark.parametrize("dimension", [6, 10, 12, 20, 24, 40, 48, 56, 96])
@pytest.mark.parametrize("method", ["qudit", "shannon"])
def test_for_dimension_is_orthogonal(dimension, method):
    c = for_dimension(dimension, layers=2, method=method)
    m = c.matrix(np.random.default_rng(dimension).normal(size=c.num_parameters))
    np.testing.assert_allclose(m.T @ m, np.eye(dimension), atol=1e-12)


def test_for_dimension_grows_logarithmically():
    # doubling N adds one qubit: exactly 2L + 1 more angles
    for layers in (1, 2, 3):
        for base in (384, 3, 5):
            counts = [for_dimension(base * 2**k, layers).num_parameters for k in range(1, 6)]
            assert np.all(np.diff(counts) == 2 * layers + 1)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_doubling_counts_of_odd_widths_and_of_the_shannon_construction(layers):
    def added(dimension, method):
        return (for_dimension(2 * dimension, layers, method=method).num_parameters
                - for_dimension(dimension, layers, method=method).num_parameters)

    # qudit, odd N: the new qubit pairs with the smallest odd prime factor p
    for dimension, smallest in [(3, 3), (15, 3), (5, 5), (35, 5), (43, 43)]:
        assert added(dimension, "qudit") == 1 + layers * smallest
    # shannon, even N: one qubit more in each of the b blocks of both stages
    for dimension in (6, 12, 96, 384, 768, 5120, 11008, 2 * 255):
        blocks = bin(dimension >> (dimension & -dimension).bit_length() - 1).count("1")
        assert added(dimension, "shannon") == 2 * blocks * (2 * layers + 1)
    # a power of two is one Pauli ansatz, not two stages
    for dimension in (64, 256, 1024):
        assert added(dimension, "shannon") == 2 * layers + 1


def test_for_dimension_of_a_power_of_two_is_pauli():
    c = for_dimension(1024, layers=2)
    assert c == pauli(10, 2)


def test_builders_accept_numpy_integers_and_refuse_bools():
    assert pauli(np.int64(3), np.int64(2)) == pauli(3, 2)
    assert for_dimension(np.int64(12), np.int32(1)) == for_dimension(12, 1)
    assert qpeft.ansatz.real_amplitudes(np.int64(3)) == qpeft.ansatz.real_amplitudes(3)
    for build in (lambda: pauli(True, 1), lambda: pauli(2, True), lambda: pauli(2.0, 1),
                  lambda: for_dimension(12.0)):
        with pytest.raises(ConfigError, match="integer"):
            build()


def test_for_dimension_rejects_bad_input():
    with pytest.raises(ConfigError):
        for_dimension(1, layers=2)
    with pytest.raises(ConfigError, match="unknown method"):
        for_dimension(12, method="padding")
    with pytest.raises(ConfigError):
        pauli(qubits=0, layers=1)


@pytest.mark.parametrize("dimension", [2**61 - 1, 2 * 46349 * 46351])
def test_an_odd_part_with_no_small_prime_factor_is_refused_at_once(dimension):
    """Trial division stops at √(2³¹ − 1): a prime of 2⁶¹ − 1 (or a product of two
    primes above 46 340 that no wire could hold) is refused, not factored for hours."""
    with pytest.raises(ConfigError, match="more levels than a qudit wire may have"):
        for_dimension(dimension)


def test_a_large_prime_factor_that_fits_a_wire_is_kept():
    assert for_dimension(2 * 46351, layers=0, barriers=False).dims == (46351, 2)


@pytest.mark.parametrize("name", catalog_names())
def test_every_catalog_entry(name):
    module = importlib.import_module(f"qpeft.catalog.{name}")
    assert module.__doc__, f"{name} needs a docstring"
    options = {"dimension": 24} if name in ("qudit", "shannon") else {}
    for layers in (1, 2):
        c = load_ansatz(name, layers=layers, **options)
        assert c.num_parameters == module.parameter_count(layers=layers, **options)
        m = c.matrix(np.random.default_rng(0).normal(size=c.num_parameters))
        np.testing.assert_allclose(m.conj().T @ m, np.eye(c.dimension), atol=1e-12)


@pytest.mark.parametrize("dimension", [*range(2, 71), 383, 384, 768, 3072, 11008, 11009])
def test_shannon_parameter_count_matches_the_built_circuit(dimension):
    # odd dimensions hold a one-level block, which has no angles
    module = importlib.import_module("qpeft.catalog.shannon")
    for layers in (0, 1, 2):
        built = for_dimension(dimension, layers, method="shannon").num_parameters
        assert module.parameter_count(dimension, layers) == built


def test_catalog_holds_the_standard_entries():
    assert {"pauli", "qudit", "shannon", "real_amplitudes", "hardware_efficient"} <= set(
        catalog_names()
    )


def test_load_ansatz_from_a_user_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "import qpeft\n"
        "def build(qubits=2):\n"
        "    return qpeft.Circuit(qubits).ry(0, 'a').cz(0, 1)\n"
    )
    c = qpeft.load_ansatz(str(path), qubits=3)
    assert c.num_wires == 3 and c.parameters == ("a",)


def test_load_ansatz_errors(tmp_path):
    with pytest.raises(CatalogError, match="available"):
        load_ansatz("no-such-ansatz")
    with pytest.raises(CatalogError, match="accepted options"):
        load_ansatz("pauli", wires=3)
    with pytest.raises(CatalogError, match="does not exist"):
        load_ansatz(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(CatalogError, match="build"):
        load_ansatz(str(bad))


@pytest.mark.parametrize("name", ["./c.json", "c.json", "./notes.txt"])
def test_a_path_that_is_not_a_python_file_is_a_catalog_error(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text(qpeft.Circuit(1).ry(0, "a").to_json())
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CatalogError, match=r"not a \.py file.*build\(\.\.\.\).*from_json"):
        load_ansatz(name)


# The reference matrix expands every gate to the full space (slow, the ground
# truth); the compiled unitary is checked against it, then used at every width.
@pytest.mark.parametrize(("method", "largest"), [("qudit", 40), ("shannon", 40)])
def test_for_dimension_is_orthogonal_for_every_small_width(method, largest):
    for dimension in range(2, largest + 1):
        c = for_dimension(dimension, layers=2, method=method)
        values = np.random.default_rng(dimension).normal(size=c.num_parameters)
        m = c.matrix(values)
        np.testing.assert_allclose(m.T @ m, np.eye(dimension), atol=1e-12,
                                   err_msg=f"N = {dimension}")
        compiled = qpeft.compile(c, method="dense", dtype=torch.float64)
        np.testing.assert_allclose(compiled(torch.as_tensor(values)).numpy(), m, atol=1e-12,
                                   rtol=0, err_msg=f"N = {dimension}")


@pytest.mark.parametrize("method", ["qudit", "shannon"])
@pytest.mark.parametrize("dimension", [74, 131])
def test_compiled_pair_nodes_equal_the_reference(method, dimension):
    """Widths whose large wire is compiled as pair nodes (no D×D matrices):
    the ground truth for the sweep below, beyond N = 40."""
    c = for_dimension(dimension, layers=2, method=method)
    values = np.random.default_rng(dimension).normal(size=c.num_parameters)
    compiled = qpeft.compile(c, method="dense", dtype=torch.float64)
    assert compiled.engine.plan.pairs
    np.testing.assert_allclose(compiled(torch.as_tensor(values)).numpy(), c.matrix(values),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["qudit", "shannon"])
def test_for_dimension_is_orthogonal_for_every_width_up_to_300(method):
    """The whole N×N matrix (compiled, float64, angles spread over [0, 4π))."""
    generator = torch.Generator().manual_seed(300)
    for dimension in range(2, 301):
        c = for_dimension(dimension, layers=2, method=method)
        q = qpeft.compile(c, method="dense", dtype=torch.float64)(
            torch.rand(c.num_parameters, generator=generator, dtype=torch.float64) * 4 * np.pi)
        deviation = (q.T @ q - torch.eye(dimension, dtype=torch.float64)).abs().max().item()
        assert deviation <= 1e-12, f"N = {dimension} ({method}): |QᵀQ − I| = {deviation:.1e}"


@pytest.mark.parametrize("method", ["qudit", "shannon"])
@pytest.mark.parametrize("dimension", TRANSFORMER_WIDTHS)
def test_for_dimension_is_orthogonal_at_transformer_widths(dimension, method):
    """The N×N matrix is too large to form at these widths, so the check is
    structural and sampled. Structural: the compiled unitary is a product of
    the steps of its schedule (checked against the reference at small widths
    above); reorders and gathers are permutations, sign steps ±1, and every
    block matrix (each level's matrix of a block with a control wire) and
    every 2×2 block of a pair step is checked orthogonal
    here, so the product is orthogonal. Sampled: the first 16 columns and 48
    random ones are orthonormal."""
    c = for_dimension(dimension, layers=2, method=method)
    rng = np.random.default_rng(dimension)
    values = torch.as_tensor(rng.normal(size=c.num_parameters) * np.pi)
    columns = [*range(16), *rng.choice(np.arange(16, dimension), 48, replace=False).tolist()]
    frame = qpeft.compile(c, columns=columns, dtype=torch.float64)
    engine = frame.engine
    factors = engine.builder(values[None])
    blocks = len(engine.plan.blocks)
    for matrix in factors[:blocks]:  # (D, D), or one (d, d) per level of a control wire
        eye = torch.eye(matrix.shape[-1], dtype=torch.float64).expand_as(matrix[0])
        torch.testing.assert_close(matrix[0].mT @ matrix[0], eye, rtol=0, atol=1e-12)
    for pair, coefficients in zip(engine.plan.pairs, factors[blocks:]):
        matrix = torch.diag_embed(coefficients[0, 0])  # A on the diagonal, B off it
        matrix[pair.off_diagonal()] = coefficients[0, 1, pair.off_diagonal()[0]]
        torch.testing.assert_close(matrix.T @ matrix, torch.eye(pair.size, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
    U = frame(values)
    eye = torch.eye(len(columns), dtype=torch.float64)
    torch.testing.assert_close(U.T @ U, eye, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, options, message", [
    ("pauli_strings", {"qubits": 0}, "qubits must be a positive integer"),
    ("pauli_strings", {"layers": -1}, "layers must be an integer >= 0"),
    ("qutrit_ladder", {"layers": -2}, "layers must be an integer >= 0"),
    ("qutrit_ladder", {"dims": {3: 2}}, "wire dimensions must be a list of integers"),
])
def test_catalog_entries_refuse_bad_counts(name, options, message):
    with pytest.raises(QpeftError, match=message):
        load_ansatz(name, **options)


@pytest.mark.parametrize("dimension", [0, -4, 2.0])
def test_the_shannon_closed_form_refuses_a_dimension_that_is_no_width(dimension):
    """parameter_count(0) once looped forever halving 0."""
    from qpeft.catalog import shannon

    with pytest.raises(QpeftError, match="dimension must be a positive integer"):
        shannon.parameter_count(dimension, 2)


@pytest.mark.parametrize("source, message", [
    ("def build(:\n", r"has a syntax error at line 1"),
    ("x = 1\ny = 1 / 0\n\ndef build():\n    pass\n",
     r"failed when run at line 2: ZeroDivisionError"),
])
def test_an_ansatz_file_that_cannot_run_is_a_catalog_error(tmp_path, source, message):
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(qpeft.errors.CatalogError, match=message):
        load_ansatz(str(path))


def test_an_ansatz_file_runs_once_until_it_changes(tmp_path):
    path = tmp_path / "counted.py"
    runs = tmp_path / "runs"
    source = (f"from pathlib import Path\nPath({str(runs)!r}).open('a').write('x')\n"
              "from qpeft.ansatz import pauli\n\ndef build(qubits=2, layers=1):\n"
              "    return pauli(qubits, layers)\n")
    path.write_text(source)
    for qubits in (2, 3, 2):
        load_ansatz(str(path), qubits=qubits)
    assert runs.read_text() == "x"
    path.write_text(source + "\n# edited\n")
    load_ansatz(str(path))
    assert runs.read_text() == "xx"


def test_a_build_that_fails_names_the_file_line_and_options(tmp_path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("def build(qubits: int = 3, layers: int = 1):\n"
                    "    names = [1]\n"
                    "    return names[qubits]\n")
    with pytest.raises(CatalogError, match=r"broken\.py: build\(qubits=3\) failed at line 3: "
                                           r"IndexError: list index out of range"):
        load_ansatz(str(path), qubits=3)
