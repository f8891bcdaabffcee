"""method="mps": the matrix product contraction against the reference
matrix and the gate schedule, gradients, batching, what "auto" picks, errors,
memory, torch.compile and torch.func."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compiler import angles

from qpeft.ansatz import for_dimension, pauli
from qpeft.circuit import Circuit, Parameter, SignDiagonal, controlled, givens, pauli_rotation
from qpeft.circuit.gates import RZ, H, X
from qpeft.compiler import compile_circuit
from qpeft.compiler.recompute import autograd_saved_bytes
from qpeft.errors import CompileError, ParameterError


@st.composite
def chains(draw, max_wires: int = 6):
    """Circuits method="mps" takes: up to two wires of 3 or 5 levels, then
    qubits; any one-wire gates (rotations, fixed, Givens, one-wire unitaries and
    signs) and constant diagonal gates on neighbouring wires (CZ, generalized CZ,
    sign diagonals, diagonal phases, fixed controlled phases), in any order."""
    head = draw(st.lists(st.sampled_from([3, 5]), max_size=2))
    dims = head + [2] * draw(st.integers(2, max_wires - len(head)))
    circuit = Circuit(dims)
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["rotation", "rotation", "fixed", "givens", "unitary",
                                     "signs", "cz", "diagonal", "phases", "cphase", "barrier"]))
        wire = draw(st.integers(0, len(dims) - 1))
        pair = (wire, wire + 1) if wire + 1 < len(dims) else (wire, wire - 1)
        size = dims[pair[0]] * dims[pair[1]]
        qubit = dims[wire] == 2
        if kind in ("rotation", "fixed") and not qubit:
            kind = "givens"
        if kind in ("cz", "cphase") and size != 4:
            kind = "diagonal"
        if kind == "rotation":
            letter = draw(st.sampled_from("XYZ"))
            circuit.append(pauli_rotation(letter, [wire], draw(angles())))
        elif kind == "fixed":
            circuit.append(draw(st.sampled_from([H, X]))(wire))
        elif kind == "givens":
            levels = draw(st.lists(st.integers(0, dims[wire] - 1), min_size=2, max_size=2,
                                   unique=True))
            circuit.append(givens(wire, levels, draw(angles())))
        elif kind == "unitary":
            rng = np.random.default_rng(draw(st.integers(0, 999)))
            d = dims[wire]
            matrix = rng.standard_normal((d, d)) + 1j * rng.standard_normal((d, d))
            circuit.unitary(np.linalg.qr(matrix)[0], [wire])
        elif kind == "signs":
            circuit.append(SignDiagonal((wire,), (1,) * (dims[wire] - 1) + (-1,)))
        elif kind == "cz":
            circuit.cz(*pair)
        elif kind == "cphase":  # a controlled rotation about Z by a fixed angle: diagonal
            circuit.append(controlled(RZ(pair[1], draw(st.floats(-3, 3))), pair[0]))
        elif kind == "diagonal":
            signs = draw(st.lists(st.sampled_from([1, -1]), min_size=size, max_size=size))
            circuit.append(SignDiagonal(pair, tuple(signs)))
        elif kind == "phases":
            phases = np.exp(1j * np.array(draw(st.lists(st.floats(-3, 3), min_size=size,
                                                         max_size=size))))
            circuit.unitary(np.diag(phases), list(pair))
        else:
            circuit.barrier()
    return circuit


@st.composite
def lower_columns(draw, circuit: Circuit):
    """A count K or a list of distinct indices, all below half the qubits' block."""
    half = 2 ** (circuit.dims.count(2) - 1)
    if draw(st.booleans()):
        return draw(st.integers(1, half))
    return draw(st.lists(st.integers(0, half - 1), min_size=1, max_size=min(half, 5),
                         unique=True))


