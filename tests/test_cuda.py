"""The compiler, the mappings, the adapters and training on a CUDA GPU.

Skipped on a machine without one. Each test compares the GPU against the
reference the CPU tests use (``Circuit.matrix`` in float64, the CPU module,
the unmerged model), so a kernel that differs on the device shows up here.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_adapters_model import BERT_TARGETS, perturb, tiny_bert, tokens
from test_compiler import COMPILED_METHODS, check_every_method, circuits, compiled, real_view

from qpeft import cli
from qpeft.adapters import QPeftConfig, QPeftModel, get_qpeft_model
from qpeft.ansatz import for_dimension, pauli
from qpeft.circuit import Circuit, Parameter, controlled, pauli_rotation
from qpeft.circuit.gates import RY
from qpeft.compiler import compile_circuit
from qpeft.compiler.mappings import MAPPINGS, mapping
from qpeft.errors import ParameterError

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def on_cuda(module: torch.nn.Module) -> torch.nn.Module:
    return module.to(CUDA)


# -- the compiler ------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_method_on_the_gpu_equals_the_reference_matrix(data) -> None:
    check_every_method(data, data.draw(circuits()), CUDA)


@pytest.mark.parametrize("method", COMPILED_METHODS)
def test_gpu_values_and_gradients_equal_the_cpu_ones_in_batches(method: str) -> None:
    circuit = for_dimension(48, layers=2)  # 3 · 2⁴: a qutrit and four qubits
    values = torch.randn(3, 2, circuit.num_parameters, dtype=torch.float64)
    cpu = compiled(circuit, 5, method)
    gpu = on_cuda(compiled(circuit, 5, method))
    weight = torch.randn(3, 2, 48, 5, dtype=torch.float64)
    outputs, gradients = [], []
    for frame, device in ((cpu, "cpu"), (gpu, CUDA)):
        leaf = values.to(device).requires_grad_(True)
        out = frame(leaf)
        gradient, = torch.autograd.grad((out * weight.to(device)).sum(), leaf)
        outputs.append(out.cpu())
        gradients.append(gradient.cpu())
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(gradients[1], gradients[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", COMPILED_METHODS)
def test_gradcheck_on_the_gpu(method: str) -> None:
    circuit = (Circuit([2, 3, 2]).ry(0, "a").givens(1, (0, 2), "b").cz(0, 2)
               .rx(2, 0.5 * Parameter("a")).append(controlled(RY(2, "c"), 1)).gcz(0, 1)
               .ry(0, "c").append(pauli_rotation("XX", [0, 2], "b")))
    frame = on_cuda(compiled(circuit, [5, 0, 2], method))
    values = torch.randn(2, circuit.num_parameters, dtype=torch.float64, device=CUDA,
                         requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: real_view(frame(v)), (values,))


@pytest.mark.parametrize(("qubits", "columns"), [(14, 4), (14, 64), (12, 32)])
def test_float32_columns_on_the_gpu_stay_orthonormal(qubits: int, columns: int) -> None:
    frame = compile_circuit(pauli(qubits, 2), columns, device=CUDA)
    U = frame(3 * torch.randn(3, frame.num_parameters, device=CUDA))
    assert U.dtype == torch.float32
    U = U.double()  # the Gram matrix in float64: its own rounding is not the frame's
    error = (U.mT @ U - torch.eye(columns, device=CUDA, dtype=torch.float64)).abs().amax()
    assert error.item() <= 1e-5


def test_the_batched_bert_frames_on_the_gpu_equal_separate_cpu_calls() -> None:
    """The 72 frames of a 6-layer, 384-wide BERT: 60 of 384 rows, 12 of 1536."""
    for dimension, count in ((384, 60), (1536, 12)):
        circuit = for_dimension(dimension, layers=2)
        values = torch.randn(count, circuit.num_parameters, dtype=torch.float64)
        gpu = compile_circuit(circuit, 4, dtype=torch.float64, device=CUDA)(values.to(CUDA))
        cpu = compile_circuit(circuit, 4, dtype=torch.float64)
        for index in (0, count // 2, count - 1):
            torch.testing.assert_close(gpu[index].cpu(), cpu(values[index]), atol=1e-12, rtol=0)


def test_the_memory_saving_backward_on_the_gpu_holds_less_and_gives_the_same_gradient() -> None:
    circuit = pauli(12, 2)
    values = torch.randn(circuit.num_parameters, device=CUDA, dtype=torch.float64)
    gradients, peaks = [], []
    for recompute in (False, True):
        frame = compile_circuit(circuit, 64, dtype=torch.float64, device=CUDA,
                                recompute_backward=recompute)
        leaf = values.clone().requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = frame(leaf)
        peaks.append(torch.cuda.max_memory_allocated() - before)
        gradient, = torch.autograd.grad(out.square().sum(), leaf)
        gradients.append(gradient)
        del out
    torch.testing.assert_close(gradients[1], gradients[0], atol=1e-10, rtol=0)
    assert peaks[1] < peaks[0] / 3, peaks


def test_a_compiled_circuit_moves_between_devices_and_refuses_mixed_ones() -> None:
    circuit = pauli(5, 2)
    frame = compile_circuit(circuit, 3, dtype=torch.float64)
    values = torch.randn(circuit.num_parameters, dtype=torch.float64)
    expected = frame(values)
    frame.to(CUDA)
    torch.testing.assert_close(frame(values.to(CUDA)).cpu(), expected, atol=1e-13, rtol=0)
    with pytest.raises(ParameterError, match="lives on cuda"):
        frame(values)
    frame.cpu()
    torch.testing.assert_close(frame(values), expected, atol=0, rtol=0)


def test_the_value_check_raises_on_the_gpu_and_can_be_turned_off() -> None:
    circuit = pauli(4, 1)
    values = torch.zeros(circuit.num_parameters, device=CUDA)
    values[1] = float("nan")
    with pytest.raises(ParameterError, match="NaN or infinity"):
        compile_circuit(circuit, 2, device=CUDA)(values)
    unchecked = compile_circuit(circuit, 2, device=CUDA, check_values=False)
    assert unchecked(values).isnan().any().item()


@pytest.mark.parametrize("method", ["columns", "tensornet", "recompute"])
def test_without_the_value_check_a_gpu_step_never_waits_for_the_device(method: str) -> None:
    """``check_values=False``: the forward and backward pass queue work on the
    GPU and return without reading anything back (no host sync)."""
    circuit = for_dimension(384, layers=2)
    frame = compile_circuit(circuit, 4, device=CUDA, check_values=False,
                            method="columns" if method == "recompute" else method,
                            recompute_backward=method == "recompute")
    values = torch.randn(8, circuit.num_parameters, device=CUDA, requires_grad=True)
    frame(values).sum().backward()  # first call: lazy set-up may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        frame(values).square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_torch_compile_on_the_gpu_gives_the_eager_values_and_gradients() -> None:
    circuit = pauli(6, 2)
    frame = compile_circuit(circuit, 4, dtype=torch.float64, device=CUDA)
    torch._dynamo.reset()
    fast = torch.compile(frame)
    values = torch.randn(3, circuit.num_parameters, dtype=torch.float64, device=CUDA,
                         requires_grad=True)
    torch.testing.assert_close(fast(values), frame(values), atol=1e-13, rtol=0)
    compiled_grad, = torch.autograd.grad(fast(values).pow(2).sum(), values)
    eager_grad, = torch.autograd.grad(frame(values).pow(2).sum(), values)
    torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-12, rtol=0)


# -- the mappings ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_each_mapping_on_the_gpu_equals_its_cpu_frame_and_gradient(name: str) -> None:
    cpu = mapping(name, 384, 6, dtype=torch.float64)
    gpu = mapping(name, 384, 6, dtype=torch.float64, device=CUDA)
    values = 0.1 * torch.randn(2, cpu.num_parameters, dtype=torch.float64)
    weight = torch.randn(2, 384, 6, dtype=torch.float64)
    results = []
    for frame, device in ((cpu, "cpu"), (gpu, CUDA)):
        leaf = values.to(device).requires_grad_(True)
        out = frame(leaf)
        gradient, = torch.autograd.grad((out * weight.to(device)).sum(), leaf)
        results.append((out.cpu(), gradient.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-11, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-9, rtol=0)
    if name != "taylor":  # a truncated series: orthonormal only to its deviation
        U = results[1][0]
        eye = torch.eye(6, dtype=torch.float64)
        torch.testing.assert_close(U.mT @ U, eye.expand(2, 6, 6), atol=1e-10, rtol=0)


# -- adapters and training ---------------------------------------------------------------------
def test_adapters_on_the_gpu_train_merge_save_and_load_on_the_cpu(tmp_path) -> None:
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=4,
                                                     modules_to_save=["classifier"])).to(CUDA)
    ids = tokens().to(CUDA)
    labels = torch.tensor([0, 1, 2, 1], device=CUDA)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=2e-2)
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    perturb(model)
    model.eval()
    with torch.no_grad():
        unmerged = model(ids).logits
        for layer in model.qpeft_layers().values():
            U, V = layer.frames("default")
            assert U.is_cuda and V.is_cuda
            eye = torch.eye(4, device=CUDA)
            torch.testing.assert_close(U.T @ U, eye, atol=1e-5, rtol=0)
        model.merge_adapter()
        torch.testing.assert_close(model(ids).logits, unmerged, atol=1e-5, rtol=0)
        model.unmerge_adapter()
    model.save_pretrained(tmp_path)
    loaded = QPeftModel.from_pretrained(tiny_bert(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids.cpu()).logits, unmerged.cpu(), atol=1e-5, rtol=0)


def test_a_bf16_model_on_the_gpu_keeps_float32_adapter_values_and_reloads(tmp_path) -> None:
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=4))
    perturb(model)
    model = model.to(CUDA, torch.bfloat16).eval()
    adapter_values = [p for layer in model.qpeft_layers().values()
                      for p in layer.adapter_parameters("default")]
    assert adapter_values and all(p.dtype == torch.float32 for p in adapter_values)
    ids = tokens().to(CUDA)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.dtype == torch.bfloat16 and logits.isfinite().all().item()
    model.save_pretrained(tmp_path)
    loaded = QPeftModel.from_pretrained(tiny_bert().to(CUDA, torch.bfloat16), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)


def test_finetune_on_the_gpu_writes_an_adapter_that_loads_on_the_cpu(tmp_path) -> None:
    from qpeft.train.testing import write_sentiment_csv, write_tiny_bert

    model_folder = write_tiny_bert(tmp_path / "model")
    dataset = write_sentiment_csv(tmp_path / "sentiment.csv", rows=300)
    output = tmp_path / "run"
    code = cli.main(["finetune", "--method", "qpeft", "--rank", "4", "--model",
                     str(model_folder), "--dataset", str(dataset), "--max-train", "96",
                     "--max-eval", "30", "--epochs", "2", "--batch-size", "16",
                     "--no-progress", "--device", "cuda", "--output-dir", str(output)])
    assert code == 0
    run = json.loads((output / "metrics.json").read_text())
    assert run["environment"]["device"].startswith("cuda")
    assert run["environment"]["gpu"] == torch.cuda.get_device_name()
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(model_folder, num_labels=3)
    loaded = QPeftModel.from_pretrained(base, output / "adapter")
    assert loaded.qpeft_layers()


def test_under_tf32_products_float32_frames_stay_orthonormal() -> None:
    """With TF32 matrix products switched on, a float32 frame computed in float32
    was orthonormal to about 2e-3 only; the compiled circuit now computes it in
    float64 there and returns float32."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch < 2.9
        pytest.skip("this torch has no torch.backends.cuda.matmul.fp32_precision")
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        for circuit, columns in ((pauli(14, 2), 4), (for_dimension(1536, 2), 32)):
            frame = compile_circuit(circuit, columns, device=CUDA)
            values = (3 * torch.randn(4, circuit.num_parameters, device=CUDA)).requires_grad_()
            U = frame(values)
            assert U.dtype == torch.float32
            U64 = U.double()
            eye = torch.eye(columns, device=CUDA, dtype=torch.float64)
            assert (U64.mT @ U64 - eye).abs().amax().item() <= 1e-5
            U.sum().backward()
            assert values.grad.isfinite().all().item()
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous


