"""The compiler: every method against the reference matrix, gradients,
batching, orthonormality at size, the catalog, errors and torch.compile."""

from __future__ import annotations

import inspect
import pickle
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import qpeft
from qpeft.ansatz import ansatz_options, catalog_names, for_dimension, load_ansatz, pauli
from qpeft.circuit import (
    Circuit,
    Parameter,
    SignDiagonal,
    controlled,
    givens,
    pauli_rotation,
)
from qpeft.circuit.gates import RY, H, X
from qpeft.compiler import METHODS, compile_circuit
from qpeft.compiler import blocks as blocks_module
from qpeft.compiler import engine as engine_module
from qpeft.compiler import plan as plan_module
from qpeft.compiler.plan import ApplyBlock, ApplySigns, Reorder, make_plan, make_schedule
from qpeft.compiler.recompute import autograd_saved_bytes, recomputed_forward
from qpeft.errors import CompileError, ParameterError, QpeftError

COMPILED_METHODS = ("columns", "dense", "tensornet", "recompute", "pairs-dense",
                    "pairs-tensornet", "pairs-recompute")
NAMES = [f"p{i}" for i in range(4)]


def compiled(circuit: Circuit, columns, method: str, dtype=torch.float64, max_block=16):
    """A compiled circuit for one of COMPILED_METHODS ("recompute": columns with
    the memory-saving backward; "pairs-…": ``max_block=2`` and no size rule,
    so every rotation on more than two levels that mixes them in pairs is a
    pair node)."""
    if method.startswith("pairs-"):
        with mock.patch.object(plan_module, "PAIR_RATIO", 0):
            return compiled(circuit, columns, method.removeprefix("pairs-"), dtype, max_block=2)
    if method == "recompute":
        return compile_circuit(circuit, columns, dtype=dtype, recompute_backward=True,
                               max_block=max_block)
    return compile_circuit(circuit, columns, method=method, dtype=dtype, max_block=max_block)


def real_view(tensor: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


# -- random circuits ------------------------------------------------------------


@st.composite
def angles(draw):
    """A constant, one parameter, or an affine expression of shared parameters."""
    kind = draw(st.sampled_from(["constant", "parameter", "affine"]))
    if kind == "constant":
        return draw(st.floats(-3, 3))
    name = Parameter(draw(st.sampled_from(NAMES)))
    if kind == "parameter":
        return name
    other = Parameter(draw(st.sampled_from(NAMES)))
    return draw(st.floats(-2, 2)) * name + draw(st.floats(-1, 1)) * other + draw(st.floats(-1, 1))


def random_unitary(size: int, real: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((size, size))
    if not real:
        matrix = matrix + 1j * rng.standard_normal((size, size))
    q, r = np.linalg.qr(matrix)
    return q * (np.diag(r) / np.abs(np.diag(r)))


@st.composite
def circuits(draw, max_wires: int = 4):
    """Qubits and qudits; rotations, Pauli strings, Givens, fixed and controlled
    gates, sign diagonals, fixed unitaries, shared parameters, constants."""
    dims = draw(st.lists(st.sampled_from([2, 2, 3]), min_size=1, max_size=max_wires))
    circuit = Circuit(dims)
    qubits = [w for w, d in enumerate(dims) if d == 2]
    wires = st.sampled_from(range(len(dims)))
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["rotation", "pauli", "givens", "fixed", "two", "signs",
                                     "unitary", "controlled", "barrier"]))
        if kind in ("rotation", "pauli", "fixed") and not qubits:
            kind = "givens"
        if kind == "rotation":
            gate = draw(st.sampled_from(["ry", "rx", "rz"]))
            getattr(circuit, gate)(draw(st.sampled_from(qubits)), draw(angles()))
        elif kind == "pauli":
            chosen = draw(st.lists(st.sampled_from(qubits), min_size=1, max_size=2, unique=True))
            letters = draw(st.text("IXYZ", min_size=len(chosen), max_size=len(chosen)).filter(
                lambda text: set(text) != {"I"}))  # all-I strings: a global phase
            circuit.append(pauli_rotation(letters, chosen, draw(angles())))
        elif kind == "givens":
            wire = draw(wires)
            levels = draw(st.lists(st.integers(0, dims[wire] - 1), min_size=2, max_size=2,
                                   unique=True))
            circuit.append(givens(wire, levels, draw(angles())))
        elif kind == "fixed":
            gate = draw(st.sampled_from([H, X]))
            circuit.append(gate(draw(st.sampled_from(qubits))))
        elif kind == "two":
            if len(dims) < 2:
                continue
            a, b = draw(st.lists(wires, min_size=2, max_size=2, unique=True))
            if dims[a] == dims[b] == 2:
                getattr(circuit, draw(st.sampled_from(["cz", "cx", "swap"])))(a, b)
            else:
                circuit.gcz(a, b)
        elif kind == "signs":
            chosen = draw(st.lists(wires, min_size=1, max_size=2, unique=True))
            size = int(np.prod([dims[w] for w in chosen]))
            signs = draw(st.lists(st.sampled_from([1, -1]), min_size=size, max_size=size))
            circuit.append(SignDiagonal(tuple(chosen), tuple(signs)))
        elif kind == "unitary":
            chosen = draw(st.lists(wires, min_size=1, max_size=2, unique=True))
            size = int(np.prod([dims[w] for w in chosen]))
            matrix = random_unitary(size, draw(st.booleans()), draw(st.integers(0, 999)))
            circuit.unitary(matrix, chosen)
        elif kind == "controlled":
            if len(dims) < 2:
                continue
            control, target = draw(st.lists(wires, min_size=2, max_size=2, unique=True))
            if dims[target] == 2:
                base = RY(target, draw(angles()))
            else:
                base = givens(target, (0, dims[target] - 1), draw(angles()))
            circuit.append(controlled(base, control))
        else:
            circuit.barrier()
    return circuit


@st.composite
def column_choices(draw, dimension: int):
    """None (all), a count K, or a list of distinct indices in any order."""
    kind = draw(st.sampled_from(["all", "count", "list"]))
    if kind == "all":
        return None
    if kind == "count":
        return draw(st.integers(1, dimension))
    return draw(st.lists(st.integers(0, dimension - 1), min_size=1, max_size=min(dimension, 5),
                         unique=True))


def check_every_method(data, circuit: Circuit, device: torch.device | str = "cpu") -> None:
    """Every method, on ``device``, equals the reference matrix on drawn columns and values."""
    columns = data.draw(column_choices(circuit.dimension))
    values = torch.as_tensor(data.draw(st.lists(st.floats(-4, 4), min_size=circuit.num_parameters,
                                                max_size=circuit.num_parameters)),
                             dtype=torch.float64)
    reference = torch.as_tensor(circuit.matrix(values))
    for method in COMPILED_METHODS:
        frame = compiled(circuit, columns, method).to(device)
        out = frame(values.to(device)).cpu()
        expected = reference[:, frame.columns]
        assert out.shape == expected.shape
        assert torch.allclose(out.to(expected.dtype), expected, atol=1e-12, rtol=0), method


@settings(max_examples=60)
@given(data=st.data())
def test_every_method_equals_the_reference_matrix(data) -> None:
    check_every_method(data, data.draw(circuits()))


