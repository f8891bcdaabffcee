"""Tests of the alternative unitary mappings (qpeft.compiler.mappings)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

from qpeft.compiler.mappings import (
    MAPPINGS,
    CayleyMapping,
    ExponentialMapping,
    GivensMapping,
    HouseholderMapping,
    StiefelMapping,
    TaylorMapping,
    _givens_trees,
    dense_reference,
    generator_matrix,
    mapping,
    parameter_count,
    taylor_deviation,
)
from qpeft.errors import CompileError, ParameterError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


NAMES = sorted(MAPPINGS)
EXACT = [name for name in NAMES if name != "taylor"]
SHAPES = [(1, 1), (2, 1), (2, 2), (5, 2), (7, 3), (6, 6), (16, 4), (33, 5)]


def orthonormality_error(frame: torch.Tensor) -> float:
    """Largest ``‖UᵀU − I‖_F`` over a batch, evaluated in float64."""
    frame = frame.detach().to(F64)
    eye = torch.eye(frame.shape[-1], dtype=F64)
    return float(torch.linalg.matrix_norm(frame.mT @ frame - eye).max())


def random_values(frame_map: StiefelMapping, *batch: int, scale: float = 1.0) -> torch.Tensor:
    shape = (*batch, frame_map.num_parameters)
    return scale * torch.randn(shape, dtype=frame_map.dtype)


# --- registry and counts -------------------------------------------------------------------


def test_registry_holds_the_five_mappings() -> None:
    assert set(MAPPINGS) == {"cayley", "exponential", "householder", "givens", "taylor"}
    expected = {
        "cayley": CayleyMapping,
        "exponential": ExponentialMapping,
        "householder": HouseholderMapping,
        "givens": GivensMapping,
        "taylor": TaylorMapping,
    }
    for name, cls in expected.items():
        built = mapping(name, 8, 3)
        assert type(built) is cls
        assert built.name == name
        assert (built.dimension, built.columns) == (8, 3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("dimension", "columns"), [*SHAPES, (4096, 4), (768, 8), (11008, 16)])
def test_num_parameters_is_the_stiefel_dimension(name: str, dimension: int, columns: int) -> None:
    expected = dimension * columns - columns * (columns + 1) // 2
    assert mapping(name, dimension, columns).num_parameters == expected
    assert parameter_count(dimension, columns) == expected


def test_parameter_count_examples() -> None:
    assert parameter_count(4096, 4) == 16374
    assert parameter_count(768, 8) == 6108
    assert parameter_count(5, 5) == 10  # K = N: dim SO(5)
    assert parameter_count(1, 1) == 0


# --- exactness -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize(("dimension", "columns"), SHAPES)
@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_frames_are_orthonormal_in_float64(
    name: str, dimension: int, columns: int, scale: float
) -> None:
    frame_map = mapping(name, dimension, columns, dtype=F64)
    frame = frame_map(random_values(frame_map, 4, scale=scale))
    assert frame.shape == (4, dimension, columns)
    assert orthonormality_error(frame) < 1e-10


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("dimension", "columns"), SHAPES)
def test_efficient_frames_equal_dense_references(name: str, dimension: int, columns: int) -> None:
    frame_map = mapping(name, dimension, columns, dtype=F64)
    values = random_values(frame_map, 3, scale=0.3 if name == "taylor" else 1.0)
    reference = dense_reference(name, values, dimension, columns, terms=10)
    torch.testing.assert_close(frame_map(values), reference, rtol=0, atol=1e-10)


@settings(max_examples=40)
@given(
    name=st.sampled_from(NAMES),
    dimension=st.integers(1, 24),
    data=st.data(),
)
def test_any_shape_matches_reference_and_is_orthonormal(
    name: str, dimension: int, data: st.DataObject
) -> None:
    columns = data.draw(st.integers(1, dimension), label="columns")
    scales = [0.01, 0.5] if name == "taylor" else [0.01, 0.5, 2.0]
    scale = data.draw(st.sampled_from(scales), label="scale")
    frame_map = mapping(
        name, dimension, columns, dtype=F64, **({"terms": 40} if name == "taylor" else {})
    )
    generator = torch.Generator().manual_seed(dimension * 100 + columns)
    values = scale * torch.randn(2, frame_map.num_parameters, dtype=F64, generator=generator)
    frame = frame_map(values)
    reference = dense_reference(name, values, dimension, columns, terms=40)
    torch.testing.assert_close(frame, reference, rtol=0, atol=1e-10)
    if name != "taylor":
        assert orthonormality_error(frame) < 1e-10


def test_exponential_and_cayley_use_the_same_generator() -> None:
    values = torch.randn(parameter_count(9, 3), dtype=F64)
    generator = generator_matrix(values, 9, 3)
    torch.testing.assert_close(generator, -generator.mT)
    # Only the first K columns (and, by symmetry, rows) are nonzero.
    assert not generator[3:, 3:].any()
    # Column k below the diagonal is value block k.
    torch.testing.assert_close(generator[1:, 0], values[:8])
    torch.testing.assert_close(generator[2:, 1], values[8:15])
    torch.testing.assert_close(generator[3:, 2], values[15:21])


# --- zero, batching, gradients -------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("dimension", "columns"), SHAPES)
def test_zero_values_give_the_first_identity_columns(
    name: str, dimension: int, columns: int
) -> None:
    frame_map = mapping(name, dimension, columns, dtype=F64)
    frame = frame_map(torch.zeros(2, 3, frame_map.num_parameters, dtype=F64))
    expected = torch.eye(dimension, columns, dtype=F64).expand(2, 3, dimension, columns)
    torch.testing.assert_close(frame, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_batched_call_equals_separate_calls(name: str) -> None:
    frame_map = mapping(name, 13, 4, dtype=F64)
    values = random_values(frame_map, 2, 3, scale=0.3)
    batched = frame_map(values)
    assert batched.shape == (2, 3, 13, 4)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], frame_map(values[i, j]), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("dimension", "columns"), [(5, 2), (4, 4), (3, 1), (6, 3)])
def test_gradcheck(name: str, dimension: int, columns: int) -> None:
    frame_map = mapping(name, dimension, columns, dtype=F64)
    for values in (random_values(frame_map, 2), torch.zeros(frame_map.num_parameters, dtype=F64)):
        assert gradcheck(frame_map, (values.requires_grad_(),), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("scale", [0.02, 1.0])
def test_float32_frames_are_orthonormal_at_large_dimension(name: str, scale: float) -> None:
    frame_map = mapping(name, 4096, 4, dtype=torch.float32)
    values = random_values(frame_map, scale=scale).requires_grad_()
    frame = frame_map(values)
    assert frame.dtype == torch.float32
    assert orthonormality_error(frame) <= 1e-5
    frame.square().sum().backward()
    assert values.grad is not None and bool(torch.isfinite(values.grad).all())


def test_autocast_does_not_lower_the_precision() -> None:
    frame_map = mapping("exponential", 64, 4)
    values = random_values(frame_map, scale=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        frame = frame_map(values)
    assert frame.dtype == torch.float32
    assert orthonormality_error(frame) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_module_follows_to_and_keeps_no_state(name: str) -> None:
    frame_map = mapping(name, 10, 3)
    assert frame_map.dtype == torch.float32
    assert frame_map.state_dict() == {}
    assert list(frame_map.parameters()) == []
    frame_map = frame_map.to(F64)
    assert frame_map.dtype == F64
    values = random_values(frame_map, scale=0.2)
    assert frame_map(values).dtype == F64


# --- Householder and Givens layouts ---------------------------------------------------------


@pytest.mark.parametrize(("dimension", "columns"), [(2, 1), (7, 3), (16, 16), (37, 5), (100, 4)])
def test_givens_levels_rotate_disjoint_pairs_and_use_every_angle_once(
    dimension: int, columns: int
) -> None:
    used: list[int] = []
    trees = _givens_trees(dimension, columns)
    assert [column for column, _ in trees] == list(reversed(range(columns)))
    for column, levels in trees:
        assert (
            len(levels) == math.ceil(math.log2(dimension - column))
            if dimension > column + 1
            else not levels
        )
        for low, middle, first in levels:
            rows = [*low.tolist(), *middle.tolist()]
            assert len(set(rows)) == len(rows)
            assert min(rows) >= column
            used += range(first, first + low.size)
    assert sorted(used) == list(range(parameter_count(dimension, columns)))


def test_givens_single_rotation_moves_mass_to_the_paired_row() -> None:
    frame_map = GivensMapping(4, 1, dtype=F64)
    angle = 0.3
    # The root rotation of column 0 pairs rows (0, 2).
    frame = frame_map(torch.tensor([angle, 0.0, 0.0], dtype=F64)).flatten()
    torch.testing.assert_close(
        frame, torch.tensor([math.cos(angle), 0, math.sin(angle), 0], dtype=F64)
    )


def test_householder_first_column_is_the_reflected_basis_vector() -> None:
    frame_map = HouseholderMapping(4, 1, dtype=F64)
    u = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    v = torch.cat([torch.ones(1, dtype=F64), u])
    expected = -(torch.eye(4, 1, dtype=F64).flatten() - 2 * v * v[0] / (v @ v))
    torch.testing.assert_close(frame_map(u).flatten(), expected)


# --- Taylor --------------------------------------------------------------------------------


def _values_with_generator_norm(dimension: int, columns: int, norm: float) -> torch.Tensor:
    values = torch.randn(parameter_count(dimension, columns), dtype=F64)
    spectral = torch.linalg.matrix_norm(generator_matrix(values, dimension, columns), ord=2)
    return values * (norm / spectral)


def test_taylor_deviation_decreases_with_terms_and_reaches_1e_10() -> None:
    values = _values_with_generator_norm(64, 4, 0.3)
    rows = taylor_deviation(values, 64, 4, terms=range(1, 21))
    assert [row.terms for row in rows] == list(range(1, 21))
    orthonormality = [row.orthonormality for row in rows]
    distance = [row.distance_to_exponential for row in rows]
    # Terms = 1 is E_K itself: orthonormal, but far from exp(A)·E_K. From two
    # terms on, both errors fall strictly down to the float64 floor.
    for errors in (orthonormality[1:12], distance[:12]):
        assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert max(orthonormality[11:] + distance[11:]) < 1e-10
    assert orthonormality[0] == 0.0  # terms = 1 is E_K itself


def test_taylor_with_many_terms_matches_the_exponential() -> None:
    values = _values_with_generator_norm(40, 3, 1.0)
    taylor = TaylorMapping(40, 3, terms=30, dtype=F64)(values)
    exact = ExponentialMapping(40, 3, dtype=F64)(values)
    torch.testing.assert_close(taylor, exact, rtol=0, atol=1e-12)
    assert orthonormality_error(taylor) < 1e-12


def test_taylor_deviation_reports_the_worst_batch_element() -> None:
    small = _values_with_generator_norm(20, 2, 0.1)
    large = _values_with_generator_norm(20, 2, 1.0)
    (both,) = taylor_deviation(torch.stack([small, large]), 20, 2, terms=4)
    (alone,) = taylor_deviation(large, 20, 2, terms=4)
    assert both == alone


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_wrong_last_dimension_is_a_parameter_error(name: str) -> None:
    frame_map = mapping(name, 6, 2)
    with pytest.raises(ParameterError, match=r"\(\.\.\., 9\).*\(4, 8\)"):
        frame_map(torch.zeros(4, 8))
    with pytest.raises(ParameterError, match="shape"):
        frame_map(torch.tensor(0.0))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_a_parameter_error(name: str, bad: float) -> None:
    frame_map = mapping(name, 6, 2)
    values = torch.zeros(3, frame_map.num_parameters)
    values[1, 4] = bad
    with pytest.raises(ParameterError, match="1 NaN or infinite value"):
        frame_map(values)


def test_non_finite_check_can_be_switched_off() -> None:
    frame_map = mapping("givens", 6, 2, check_values=False)
    values = torch.full((frame_map.num_parameters,), math.nan)
    assert torch.isnan(frame_map(values)).any()


@pytest.mark.parametrize(
    ("dimension", "columns", "message"),
    [
        (4, 5, "exceeds dimension"),
        (4, 0, "at least 1"),
        (0, 1, "at least 1"),
        (4, 2.0, "must be an int"),
        (True, 1, "must be an int"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_are_compile_errors(
    name: str, dimension: object, columns: object, message: str
) -> None:
    with pytest.raises(CompileError, match=message):
        mapping(name, dimension, columns)  # type: ignore[arg-type]
    with pytest.raises(CompileError, match=message):
        MAPPINGS[name](dimension, columns)  # type: ignore[arg-type]


def test_wrong_dtype_device_or_type_of_values() -> None:
    frame_map = mapping("cayley", 6, 2, dtype=F64)
    with pytest.raises(ParameterError, match=r"float64.*float32.*values\.to"):
        frame_map(torch.zeros(9, dtype=torch.float32))
    with pytest.raises(ParameterError, match="torch.as_tensor"):
        frame_map([0.0] * 9)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="float64"):
        frame_map(torch.zeros(9, dtype=torch.int64))


def test_bad_options_are_compile_errors() -> None:
    with pytest.raises(CompileError, match="choose one of cayley, exponential, givens"):
        mapping("qr", 6, 2)
    with pytest.raises(CompileError, match="does not take option.*terms"):
        mapping("cayley", 6, 2, terms=4)
    with pytest.raises(CompileError, match="float32 or float64"):
        mapping("givens", 6, 2, dtype=torch.float16)
    with pytest.raises(CompileError, match="terms must be"):
        mapping("taylor", 6, 2, terms=0)
    for terms in ([], 2.5, 3.0, [2.5], [2, "a"]):
        with pytest.raises(CompileError, match="terms must be"):
            taylor_deviation(torch.zeros(9, dtype=F64), 6, 2, terms=terms)


def test_dense_reference_checks_its_input() -> None:
    with pytest.raises(ParameterError, match=r"\(\.\.\., 9\)"):
        dense_reference("givens", torch.zeros(8), 6, 2)
    with pytest.raises(CompileError, match="unknown mapping"):
        dense_reference("qr", torch.zeros(9), 6, 2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
@pytest.mark.parametrize(
    ("cast", "dtype"),
    [("half", "float16"), ("bfloat16", "bfloat16"), ("to", "complex64")],
)
def test_casting_to_a_dtype_the_maps_cannot_compute_in_is_a_compile_error(
    name: str, cast: str, dtype: str
) -> None:
    frame_map = mapping(name, 6, 2)
    with pytest.raises(CompileError, match=f"float32 or float64, got torch.{dtype}"):
        if cast == "to":
            frame_map.to(getattr(torch, dtype))
        else:
            getattr(frame_map, cast)()
    assert frame_map.dtype == torch.float32
    values = random_values(frame_map, scale=0.2)
    assert orthonormality_error(frame_map(values)) < 1e-6


@pytest.mark.parametrize(
    ("device", "message"), [("bogus", "not a torch device"), ("cuda:99", "not available here")]
)
def test_an_unusable_device_is_a_compile_error(device: str, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        mapping("householder", 6, 2, device=device)


def test_moving_a_mapping_to_an_unavailable_device_is_a_compile_error() -> None:
    frame_map = mapping("householder", 6, 2)
    with pytest.raises(CompileError, match="cannot move or cast the module"):
        frame_map.to("cuda:99")


@pytest.mark.parametrize(
    ("name", "dimension", "columns", "options"),
    [("givens", 1, 1, {}), ("taylor", 5, 2, {"terms": 1}), ("taylor", 1, 1, {"terms": 1})],
)
def test_a_frame_that_does_not_depend_on_the_values_stays_on_their_graph(
    name: str, dimension: int, columns: int, options: dict
) -> None:
    frame_map = mapping(name, dimension, columns, dtype=F64, **options)
    values = torch.randn(2, 3, frame_map.num_parameters, dtype=F64, requires_grad=True)
    frame = frame_map(values)
    torch.testing.assert_close(frame, torch.eye(dimension, columns, dtype=F64).expand_as(frame))
    frame.sum().backward()
    assert values.grad is not None
    torch.testing.assert_close(values.grad, torch.zeros_like(values))


def test_taylor_deviation_checks_its_arguments() -> None:
    values = torch.randn(parameter_count(6, 2), dtype=F64)
    assert [row.terms for row in taylor_deviation(values, 6, 2, terms=np.int64(3))] == [3]
    assert [row.terms for row in taylor_deviation(values, 6, 2, [np.int64(2), 4])] == [2, 4]
    for bad in (True, [True, 3], [2.5], [0, 2]):
        with pytest.raises(CompileError, match="terms must be a positive whole number"):
            taylor_deviation(values, 6, 2, terms=bad)
    with pytest.raises(ParameterError, match="torch.as_tensor"):
        taylor_deviation(values.tolist(), 6, 2, terms=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", MAPPINGS)
def test_a_mapping_built_on_the_meta_device_is_rebuilt_by_to_empty(name):
    """Its index buffers hold no values after to_empty() and none is in the state dict."""
    values = 0.3 * torch.randn(parameter_count(8, 2), dtype=torch.float64)
    expected = mapping(name, 8, 2, dtype=torch.float64)(values)
    with torch.device("meta"):
        frame = mapping(name, 8, 2, dtype=torch.float64)
        assert frame(torch.zeros(3, parameter_count(8, 2), dtype=torch.float64)).shape == (3, 8, 2)
    frame.to_empty(device="cpu")
    torch.testing.assert_close(frame(values), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("flag", ["no", 0, None])
def test_check_values_must_be_a_bool_as_for_compiled_circuits(flag):
    with pytest.raises(CompileError, match="check_values must be True or False"):
        mapping("cayley", 8, 2, check_values=flag)
