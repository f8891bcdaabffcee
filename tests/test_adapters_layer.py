"""QPeftLinear on its own: the update it adds, its frames, init schemes, merging, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.pytorch_utils import Conv1D

import qpeft
from qpeft.adapters import QPeftConfig, QPeftLinear
from qpeft.adapters.frames import FrameSpec
from qpeft.compiler.mappings import parameter_count
from qpeft.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def dense_update(layer: QPeftLinear, adapter: str = "default") -> torch.Tensor:
    """α (U Λ Vᵀ − U₀ Λ₀ V₀ᵀ) from the circuits' reference matrices (float64)."""
    total = torch.zeros(layer.out_features, layer.in_features, dtype=torch.float64)
    terms = [(layer.qpeft_theta_out[adapter], layer.qpeft_theta_in[adapter],
              layer.qpeft_lambda[adapter], 1.0)]
    if layer.init[adapter] == "offset":
        initial = layer.qpeft_initial[adapter]
        terms.append((initial.theta_out, initial.theta_in, initial.lam, -1.0))
    specs = layer.frame_specs[adapter]
    rank = layer.rank[adapter]
    for theta_out, theta_in, lam, sign in terms:
        U = torch.as_tensor(specs["out"].circuit.matrix(theta_out.detach().double().numpy()))
        V = torch.as_tensor(specs["in"].circuit.matrix(theta_in.detach().double().numpy()))
        U, V = U[:, :rank], V[:, :rank]
        total += sign * (U * lam.detach().double()) @ V.T
    return layer.scaling[adapter] * total


def randomize(layer: QPeftLinear, adapter: str = "default", scale: float = 0.5) -> None:
    """Move the trainable values away from the initial ones."""
    with torch.no_grad():
        for parameter in layer.adapter_parameters(adapter):
            parameter.add_(scale * torch.randn_like(parameter))


@pytest.mark.parametrize("n_in, n_out", [(24, 40), (48, 96), (96, 48), (16, 12)])
@pytest.mark.parametrize("init", ["offset", "zero_lambda"])
def test_output_is_base_plus_low_rank_update(n_in, n_out, init):
    layer = QPeftLinear(torch.nn.Linear(n_in, n_out).double(), rank=3, layers=2, init=init,
                        alpha=1.5)
    x = torch.randn(5, n_in, dtype=torch.float64)
    assert torch.equal(layer(x), layer.base_layer(x))  # ΔW = 0 exactly at init
    randomize(layer)
    expected = layer.base_layer(x) + x @ dense_update(layer).T
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_frames_have_orthonormal_columns_and_the_right_counts():
    layer = QPeftLinear(torch.nn.Linear(48, 96), rank=4, layers=2)
    randomize(layer, scale=3.0)
    U, V = layer.frames("default")
    assert U.shape == (96, 4) and V.shape == (48, 4)
    torch.testing.assert_close(U.T @ U, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(V.T @ V, torch.eye(4), atol=1e-5, rtol=0)
    circuit_out = qpeft.ansatz.for_dimension(96, layers=2)
    circuit_in = qpeft.ansatz.for_dimension(48, layers=2)
    sizes = [p.numel() for p in layer.adapter_parameters("default")]
    assert sizes == [circuit_out.num_parameters, circuit_in.num_parameters, 4]


def test_conv1d_matches_the_equivalent_linear():
    linear = torch.nn.Linear(24, 40).double()
    conv = Conv1D(40, 24).double()
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)
        conv.bias.copy_(linear.bias)
    torch.manual_seed(3)
    a = QPeftLinear(linear, rank=2)
    torch.manual_seed(3)
    b = QPeftLinear(conv, rank=2)
    randomize(a)
    with torch.no_grad():
        for p, q in zip(a.adapter_parameters("default"), b.adapter_parameters("default")):
            q.copy_(p)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)
    b.merge()
    torch.testing.assert_close(b.base_layer(x), a(x), rtol=1e-12, atol=1e-12)