@settings(max_examples=10)
@given(circuit=circuits(max_wires=3))
def test_gradients_of_every_method_pass_gradcheck(circuit: Circuit) -> None:
    if circuit.num_parameters == 0:
        circuit = circuit.copy().ry(0, "extra") if circuit.dims[0] == 2 else circuit.copy().givens(
            0, (0, 1), "extra")
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    columns = list(range(min(3, circuit.dimension)))[::-1]
    for method in COMPILED_METHODS:
        frame = compiled(circuit, columns, method)
        # fast mode checks random projections of the Jacobian (full check below)
        assert torch.autograd.gradcheck(lambda v, f=frame: real_view(f(v)), (values,),
                                        fast_mode=True), method


@pytest.mark.parametrize("method", COMPILED_METHODS)
def test_full_gradcheck_on_a_mixed_circuit(method: str) -> None:
    circuit = (Circuit([2, 3, 2]).ry(0, "a").givens(1, (0, 2), "b").cz(0, 2)
               .rx(2, 0.5 * Parameter("a")).append(controlled(RY(2, "c"), 1)).gcz(0, 1)
               .ry(0, "c").append(pauli_rotation("XX", [0, 2], "b")))
    frame = compiled(circuit, [3, 0, 7], method)
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: real_view(frame(v)), (values,))