@pytest.mark.parametrize("method", ["columns", "tensornet"])
def test_a_compiled_circuit_replays_as_a_cuda_graph(method: str) -> None:
    """``check_values=False`` leaves nothing to read back, so the forward and
    backward pass can be captured once and replayed
    (``torch.cuda.make_graphed_callables``) with the eager values and gradients."""
    circuit = for_dimension(384, layers=2)
    frame = compile_circuit(circuit, 4, method=method, device=CUDA, check_values=False)
    # a module given to make_graphed_callables is itself turned into a replay, so the
    # eager reference is a second module of its own
    eager_frame = compile_circuit(circuit, 4, method=method, device=CUDA, check_values=False)
    sample = torch.randn(60, circuit.num_parameters, device=CUDA, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(frame, (sample,))
    weight = torch.randn(60, 384, 4, device=CUDA)
    for _ in range(2):
        values = torch.randn(60, circuit.num_parameters, device=CUDA, requires_grad=True)
        out = graphed(values).clone()  # the replay's output buffer is reused by the next
        gradient, = torch.autograd.grad((graphed(values) * weight).sum(), values)
        eager = eager_frame(values)
        eager_gradient, = torch.autograd.grad((eager * weight).sum(), values)
        torch.testing.assert_close(out, eager, atol=1e-6, rtol=0)
        torch.testing.assert_close(gradient, eager_gradient, atol=1e-5, rtol=0)
