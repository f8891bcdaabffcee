"""Builders and the catalog."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import qpeft
from qpeft.ansatz import catalog_names, for_dimension, load_ansatz, pauli, pauli_parameter_count
from qpeft.errors import CatalogError, ConfigError

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


def test_for_dimension_of_a_power_of_two_is_pauli():
    c = for_dimension(1024, layers=2)
    assert c == pauli(10, 2)


def test_for_dimension_rejects_bad_input():
    with pytest.raises(ConfigError):
        for_dimension(1, layers=2)
    with pytest.raises(ConfigError, match="unknown method"):
        for_dimension(12, method="padding")
    with pytest.raises(ConfigError):
        pauli(qubits=0, layers=1)


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


# The reference matrix expands every gate to the full space: the Shannon
# construction of a width with many power-of-two blocks has thousands of gates.
@pytest.mark.parametrize(("method", "largest"), [("qudit", 40), ("shannon", 24)])
def test_for_dimension_is_orthogonal_for_every_small_width(method, largest):
    for dimension in range(2, largest + 1):
        c = for_dimension(dimension, layers=2, method=method)
        m = c.matrix(np.random.default_rng(dimension).normal(size=c.num_parameters))
        np.testing.assert_allclose(m.T @ m, np.eye(dimension), atol=1e-12,
                                   err_msg=f"N = {dimension}")


@pytest.mark.parametrize(
    ("dimension", "method"),
    [(width, "qudit") for width in TRANSFORMER_WIDTHS]
    + [(width, "shannon") for width in (384, 768, 1536, 3072)],
)
def test_for_dimension_has_orthonormal_columns_at_transformer_widths(dimension, method):
    c = for_dimension(dimension, layers=2, method=method)
    frame = qpeft.compile(c, columns=16, dtype=torch.float64)
    U = frame(torch.as_tensor(np.random.default_rng(dimension).normal(size=c.num_parameters)))
    torch.testing.assert_close(U.T @ U, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12)