def check_builder_backward(circuit: Circuit, method: str) -> None:
    """BuildFunction's backward (cumulative products, index_add, stage
    products, rotation derivatives) gives the gradient autograd gets through
    the same forward operations."""
    from qpeft.compiler.blocks import BuildFunction

    builder = compiled(circuit, [0], method).engine.builder
    values = torch.randn(3, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    classes, groups = builder.tables(values)
    reference = [*classes, *groups]
    if not reference:
        return
    written = BuildFunction.apply(builder, values)
    assert len(written) == len(reference)
    weights = [torch.randn_like(t) for t in reference]
    for t, r in zip(written, reference):
        torch.testing.assert_close(t, r, rtol=0, atol=0)

    def gradient(outputs):
        loss = sum((real_view(t) * real_view(w)).sum() for t, w in zip(outputs, weights))
        if not loss.requires_grad:
            return torch.zeros_like(values)
        return torch.autograd.grad(loss, values)[0]

    torch.testing.assert_close(gradient(written), gradient(reference), rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(circuit=circuits(), pairs=st.booleans())
def test_written_out_builder_backward_equals_autograd(circuit: Circuit, pairs: bool) -> None:
    note(f"gates: {list(circuit.gates)}")
    check_builder_backward(circuit, "pairs-dense" if pairs else "columns")


@pytest.mark.parametrize("method", ["columns", "pairs-dense"])
@pytest.mark.parametrize("name", ["pauli", "complex", "complex-kron", "chains", "subnormal"])
def test_written_out_builder_backward_on_every_kind_of_block(name: str, method: str) -> None:
    """Blocks of several stages (pauli: the first layer and the entangled
    pairs), complex Kronecker factors and pair nodes, nodes that are runs of
    several gates with constants between them, and a subnormal matrix entry
    (sin of half a subnormal angle: autograd through prod() divided by it and
    gave NaN; the products are a chain of multiplications)."""
    circuit = {
        "pauli": pauli(4, 2),
        "complex": Circuit([2, 3, 2]).ry(0, "a").givens(1, (0, 2), "b").cz(0, 2)
        .rx(2, 0.5 * Parameter("a")).append(controlled(RY(2, "c"), 1)).gcz(0, 1)
        .ry(0, "c").append(pauli_rotation("XX", [0, 2], "b")).rz(0, "d"),
        "complex-kron": Circuit([2, 2]).rx(0, "a").rx(1, "b").cz(0, 1).rx(0, "c").rz(1, "d")
        .cz(0, 1).rx(0, "e").rx(1, "a"),
        "subnormal": Circuit([2, 3]).rx(0, -1.1125369292536007e-308)
        .append(SignDiagonal((0, 1), (1, -1, 1, -1, -1, 1))).givens(1, (0, 1), "p"),
        "chains": Circuit([2, 2]).ry(0, "a").h(0).rx(0, "b").y(0).ry(0, "a").cz(0, 1)
        .ry(1, "c").x(1).ry(1, "d"),
    }[name]
    check_builder_backward(circuit, method)


def test_rotations_on_many_levels_become_pair_nodes() -> None:
    """Givens rotations, controlled rotations and complex Pauli rotations on
    wires of more than ``max_block`` levels are pair nodes (no D×D matrix);
    disjoint consecutive ones on the same wires merge into one node."""
    from qpeft.compiler.plan import MatrixNode, PairNode

    circuit = (Circuit([2, 3, 2]).givens(1, (0, 1), "a").givens(1, (0, 2), "b")
               .append(controlled(RY(2, "c"), 1)).append(pauli_rotation("XX", [0, 2], "b")))
    with mock.patch.object(plan_module, "PAIR_RATIO", 0):
        plan = make_plan(circuit, max_block=2)
    assert not [n for n in plan.nodes if isinstance(n, MatrixNode)]
    pairs = [n for n in plan.nodes if isinstance(n, PairNode)]
    assert [(p.wires, p.size, p.is_real) for p in pairs] == [
        ((1,), 3, True), ((1,), 3, True), ((1, 2), 6, True), ((0, 2), 4, False)]
    with mock.patch.object(plan_module, "PAIR_RATIO", 0):
        merged = make_plan(Circuit([5]).givens(0, (0, 1), "a").givens(0, (2, 3), "b")
                           .givens(0, (1, 2), "c"), max_block=2)
    assert [p.touched.tolist() for p in merged.pairs] == [[True] * 4 + [False], [False, True,
                                                                                True, False, False]]
    # a pair node on wires that are not neighbours in the layout: one reorder
    steps = make_schedule(plan, columns=2).steps
    assert any(type(step).__name__ == "Reorder" for step in steps)
    # one wire: a pair node only where D is large next to N
    for dimension, expected in [(2 * 37, True), (4 * 37, False), (293, True)]:
        large = make_plan(for_dimension(dimension, layers=2))
        assert bool(large.pairs) == expected, dimension
        assert all(n.size <= 37 for n in large.nodes if isinstance(n, MatrixNode))
    shannon = make_plan(for_dimension(37 * 2**6, layers=2, method="shannon"))
    assert shannon.pairs  # the rotations controlled by the 37-level wire


@st.composite
def shared_control_circuits(draw):
    """Runs of rotations controlled by the same wire on any of its levels,
    diagonal Pauli rotations (ZZ) and sign flips between them, and now and
    then a gate that breaks a run: what the planner gathers into
    :class:`~qpeft.compiler.plan.SharedControls`."""
    dims = draw(st.lists(st.sampled_from([2, 2, 3]), min_size=2, max_size=4))
    circuit = Circuit(dims)
    wires = list(range(len(dims)))
    qubits = [w for w in wires if dims[w] == 2]
    for _ in range(draw(st.integers(2, 12))):
        kind = draw(st.sampled_from(["controlled", "controlled", "controlled", "zz", "signs",
                                     "other"]))
        if kind == "controlled":
            control = draw(st.sampled_from([0, 0, 0, *wires]))
            target = draw(st.sampled_from([w for w in wires if w != control]))
            levels = draw(st.lists(st.integers(0, dims[control] - 1), min_size=1,
                                   max_size=dims[control], unique=True))
            base = (RY(target, draw(angles())) if dims[target] == 2
                    else givens(target, (0, dims[target] - 1), draw(angles())))
            circuit.append(controlled(base, control, [levels]))
        elif kind == "zz" and len(qubits) >= 2:
            chosen = draw(st.lists(st.sampled_from(qubits), min_size=2, max_size=2, unique=True))
            circuit.append(pauli_rotation("ZZ", chosen, draw(angles())))
        elif kind == "signs":
            chosen = draw(st.lists(st.sampled_from(wires), min_size=1, max_size=3, unique=True))
            size = int(np.prod([dims[w] for w in chosen]))
            signs = draw(st.lists(st.sampled_from([1, -1]), min_size=size, max_size=size))
            circuit.append(SignDiagonal(tuple(chosen), tuple(signs)))
        elif kind == "other":
            wire = draw(st.sampled_from(wires))
            if dims[wire] == 2:
                circuit.ry(wire, draw(angles()))
            else:
                circuit.givens(wire, (0, 1), draw(angles()))
    return circuit


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_rotations_sharing_a_control_equal_the_reference(data) -> None:
    """Rotations gathered into one block because they share control wires
    (and commuting sign flips moved ahead of them): every method equals the
    reference matrix, and the builder's written-out backward equals autograd."""
    circuit = data.draw(shared_control_circuits())
    note(f"gates: {list(circuit.gates)}")
    check_every_method(data, circuit)
    if circuit.num_parameters:
        check_builder_backward(circuit, "columns")


@pytest.mark.parametrize("columns", [[0, 5, 23], list(range(0, 24, 2))])
def test_rotations_sharing_a_control_become_one_block(columns: list[int]) -> None:
    """Three RY controlled by levels of a qutrit, with a sign flip between
    them that commutes with the run: one block on the four wires, one 8×8
    matrix per level of the qutrit, equal to the reference, with exact
    gradients. With 3 columns the product moves the state (fewer numbers
    after the block's axes than its size), with 12 it reads it in place."""
    circuit = (Circuit([3, 2, 2, 2]).givens(0, (0, 2), "g")
               .append(controlled(RY(1, "a"), 0, [[0, 1]]))
               .append(SignDiagonal((0, 2, 3), tuple([1, 1, 1, -1] * 3)))
               .append(controlled(RY(2, "b"), 0, [[2]]))
               .append(controlled(RY(3, 0.5 * Parameter("a")), 0, [[1]]))
               .append(controlled(RY(1, "c"), 2)))
    plan = make_plan(circuit)
    assert [block.wires for block in plan.blocks] == [(0,), (0, 1, 2, 3), (2, 1)]
    shared = plan.blocks[1]
    assert shared.control == 0 and len(shared.nodes) == 3
    assert shared.layout(plan.dims) == ((3, 2, 2, 2), ((0, 1), (0, 2), (0, 3)))
    steps = make_schedule(plan, columns).steps
    assert [type(step).__name__ for step in steps].count("ApplyControlled") == 1
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    expected = torch.stack([torch.as_tensor(circuit.matrix(v))[:, columns]
                            for v in values.detach()])
    for method in COMPILED_METHODS:
        frame = compiled(circuit, columns, method)
        assert torch.allclose(frame(values), expected, atol=1e-12, rtol=0), method
    for method in ("columns", "recompute"):  # 12 columns: random projections of the Jacobian
        assert torch.autograd.gradcheck(compiled(circuit, columns, method), (values,),
                                        fast_mode=len(columns) > 3), method


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("columns", [[1, 6, 40], list(range(0, 48, 6))])
def test_a_control_between_other_wires(columns: list[int], in_place: bool) -> None:
    """A qutrit control with a wire on each side and one between it and the
    targets: the state is read as (B, 2, 3, 2, 4, after) with 3 or 8 columns
    after the targets, for 12 products in place or (with the threshold at
    0) moved to one product per level; ``max_block=2`` (pair nodes) agrees."""
    from qpeft.compiler import engine as engine_module

    threshold = engine_module.IN_PLACE_PRODUCTS if in_place else 0
    with mock.patch.object(engine_module, "IN_PLACE_PRODUCTS", threshold):
        check_control_between_other_wires(columns)


def check_control_between_other_wires(columns: list[int]) -> None:
    circuit = (Circuit([2, 3, 2, 2, 2]).ry(0, "z").ry(2, "y")
               .append(controlled(RY(3, "a"), 1, [[0, 2]]))
               .append(controlled(RY(4, "b"), 1, [[1, 2]]))
               .append(SignDiagonal((1, 4), (1, -1, -1, 1, 1, -1)))
               .append(controlled(RY(3, "c"), 1, [[2]])))
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    expected = torch.stack([torch.as_tensor(circuit.matrix(v))[:, columns]
                            for v in values.detach()])
    for method in ("columns", "recompute", "pairs-columns"):
        frame = compiled(circuit, columns, method)
        steps = [s for s in frame.engine.schedule.steps if type(s).__name__ == "ApplyControlled"]
        if method != "pairs-columns":
            assert [(s.before, s.levels, s.middle) for s in steps] == [(2, 3, 2)], method
        assert torch.allclose(frame(values), expected, atol=1e-12, rtol=0), method
        assert torch.autograd.gradcheck(frame, (values,), fast_mode=len(columns) > 3), method


@pytest.mark.parametrize("circuit", [
    Circuit([2, 2]).rz(0, "a").cz(0, 1).rz(0, "b"),
    Circuit([2, 2]).rz(0, "a").z(0).rz(0, "b").cx(0, 1),
    Circuit([3, 2]).givens(0, (0, 1), "g").append(pauli_rotation("Z", [1], "a"))
    .append(SignDiagonal((0, 1), (1, -1, 1, -1, 1, 1))).append(pauli_rotation("Z", [1], "b")),
], ids=["rz-cz-rz", "rz-z-rz", "z-signs-z"])
def test_diagonal_rotations_on_one_wire_around_a_sign_flip(circuit: Circuit) -> None:
    """Two diagonal rotations on the same wire with a sign flip between them
    could share that wire but have no other: they stay separate nodes (a
    group without targets failed to compile)."""
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    reference = torch.as_tensor(circuit.matrix(values))
    for method in COMPILED_METHODS:
        frame = compiled(circuit, 2, method)
        assert torch.allclose(frame(values), reference[:, :2], atol=1e-12, rtol=0), method


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("method", ["columns", "recompute"])
def test_vectorized_jacobian_through_a_shared_control(method: str, in_place: bool) -> None:
    """The controlled step's backward runs under vmap (no einsum, which has no
    batching rule), reading the state in place or moving it."""
    from qpeft.compiler import engine as engine_module

    circuit = (Circuit([3, 2, 2]).append(controlled(RY(1, "a"), 0, [[0, 2]]))
               .append(controlled(RY(2, "b"), 0)).append(controlled(RY(1, "c"), 0, [[1]])))
    threshold = engine_module.IN_PLACE_PRODUCTS if in_place else 0
    with mock.patch.object(engine_module, "IN_PLACE_PRODUCTS", threshold):
        frame = compiled(circuit, [0, 7], method)
        assert any(type(s).__name__ == "ApplyControlled" for s in frame.engine.schedule.steps)
        values = torch.randn(2, circuit.num_parameters, dtype=torch.float64)
        fast = torch.autograd.functional.jacobian(frame, values, vectorize=True)
        slow = torch.autograd.functional.jacobian(frame, values, vectorize=False)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


def test_which_wires_a_node_is_block_diagonal_on() -> None:
    from qpeft.compiler.plan import _diagonal_wires

    circuit = (Circuit([3, 2, 2]).append(controlled(RY(1, "a"), 0))
               .append(pauli_rotation("ZZ", [1, 2], "b")).givens(0, (0, 1), "c").cx(1, 2)
               .append(SignDiagonal((0, 2), (1, -1) * 3)))
    plan = make_plan(circuit, max_block=2 * 3 * 2)
    groups = {g.size: g for g in plan.groups}
    assert [_diagonal_wires(node, plan.dims, groups) for node in plan.nodes] == [
        {0}, {1, 2}, set(), {1}, {0, 2}]


def test_the_shannon_construction_shares_its_control_wire() -> None:
    """Each rotation of a real qubit is controlled by the block-select wire:
    three of them form one block, 51 block products for N = 384 where one
    per rotation took 133."""
    frame = compile_circuit(for_dimension(384, layers=2, method="shannon"), 4,
                            dtype=torch.float64)
    assert frame.cost()["block_products"] == 51
    values = torch.randn(frame.num_parameters, dtype=torch.float64)
    reference = torch.as_tensor(for_dimension(384, layers=2, method="shannon").matrix(values))
    assert torch.allclose(frame(values), reference[:, :4], atol=1e-12, rtol=0)


@settings(max_examples=10)
@given(circuit=circuits())
def test_recomputed_gradients_equal_the_standard_path(circuit: Circuit) -> None:
    if circuit.num_parameters == 0:
        return
    frame = compile_circuit(circuit, min(4, circuit.dimension), method="columns",
                            dtype=torch.float64)
    values = torch.randn(3, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    weight = torch.randn_like(real_view(frame(values)))
    standard, = torch.autograd.grad((real_view(frame(values)) * weight).sum(), values)
    low_memory, = torch.autograd.grad(
        (real_view(recomputed_forward(frame.engine, values)) * weight).sum(), values)
    assert torch.allclose(standard, low_memory, atol=1e-10, rtol=0)


def test_recompute_equals_standard_on_a_deep_circuit() -> None:
    circuit = pauli(8, 6)
    frame = compile_circuit(circuit, 8, method="columns", dtype=torch.float64)
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 256, 8, dtype=torch.float64)
    standard, = torch.autograd.grad((frame(values) * weight).sum(), values)
    low_memory, = torch.autograd.grad((frame.engine(values, keep_states=False) * weight).sum(),
                                      values)
    assert torch.allclose(standard, low_memory, atol=1e-10, rtol=0)


def test_recompute_keeps_far_less_for_the_backward_pass() -> None:
    circuit = pauli(10, 2)
    held = {}
    for recompute in (False, True):
        frame = compile_circuit(circuit, 32, method="columns", recompute_backward=recompute)
        values = torch.randn(circuit.num_parameters, requires_grad=True)
        held[recompute], out = autograd_saved_bytes(frame, values, exclude=frame.buffers())
    state = out.numel() * out.element_size()
    assert held[False] >= 4 * state  # several intermediate states
    assert held[True] < 2 * state  # the output plus block-sized matrices


@settings(max_examples=10)
@given(circuit=circuits(), method=st.sampled_from(COMPILED_METHODS))
def test_a_batched_call_equals_separate_calls(circuit: Circuit, method: str) -> None:
    frame = compiled(circuit, min(3, circuit.dimension), method)
    values = torch.randn(2, 3, circuit.num_parameters, dtype=torch.float64)
    batched = frame(values)
    assert batched.shape == (2, 3, circuit.dimension, frame.num_columns)
    for i in range(2):
        for j in range(3):
            assert torch.allclose(batched[i, j], frame(values[i, j]), atol=1e-13, rtol=0)


@pytest.mark.parametrize(
    "circuit",
    [pauli(4, 2), pauli(8, 2), pauli(11, 2), pauli(14, 2), for_dimension(384, 2),
     for_dimension(768, 2), for_dimension(3072, 2)],
    ids=lambda c: str(c.dimension),
)
def test_float32_columns_are_orthonormal_at_size(circuit: Circuit) -> None:
    frame = compile_circuit(circuit, 8)
    U = frame(torch.rand(circuit.num_parameters) * 6.3)
    assert U.dtype == torch.float32 and U.shape == (circuit.dimension, 8)
    # the Gram matrix in float64: a float32 product of 16384-long columns would add
    # rounding of its own (up to 2.4e-5 at K = 4), which is not the frame's error
    U = U.double()
    deviation = (U.T @ U - torch.eye(8, dtype=torch.float64)).abs().max()
    assert deviation <= 1e-5


@pytest.mark.parametrize("batch", [(), (2,)], ids=["one circuit", "two circuits"])
@pytest.mark.parametrize("circuit", [pauli(10, 2), pauli(8, 2).copy().rx(0, "extra")],
                         ids=["real", "complex"])
def test_products_in_place_and_tiled_transposes_equal_the_reference(circuit, batch) -> None:
    """pauli(10, 2) at K = 4 (and pauli(8, 2) with an RX, whose state is complex)
    applies leading blocks as M·x before a reorder, and copies one circuit's
    reorders of two groups of ≥ 32 numbers as 2-D transposes (a batch of two
    takes the permuted copy): both paths against the dense matrix and the
    dense method's gradient."""
    frame = compile_circuit(circuit, 4, method="columns", dtype=torch.float64)
    steps = frame.engine.schedule.steps
    assert any(isinstance(s, ApplyBlock) and s.placement == "front" for s in steps)
    assert any(isinstance(s, Reorder) and len(s.shape) == 2
               and min(s.shape) >= engine_module.TILED_TRANSPOSE for s in steps)
    values = torch.randn(*batch, circuit.num_parameters, dtype=torch.float64)
    out = frame(values)
    for index in np.ndindex(*batch):
        reference = torch.as_tensor(circuit.matrix(values[index]))[:, :4]
        assert torch.allclose(out[index], reference, atol=1e-12, rtol=0)
    weight = torch.randn_like(real_view(out))
    dense = compile_circuit(circuit, 4, method="dense", dtype=torch.float64)
    (grad,) = torch.autograd.grad((real_view(frame(values.requires_grad_())) * weight).sum(),
                                  values)
    (expected,) = torch.autograd.grad((real_view(dense(values)) * weight).sum(), values)
    assert torch.allclose(grad, expected, atol=1e-10, rtol=0)


def small_options(name: str) -> dict:
    """Options that keep every catalog entry's reference matrix cheap."""
    accepted = ansatz_options(name)
    wanted = {"qubits": 4, "dimension": 24, "layers": 2}
    return {key: value for key, value in wanted.items() if key in accepted}


@pytest.mark.parametrize("name", catalog_names())
def test_every_catalog_entry_compiles_and_matches_its_reference(name: str) -> None:
    circuit = load_ansatz(name, **small_options(name))
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    reference = torch.as_tensor(circuit.matrix(values))
    for method in COMPILED_METHODS:
        out = compiled(circuit, 4, method)(values)
        assert torch.allclose(out, reference[:, :4], atol=1e-12, rtol=0), method


def test_the_pauli_ansatz_plan_merges_its_layers() -> None:
    plan = make_plan(pauli(12, 2))
    # every CZ layer is absorbed into the next rotation blocks: no sign step remains
    schedule = make_schedule(plan, 4)
    assert not any(isinstance(step, ApplySigns) for step in schedule.steps)
    assert len(schedule.prepare) == 3  # the first two layers form a product state
    assert len(plan.blocks) == 12


def test_cost_model_counts_the_schedule() -> None:
    frame = compile_circuit(pauli(10, 2), 4, method="columns")
    cost = frame.cost()
    schedule = frame.engine.schedule
    blocks = [step for step in schedule.steps if isinstance(step, ApplyBlock)]
    assert cost["state_numbers"] == 1024 * 4
    assert cost["block_products"] == len(blocks) == 7
    assert cost["multiply_adds"] == (sum(step.size for step in blocks)
                                     + len(schedule.prepare) - 1) * 4096
    network = compile_circuit(pauli(10, 2), 4, method="tensornet").cost()
    assert network["largest_intermediate"] <= 4 * 4096


# -- errors ---------------------------------------------------------------------


@pytest.fixture
def frame():
    return compile_circuit(pauli(3, 1), 2, dtype=torch.float64)


def test_wrong_value_shape_is_a_parameter_error(frame) -> None:
    with pytest.raises(ParameterError, match=r"shape \(\.\.\., 7\)"):
        frame(torch.zeros(6))
    with pytest.raises(ParameterError):
        frame(torch.tensor(0.5))


def test_nan_and_complex_values_are_parameter_errors(frame) -> None:
    values = torch.zeros(7)
    values[3] = float("nan")
    with pytest.raises(ParameterError, match="NaN"):
        frame(values)
    with pytest.raises(ParameterError, match="a complex number .* is not an angle"):
        frame(torch.zeros(7, dtype=torch.complex128))
    with pytest.raises(ParameterError, match="a boolean .* is not an angle"):
        frame(torch.zeros(7, dtype=torch.bool))
    with pytest.raises(ParameterError, match="a boolean .* is not an angle"):
        frame([True] * 7)


@pytest.mark.parametrize("columns", [0, 9, [8], [1, 1], [], True])
def test_columns_out_of_range_are_compile_errors(columns) -> None:
    with pytest.raises(CompileError):
        compile_circuit(pauli(3, 1), columns)


def test_bad_options_are_compile_errors() -> None:
    with pytest.raises(CompileError, match="unknown method"):
        compile_circuit(pauli(3, 1), 2, method="magic")
    with pytest.raises(CompileError, match="recompute_backward"):
        compile_circuit(pauli(3, 1), 2, method="tensornet", recompute_backward=True)
    with pytest.raises(CompileError, match="max_block"):
        compile_circuit(pauli(3, 1), 2, max_block=1)
    with pytest.raises(CompileError, match="dtype"):
        compile_circuit(pauli(3, 1), 2, dtype=torch.int64)
    with pytest.raises(CompileError, match="Circuit"):
        compile_circuit("pauli", 2)
    assert issubclass(CompileError, QpeftError) and "auto" in METHODS


def test_values_on_another_device_are_a_parameter_error() -> None:
    frame = compile_circuit(pauli(3, 1), 2, device="meta")
    with pytest.raises(ParameterError, match="meta"):
        frame(torch.zeros(7))


@pytest.mark.parametrize("method", ["columns", "dense", "tensornet"])
def test_check_values_false_lets_nan_through_and_true_refuses_it(method: str) -> None:
    values = torch.zeros(2, 7)
    values[1, 3] = float("nan")
    with pytest.raises(ParameterError, match="NaN or infinity"):
        compile_circuit(pauli(3, 1), 2, method=method)(values)
    out = compile_circuit(pauli(3, 1), 2, method=method, check_values=False)(values)
    assert out[1].isnan().any() and torch.equal(out[0], torch.eye(8)[:, :2])
    with pytest.raises(CompileError, match="check_values must be True or False"):
        compile_circuit(pauli(3, 1), 2, check_values="no")


@pytest.mark.parametrize("method", ["columns", "dense", "tensornet", "recompute"])
def test_reduced_precision_products_run_in_float64_and_return_float32(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where float32 products would run in TF32 (on a GPU), the frame is computed
    by the circuit's float64 engine and cast back: the float64 frame to float32
    rounding, with its gradient."""
    circuit = pauli(3, 1).copy().rx(1, "extra")  # complex: complex128 cast to complex64
    frame = compiled(circuit, [6, 1], method, dtype=torch.float32)
    exact = compiled(circuit, [6, 1], method, dtype=torch.float64)
    monkeypatch.setattr(qpeft.compiler.CompiledCircuit, "_reduced_precision",
                        lambda self, flat: True)
    values = torch.randn(2, circuit.num_parameters, requires_grad=True)
    out = frame(values)
    assert out.dtype == torch.complex64
    torch.testing.assert_close(out, exact(values.double()).to(torch.complex64), atol=0, rtol=0)
    gradient, = torch.autograd.grad(out.abs().square().sum(), values)
    reference, = torch.autograd.grad(exact(values.double()).abs().square().sum(), values)
    assert gradient.dtype == torch.float32
    torch.testing.assert_close(gradient, reference.float(), atol=1e-6, rtol=0)
    twin = frame.__dict__["_float64_twin"]
    assert twin.real_dtype == torch.float64
    assert twin not in list(frame.modules())  # not a submodule: no state, not moved by .to()
    assert not {id(b) for b in twin.buffers()} & {id(b) for b in frame.buffers()}
    assert "_float64_twin" not in pickle.loads(pickle.dumps(frame)).__dict__
    frame.to("cpu")
    assert "_float64_twin" not in frame.__dict__  # every move or cast drops it
    torch.testing.assert_close(frame(values), out, atol=0, rtol=0)


def test_reduced_precision_is_read_from_every_torch_setting(monkeypatch) -> None:
    matmul = torch.backends.cuda.matmul
    for setting, expected in (("tf32", True), ("ieee", False), ("bf16", True)):
        monkeypatch.setattr(type(matmul), "fp32_precision", setting, raising=False)
        assert blocks_module.reduced_precision_matmuls() is expected, setting


def test_columns_may_be_numpy_integers() -> None:
    frame = compile_circuit(pauli(3, 1), np.int64(2))
    assert frame(torch.zeros(7)).shape == (8, 2)
    with pytest.raises(CompileError, match="count K"):
        compile_circuit(pauli(3, 1), 2.5)


def test_values_of_another_dtype_are_cast(frame) -> None:
    assert frame(np.zeros(7, dtype=np.float32)).dtype == torch.float64
    assert frame([0] * 7).dtype == torch.float64


@pytest.mark.parametrize("columns", [
    (3, 1), range(3, 0, -2), np.array([3, 1]), torch.tensor([3, 1]),
    [np.int64(3), torch.tensor(1)], np.array([3, 1], dtype=np.uint8),
])
def test_columns_may_be_any_ordered_sequence_of_integers(columns) -> None:
    circuit = pauli(3, 1)
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    frame = compile_circuit(circuit, columns, dtype=torch.float64)
    assert frame.columns == [3, 1]
    whole = compile_circuit(circuit, dtype=torch.float64)(values)
    torch.testing.assert_close(frame(values), whole[:, [3, 1]], atol=1e-12, rtol=0)
    assert compile_circuit(circuit, torch.tensor(2)).columns == [0, 1]


@pytest.mark.parametrize(("columns", "message"), [
    ([1.7, 0.2], "must be integers, got 1.7"),
    ([2.0], "must be integers, got 2.0"),
    ([True, False], "must be integers, got True"),
    (np.array([1.0, 2.0]), "must be integers"),
    (np.array([True, False]), "must be integers"),
    (torch.tensor([1.0, 2.0]), "must be integers"),
    ([[0, 1]], "must be integers"),
    ("12", "ordered sequence.*got str '12'"),
    (b"\x01", "ordered sequence"),
    ({5, 1, 3}, "a set has no order: pass sorted"),
    (frozenset({1, 2}), "a set has no order"),
    ({1: 0}, "ordered sequence"),
    (np.array([[0, 1]]), "ordered sequence"),
    (torch.tensor([[0, 1]]), "ordered sequence"),
    (2.0, "count K"),
])
def test_columns_that_are_not_integers_in_order_are_compile_errors(columns, message) -> None:
    """Nothing is rounded, read digit by digit or taken in a set's order."""
    with pytest.raises(CompileError, match=message):
        compile_circuit(pauli(3, 1), columns)


def test_values_that_are_not_numbers_are_parameter_errors(frame) -> None:
    for values in ("abc", None, ["a"] * 7, object()):
        with pytest.raises(ParameterError, match="tensor of real numbers"):
            frame(values)


def test_values_that_overflow_the_compiled_dtype_say_so() -> None:
    frame = compile_circuit(pauli(3, 1), 2)  # float32
    with pytest.raises(ParameterError, match="overflow the compiled dtype torch.float32"):
        frame(torch.full((7,), 1e39, dtype=torch.float64))
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ParameterError, match="NaN or infinity"):
            frame(torch.full((7,), bad, dtype=torch.float64))
    big = torch.full((7,), 1e39, dtype=torch.float64)
    assert compile_circuit(pauli(3, 1), 2, dtype=torch.float64)(big).isfinite().all()
    # finite values whose angles overflow: through a coefficient, or a bound constant
    scaled = compile_circuit(Circuit(1).ry(0, 1e30 * Parameter("a")), None)
    with pytest.raises(ParameterError, match="times coefficients summing to up to 1e\\+30"):
        scaled(torch.tensor([1e10]))
    assert scaled(torch.tensor([1e-31])).isfinite().all()
    shifted = compile_circuit(Circuit(1).ry(0, Parameter("a") + 1e39), None)
    with pytest.raises(ParameterError, match="constant angle of the circuit .* overflows"):
        shifted(torch.tensor([0.0]))
    assert compile_circuit(Circuit(1).ry(0, Parameter("a") + 1e39), None,
                           dtype=torch.float64)(torch.tensor([0.0])).isfinite().all()
    # a sum of terms, or a value plus a constant, that overflows only together
    a, b = Parameter("a"), Parameter("b")
    with pytest.raises(ParameterError, match="coefficients summing to up to 2"):
        compile_circuit(Circuit(1).ry(0, a + b), None)(torch.tensor([2e38, 2e38]))
    with pytest.raises(ParameterError, match="plus a constant up to 2e\\+38"):
        compile_circuit(Circuit(1).ry(0, a + 2e38), None)(torch.tensor([2e38]))
    assert compile_circuit(Circuit(1).ry(0, a + b), None)(torch.tensor([1e38, 1e38])
                                                          ).isfinite().all()


@pytest.mark.parametrize("method, recompute", [
    *((method, False) for method in METHODS),
    *((method, True) for method in METHODS if method not in ("tensornet", "mps")),
])
def test_a_circuit_without_gates_stays_on_the_values_graph(method: str, recompute: bool) -> None:
    for circuit in (Circuit(2), Circuit(2).barrier()):
        values = torch.zeros(3, 0, requires_grad=True)
        frame = compile_circuit(circuit, 2, method=method, recompute_backward=recompute)
        frame(values).sum().backward()
        assert values.grad is not None and values.grad.shape == (3, 0)


@pytest.mark.parametrize("layers", [1, 4])
def test_tensornet_of_a_shannon_circuit_at_a_bert_width_matches_columns(layers: int) -> None:
    circuit = for_dimension(768, layers=layers, method="shannon")
    values = torch.randn(circuit.num_parameters, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3))
    network = compile_circuit(circuit, 4, method="tensornet", dtype=torch.float64)
    expected = compile_circuit(circuit, 4, dtype=torch.float64)(values)
    torch.testing.assert_close(network(values), expected, atol=1e-12, rtol=0)


def test_qpeft_compile_is_compile_circuit() -> None:
    # one function: help(qpeft.compile) and inspect show the keyword-only options
    assert qpeft.compile is compile_circuit
    assert "compile" in dir(qpeft)  # a lazy name, listed by dir() and help()
    assert "method" in inspect.signature(qpeft.compile).parameters


@pytest.mark.parametrize("device", ["gpu", "not a device", 2.5])
def test_a_device_that_is_not_a_device_is_a_compile_error(device) -> None:
    with pytest.raises(CompileError, match="not a torch device"):
        compile_circuit(pauli(3, 1), 2, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_a_compile_error() -> None:
    with pytest.raises(CompileError, match="device cuda is not available"):
        compile_circuit(pauli(3, 1), 2, device="cuda")


@pytest.mark.parametrize("method", ["mps", "columns"])
def test_moving_a_frame_to_an_unavailable_device_is_a_compile_error(method: str) -> None:
    frame = compile_circuit(pauli(3, 1), 2, method=method, dtype=torch.float64)
    values = torch.randn(frame.num_parameters, dtype=torch.float64)
    before = frame(values)
    with pytest.raises(CompileError, match="cannot move or cast the module"):
        frame.to("cuda:99")
    torch.testing.assert_close(frame(values), before, atol=0, rtol=0)  # still usable


@pytest.mark.parametrize("flag", ["no", 1, None, np.bool_(True)])
def test_recompute_backward_must_be_a_bool(flag) -> None:
    with pytest.raises(CompileError, match="recompute_backward must be True or False"):
        compile_circuit(pauli(3, 1), 2, recompute_backward=flag)


def test_max_block_may_be_a_numpy_integer() -> None:
    circuit = pauli(3, 1)
    values = torch.randn(circuit.num_parameters)
    frame = compile_circuit(circuit, 2, max_block=np.int64(2))
    assert torch.equal(frame(values), compile_circuit(circuit, 2, max_block=2)(values))
    with pytest.raises(CompileError, match="max_block"):
        compile_circuit(circuit, 2, max_block=np.int64(1))


@pytest.mark.parametrize("method", ["columns", "dense", "tensornet", "recompute"])
def test_a_cast_module_computes_in_the_new_dtype(method: str) -> None:
    """.double(), .to(dtype) and .float() build the engine again in that dtype:
    the result equals a module compiled in it."""
    circuit = Circuit([3, 2]).givens(0, (0, 2), "a").rx(1, "b").gcz(0, 1)  # complex
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64)
    frame = compiled(circuit, [4, 1], method, dtype=torch.float32)
    wide = compiled(circuit, [4, 1], method, dtype=torch.float64)
    narrow = compiled(circuit, [4, 1], method, dtype=torch.float32)
    assert frame.double() is frame
    assert torch.equal(frame(values), wide(values))
    assert torch.equal(frame.to(torch.float32)(values), narrow(values))
    assert torch.equal(frame.to("cpu", torch.float64)(values), wide(values))
    assert torch.equal(frame.float()(values), narrow(values))


@pytest.mark.parametrize("method", ["columns", "tensornet", "recompute"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_cast_to_the_current_dtype_changes_nothing(method: str, dtype: torch.dtype) -> None:
    """.to(its own dtype), directly or through a parent module, and .type()
    leave the complex gate matrices complex and the index buffers integers."""
    circuit = Circuit([2, 2]).rx(0, "a").ry(1, "b").cz(0, 1).rx(1, "c")  # complex
    values = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)
    frame = compiled(circuit, 2, method, dtype=dtype)
    before = frame(values)
    buffers = {name: buffer.dtype for name, buffer in frame.named_buffers()}
    frame.to(dtype)
    torch.nn.Sequential(frame).to("cpu", dtype)
    frame.type(dtype)
    assert {name: buffer.dtype for name, buffer in frame.named_buffers()} == buffers
    assert torch.equal(frame(values), before)


@pytest.mark.filterwarnings("ignore:Complex modules:UserWarning")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex64])
def test_a_cast_to_a_dtype_it_cannot_compute_in_is_refused(frame, dtype) -> None:
    before = frame(torch.ones(7))
    with pytest.raises(CompileError, match=rf"cannot be cast to {dtype}; compile with dtype="):
        frame.to(dtype)
    assert torch.equal(frame(torch.ones(7)), before)  # refused before anything changed