def test_each_side_takes_its_own_circuit_catalog_name_or_mapping():
    circuit = qpeft.ansatz.pauli(qubits=4, layers=1)
    layer = QPeftLinear(torch.nn.Linear(16, 24), rank=2, frame_in=circuit, frame_out="shannon")
    assert layer.frame_specs["default"]["in"].circuit == circuit
    assert layer.frame_specs["default"]["out"].circuit.name.startswith("for_dimension(24")
    mapped = QPeftLinear(torch.nn.Linear(16, 24), rank=2, ansatz="cayley")
    sizes = [p.numel() for p in mapped.adapter_parameters("default")]
    assert sizes == [parameter_count(24, 2), parameter_count(16, 2), 2]
    x = torch.randn(3, 16)
    assert torch.equal(mapped(x), mapped.base_layer(x))
    randomize(mapped, scale=0.1)
    U, V = mapped.frames("default")
    torch.testing.assert_close(U.T @ U, torch.eye(2), atol=1e-5, rtol=0)


def test_a_circuit_of_the_wrong_dimension_is_a_config_error():
    with pytest.raises(ConfigError, match="dimension 16 .* width 24"):
        QPeftLinear(torch.nn.Linear(16, 24), rank=2, frame_out=qpeft.ansatz.pauli(4, 1))
    with pytest.raises(ConfigError, match="power-of-two"):
        QPeftLinear(torch.nn.Linear(16, 24), rank=2, ansatz="pauli")


def test_rank_larger_than_a_side_allows_is_a_config_error():
    with pytest.raises(ConfigError, match="K <= 6"):
        QPeftLinear(torch.nn.Linear(6, 40), rank=7)


@pytest.mark.parametrize("options, match", [
    ({"alpha": float("nan")}, "alpha must be a finite number"),
    ({"dropout": 1.5}, r"dropout must lie in \[0, 1\)"),
    ({"init_lambda": 0.0}, "init_lambda must be a finite number .*nonzero"),
    ({"init": "zeros"}, "unknown init"),
])
def test_the_layer_checks_its_options_as_the_config_does(options, match):
    with pytest.raises(ConfigError, match=match):
        QPeftLinear(torch.nn.Linear(8, 8), rank=2, **options)
    with pytest.raises(ConfigError, match=match):
        QPeftConfig(target_modules=["q"], **options)


@pytest.mark.parametrize("init", ["offset", "zero_lambda"])
def test_every_parameter_moves_within_two_steps(init):
    layer = QPeftLinear(torch.nn.Linear(24, 24), rank=4, init=init)
    x, target = torch.randn(16, 24), torch.randn(16, 24)
    parameters = layer.adapter_parameters("default")
    start = [p.detach().clone() for p in parameters]
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    first_gradients = None
    for _ in range(2):
        loss = ((layer(x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        if first_gradients is None:
            first_gradients = [p.grad.abs().max().item() for p in parameters]
        optimizer.step()
    assert all(not torch.equal(p, s) for p, s in zip(parameters, start))
    if init == "offset":  # λ₀ ≠ 0: the angles get a gradient at the very first step
        assert all(g > 0 for g in first_gradients)
    else:  # λ = 0: only λ does (the angles follow at step 2)
        assert first_gradients[0] == first_gradients[1] == 0 and first_gradients[2] > 0


def test_active_rank_masks_lambda():
    layer = QPeftLinear(torch.nn.Linear(24, 24).double(), rank=4, active_rank=2)
    randomize(layer)
    full = layer.effective_lambda("default")
    assert full[2:].abs().max() == 0 and full[:2].abs().min() > 0
    x = torch.randn(3, 24, dtype=torch.float64)
    with torch.no_grad():
        layer.qpeft_lambda["default"][2:] = 0
        layer.qpeft_initial["default"].lam[2:] = 0
    layer.set_active_rank("default", 4)
    masked_by_hand = layer(x)
    layer.set_active_rank("default", 2)
    torch.testing.assert_close(layer(x), masked_by_hand)


def test_merge_adds_the_update_and_unmerge_restores_the_weight():
    layer = QPeftLinear(torch.nn.Linear(48, 24), rank=4)
    randomize(layer)
    weight = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 48)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    expected = weight.double() + dense_update(layer)
    torch.testing.assert_close(layer.base_layer.weight.double(), expected, atol=1e-6, rtol=0)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, weight, atol=1e-6, rtol=0)


def test_safe_merge_refuses_non_finite_weights():
    layer = QPeftLinear(torch.nn.Linear(8, 8), rank=2)
    with torch.no_grad():
        layer.qpeft_lambda["default"].fill_(float("inf"))
    weight = layer.base_layer.weight.detach().clone()
    with pytest.raises((ConfigError, qpeft.QpeftError)):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, weight) and not layer.merged