def reference(circuit: Circuit, values: torch.Tensor, columns: list[int]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(circuit.matrix(v))[:, columns] for v in values])


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_mps_equals_the_reference_matrix(data) -> None:
    circuit = data.draw(chains())
    columns = data.draw(lower_columns(circuit))
    frame = compile_circuit(circuit, columns, method="mps", dtype=torch.float64)
    values = torch.as_tensor(data.draw(st.lists(
        st.floats(-4, 4), min_size=3 * circuit.num_parameters,
        max_size=3 * circuit.num_parameters)), dtype=torch.float64).view(3, -1)
    out = frame(values)
    expected = reference(circuit, values, frame.columns)
    assert out.shape == expected.shape
    assert torch.allclose(out.to(expected.dtype), expected, atol=1e-12, rtol=0)
    separate = torch.stack([frame(v) for v in values])
    assert torch.allclose(separate, out, atol=1e-13, rtol=0)


@settings(max_examples=15, deadline=None)
@given(circuit=chains(max_wires=5))
def test_mps_gradients_pass_gradcheck(circuit: Circuit) -> None:
    if circuit.num_parameters == 0:
        circuit = circuit.copy().ry(circuit.num_wires - 1, "extra")
    columns = [2, 0, 1] if circuit.dims.count(2) > 2 else [1, 0]
    frame = compile_circuit(circuit, columns, method="mps", dtype=torch.float64)
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)

    def real(v: torch.Tensor) -> torch.Tensor:
        out = frame(v)
        return torch.view_as_real(out) if out.is_complex() else out

    assert torch.autograd.gradcheck(real, (values,), fast_mode=True)