def test_torch_compile_gives_the_same_values_and_gradients() -> None:
    circuit = pauli(3, 1)
    frame = compile_circuit(circuit, 2, dtype=torch.float64)
    fast = torch.compile(frame)
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(fast(values), frame(values), atol=1e-14, rtol=0)
    compiled_grad, = torch.autograd.grad(fast(values).pow(2).sum(), values)
    eager_grad, = torch.autograd.grad(frame(values).pow(2).sum(), values)
    assert torch.allclose(compiled_grad, eager_grad, atol=1e-13, rtol=0)


@pytest.mark.parametrize("method", ["tensornet", "pairs-tensornet"])
def test_tensornet_compiles_to_one_graph(method: str) -> None:
    """The planned contraction runs as plain torch.einsum steps and pair nodes'
    matrices are built from mask buffers, so dynamo traces the whole tensornet
    frame (complex gates, qudits, shared parameters, pair nodes) into one graph,
    with the eager values and gradients."""
    circuit = (Circuit([2, 3, 2]).ry(0, "a").givens(1, (0, 2), "b").cz(0, 2)
               .rx(2, 0.5 * Parameter("a")).append(controlled(RY(2, "c"), 1)).gcz(0, 1)
               .ry(0, "c").append(pauli_rotation("XX", [0, 2], "b")))
    frame = compiled(circuit, [3, 0, 7], method)
    assert method == "tensornet" or frame.plan.pairs
    torch._dynamo.reset()
    fast = torch.compile(frame, backend="aot_eager", fullgraph=True)
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fast(values), frame(values), rtol=0, atol=1e-13)
    compiled_grad, = torch.autograd.grad(real_view(fast(values)).pow(2).sum(), values)
    eager_grad, = torch.autograd.grad(real_view(frame(values)).pow(2).sum(), values)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=0, atol=1e-12)


