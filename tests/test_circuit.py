"""The ansatz-definition layer: parameters, gates, circuits, reference matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qpeft
from qpeft.circuit import (
    CX,
    CZ,
    FORMAT_VERSION,
    RX,
    RY,
    RZ,
    SWAP,
    Barrier,
    Circuit,
    Controlled,
    Expression,
    GeneralizedCZ,
    Givens,
    H,
    Parameter,
    ParameterVector,
    PauliRotation,
    SignDiagonal,
    StandardGate,
    Unitary,
    X,
    Y,
    Z,
    controlled,
    givens,
    pauli_rotation,
    unitary,
)
from qpeft.errors import (
    DescriptionError,
    NotUnitaryError,
    ParameterError,
    QpeftError,
    WireError,
)

PAULI = {
    "I": np.eye(2),
    "X": np.array([[0, 1], [1, 0]]),
    "Y": np.array([[0, -1j], [1j, 0]]),
    "Z": np.diag([1, -1]),
}


def rotation(pauli: str, theta: float) -> np.ndarray:
    generator = np.array([[1.0]])
    for letter in pauli:
        generator = np.kron(generator, PAULI[letter])
    return scipy.linalg.expm(-0.5j * theta * generator)


# -- parameters ------------------------------------------------------------------


def test_expressions_are_affine_and_canonical():
    a, b = Parameter("a"), Parameter("b")
    e = 2 * a + 0.5 - b / 4
    assert e.evaluate({"a": 1.0, "b": 2.0}) == pytest.approx(2.0)
    assert e.parameters == ("a", "b")
    assert (a + b) == (b + a) and hash(a + b) == hash(b + a)
    assert (a - a).is_constant
    assert e.bind({"a": 1.0}) == Expression.make({"b": -0.25}, 2.5)
    assert Expression.from_json(e.to_json()) == e
    with pytest.raises(ParameterError):
        a * b  # not affine
    with pytest.raises(ParameterError):
        Parameter("not a name")
    with pytest.raises(ParameterError):
        a + float("nan")


def test_parameter_vector_names_and_sharing():
    w = ParameterVector("w", 3)
    c = Circuit(2).ry(0, w[0]).ry(1, w[0]).rz(0, w[2]).rx(1, -w[1])
    assert c.parameters == ("w[0]", "w[2]", "w[1]")  # order of first appearance
    assert c.num_parameters == 3


# -- gates -----------------------------------------------------------------------


@pytest.mark.parametrize("pauli", ["X", "Y", "Z", "XY", "YZ", "ZZ", "XYZ", "YYY", "IY"])
def test_pauli_rotation_matrix_generator_and_reality(pauli):
    theta = 0.731
    gate = pauli_rotation(pauli, list(range(len(pauli))), theta)
    dims = (2,) * len(pauli)
    m = gate.matrix(dims, torch.tensor([theta])).numpy()
    np.testing.assert_allclose(m, rotation(pauli, theta), atol=1e-14)
    np.testing.assert_allclose(
        m, scipy.linalg.expm(-0.5j * theta * gate.generator(dims)), atol=1e-14
    )
    assert gate.is_real == (pauli.count("Y") % 2 == 1)
    assert gate.is_real == (not np.iscomplexobj(m))


def test_named_gates_match_textbook_matrices():
    ry = RY(0, 0.4).matrix((2,), torch.tensor([0.4])).numpy()
    c, s = math.cos(0.2), math.sin(0.2)
    np.testing.assert_allclose(ry, [[c, -s], [s, c]])
    rz = RZ(0, 0.4).matrix((2,), torch.tensor([0.4])).numpy()
    np.testing.assert_allclose(rz, np.diag([np.exp(-0.2j), np.exp(0.2j)]))
    rx = RX(0, 0.4).matrix((2,), torch.tensor([0.4])).numpy()
    np.testing.assert_allclose(rx, [[c, -1j * s], [-1j * s, c]])
    np.testing.assert_allclose(H(0).matrix((2,)).numpy(), np.array([[1, 1], [1, -1]]) / 2**0.5)
    np.testing.assert_allclose(CX(0, 1).matrix((2, 2)).numpy(), np.eye(4)[[0, 1, 3, 2]])
    np.testing.assert_allclose(CZ(0, 1).matrix((2, 2)).numpy(), np.diag([1, 1, 1, -1]))
    np.testing.assert_allclose(SWAP(0, 1).matrix((2, 2)).numpy(), np.eye(4)[[0, 2, 1, 3]])
    for gate, p in [(X(0), "X"), (Y(0), "Y"), (Z(0), "Z")]:
        np.testing.assert_allclose(gate.matrix((2,)).numpy(), PAULI[p])


def test_qudit_gates():
    g = givens(0, (0, 2), 0.8)
    m = g.matrix((3,), torch.tensor([0.8])).numpy()
    c, s = math.cos(0.4), math.sin(0.4)
    np.testing.assert_allclose(m, [[c, 0, -s], [0, 1, 0], [s, 0, c]])
    np.testing.assert_allclose(m, scipy.linalg.expm(-0.4j * g.generator((3,))).real, atol=1e-14)
    # generalized CZ: (-1)^(j·k) on a qutrit and a qubit
    d = GeneralizedCZ(0, 1).matrix((3, 2)).numpy()
    np.testing.assert_allclose(np.diag(d), [1, 1, 1, -1, 1, 1])
    # on qubits it is CZ
    np.testing.assert_allclose(GeneralizedCZ(0, 1).matrix((2, 2)).numpy(), np.diag([1, 1, 1, -1]))


def test_givens_on_several_pairs_equals_the_product_of_single_pairs():
    pairs = [(0, 4), (1, 5), (6, 2)]
    several = Circuit([7]).givens(0, pairs, "a")
    singles = Circuit([7])
    for pair in pairs:
        singles.givens(0, pair, "a")
    np.testing.assert_allclose(several.matrix([0.9]), singles.matrix([0.9]), atol=1e-15)
    assert several.gates[0].pairs == tuple(pairs) and several.gates[0].levels == (0, 4, 1, 5, 6, 2)
    assert Circuit.from_json(several.to_json()) == several
    for bad in [(0, 1, 1, 2), (0, 1, 2), (3, 3)]:
        with pytest.raises(WireError, match="none twice"):
            givens(0, bad, 0.1)
    # levels as arrays, one pair or several
    assert givens(0, np.array([0, 2]), 0.3).levels == (0, 2)
    assert givens(0, torch.tensor([0, 2]), 0.3).levels == (0, 2)
    assert givens(0, np.array([[0, 4], [1, 5]]), 0.3).levels == (0, 4, 1, 5)
    # descriptions with several pairs are version 2; others stay version 1
    assert several.to_dict()["version"] == 2 and singles.to_dict()["version"] == 1
    newer = {**several.to_dict(), "version": FORMAT_VERSION + 1}
    with pytest.raises(DescriptionError, match="upgrade qpeft"):
        Circuit.from_json(json.dumps(newer))


def test_controlled_gate_is_block_diagonal():
    gate = controlled(RY(1, 0.6), 0, [(1, 2)])  # active on levels 1 and 2 of a qutrit
    m = gate.matrix((3, 2), torch.tensor([0.6])).numpy()
    ry = rotation("Y", 0.6).real
    expected = scipy.linalg.block_diag(np.eye(2), ry, ry)
    np.testing.assert_allclose(m, expected, atol=1e-14)
    assert gate.is_real
    g = gate.generator((3, 2))
    np.testing.assert_allclose(scipy.linalg.expm(-0.3j * g), expected, atol=1e-14)


GATES = [
    RY(0, Parameter("a")),
    RX(1, 2 * Parameter("a") + 1),
    RZ(0, 0.3),
    pauli_rotation("XY", [1, 0], Parameter("b")),
    H(1),
    CX(1, 0),
    CZ(0, 1),
    controlled(RX(1, Parameter("b")), 0),
    unitary(np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0], [0, 1]),
]


@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.name)
def test_gate_inverse_is_adjoint(gate):
    c = Circuit(2).append(gate)
    values = {n: 0.37 for n in c.parameters}
    m = c.matrix(values)
    inverse = Circuit(2).append(gate.inverse()).matrix(values)
    np.testing.assert_allclose(inverse @ m, np.eye(4), atol=1e-12)


def test_custom_unitary_is_checked():
    with pytest.raises(NotUnitaryError, match="not unitary"):
        unitary(np.ones((2, 2)), 0)
    with pytest.raises(NotUnitaryError, match="square"):
        unitary(np.ones((2, 3)), 0)
    with pytest.raises(WireError, match="does not fit"):
        Circuit(2).unitary(np.eye(2), [0, 1])


# -- circuits ----------------------------------------------------------------------


def random_circuit(seed: int, dims=(2, 2, 2), length: int = 12) -> Circuit:
    rng = np.random.default_rng(seed)
    theta = ParameterVector("t", 3)
    c = Circuit(list(dims))
    qubits = [w for w, d in enumerate(dims) if d == 2]
    for _ in range(length):
        kind = rng.integers(0, 6)
        angle = float(rng.normal()) * theta[int(rng.integers(0, 3))] + float(rng.normal())
        w = [int(x) for x in rng.permutation(len(dims))]
        q = [int(x) for x in rng.permutation(qubits)]
        if kind == 0 and q:
            c.ry(q[0], angle)
        elif kind == 1 and len(q) > 1:
            c.pauli_rotation("".join(rng.choice(list("XYZ"), 2)), q[:2], angle)
        elif kind == 2 and len(q) > 1:
            c.cx(q[0], q[1])
        elif kind == 3:
            d = dims[w[0]]
            levels = [int(v) for v in rng.choice(d, 2, replace=False)]
            c.givens(w[0], levels, angle)
        elif kind == 4 and len(w) > 1:
            c.gcz(w[0], w[1])
        elif kind == 5 and q:
            c.rz(q[0], angle)
    return c


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dims", [(2, 2, 2), (3, 2), (2, 3, 2)])
def test_reference_matrix_is_unitary_and_inverse_is_adjoint(seed, dims):
    c = random_circuit(seed, dims)
    values = {n: 0.1 * (i + 1) for i, n in enumerate(c.parameters)}
    m = c.matrix(values)
    np.testing.assert_allclose(m.conj().T @ m, np.eye(c.dimension), atol=1e-12)
    if c.is_real:
        assert not np.iscomplexobj(m)
    np.testing.assert_allclose(c.inverse().matrix(values) @ m, np.eye(c.dimension), atol=1e-12)


def test_reference_matrix_agrees_with_kron_by_hand():
    a = 0.3
    c = Circuit(2).ry(0, a).cz(0, 1).rz(1, 0.2)
    expected = np.kron(np.eye(2), rotation("Z", 0.2)) @ np.diag([1, 1, 1, -1]) @ np.kron(
        rotation("Y", a), np.eye(2)
    )
    np.testing.assert_allclose(c.matrix(), expected, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([(2, 2, 2), (3, 2), (2, 5)]))
def test_json_round_trip_and_fingerprint(seed, dims):
    c = random_circuit(seed, dims)
    again = Circuit.from_json(c.to_json())
    assert again == c and hash(again) == hash(c)
    assert again.fingerprint() == c.fingerprint()
    assert json.loads(c.to_json())["format"] == "qpeft.circuit"


def test_circuit_structure_queries():
    c = qpeft.ansatz.pauli(qubits=4, layers=1)
    assert c.dimension == 16 and c.dims == (2, 2, 2, 2)
    assert c.depth() == 5  # RY, CZ, RY, CZ, RY
    assert c.is_real
    assert not Circuit(1).rx(0, "a").is_real
    assert "RY(theta[0])" in str(c)


def test_bind_partial_and_full():
    c = Circuit(2).ry(0, "a").ry(1, 2 * Parameter("b") + 1)
    half = c.bind({"a": 0.5})
    assert half.parameters == ("b",)
    full = c.bind([0.5, 0.25])
    assert full.num_parameters == 0
    np.testing.assert_allclose(full.matrix(), c.matrix({"a": 0.5, "b": 0.25}))
    with pytest.raises(ParameterError, match="unknown parameter"):
        c.bind({"zzz": 1.0})
    with pytest.raises(ParameterError, match="expected 2 values"):
        c.bind([1.0])


def test_bind_and_matrix_accept_parameter_objects_as_keys():
    a, b = Parameter("a"), Parameter("b")
    c = Circuit(2).ry(0, a).ry(1, 2 * b + 1)
    assert c.bind({a: 0.5}) == c.bind({"a": 0.5})
    assert c.bind({a: 0.5}).parameters == ("b",)
    np.testing.assert_array_equal(c.matrix({a: 0.5, b: 0.25}), c.matrix([0.5, 0.25]))
    with pytest.raises(ParameterError, match="unknown parameter.*zzz"):
        c.bind({Parameter("zzz"): 1.0})


def test_repeat_compose_and_rename():
    layer = Circuit(2).ry(0, "a").cz(0, 1)
    twice = layer.repeat(2)
    assert twice.parameters == ("a_0", "a_1") and len(twice) == 4
    shared = layer.repeat(3, share_parameters=True)
    assert shared.parameters == ("a",)
    values = {"a": 0.3}
    np.testing.assert_allclose(
        shared.matrix(values), np.linalg.matrix_power(layer.matrix(values), 3), atol=1e-14
    )
    big = Circuit(3).compose(layer, wires=[2, 0])
    assert big.gates[1].wires == (2, 0)
    np.testing.assert_allclose(
        (layer + layer.rename({"a": "b"})).matrix({"a": 0.1, "b": 0.2}),
        layer.matrix({"a": 0.2}) @ layer.matrix({"a": 0.1}),
        atol=1e-14,
    )


def test_rename_onto_a_kept_name_refuses_to_merge_angles():
    c = Circuit(2).ry(0, "a").ry(1, "b")
    with pytest.raises(ParameterError, match=r"merge.*a, b -> b.*merge=True"):
        c.rename({"a": "b"})
    with pytest.raises(ParameterError, match=r"a, b -> c"):
        c.rename({"a": "c", "b": "c"})
    # a swap, a chain and a name the circuit does not have keep two angles
    swapped = c.rename({"a": "b", "b": "a"})
    assert swapped.parameters == ("b", "a")
    np.testing.assert_array_equal(
        swapped.matrix({"b": 0.1, "a": 0.2}), c.matrix({"a": 0.1, "b": 0.2})
    )
    assert c.rename({"a": "b", "b": "c"}).parameters == ("b", "c")
    # a misspelt key would leave the angle shared after composing: refused
    with pytest.raises(ParameterError, match="unknown parameter.*'zzz'"):
        c.rename({"zzz": "q"})
    # merging on request shares one angle
    shared = c.rename({"a": "b"}, merge=True)
    assert shared.parameters == ("b",)
    np.testing.assert_array_equal(shared.matrix({"b": 0.3}), c.matrix({"a": 0.3, "b": 0.3}))


def test_rename_takes_parameter_objects_as_keys_and_values():
    theta = ParameterVector("theta", 2)
    block = Circuit(2).ry(0, theta[0]).ry(1, theta[1])
    renamed = block.rename({theta[0]: "phi0", theta[1]: Parameter("phi1")})
    assert renamed.parameters == ("phi0", "phi1")
    assert (block + renamed).num_parameters == 4
    with pytest.raises(ParameterError, match="mapping"):
        block.rename([("theta[0]", "b")])


def test_torch_reference_is_differentiable():
    c = qpeft.ansatz.pauli(qubits=2, layers=1)
    values = torch.randn(c.num_parameters, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: c.matrix(v, backend="torch"), (values,))


# -- bad input -----------------------------------------------------------------------


def test_qubit_rotation_on_a_qudit_names_a_call_that_works():
    # The error suggests a replacement; the suggested call must run as written.
    with pytest.raises(WireError) as error:
        Circuit([3, 2]).ry(0, 0.1)
    assert "circuit.givens(wire, (i, j), theta)" in str(error.value)
    Circuit([3, 2]).givens(0, (0, 1), 0.1)


def test_bad_input_raises_typed_errors():
    with pytest.raises(WireError, match="wires 0..1"):
        Circuit(2).ry(2, 0.1)
    with pytest.raises(WireError, match="dimension 3"):
        Circuit([3, 2]).ry(0, 0.1)
    with pytest.raises(WireError, match="same wire twice"):
        Circuit(2).cz(1, 1)
    with pytest.raises(WireError, match="levels"):
        Circuit([3]).givens(0, (0, 3), 0.1)
    with pytest.raises(ParameterError, match="unbound parameters"):
        Circuit(1).ry(0, "a").matrix()
    with pytest.raises(ParameterError, match="finite"):
        Circuit(1).ry(0, "a").matrix([float("nan")])
    with pytest.raises(ParameterError):
        Circuit(1).ry(0, float("inf"))
    with pytest.raises(DescriptionError, match="not valid JSON"):
        Circuit.from_json("{not json")
    with pytest.raises(DescriptionError, match="unknown gate kind"):
        Circuit.from_json(json.dumps(
            {"format": "qpeft.circuit", "version": 1, "dims": [2], "gates": [{"gate": "Foo"}]}
        ))
    with pytest.raises(DescriptionError, match="newer"):
        Circuit.from_json(json.dumps(
            {"format": "qpeft.circuit", "version": 99, "dims": [2], "gates": []}
        ))
    with pytest.raises(DescriptionError, match="malformed"):
        Circuit.from_json(json.dumps({
            "format": "qpeft.circuit", "version": 1, "dims": [2],
            "gates": [{"gate": "PauliRotation", "wires": [0]}],
        }))
    with pytest.raises(WireError):
        Circuit(1).append(SignDiagonal((0,), (1, 1, 1)))
    # every error is a QpeftError
    assert issubclass(WireError, QpeftError) and issubclass(ParameterError, QpeftError)


def _description(dims, gates):
    return {"format": "qpeft.circuit", "version": 1, "dims": dims, "gates": gates}


@pytest.mark.parametrize("dims, gates", [
    ([3.9, 2], []),
    ([3, "2"], []),
    ("22", []),
    ([2, 2], [{"gate": "Standard", "name": "H", "wires": [1.7]}]),
    ([2, 2], [{"gate": "Standard", "name": "CZ", "wires": "01"}]),
    ([2, 2], [{"gate": "Standard", "name": "H", "wires": [True]}]),
    ([3], [{"gate": "Givens", "wires": [0], "levels": [0, 2.99], "params": [0.1]}]),
    ([2], [{"gate": "SignDiagonal", "wires": [0], "signs": [1, -1.9]}]),
    ([2, 2], [{"gate": "Controlled", "controls": [0.5],
               "base": {"gate": "Standard", "name": "X", "wires": [1]}}]),
    ([2, 2], [{"gate": "Controlled", "controls": [0], "control_values": [[1.0]],
               "base": {"gate": "Standard", "name": "X", "wires": [1]}}]),
])
def test_descriptions_with_non_integer_dims_wires_levels_or_signs_are_refused(dims, gates):
    with pytest.raises(DescriptionError, match="integers"):
        Circuit.from_dict(_description(dims, gates))


@pytest.mark.parametrize("dims, gates, match", [
    ([2, 10**400], [], "at most 2147483647"),
    ({"a": 1}, [], "integers"),
    ([2, 2], [{"gate": "Barrier", "wires": [0, 1], "text": ["layer"]}], "'text' must be a string"),
    ([2, 2], [{"gate": "Standard", "name": {"H": 1}, "wires": [0]}], "'name' must be a string"),
])
def test_descriptions_with_out_of_range_or_non_string_fields_are_refused(dims, gates, match):
    with pytest.raises((DescriptionError, WireError), match=match):
        Circuit.from_dict(_description(dims, gates))
    document = _description([2], [])
    document["name"] = {"x": 1}
    with pytest.raises(DescriptionError, match="'name' must be a string"):
        Circuit.from_dict(document)


@pytest.mark.parametrize("build", [
    lambda: Circuit("22"),
    lambda: Circuit([2.9, 2]),
    lambda: Circuit(True),
    lambda: Circuit(2.0),
    lambda: Circuit(2).ry([1.7], 0.1),
    lambda: Circuit(2).ry(np.float64(1.0), 0.1),
    lambda: Circuit([3]).givens(0, (0, 1.5), 0.1),
    lambda: SignDiagonal((0,), (1, -1.9)),
    lambda: Circuit(2).controlled(X(1), [0.0]),
])
def test_constructors_refuse_non_integer_dims_wires_levels_and_signs(build):
    with pytest.raises(WireError):
        build()


def test_numpy_and_torch_integers_are_accepted_as_wires_and_dims():
    c = Circuit(np.int64(2)).ry(np.int64(1), 0.1).cz(torch.tensor(0), 1)
    assert c.dims == (2, 2) and c.gates[0].wires == (1,)
    assert Circuit([np.int32(3), 2]).givens(0, np.array([0, 2]), 0.1).gates[0].levels == (0, 2)


def test_non_finite_coefficients_are_refused():
    with pytest.raises(ParameterError, match="coefficient of a is inf"):
        Parameter("a") * 1e308 * 10
    with pytest.raises(ParameterError, match="finite"):
        Expression.make({"a": float("nan")})
    with pytest.raises(ParameterError, match="too large"):
        Circuit(1).ry(0, 10**400)
    for coefficient in ("NaN", "Infinity", "1" + "0" * 400):
        text = ('{"format":"qpeft.circuit","version":1,"dims":[2],"gates":[{"gate":'
                '"PauliRotation","pauli":"Y","wires":[0],"params":[{"terms":[["a",'
                + coefficient + ']],"constant":0}]}]}')
        with pytest.raises(DescriptionError, match="angle"):
            Circuit.from_json(text)


@pytest.mark.parametrize("text", [
    json.dumps(_description([2], [{"gate": "PauliRotation", "pauli": "Y", "wires": [0],
                                   "params": [10**400]}])),
    '{"format":"qpeft.circuit","version":1,"dims":[2],"gates":[],"name":' + "1" * 5000 + "}",
    "[" * 100000 + "]" * 100000,
])
def test_overflowing_or_deeply_nested_json_raises_description_error(text):
    with pytest.raises(DescriptionError):
        Circuit.from_json(text)


@pytest.mark.parametrize(("gate", "match"), [
    ({"gate": "Standard", "name": "X", "wires": [0], "params": [0.5]}, "takes no angles"),
    ({"gate": "SignDiagonal", "wires": [0], "signs": [1, -1], "params": ["a"]}, "no angles"),
    ({"gate": "Barrier", "wires": [0], "params": [1.0]}, "no angles"),
    ({"gate": "PauliRotation", "pauli": "Y", "wires": [0],
      "params": [{"terms": [["a", 1.0], ["a", 2.0]], "constant": 0.0}]}, "named in two terms"),
])
def test_descriptions_that_would_lose_angles_are_refused(gate, match):
    with pytest.raises(DescriptionError, match=match):
        Circuit.from_dict(_description([2], [gate]))


def test_deeply_nested_controlled_gates_raise_description_error():
    inner = {"gate": "Standard", "name": "X", "wires": [1]}
    for _ in range(5000):
        inner = {"gate": "Controlled", "controls": [0], "base": inner}
    with pytest.raises(DescriptionError, match="nested too deeply"):
        Circuit.from_dict(_description([2, 2], [inner]))


@pytest.mark.parametrize("version", [True, 0, -1, 1.0])
def test_description_versions_must_be_positive_integers(version):
    with pytest.raises(DescriptionError, match="version"):
        Circuit.from_dict({"format": "qpeft.circuit", "version": version, "dims": [2], "gates": []})


def test_compose_refuses_a_wire_mapping_that_names_a_wire_twice():
    other = Circuit(2).ry(0, 0.4).ry(1, 0.9)
    with pytest.raises(WireError, match="twice"):
        Circuit(3).compose(other, wires=[1, 1])
    with pytest.raises(WireError, match="integers"):
        Circuit(3).compose(other, wires=[0.0, 1])
    assert [g.wires for g in Circuit(3).compose(other, wires=[2, 0]).gates] == [(2,), (0,)]


def test_parameter_indices_with_leading_zeros_are_refused():
    # Qiskit and OpenQASM read w[01] as w[1]: two qpeft names would become one
    for name in ("w[01]", "w[00]"):
        with pytest.raises(ParameterError, match="leading zeros"):
            Parameter(name)
    with pytest.raises(ParameterError, match="leading zeros"):
        Circuit(2).ry(0, "w[1]").ry(1, "w[01]")
    assert Parameter("w[0]").name == "w[0]" and Parameter("w[10]").name == "w[10]"


def test_non_finite_numpy_and_torch_angles_are_named_as_such():
    for value in (np.float32("inf"), np.float16("nan"), torch.tensor(float("inf"))):
        with pytest.raises(ParameterError, match="angle is (inf|nan); angles .* must be finite"):
            Circuit(1).ry(0, value)
    assert Circuit(1).ry(0, np.float32(0.5)).gates[0].params[0].constant == 0.5
    assert len(ParameterVector("w", np.int64(3))) == 3
    with pytest.raises(ParameterError, match="length"):
        ParameterVector("w", True)


def test_numpy_scalars_scale_parameters():
    assert Parameter("a") * np.int64(2) == Parameter("a") * 2.0 == np.float64(2.0) * Parameter("a")
    with pytest.raises(ParameterError):
        Parameter("a") * np.bool_(True)


def test_repeat_counts_and_matrix_values_of_the_wrong_type_are_typed_errors():
    c = Circuit(1).ry(0, "a")
    with pytest.raises(WireError, match="integer"):
        c.repeat(2.5)
    assert c.repeat(np.int64(2)).num_parameters == 2
    for values in (["x"], [[1.0], [2.0, 3.0]]):
        with pytest.raises(ParameterError, match="numbers"):
            c.matrix(values)
        with pytest.raises(ParameterError, match="numbers"):
            c.bind(values)


@pytest.mark.parametrize(("built", "canonical"), [
    (lambda: SignDiagonal([0, 1], [1, 1, 1, -1]), lambda: SignDiagonal((0, 1), (1, 1, 1, -1))),
    (lambda: SignDiagonal(np.array([1]), np.array([1, -1])), lambda: SignDiagonal((1,), (1, -1))),
    (lambda: PauliRotation("YZ", [0, 1], [0.3]), lambda: pauli_rotation("YZ", [0, 1], 0.3)),
    (lambda: Givens([2], np.array([0, 2]), ["a"]), lambda: givens(2, (0, 2), "a")),
    (lambda: StandardGate("CZ", [0, 1]), lambda: CZ(0, 1)),
    (lambda: Controlled(RY(1, "a"), [0], [[np.int64(1)]]), lambda: controlled(RY(1, "a"), 0, [1])),
    (lambda: Unitary([1], np.eye(2)), lambda: unitary(np.eye(2), 1)),
    (lambda: Barrier([0, 1, 2], "end"), lambda: Barrier((0, 1, 2), "end")),
])
def test_gates_built_from_their_classes_are_plain_data(built, canonical):
    # lists, numpy integers and plain numbers are stored in canonical form, so
    # the circuit hashes, compares equal and survives a JSON round trip
    dims = [2, 2, 3]
    gate, reference = built(), canonical()
    assert gate == reference and hash(gate) == hash(reference)
    c = Circuit(dims).append(gate)
    assert c == Circuit(dims).append(reference) and hash(c) == hash(Circuit(dims).append(reference))
    again = Circuit.from_json(c.to_json())
    assert again == c
    values = [0.7] * c.num_parameters
    np.testing.assert_array_equal(again.matrix(values), c.matrix(values))


@pytest.mark.parametrize("build", [
    lambda: SignDiagonal((0.5, 1), (1, 1, 1, -1)),
    lambda: PauliRotation("Y", (1.0,), (0.1,)),
    lambda: Controlled(X(1), [0.0]),
    lambda: Barrier(("0",)),
])
def test_gate_classes_refuse_non_integer_wires(build):
    with pytest.raises(WireError, match="integers"):
        build()


def test_inverse_keeps_the_parameter_order():
    """c.inverse().matrix(θ) is c.matrix(θ)ᴴ for the same vector θ, in the
    reference, the compiled module and after a JSON round trip."""
    c = Circuit(2).ry(0, "a").rx(1, "b").cz(0, 1).ry(1, "c").ry(0, "a")
    inverse = c.inverse()
    assert inverse.parameters == c.parameters == ("a", "b", "c")
    theta = [0.3, -0.8, 1.4]
    np.testing.assert_allclose(inverse.matrix(theta) @ c.matrix(theta), np.eye(4), atol=1e-12)
    compiled = qpeft.compile(inverse, dtype=torch.float64)(torch.tensor(theta, dtype=torch.float64))
    np.testing.assert_allclose(compiled.numpy(), c.matrix(theta).conj().T, atol=1e-12)
    back = Circuit.from_json(inverse.to_json())
    assert back == inverse and back.parameters == ("a", "b", "c")
    assert inverse.to_dict()["version"] == 3 and inverse.to_dict()["parameters"] == ["a", "b", "c"]
    assert c.to_dict()["version"] == 1 and "parameters" not in c.to_dict()
    # a circuit whose order is its order of first appearance compares equal to a fresh one
    assert inverse.inverse() == c and inverse.inverse().to_dict() == c.to_dict()
    # the same gates read in another order are another circuit
    assert inverse != Circuit(2).extend(inverse.gates)


def test_derived_circuits_keep_the_order_of_the_names_that_remain():
    c = Circuit(2).ry(1, "b").ry(0, "a").inverse()  # parameters b, a; gates a, b
    assert c.parameters == ("b", "a")
    assert c.rename({"a": "z"}).parameters == ("b", "z")
    assert c.bind({"b": 0.1}).parameters == ("a",)
    assert (c + Circuit(2).ry(0, "x").ry(1, "a")).parameters == ("b", "a", "x")
    assert c.repeat(2).parameters == ("b_0", "a_0", "b_1", "a_1")
    assert c.copy().parameters == ("b", "a")
    assert c.reorder(["a", "b"]).parameters == ("a", "b")
    with pytest.raises(ParameterError, match="every parameter of the circuit once"):
        c.reorder(["a"])
    with pytest.raises(ParameterError, match="every parameter of the circuit once"):
        c.reorder(["a", "a", "b"])


@pytest.mark.parametrize("order", [["a"], ["a", "b", "b"], "ab", [1, 2], {"a": 1}])
def test_a_parameter_list_that_does_not_fit_the_gates_is_refused(order):
    data = Circuit(2).ry(0, "a").ry(1, "b").inverse().to_dict()
    data["parameters"] = order
    with pytest.raises(DescriptionError, match="parameters"):
        Circuit.from_dict(data)


@pytest.mark.parametrize("make", [
    lambda: Circuit(2).unitary([[1j]], []),
    lambda: Circuit(2).append(SignDiagonal((), (-1,))),
    lambda: Circuit(2).append(Barrier(())),
    lambda: Circuit(2).append(controlled(Unitary((), [[1j]]), [0])),
])
def test_a_gate_on_no_wires_is_refused(make):
    with pytest.raises(WireError, match="at least one wire"):
        make()


@pytest.mark.parametrize("gate", [
    {"gate": "Barrier", "wires": []},
    {"gate": "Unitary", "wires": [0], "real": [["1", "0"], ["0", "1"]]},
    {"gate": "Unitary", "wires": [0], "real": [[True, False], [False, True]]},
    {"gate": "Unitary", "wires": [0], "real": [[1, 0], [0, 1]], "imag": [[0]]},
    {"gate": "Unitary", "wires": [0], "real": [[1, 0], [0]]},
])
def test_json_gates_that_to_json_never_writes_are_refused(gate):
    data = {"format": "qpeft.circuit", "version": 1, "dims": [2], "gates": [gate]}
    with pytest.raises((DescriptionError, WireError)):
        Circuit.from_dict(data)


@pytest.mark.parametrize("name", [5, None, ["x"]])
def test_a_name_that_is_not_a_string_is_refused(name):
    with pytest.raises(DescriptionError, match="name must be a string"):
        Circuit(1, name=name)
    c = Circuit(1)
    with pytest.raises(DescriptionError, match="name must be a string"):
        c.name = name


def test_compose_takes_a_circuit():
    with pytest.raises(WireError, match="compose takes another Circuit"):
        Circuit(2).compose("x")


def test_a_mapping_of_tensors_keeps_the_torch_matrix_differentiable():
    a = Parameter("a")
    c = Circuit(2).ry(0, a).rx(1, "b").cz(0, 1)
    values = {a: torch.tensor(0.3, dtype=torch.float64, requires_grad=True),
              "b": torch.tensor(-0.4, dtype=torch.float64, requires_grad=True)}
    by_name = c.matrix(values, backend="torch")
    by_vector = c.matrix(torch.stack(list(values.values())), backend="torch")
    torch.testing.assert_close(by_name, by_vector, rtol=0, atol=0)
    by_name.real.sum().backward()
    assert values[a].grad is not None and values["b"].grad is not None


def test_a_mapping_with_a_parameter_and_its_name_binds_like_the_float_path():
    a = Parameter("a")
    c = Circuit(2).ry(0, a).rx(1, "b")
    values = {a: 0.1, "b": -1.2, "a": 0.3}  # the later key for a wins, as in bind()
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}
    np.testing.assert_allclose(c.matrix(tensors, backend="torch").numpy(), c.matrix(values),
                               rtol=0, atol=1e-15)


def test_a_circuit_pickled_before_the_parameter_order_loads():
    import pickle

    c = Circuit(2, name="old").ry(0, "a").cz(0, 1)
    state = dict(c.__dict__)
    state["name"] = state.pop("_name")  # the attributes of the earlier release
    del state["_order"]
    old = Circuit.__new__(Circuit)
    old.__setstate__(state)
    assert old == c and old.name == "old" and old.parameters == ("a",)
    assert pickle.loads(pickle.dumps(c.inverse())).parameters == c.inverse().parameters


@pytest.mark.parametrize("values", [
    np.array([0.3 + 2j]), torch.tensor([0.3 + 2j]), [0.3 + 2j], {"a": np.complex128(0.3 + 2j)},
    {"a": torch.tensor(1 + 2j)}, np.array([True]), torch.tensor([True]), {"a": np.bool_(True)},
])
def test_complex_and_boolean_values_are_refused_not_cut_to_a_real_angle(values):
    """NumPy and torch turn 0.3+2j into 0.3 and True into 1.0 with at most a warning."""
    c = Circuit(1).ry(0, "a")
    for call in (c.matrix, c.bind, lambda v: c.matrix(v, backend="torch")):
        with pytest.raises(ParameterError, match="complex number|boolean"):
            call(values)


@pytest.mark.parametrize("angle", [np.complex128(0.3 + 2j), np.bool_(True), torch.tensor(True),
                                   torch.tensor(1 + 2j)])
def test_complex_and_boolean_constant_angles_are_refused(angle):
    with pytest.raises(ParameterError, match="complex number|boolean"):
        Circuit(1).ry(0, angle)


def test_trained_tensors_bind_and_a_list_of_them_stays_differentiable():
    c = qpeft.ansatz.pauli(qubits=3, layers=1)
    theta = torch.nn.Parameter(torch.randn(c.num_parameters, dtype=torch.float64))
    bound = c.bind(theta)  # once "Can't call numpy() on Tensor that requires grad"
    np.testing.assert_allclose(bound.matrix(), c.matrix(theta.detach().numpy()), atol=1e-14)
    angles = [torch.nn.Parameter(t) for t in theta.detach().clone()]
    c.matrix(angles, backend="torch").trace().backward()
    assert all(a.grad is not None for a in angles)


@pytest.mark.parametrize("build, error", [
    (lambda: Circuit(2).pauli_rotation(None, [0], 0.1), DescriptionError),
    (lambda: Circuit([3]).givens(0, None, 0.1), DescriptionError),
    (lambda: Circuit([3]).givens(0, 1, 0.1), DescriptionError),
    (lambda: Circuit(1).unitary([[1, 0], [0]], 0), NotUnitaryError),
    (lambda: Circuit(1).unitary("I", 0), NotUnitaryError),
    (lambda: Parameter("a") / Parameter("b"), ParameterError),
    (lambda: 2 / Parameter("a"), ParameterError),
    (lambda: RY(0, "a").matrix((2,)), ParameterError),
])
def test_malformed_gate_arguments_are_typed_errors(build, error):
    with pytest.raises(error):
        build()


def test_a_constant_gate_matrix_needs_no_angles_and_a_tensor_matrix_is_read_off_its_graph():
    torch.testing.assert_close(RY(0, 0.5).matrix((2,)),
                               RY(0, "a").matrix((2,), torch.tensor([0.5], dtype=torch.float64)))
    rotation = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64))[0].requires_grad_(True)
    assert Circuit(1).unitary(rotation, 0).num_wires == 1
    # a conjugate view (the adjoint by .mH) and a low-precision matrix
    phase = torch.linalg.qr(torch.randn(2, 2, dtype=torch.complex128))[0]
    adjoint = Circuit(1).unitary(phase.mH, 0).matrix()
    np.testing.assert_allclose(adjoint, phase.numpy().conj().T, atol=1e-15)
    assert Circuit(1).unitary(torch.eye(2, dtype=torch.bfloat16), 0).num_wires == 1


def test_equal_circuits_have_equal_fingerprints_whatever_the_sign_of_zero():
    circuit = Circuit(1).ry(0, 0.0)
    assert circuit == circuit.inverse()
    assert circuit.fingerprint() == circuit.inverse().fingerprint()
    plus = Circuit(1).unitary([[0.0, 1.0], [1.0, 0.0]], 0)
    minus = Circuit(1).unitary([[-0.0, 1.0], [1.0, 0.0]], 0)
    assert plus == minus and plus.fingerprint() == minus.fingerprint()


@pytest.mark.parametrize("name", ["theta\n", "a\n", "w[3]\n"])
def test_a_name_with_a_trailing_newline_is_refused(name):
    with pytest.raises(ParameterError, match="invalid parameter name"):
        Parameter(name)


def test_a_controlled_barrier_adds_no_layer_as_a_barrier_adds_none():
    plain = Circuit(3).h(0).barrier("mid").h(0)
    under_control = Circuit(3).h(0).append(controlled(Barrier((1, 2), "mid"), [0])).h(0)
    assert under_control.depth() == plain.depth() == 2


@pytest.mark.parametrize("rename, where", [
    (("control_values", "controlvalues"), "a Controlled gate"),
    (("signs", "sign"), "a SignDiagonal gate"),
    (("parameters", "parameter"), "a circuit description"),
])
def test_a_misspelt_key_in_a_description_is_refused_not_ignored(rename, where):
    from qpeft.circuit import Parameter, controlled
    from qpeft.circuit.gates import RY, SignDiagonal

    a, b = Parameter("a"), Parameter("b")
    circuit = (Circuit(3).append(controlled(RY(1, b), [0], [[0]]))
               .append(SignDiagonal([1, 2], [1, -1, 1, 1])).ry(2, a).reorder(["a", "b"]))
    text = circuit.to_json()
    assert Circuit.from_json(text) == circuit
    old, new = rename
    assert f'"{old}"' in text
    with pytest.raises(DescriptionError, match=f"{where} .*unknown key.*'{new}'"):
        Circuit.from_json(text.replace(f'"{old}"', f'"{new}"'))


@pytest.mark.parametrize("terms, constant, message", [
    ((), float("nan"), "constant is nan"),
    ((), float("-inf"), "constant is -inf"),
    ((("a", float("inf")),), 0.0, "coefficient of a is inf"),
    ((("a", True),), 0.0, "coefficient of a must be a real number"),
    ((), "0.5", "constant must be a real number"),
    ((("a", 1.0), ("a", 2.0)), 0.0, "appears in two terms"),
    ((("2a", 1.0),), 0.0, "invalid parameter name"),
    ({"a": 1.0}, 0.0, "Expression.make"),
    ((("a",),), 0.0, "pair"),
])
def test_an_expression_built_from_its_class_is_checked(terms, constant, message):
    with pytest.raises(ParameterError, match=message):
        Expression(terms, constant)


def test_an_expression_built_from_its_class_is_stored_like_make_builds_it():
    direct = Expression([("b", 1), ["a", 2.0], ("c", 0.0)], -0.0)
    assert direct == Expression.make({"a": 2, "b": 1})
    assert direct.terms == (("a", 2.0), ("b", 1.0)) and str(direct.constant) == "0.0"
    assert hash(direct) == hash(Expression.make({"a": 2, "b": 1}))
    circuit = Circuit(1).append(RY(0, direct)).append(RY(0, Expression((), -0.0)))
    assert Circuit.from_json(circuit.to_json()) == circuit
    assert circuit.fingerprint() == Circuit(1).ry(0, 2 * Parameter("a") + Parameter("b")).ry(
        0, 0.0).fingerprint()