@pytest.mark.parametrize(("qubits", "layers", "columns", "batch"), [
    (5, 2, 4, 1),  # three plain wires: a tree with an element left over
    (7, 1, 1, 3),  # one column: no column wires
    (6, 3, [5, 0, 2], 2),  # columns in any order
    (9, 2, 8, 1),  # seven plain wires, three column wires
])
def test_pauli_frames_and_full_gradcheck(qubits, layers, columns, batch) -> None:
    circuit = pauli(qubits, layers)
    frame = compile_circuit(circuit, columns, method="mps", dtype=torch.float64)
    gates = compile_circuit(circuit, columns, method="columns", dtype=torch.float64)
    values = torch.randn(batch, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(frame(values), gates(values), atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(frame, (values,))


def test_segments_of_several_gates_and_a_complex_frame_pass_gradcheck() -> None:
    """Runs of one-wire gates fuse into one segment matrix (depth > 1)."""
    circuit = (Circuit(4).rz(0, "a").ry(0, "b").rx(1, "a").cz(0, 1).rz(1, 0.3 * Parameter("b"))
               .ry(1, "c").h(2).ry(2, "c").cz(2, 3).rx(3, "a").cz(1, 2).ry(0, "d"))
    frame = compile_circuit(circuit, 3, method="mps", dtype=torch.float64)
    assert frame.engine.builder.shape[2] > 1
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    expected = reference(circuit, values.detach(), [0, 1, 2])
    torch.testing.assert_close(frame(values).detach(), expected, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda v: torch.view_as_real(frame(v)), (values,))


@pytest.mark.parametrize(("dimension", "layers", "columns"), [
    (12, 2, 2),  # a qutrit and two qubits
    (96, 2, 4),
    (120, 1, [1, 3, 0]),  # a 5-level and a 3-level wire before three qubits
    (384, 2, 8),
    (90, 2, 1),  # 5 · 3 · 3 · 2: columns of one qubit
])
def test_wires_of_more_levels_before_the_qubits(dimension, layers, columns) -> None:
    circuit = for_dimension(dimension, layers)
    frame = compile_circuit(circuit, columns, method="mps", dtype=torch.float64)
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    expected = reference(circuit, values.detach(), frame.columns)
    torch.testing.assert_close(frame(values).detach(), expected, atol=1e-12, rtol=0)
    if dimension <= 120:
        assert torch.autograd.gradcheck(frame, (values,))
    else:
        gates = compile_circuit(circuit, columns, method="columns", dtype=torch.float64)
        weight = torch.randn(2, dimension, len(frame.columns), dtype=torch.float64)
        grads = [torch.autograd.grad((f(values) * weight).sum(), values)[0]
                 for f in (frame, gates)]
        torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=0)


def test_auto_picks_mps_where_it_applies() -> None:
    assert compile_circuit(pauli(6, 2), 4).method == "mps"
    assert compile_circuit(pauli(6, 2), 32).method == "mps"  # columns 0 … 31 of 64
    assert compile_circuit(pauli(6, 2), 33).method == "columns"  # column 32: the second half
    assert compile_circuit(for_dimension(384, 2), 4).method == "mps"  # a qutrit, then qubits
    assert compile_circuit(pauli(6, 2), 4, recompute_backward=True).method == "columns"
    assert compile_circuit(Circuit(3).ry(0, "a").cx(0, 1), 2).method == "columns"
    # deeper brickworks: mps's tables and χ³ products outgrow the gate schedule
    assert compile_circuit(pauli(6, 3), 4).method == "mps"
    assert compile_circuit(pauli(6, 4), 4).method == "columns"
    assert compile_circuit(pauli(6, 4), 4, method="mps").cost()["bond"] == 16
    # wide or spread-out column sets: the column wires' tree grows as 4^m
    assert compile_circuit(pauli(8, 2), 64).method == "mps"
    assert compile_circuit(pauli(8, 2), 128).method == "columns"
    assert compile_circuit(pauli(12, 2), 128).method == "mps"
    assert compile_circuit(pauli(10, 2), [0, 5]).method == "mps"
    assert compile_circuit(pauli(10, 2), [0, 511]).method == "columns"
    assert compile_circuit(pauli(12, 2), 2048).method == "columns"


@pytest.mark.parametrize(("circuit", "match"), [
    (Circuit([2, 3]).ry(0, "a"), "needs qubit wires, after any wires of more levels"),
    (Circuit([3, 3]).givens(0, (0, 1), "a"), "needs qubit wires"),
    (Circuit(3).ry(0, "a").cx(0, 1), "CX on wires \\[0, 1\\] is neither"),
    (Circuit(3).cz(0, 2), "CZ on wires \\[0, 2\\] is neither"),
    (Circuit(3).append(pauli_rotation("ZZ", [0, 1], "a")), "is neither"),
    (Circuit(3).append(controlled(RZ(1, "a"), 0)), "is neither"),  # diagonal, not constant
])
def test_circuits_outside_mps_are_a_compile_error(circuit: Circuit, match: str) -> None:
    with pytest.raises(CompileError, match=match + ".*method='columns'"):
        compile_circuit(circuit, 2, method="mps")


def test_too_many_diagonal_gates_per_wire_and_upper_columns_are_refused() -> None:
    deep = pauli(4, 7)  # 15 segments on the middle wires
    with pytest.raises(CompileError, match=r"for the qubit wires \(14 diagonal gates on one "
                       r"wire, bond 128\)"):
        compile_circuit(deep, 2, method="mps")
    # a wide head wire: 43 levels, two diagonal gates (for_dimension's 11008 = 43 · 2^8)
    with pytest.raises(CompileError, match=r"for wire 0 \(43 levels, 2 diagonal gates\)"):
        compile_circuit(for_dimension(11008, 2), 2, method="mps")
    assert compile_circuit(deep, 2).method == "columns"
    with pytest.raises(CompileError, match=r"columns below 2\^3.*column 8 of 16 is not"):
        compile_circuit(pauli(4, 1), [0, 8], method="mps")
    with pytest.raises(CompileError, match="recompute_backward=True needs"):
        compile_circuit(pauli(4, 1), 2, method="mps", recompute_backward=True)


def test_float32_frames_stay_orthonormal_at_16384() -> None:
    circuit = pauli(14, 2)
    frame = compile_circuit(circuit, 4, method="mps")
    U = frame(torch.randn(circuit.num_parameters))
    assert U.dtype == torch.float32
    U = U.double()  # the Gram matrix of the float32 frame, summed without rounding
    assert torch.linalg.matrix_norm(U.T @ U - torch.eye(4, dtype=torch.float64)) <= 1e-5


def test_autograd_keeps_less_than_the_frame_itself() -> None:
    """What a pass keeps for its backward (its workspace: the wires' path
    products, the tree's levels, and after a backward that workspace's buffers
    too) is smaller than the N×K frame; the gate schedule keeps several frames."""
    circuit = pauli(12, 2)
    values = torch.randn(circuit.num_parameters, requires_grad=True)
    held = {}
    for method in ("mps", "columns"):
        frame = compile_circuit(circuit, 16, method=method)
        held[method], out = autograd_saved_bytes(frame, values, exclude=frame.buffers())
        out.sum().backward()
        del out  # (its node gives its workspace back, to the next pass)
        held[method + " again"], out = autograd_saved_bytes(frame, values,
                                                             exclude=frame.buffers())
    frame_bytes = out.numel() * out.element_size()
    assert 0 < held["mps"] < held["mps again"] < frame_bytes
    assert 4 * frame_bytes <= held["columns"] == held["columns again"]


def test_casts_copies_and_pickles_give_the_same_frame() -> None:
    circuit = pauli(6, 2)
    frame = compile_circuit(circuit, 4)
    values = torch.randn(2, circuit.num_parameters)
    first = frame(values)
    for other in (copy.deepcopy(frame), pickle.loads(pickle.dumps(frame))):
        assert torch.equal(other(values), first)
    double = frame.double()
    assert double.engine.real_dtype == torch.float64
    torch.testing.assert_close(double(values.double()).float(), first, atol=1e-6, rtol=0)
    assert frame.state_dict() == {}  # everything is rebuilt from the circuit


def test_cost_reports_the_bond_and_segments() -> None:
    cost = compile_circuit(pauli(10, 2), 4, method="mps").cost()
    assert cost["bond"] == 4 and cost["segments"] == 5 and cost["state_numbers"] == 4096
    # wires 10·(16·16·4 + 16·4·5), tree 2·256·4³ + 2·16·4³, final product 256·4·16
    assert cost["multiply_adds"] == 10 * (16 * 16 * 4 + 16 * 4 * 5) + 2 * 256 * 64 + 2 * 16 * 64 \
        + 256 * 4 * 16
    gates = compile_circuit(pauli(10, 2), 4, method="columns").cost()["multiply_adds"]
    assert cost["multiply_adds"] < gates / 6


def test_torch_func_and_torch_compile_run_the_plain_operations() -> None:
    circuit = pauli(5, 2)
    frame = compile_circuit(circuit, 4, method="mps", dtype=torch.float64)
    values = torch.randn(3, circuit.num_parameters, dtype=torch.float64)
    weight = torch.randn(32, 4, dtype=torch.float64)

    def loss(v: torch.Tensor) -> torch.Tensor:
        return (frame(v) * weight).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss))(values)
    leaf = values.clone().requires_grad_(True)
    expected = torch.stack([torch.autograd.grad(loss(v), leaf)[0][i]
                            for i, v in enumerate(leaf)])
    torch.testing.assert_close(per_sample, expected, atol=1e-12, rtol=0)
    compiled = torch.compile(frame)
    torch.testing.assert_close(compiled(values), frame(values), atol=1e-12, rtol=0)