def test_tensornet_of_a_complex_diagonal_gate_compiles_with_the_eager_gradients() -> None:
    """With torch's default backend (inductor) the diagonal of a complex RZ
    table is read by an index gather: .diagonal() got a wrong backward there."""
    circuit = Circuit([2, 3, 2]).rz(2, "a").gcz(0, 1).ry(0, "c")
    frame = compile_circuit(circuit, method="tensornet", dtype=torch.float64)
    torch._dynamo.reset()
    fast = torch.compile(frame)
    values = torch.randn(3, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 12, 12, 2, dtype=torch.float64)
    compiled_grad, = torch.autograd.grad((real_view(fast(values)) * weight).sum(), values)
    eager_grad, = torch.autograd.grad((real_view(frame(values)) * weight).sum(), values)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=0, atol=1e-12)


def test_tensornet_of_a_complex_pair_node_compiles_with_the_eager_values_and_gradients() -> None:
    """With inductor, the pair node's matrix is built out of place: an indexed
    write into it gave values off by 0.9 (K equal to the pair wire's size)."""
    circuit = Circuit([3, 2]).givens(0, [0, 1], "a").rx(1, "b")
    frame = compiled(circuit, 3, "pairs-tensornet")
    assert frame.plan.pairs
    torch._dynamo.reset()
    fast = torch.compile(frame)
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fast(values), frame(values), rtol=0, atol=1e-13)
    weight = torch.randn(2, 6, 3, 2, dtype=torch.float64)
    compiled_grad, = torch.autograd.grad((real_view(fast(values)) * weight).sum(), values)
    eager_grad, = torch.autograd.grad((real_view(frame(values)) * weight).sum(), values)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["columns", "dense", "tensornet", "recompute"])
