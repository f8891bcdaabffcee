"""An adapted model inside the tools users train with: transformers' Trainer
and torch.compile (DistributedDataParallel is in test_ddp.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.utils import logging as transformers_logging

import qpeft

transformers_logging.set_verbosity_error()

pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ["query", "key", "value", "attention.output.dense"]


def adapted_bert(seed: int = 0) -> qpeft.QPeftModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=96,
                        max_position_embeddings=32, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base = BertForSequenceClassification(config)
    adapter = qpeft.QPeftConfig(target_modules=TARGETS, rank=4, layers=2,
                                modules_to_save=["classifier"])
    return qpeft.get_qpeft_model(base, adapter)


class Rows(torch.utils.data.Dataset):
    """32 sequences whose label is a function of the first token."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, 100, (32, 8), generator=generator)
        self.labels = self.ids[:, 0] % 3

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def test_transformers_trainer_trains_the_adapters_only(tmp_path) -> None:
    model = adapted_bert()
    rows = Rows()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = {"input_ids": rows.ids, "labels": rows.labels}
    with torch.no_grad():
        loss_before = model(**batch).loss.item()
    arguments = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=4,
        learning_rate=5e-2, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0,
    )
    Trainer(model=model, args=arguments, train_dataset=rows).train()
    model.eval()
    with torch.no_grad():
        loss_after = model(**batch).loss.item()
    assert loss_after < loss_before
    for name, parameter in model.named_parameters():
        moved = not torch.equal(parameter, before[name])
        assert moved == parameter.requires_grad, name
    for layer in model.qpeft_layers().values():
        for frame in layer.frames("default"):
            gram = frame.mT @ frame
            assert torch.allclose(gram, torch.eye(4), atol=1e-5)


def test_torch_compile_of_an_adapted_model_matches_eager_outputs_and_gradients() -> None:
    model = adapted_bert()
    with torch.no_grad():  # leave the initial point, where ΔW = 0
        for layer in model.qpeft_layers().values():
            for parameter in layer.adapter_parameters("default"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    ids = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 1, 2, 0])
    model.train()
    # aot_eager captures the graphs (forward and backward) as inductor does, without
    # generating C++; the default backend passes this test too, in minutes instead of seconds.
    compiled = torch.compile(model, backend="aot_eager")

    def loss_and_grads(runner) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = runner(input_ids=ids, labels=labels).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    eager_loss, eager_grads = loss_and_grads(model)
    compiled_loss, compiled_grads = loss_and_grads(compiled)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


def test_torch_compile_before_any_eager_call_builds_the_frames_outside_the_trace() -> None:
    """The frame modules are built on first use; a first use under torch.compile builds
    them eagerly (dynamo cannot trace the NumPy that reads the circuit)."""
    from qpeft.adapters.frames import clear_compiled_cache

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.ReLU(), torch.nn.Linear(48, 24))
    model = qpeft.get_qpeft_model(base, qpeft.QPeftConfig(target_modules="all-linear", rank=4))
    with torch.no_grad():
        for layer in model.qpeft_layers().values():
            for parameter in layer.adapter_parameters("default"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    x = torch.randn(5, 24)
    clear_compiled_cache()
    compiled = torch.compile(model, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, model(x), rtol=1e-5, atol=1e-6)


def test_forward_shows_the_base_signature_and_rebinds_as_a_method() -> None:
    import inspect
    import types

    model = adapted_bert()
    assert "input_ids" in inspect.signature(model.forward).parameters
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(6))
    # accelerate rebinds forward as MethodType(model.forward.__func__, model)
    rebound = types.MethodType(model.forward.__func__, model)
    with torch.no_grad():
        assert torch.equal(rebound(input_ids=ids).logits, model(input_ids=ids).logits)