def test_second_derivatives_are_refused_and_forward_mode_runs_the_plain_operations() -> None:
    circuit = pauli(4, 1)
    frame = compile_circuit(circuit, 2, method="mps", dtype=torch.float64)
    values = torch.randn(circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    with pytest.raises(CompileError, match="first derivatives only"):
        torch.autograd.grad(frame(values).pow(2).sum(), values, create_graph=True)
    import torch.autograd.forward_ad as fwad

    tangent = torch.randn_like(values)
    with fwad.dual_level():
        _, derivative = fwad.unpack_dual(frame(fwad.make_dual(values.detach(), tangent)))
    jacobian = torch.autograd.functional.jacobian(frame, values.detach())
    torch.testing.assert_close(derivative, jacobian @ tangent, atol=1e-12, rtol=0)


@pytest.mark.parametrize("columns", [3, 1], ids=["K=3", "K=1"])
@pytest.mark.parametrize("circuit", [pauli(5, 2), for_dimension(24, 2)], ids=["pauli", "qutrit"])
def test_vectorized_jacobians_and_batched_gradients_run_without_writing_into_place(
        circuit, columns) -> None:
    """Autograd runs the written-out backward under vmap for these; its products
    are then not written into place (vmap cannot batch ``out=``) and it takes no
    views that vmap cannot batch (K = 1: no column wires)."""
    frame = compile_circuit(circuit, columns, method="mps", dtype=torch.float64)
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    vectorized = torch.autograd.functional.jacobian(frame, values, vectorize=True)
    row_by_row = torch.autograd.functional.jacobian(frame, values)
    torch.testing.assert_close(vectorized, row_by_row, atol=1e-12, rtol=0)
    leaf = values.clone().requires_grad_(True)
    out = frame(leaf)
    grads = torch.randn(4, *out.shape, dtype=out.dtype)
    batched, = torch.autograd.grad(out, leaf, grads, is_grads_batched=True, retain_graph=True)
    one_by_one = torch.stack([torch.autograd.grad(out, leaf, g, retain_graph=True)[0]
                              for g in grads])
    torch.testing.assert_close(batched, one_by_one, atol=1e-12, rtol=0)


@pytest.mark.parametrize("columns", [4, 1, [3, 0]], ids=["K=4", "K=1", "chosen"])
@pytest.mark.parametrize("shape", [(), (2, 3)], ids=["one", "batch"])
def test_frames_can_be_changed_in_place(columns, shape) -> None:
    """The frame is no view made inside the autograd node (autograd would refuse
    ``U[..., 0] *= -1``); the gradient equals the gate schedule's."""
    circuit = pauli(5, 2)
    values = torch.randn(*shape, circuit.num_parameters, dtype=torch.float64)
    gradients = []
    for method, recompute in (("mps", False), ("columns", False), ("columns", True)):
        # (the recompute backward keeps the schedule's output: it hands out a copy)
        frame = compile_circuit(circuit, columns, method=method, dtype=torch.float64,
                                recompute_backward=recompute)
        leaf = values.clone().requires_grad_(True)
        out = frame(leaf)
        out[..., 0] *= -1
        (out * torch.arange(out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        gradients.append(leaf.grad)
    for gradient in gradients[1:]:
        torch.testing.assert_close(gradients[0], gradient, atol=1e-12, rtol=1e-12)


def test_a_pass_under_fake_tensors_leaves_nothing_behind() -> None:
    """A shape or memory estimate under FakeTensorMode caches nothing that a later eager
    pass would use (its gradients would be fake)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    circuit = pauli(5, 2)
    frame = compile_circuit(circuit, 4, method="mps", dtype=torch.float64, check_values=False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = torch.randn(3, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
        frame(fake).pow(3).sum().backward()
    values = torch.randn(3, circuit.num_parameters, dtype=torch.float64)
    gradients = []
    for module in (frame, compile_circuit(circuit, 4, method="columns", dtype=torch.float64)):
        leaf = values.clone().requires_grad_(True)
        module(leaf).pow(3).sum().backward()
        gradients.append(leaf.grad)
    assert type(gradients[0]) is torch.Tensor
    torch.testing.assert_close(gradients[0], gradients[1], atol=1e-12, rtol=0)


def test_torch_export_with_a_dynamic_batch() -> None:
    circuit = pauli(5, 2)
    frame = compile_circuit(circuit, [0, 2], method="mps", check_values=False)
    batch, rows = torch.export.Dim("batch"), torch.export.Dim("rows")
    program = torch.export.export(frame, (torch.randn(2, 3, circuit.num_parameters),),
                                  dynamic_shapes=({0: batch, 1: rows},))
    values = torch.randn(4, 5, circuit.num_parameters)
    torch.testing.assert_close(program.module()(values), frame(values), atol=1e-6, rtol=0)


def _gradient(frame, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    leaf = values.clone().requires_grad_(True)
    (frame(leaf) * weight).sum().backward()
    return leaf.grad


def test_evaluations_in_flight_keep_their_own_workspaces() -> None:
    """Two forward passes before their backward passes, a second backward of a
    retained graph after another forward, and frames kept across calls: each
    gives what a fresh module gives."""
    circuit = pauli(6, 2)
    frame = compile_circuit(circuit, 4, method="mps", dtype=torch.float64)
    values = torch.randn(2, 3, circuit.num_parameters, dtype=torch.float64)
    weight = torch.randn(2, 64, 4, dtype=torch.float64)
    expected = [_gradient(compile_circuit(circuit, 4, method="mps", dtype=torch.float64),
                          values[:, i], weight) for i in range(3)]
    leaves = [values[:, i].clone().requires_grad_(True) for i in range(3)]
    outs = [frame(leaf) for leaf in leaves[:2]]  # two graphs alive at once
    (outs[1] * weight).sum().backward()
    (outs[0] * weight).sum().backward(retain_graph=True)
    with torch.no_grad():
        kept = frame(values[:, 2])
        kept_copy = kept.clone()
    frame(leaves[2])  # another forward while the first graph is still retained
    (outs[0] * weight).sum().backward()  # its second backward: twice the gradient
    (frame(leaves[2]) * weight).sum().backward()
    torch.testing.assert_close(leaves[0].grad, 2 * expected[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(leaves[1].grad, expected[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(leaves[2].grad, expected[2], atol=1e-12, rtol=0)
    frame(values[:, 0])
    assert torch.equal(kept, kept_copy)  # a frame handed out is never written again


def test_gradients_handed_out_are_not_written_again() -> None:
    """Gradients accumulate into ``.grad`` over steps (autograd may keep the
    tensor the backward returns as ``.grad`` itself)."""
    circuit = pauli(5, 2)
    frame = compile_circuit(circuit, [0, 2], method="mps", dtype=torch.float64)
    leaf = torch.randn(circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(32, 2, dtype=torch.float64) for _ in range(3)]
    separate = [_gradient(frame, leaf.detach(), weight) for weight in weights]
    for weight in weights:
        (frame(leaf) * weight).sum().backward()
    torch.testing.assert_close(leaf.grad, sum(separate), atol=1e-12, rtol=0)


def test_inference_mode_and_training_share_a_module() -> None:
    circuit = for_dimension(24, 2)
    frame = compile_circuit(circuit, 3, method="mps", dtype=torch.float64)
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    with torch.inference_mode():
        inferred = frame(values)
    weight = torch.randn(24, 3, dtype=torch.float64)
    gradient = _gradient(frame, values, weight)
    with torch.inference_mode():
        torch.testing.assert_close(frame(values), inferred, atol=0, rtol=0)
    reference_gradient = _gradient(compile_circuit(circuit, 3, method="columns",
                                                   dtype=torch.float64), values, weight)
    torch.testing.assert_close(gradient, reference_gradient, atol=1e-12, rtol=0)


def test_workspaces_are_reused_and_their_pool_is_bounded(monkeypatch) -> None:
    from qpeft.compiler import mps

    circuit = pauli(5, 2)
    frame = compile_circuit(circuit, 4, method="mps")
    network = frame.engine
    values = torch.randn(circuit.num_parameters, requires_grad=True)
    frame(values).sum().backward()
    (pool,) = network._workspaces.values()
    assert len(pool.free) == 1
    first = pool.free[0]
    frame(values).sum().backward()
    assert pool.free == [first]  # the same buffers on the next step
    held = [frame(values) for _ in range(6)]  # graphs alive at once: a workspace each
    assert not pool.free
    del held
    assert len(pool.free) == 6  # ready for the next step that evaluates the frame 6 times
    assert pool.bytes == sum(ws.nbytes for ws in pool.free) > 0
    monkeypatch.setattr(mps, "POOL_BYTES", pool.bytes // 2)
    held = [frame(values) for _ in range(6)]
    del held
    assert 0 < len(pool.free) < 6 and pool.bytes <= mps.POOL_BYTES
    for batch in range(2, mps.MAX_POOLS + 3):  # pools of other batch sizes: a bounded number,
        frame(values.detach().expand(batch, -1))  # the one used longest ago going first
        frame(values)
    assert len(network._workspaces) == mps.MAX_POOLS and pool in network._workspaces.values()
    frame(values.detach().expand(mps.MAX_POOLS + 3, -1))
    assert pool in network._workspaces.values()
    assert (3, torch.float32, values.device, False) not in network._workspaces
    network.double()
    assert not getattr(network, "_workspaces", {})  # a cast drops them


@pytest.mark.parametrize(("circuit", "columns", "batch"), [
    (pauli(10, 2), 4, ()), (pauli(11, 2), [0, 2, 3], (3,)), (for_dimension(3072, 2), 4, ()),
    (for_dimension(24, 2), 1, (2,)), (pauli(7, 3), 8, (2, 2)),
], ids=["1024", "2048-odd-chosen", "3072-qutrit", "K=1", "L=3"])
def test_later_passes_replay_the_recorded_operations(circuit, columns, batch) -> None:
    """From the third pass of a workspace on, its forward and backward run as
    recorded tapes (no Python between the tensor operations), and give the same
    frames and gradients as a fresh module."""
    frame = compile_circuit(circuit, columns, method="mps", dtype=torch.float64)
    values = torch.randn(*batch, circuit.num_parameters, dtype=torch.float64)
    outs = [frame(values) for _ in range(3)]  # (no graph: one workspace)
    weight = torch.randn_like(outs[0])
    gradients = [_gradient(frame, values, weight) for _ in range(3)]
    (pool,) = frame.engine._workspaces.values()
    assert all(ws.tapes["forward"] and ws.tapes["backward"] for ws in pool.free)
    fresh = compile_circuit(circuit, columns, method="mps", dtype=torch.float64)
    for out in outs:
        assert torch.equal(out, fresh(values))
    for gradient in gradients:
        torch.testing.assert_close(gradient, _gradient(fresh, values, weight), atol=1e-13,
                                   rtol=0)


def test_a_graph_kept_after_its_backward_holds_no_workspace(monkeypatch) -> None:
    """The workspace goes back at the end of the backward (a loss kept for logging
    pins nothing); a second backward of a retained graph takes it back when no other
    evaluation has taken it since, and evaluates the forward again when one has."""
    circuit = pauli(6, 2)
    frame = compile_circuit(circuit, 4, method="mps", dtype=torch.float64)
    network = frame.engine
    leaf = torch.randn(circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(64, 4, dtype=torch.float64)
    expected = _gradient(compile_circuit(circuit, 4, method="columns", dtype=torch.float64),
                         leaf.detach(), weight)
    kept = []
    for _ in range(5):
        loss = (frame(leaf) * weight).sum()
        loss.backward()
        kept.append(loss)  # graphs alive, their backward done
    (pool,) = network._workspaces.values()
    assert len(pool.free) == 1  # one workspace served all five steps
    evaluations = []
    monkeypatch.setattr(network, "evaluate", lambda *args: evaluations.append(1) or
                        type(network).evaluate(network, *args))
    leaf.grad = None
    out = frame(leaf)
    first = torch.autograd.grad((out * weight).sum(), leaf, retain_graph=True)[0]
    again = torch.autograd.grad((out * weight).sum(), leaf, retain_graph=True)[0]
    assert len(evaluations) == 1  # taken back as the first backward left it
    with torch.no_grad():
        frame(leaf)  # another evaluation takes the free workspace
    third = torch.autograd.grad((out * weight).sum(), leaf)[0]
    assert len(evaluations) == 3  # that one, and the node's forward again
    for gradient in (first, again, third):
        torch.testing.assert_close(gradient, expected, atol=1e-12, rtol=0)
    out = frame(leaf)
    torch.autograd.grad(out.sum(), leaf, retain_graph=True)
    with torch.no_grad():
        frame(leaf)
        leaf.add_(1.0)  # a value changed in place: the forward cannot be evaluated again
    with pytest.raises(ParameterError, match="changed in place"):
        torch.autograd.grad(out.sum(), leaf)


def test_torch_jit_trace_records_the_plain_operations() -> None:
    circuit = pauli(5, 2)
    frame = compile_circuit(circuit, [0, 2], method="mps", dtype=torch.float64,
                            check_values=False)
    traced = torch.jit.trace(frame, torch.randn(2, circuit.num_parameters, dtype=torch.float64))
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 32, 2, dtype=torch.float64)
    gradient, = torch.autograd.grad((traced(values) * weight).sum(), values)
    torch.testing.assert_close(gradient, _gradient(frame, values.detach(), weight),
                               atol=1e-12, rtol=0)


def test_a_kept_graph_holds_no_workspace_its_pool_turned_away(monkeypatch) -> None:
    """A workspace larger than the pool keeps is freed at the end of the backward,
    even while its graph is kept; a second backward then evaluates the forward again."""
    import gc
    import weakref

    from qpeft.compiler import mps

    monkeypatch.setattr(mps, "POOL_BYTES", 0)
    circuit = pauli(6, 2)
    frame = compile_circuit(circuit, 4, method="mps", dtype=torch.float64)
    leaf = torch.randn(3, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 64, 4, dtype=torch.float64)
    out = frame(leaf)
    workspace = weakref.ref(out.grad_fn.lease.workspace)
    loss = (out * weight).sum()
    first = torch.autograd.grad(loss, leaf, retain_graph=True)[0]
    gc.collect()
    assert workspace() is None  # the kept graph holds nothing
    again = torch.autograd.grad(loss, leaf)[0]
    expected = _gradient(compile_circuit(circuit, 4, method="columns", dtype=torch.float64),
                         leaf.detach(), weight)
    torch.testing.assert_close(first, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(again, expected, atol=1e-12, rtol=0)


def test_a_backward_in_inference_mode_leaves_later_steps_working() -> None:
    circuit = pauli(6, 2)
    frame = compile_circuit(circuit, 4, method="mps", dtype=torch.float64)
    leaf = torch.randn(3, circuit.num_parameters, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 64, 4, dtype=torch.float64)
    expected = _gradient(compile_circuit(circuit, 4, method="mps", dtype=torch.float64),
                         leaf.detach(), weight)
    loss = (frame(leaf) * weight).sum()
    with torch.inference_mode():  # the workspace's first backward
        inferred = torch.autograd.grad(loss, leaf)[0]
    torch.testing.assert_close(inferred, expected, atol=1e-12, rtol=0)
    for _ in range(4):  # the same workspace, back in training
        torch.testing.assert_close(_gradient(frame, leaf.detach(), weight), expected,
                                   atol=1e-12, rtol=0)