def test_autocast_does_not_lower_the_frame_precision(method: str) -> None:
    """Inside torch.autocast the frame is computed in the compiled dtype, as
    the mappings' are, and the backward pass runs too."""
    circuit = pauli(6, 2)
    frame = compiled(circuit, 4, method, dtype=torch.float32)
    values = torch.randn(circuit.num_parameters, requires_grad=True)
    plain = frame(values)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = frame(values)
        mixed.square().sum().backward()
    assert torch.equal(mixed, plain) and values.grad.dtype == torch.float32


def test_values_given_as_a_list_or_a_reversed_array_keep_their_precision() -> None:
    circuit = pauli(3, 1)
    frame = compile_circuit(circuit, None, dtype=torch.float64)
    values = [0.1 * (k + 1) + 1e-9 for k in range(circuit.num_parameters)]
    reference = circuit.matrix(values)
    np.testing.assert_allclose(frame(values).numpy(), reference, rtol=0, atol=1e-13)
    reversed_values = np.array(values[::-1])[::-1]  # a view with a negative stride
    np.testing.assert_allclose(frame(reversed_values).numpy(), reference, rtol=0, atol=1e-13)
    with pytest.raises(ParameterError, match="tensor of real numbers"):
        frame(["a"] * circuit.num_parameters)