def test_safe_merge_of_several_adapters_is_all_or_nothing():
    layer = QPeftLinear(torch.nn.Linear(8, 8), rank=2)
    layer.update_layer("broken", rank=2)
    randomize(layer)
    with torch.no_grad():
        layer.qpeft_lambda["broken"].fill_(float("inf"))
    assert layer.get_delta_weight("default").abs().max() > 0  # merging it alone changes W0
    weight = layer.base_layer.weight.detach().clone()
    with pytest.raises(ConfigError, match="'broken'.*nothing was merged"):
        layer.merge(safe_merge=True, adapter_names=["default", "broken"])
    assert torch.equal(layer.base_layer.weight, weight)
    assert layer.merged_adapters == []


def test_bfloat16_and_autocast():
    layer = QPeftLinear(torch.nn.Linear(24, 40), rank=4)
    randomize(layer)
    x = torch.randn(3, 24)
    reference = layer(x)
    assert layer.qpeft_lambda["default"].dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(x)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), reference, atol=0.1, rtol=0.05)
    half = QPeftLinear(torch.nn.Linear(24, 40).to(torch.bfloat16), rank=4)
    assert half.qpeft_theta_out["default"].dtype == torch.float32  # angles stay float32
    out = half(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("ansatz", ["qudit", "shannon", "cayley"])
def test_backward_inside_autocast_gives_the_full_precision_gradients(ansatz: str):
    """A training loop may call ``loss.backward()`` inside the autocast block;
    the frames' written-out backward then still runs in float32."""
    layer = QPeftLinear(torch.nn.Linear(24, 40), rank=4, ansatz=ansatz)
    randomize(layer)
    x = torch.randn(3, 24)
    names = ["qpeft_theta_out", "qpeft_theta_in"]

    def gradients(autocast: bool) -> list[torch.Tensor]:
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            layer(x).float().square().sum().backward()
        return [getattr(layer, name)["default"].grad.clone() for name in names]

    for mixed, full in zip(gradients(True), gradients(False), strict=True):
        assert mixed.dtype == torch.float32
        torch.testing.assert_close(mixed, full, atol=0.05 * full.abs().max().item(), rtol=0)


def test_frames_are_computed_in_float64_for_float64_parameters():
    layer = QPeftLinear(torch.nn.Linear(12, 12).double(), rank=2)
    U, V = layer.frames("default")
    assert U.dtype == V.dtype == torch.float64


def test_frame_spec_rejects_complex_circuits():
    circuit = qpeft.Circuit(2)
    circuit.rx(0, qpeft.Parameter("a"))
    with pytest.raises(ConfigError, match="not real"):
        FrameSpec.for_circuit(circuit, columns=1)


def test_quantized_layer_uses_grid_values():
    layer = QPeftLinear(torch.nn.Linear(24, 24), rank=4, quantize_bits=4)
    randomize(layer)
    U, _ = layer.frames("default")
    step = 4 * math.pi / 16
    on_grid = torch.round(layer.qpeft_theta_out["default"].detach() / step) * step
    exact = layer.frame_specs["default"]["out"].circuit.matrix(on_grid.double().numpy())
    torch.testing.assert_close(U.double(), torch.as_tensor(exact)[:, :4], atol=1e-5, rtol=0)


def test_a_merged_adapter_cannot_be_replaced():
    layer = QPeftLinear(torch.nn.Linear(16, 16), rank=2)
    randomize(layer)
    weight = layer.base_layer.weight.detach().clone()
    layer.merge()
    with pytest.raises(ConfigError, match="unmerge it before replacing it"):
        layer.update_layer("default", rank=2)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, weight, atol=1e-6, rtol=0)
    layer.update_layer("default", rank=2)  # unmerged, it may be replaced