@pytest.mark.parametrize("method", ["columns", "dense", "recompute"])
def test_forward_mode_ad_outside_torch_func_is_a_compile_error(method: str) -> None:
    frame = compiled(pauli(3, 1), 2, method)
    values = torch.randn(7, dtype=torch.float64)
    with pytest.raises(CompileError, match="forward-mode AD"):
        torch.autograd.functional.jacobian(frame, values, vectorize=True,
                                           strategy="forward-mode")
    jacobian = torch.func.jacfwd(frame)(values)  # the plain operations: forward mode works
    torch.testing.assert_close(jacobian, torch.autograd.functional.jacobian(frame, values))


def test_a_frame_built_on_the_meta_device_is_rebuilt_by_to_empty() -> None:
    circuit = pauli(3, 1)
    with torch.device("meta"):
        frame = compile_circuit(circuit, 2, dtype=torch.float64)
    frame.to_empty(device="cpu")
    values = torch.linspace(-1, 1, circuit.num_parameters, dtype=torch.float64)
    np.testing.assert_allclose(frame(values).numpy(), circuit.matrix(values.numpy())[:, :2],
                               rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["columns", "dense", "tensornet"])
def test_a_frame_runs_on_the_meta_device_for_shapes(method: str) -> None:
    """Meta tensors hold no values: the finiteness check is skipped there, as
    shape inference of a model built on meta needs."""
    with torch.device("meta"):
        frame = compile_circuit(pauli(3, 1), 2, method=method)
        out = frame(torch.zeros(3, 7))
    assert out.shape == (3, 8, 2) and out.device.type == "meta"


def test_the_frame_keeps_a_snapshot_of_its_circuit() -> None:
    circuit = pauli(3, 1)
    frame = compile_circuit(circuit, 2)
    circuit.rx(0, "late")
    assert frame.circuit == pauli(3, 1) and frame.circuit.parameters == frame.parameters_names


@pytest.mark.parametrize("method", ["columns", "tensornet"])
def test_a_circuit_without_parameters_stays_on_the_values_graph(method: str) -> None:
    circuit = Circuit(2).h(0).cx(0, 1)
    frame = compiled(circuit, 2, method)
    values = torch.zeros(3, 0, dtype=torch.float64, requires_grad=True)
    out = frame(values)
    expected = torch.as_tensor(circuit.matrix([]))[:, :2]
    torch.testing.assert_close(out, expected.expand(3, 4, 2), rtol=0, atol=1e-15)
    out.sum().backward()
    assert values.grad is not None and values.grad.shape == (3, 0)


@pytest.mark.parametrize("method", ["columns", "recompute", "pairs-dense"])
def test_batched_gradients_equal_one_by_one(method: str) -> None:
    """The written-out backward passes run under vmap: a vectorized Jacobian
    equals the row-by-row one (complex gates, qudits and pair nodes included)."""
    circuit = (Circuit([2, 3, 2]).ry(0, "a").givens(1, (0, 2), "b").cz(0, 2)
               .rx(2, 0.5 * Parameter("a")).append(controlled(RY(2, "c"), 1)).gcz(0, 1)
               .ry(0, "c").append(pauli_rotation("XX", [0, 2], "b")))
    frame = compiled(circuit, [3, 0, 7], method)
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64)

    def function(v):
        return real_view(frame(v))

    fast = torch.autograd.functional.jacobian(function, values, vectorize=True)
    slow = torch.autograd.functional.jacobian(function, values, vectorize=False)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["columns", "recompute", "dense", "pairs-dense", "tensornet"])
def test_torch_func_transforms_run_the_plain_operations(method: str) -> None:
    """Under torch.func transforms the plain tensor operations replace the
    written-out backward passes: jacrev and jacfwd equal autograd's Jacobian,
    vmap equals the batched call, and hessian equals autograd's Hessian of the
    tensornet frame (complex gates, qudits, shared parameters and pair nodes)."""
    circuit = (Circuit([2, 3, 2]).ry(0, "a").givens(1, (0, 2), "b").cz(0, 2)
               .rx(2, 0.5 * Parameter("a")).append(controlled(RY(2, "c"), 1)).gcz(0, 1)
               .ry(0, "c").append(pauli_rotation("XX", [0, 2], "b")))
    frame = compiled(circuit, [3, 0, 7], method)
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)

    def function(v):
        return real_view(frame(v))

    jacobian = torch.autograd.functional.jacobian(function, values)
    torch.testing.assert_close(torch.func.jacrev(function)(values), jacobian, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.func.jacfwd(function)(values), jacobian, rtol=0, atol=1e-12)
    batch = torch.randn(3, circuit.num_parameters, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(frame)(batch), frame(batch), rtol=0, atol=1e-12)
    network = compiled(circuit, [3, 0, 7], "tensornet")
    weights = torch.randn_like(function(values))

    def loss(f):
        return lambda v: (real_view(f(v)) * weights).sum() ** 2

    hessian = torch.autograd.functional.hessian(loss(network), values)
    torch.testing.assert_close(torch.func.hessian(loss(frame))(values), hessian, rtol=0,
                               atol=1e-10)


def test_mappings_run_under_torch_func_transforms() -> None:
    from qpeft.compiler.mappings import mapping

    frame = mapping("householder", 6, 2, dtype=torch.float64)
    values = torch.randn(3, frame.num_parameters, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(frame)(values), frame(values), rtol=0, atol=1e-12)
    jacobian = torch.autograd.functional.jacobian(frame, values[0])
    torch.testing.assert_close(torch.func.jacrev(frame)(values[0]), jacobian, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["columns", "recompute"])
def test_second_derivatives_are_refused_not_wrong(method: str) -> None:
    """The written-out backward gives first derivatives only: asking for a
    graph of the gradient raises instead of silently dropping terms, and the
    tensornet method (plain autograd) gives the Hessian, checked by gradgradcheck."""
    circuit = pauli(3, 1)
    values = torch.randn(1, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    frame = compiled(circuit, [0, 1], method)
    with pytest.raises(CompileError, match="first derivatives only.*tensornet"):
        torch.autograd.grad(frame(values).pow(2).sum(), values, create_graph=True)
    network = compiled(circuit, [0, 1], "tensornet")
    assert torch.autograd.gradgradcheck(lambda v: network(v), (values,))


@pytest.mark.parametrize("method", [*METHODS, "recompute"])
def test_an_empty_batch_gives_an_empty_frame_and_a_zero_gradient(method: str) -> None:
    """As with the mappings, the empty frame hangs on the values' graph: a
    backward pass gives an empty gradient of the values' shape and dtype."""
    if method == "mps":  # qubits only
        circuit = Circuit(3).ry(0, "a").cz(0, 1).rx(1, "b")  # RX: the frame is complex
    else:
        circuit = Circuit([3, 2]).givens(0, (0, 2), "a").rx(1, "b")
    frame = compiled(circuit, [0, 1], method)
    rows = circuit.dimension
    for dtype in (torch.float64, torch.float32):
        values = torch.zeros(0, 3, circuit.num_parameters, dtype=dtype, requires_grad=True)
        out = frame(values)
        assert out.shape == (0, 3, rows, 2) and out.dtype == torch.complex128
        out.real.sum().backward()
        assert values.grad.shape == values.shape and values.grad.dtype == dtype
    out = frame(torch.zeros(0, circuit.num_parameters, dtype=torch.float64))
    assert out.shape == (0, rows, 2) and not out.requires_grad


def test_the_public_verb_compiles() -> None:
    circuit = pauli(4, 1)
    U = qpeft.compile(circuit, columns=3)(torch.zeros(circuit.num_parameters))
    assert torch.equal(U, torch.eye(16, 3))
