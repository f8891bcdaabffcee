"""The training loop: exact resumption, learning, checkpoints, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from qpeft.errors import ConfigError, DivergenceError
from qpeft.train import data
from qpeft.train.loop import (
    PeakMemory,
    TrainConfig,
    epoch_order,
    evaluate,
    linear_schedule,
    load_checkpoint,
    release_free_memory,
    save_checkpoint,
    train,
)
from qpeft.train.methods import MethodSpec, prepare_model
from qpeft.train.testing import sentiment_rows, tiny_bert_config, write_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> data.EncodedDataset:
    tokenizer = write_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    rows = sentiment_rows(90, seed=3)
    names = ("negative", "neutral", "positive")
    texts = data.TextDataset([t for t, _ in rows], [names.index(y) for _, y in rows], names)
    return data.encode(tokenizer, texts, max_length=16)


def lora_model(seed: int = 0, dropout: float = 0.1):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(
        tiny_bert_config(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))
    return prepare_model(model, MethodSpec("lora", rank=2, dropout=dropout))


def trainable(prepared) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in prepared.trainable_parameters()}


def scrambled(prepared):
    """The same frozen model, with every trainable value replaced: after a
    resume, all of them must come from the checkpoint."""
    with torch.no_grad():
        for _, parameter in prepared.trainable_parameters():
            parameter.normal_()
    return prepared


CONFIG = TrainConfig(epochs=2, batch_size=16, learning_rate=5e-3, seed=5, checkpoint_every=2)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    encoded: data.EncodedDataset, tmp_path: Path
) -> None:
    reference = lora_model()
    straight = train(reference.model, encoded, CONFIG, progress=False,
                     head_parameter_names=reference.head_parameter_names())
    assert straight.steps == 12  # 90 rows, batch 16 -> 6 steps per epoch

    first = lora_model()
    checkpoint = tmp_path / "checkpoint.pt"
    part = train(first.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
                 stop_after_step=5, head_parameter_names=first.head_parameter_names())
    assert not part.completed and part.steps == 5

    second = scrambled(lora_model())
    resumed = train(second.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
                    resume=True, head_parameter_names=second.head_parameter_names())
    assert resumed.completed and resumed.resumed_from_step == 5
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    expected, got = trainable(reference), trainable(second)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_ctrl_c_leaves_a_checkpoint_that_resumes_exactly(
    encoded: data.EncodedDataset, tmp_path: Path
) -> None:
    reference = lora_model()
    train(reference.model, encoded, CONFIG, progress=False)

    calls = {"count": 0}

    def interrupt_in_step_8(outputs, batch):
        calls["count"] += 1
        if calls["count"] == 8:
            raise KeyboardInterrupt
        return outputs.loss

    checkpoint = tmp_path / "checkpoint.pt"
    interrupted = lora_model()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
              compute_loss=interrupt_in_step_8)
    assert load_checkpoint(checkpoint)["step"] == 7

    resumed = scrambled(lora_model())
    train(resumed.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint, resume=True)
    for name, tensor in trainable(reference).items():
        assert torch.equal(tensor, trainable(resumed)[name]), name


@pytest.mark.parametrize("interrupted_epoch", [1, 2])
def test_ctrl_c_during_the_end_of_epoch_evaluation_resumes_with_that_evaluation(
    encoded: data.EncodedDataset, tmp_path: Path, interrupted_epoch: int
) -> None:
    """The epoch's checkpoint is written before its evaluation ends; the resumed
    run evaluates that epoch from the same weights (the last one included)."""
    def scores(wrapped) -> Callable:
        def on_epoch_end(epoch: int) -> dict:
            return {"sum": float(sum(p.double().sum() for p in trainable(wrapped).values()))}
        return on_epoch_end

    reference = lora_model()
    expected = train(reference.model, encoded, CONFIG, progress=False,
                     on_epoch_end=scores(reference)).epoch_metrics
    assert [m["epoch"] for m in expected] == [1, 2]

    checkpoint = tmp_path / "checkpoint.pt"
    interrupted = lora_model()
    evaluate = scores(interrupted)

    def interrupt(epoch: int) -> dict:
        if epoch == interrupted_epoch:
            raise KeyboardInterrupt
        return evaluate(epoch)

    with pytest.raises(KeyboardInterrupt):
        train(interrupted.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
              on_epoch_end=interrupt)
    resumed = scrambled(lora_model())
    result = train(resumed.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
                   resume=True, on_epoch_end=scores(resumed))
    assert result.epoch_metrics == expected


def interrupted_lora_run(encoded: data.EncodedDataset, tmp_path: Path) -> Path:
    """The checkpoint of a LoRA run stopped after its second step."""
    checkpoint = tmp_path / "checkpoint.pt"
    train(lora_model().model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
          stop_after_step=2)
    return checkpoint


def test_resuming_with_other_settings_is_refused(
    encoded: data.EncodedDataset, tmp_path: Path
) -> None:
    checkpoint = interrupted_lora_run(encoded, tmp_path)
    other = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3, seed=5, checkpoint_every=2)
    with pytest.raises(ConfigError, match="train.learning_rate: 0.005 in the checkpoint"):
        train(lora_model().model, encoded, other, progress=False, checkpoint_path=checkpoint,
              resume=True)


def test_resuming_with_other_trainable_tensors_names_a_few_in_a_short_message(
    encoded: data.EncodedDataset, tmp_path: Path
) -> None:
    from transformers import BertForSequenceClassification

    checkpoint = interrupted_lora_run(encoded, tmp_path)
    other = prepare_model(BertForSequenceClassification(tiny_bert_config()),
                          MethodSpec("lora", rank=3))
    with pytest.raises(ConfigError) as refused:
        train(other.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
              resume=True)
    message = str(refused.value)
    assert len(message) < 600, message
    assert "18 trainable tensors in the checkpoint, 18 now; 16 of another shape: " in message
    assert message.count("lora_A") <= 3 and "and 13 more" in message


def test_a_short_lora_run_lowers_the_loss_and_beats_chance(encoded: data.EncodedDataset) -> None:
    prepared = lora_model(dropout=0.0)
    config = TrainConfig(epochs=8, batch_size=16, learning_rate=2e-2, seed=0)
    result = train(prepared.model, encoded, config, progress=False,
                   head_parameter_names=prepared.head_parameter_names())
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-6:]) / 6 < 0.6 * sum(losses[:6]) / 6
    predictions = evaluate(prepared.model, encoded)
    accuracy = sum(p == y for p, y in zip(predictions.predicted_classes, predictions.labels))
    assert accuracy / len(encoded) > 0.8


def first_step_gradients(encoded: data.EncodedDataset, config: TrainConfig):
    """Loss history and the gradients seen by the optimizer at its first step."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen: list[list[torch.Tensor]] = []

    def record(optimizer, args, kwargs):
        if not seen:
            seen.append([p.grad.clone() for g in optimizer.param_groups for p in g["params"]])

    handle = register_optimizer_step_pre_hook(record)
    try:
        result = train(lora_model(dropout=0.0).model, encoded, config, progress=False)
    finally:
        handle.remove()
    return result, seen[0]


def test_gradient_accumulation_gives_the_gradient_of_the_whole_step(
    encoded: data.EncodedDataset,
) -> None:
    single = TrainConfig(epochs=1, batch_size=32, learning_rate=1e-2)
    split = TrainConfig(epochs=1, batch_size=10, gradient_accumulation=3, learning_rate=1e-2)
    whole, whole_gradients = first_step_gradients(
        encoded, TrainConfig(epochs=1, batch_size=30, learning_rate=1e-2))
    parts, part_gradients = first_step_gradients(encoded, split)
    assert whole.steps == parts.steps == 3
    assert parts.history[0]["loss"] == pytest.approx(whole.history[0]["loss"], rel=1e-5)
    expected = torch.cat([g.flatten() for g in whole_gradients])
    got = torch.cat([g.flatten() for g in part_gradients])
    # float32 sums over differently padded batches agree up to rounding
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert single.examples_per_step == 32 and split.examples_per_step == 30


def test_history_records_the_learning_rate_each_step_used(
    encoded: data.EncodedDataset,
) -> None:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    used: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: used.append(optimizer.param_groups[0]["lr"]))
    config = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-2, warmup_ratio=0.0)
    try:
        result = train(lora_model(dropout=0.0).model, encoded, config, progress=False)
    finally:
        handle.remove()
    # 6 steps without warm-up: the first step runs at the full rate, the last at 1/6 of it
    assert used == pytest.approx([1e-2 * (6 - step) / 6 for step in range(6)])
    assert [entry["learning_rate"] for entry in result.history] == used


def test_evaluation_returns_dataset_order_despite_length_batching(
    encoded: data.EncodedDataset,
) -> None:
    prepared = lora_model()
    batched = evaluate(prepared.model, encoded, batch_size=7)
    one_by_one = [evaluate(prepared.model, encoded, batch_size=64).logits[i] for i in (0, 5)]
    torch.testing.assert_close(batched.logits[0], one_by_one[0])
    torch.testing.assert_close(batched.logits[5], one_by_one[1])
    assert batched.labels == encoded.labels
    assert prepared.model.training  # evaluate restores the mode


def test_head_learning_rate_gets_its_own_group(encoded: data.EncodedDataset) -> None:
    prepared = lora_model()
    config = TrainConfig(epochs=1, batch_size=45, learning_rate=1e-3, head_learning_rate=0.5,
                         warmup_ratio=0.0)
    head = {n: p.detach().clone() for n, p in prepared.trainable_parameters()
            if n in prepared.head_parameter_names()}
    train(prepared.model, encoded, config, progress=False,
          head_parameter_names=prepared.head_parameter_names())
    moved = [
        (dict(prepared.trainable_parameters())[n].detach() - before).abs().max().item()
        for n, before in head.items()
    ]
    assert min(moved) > 0.05  # Adam moves each weight by about lr per step


def test_schedule_order_and_memory() -> None:
    factor = linear_schedule(warmup=4, total=12)
    assert [factor(s) for s in (0, 2, 4, 8, 12, 13)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    assert epoch_order(50, seed=1, epoch=0) == epoch_order(50, seed=1, epoch=0)
    assert epoch_order(50, seed=1, epoch=0) != epoch_order(50, seed=1, epoch=1)
    # 64 MB: above glibc's largest mmap threshold (32 MiB), so the block is
    # always fresh pages, never heap memory that an earlier test freed and
    # that is still resident; no garbage collection frees memory inside the block
    release_free_memory()
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(16_000_000)
        block += 1
    assert memory.peak_bytes is not None and memory.peak_bytes >= 32_000_000


def test_checkpoints_are_written_atomically_and_checked_on_load(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"format": 1, "step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(path)["step"] == 3
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable qpeft checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, {"format": 99})
    with pytest.raises(ConfigError, match="not a qpeft checkpoint of format 1"):
        load_checkpoint(path)


@pytest.mark.parametrize("setting, message", [
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"eval_batch_size": 0}, "--eval-batch-size must be at least 1, not 0"),
    ({"learning_rate": 0}, "--lr must be positive"),
    # a negative warm-up made the rate grow without bound (step / max(warmup, 1) = step)
    ({"warmup_steps": -5}, "warm-up steps must be 0 or more, not -5"),
    ({"checkpoint_every": 0}, "checkpoints must come every 1 or more steps, not 0"),
    ({"max_grad_norm": 0}, "clipping norm must be positive .* not 0"),
    ({"weight_decay": -0.1}, "weight decay must be 0 or more, not -0.1"),
])
def test_bad_settings_are_refused(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**setting)


def test_training_with_nothing_trainable_is_refused(encoded: data.EncodedDataset) -> None:
    prepared = lora_model()
    for _, parameter in prepared.trainable_parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        train(prepared.model, encoded, CONFIG, progress=False)


def test_diverging_loss_stops_with_advice(encoded: data.EncodedDataset) -> None:
    prepared = lora_model()
    with pytest.raises(ConfigError, match=r"loss became nan at step 1; lower the learning rate"):
        train(prepared.model, encoded, CONFIG, progress=False,
              compute_loss=lambda outputs, batch: outputs.loss * float("nan"))


def test_parameters_that_become_infinite_stop_training_with_advice(
    encoded: data.EncodedDataset,
) -> None:
    prepared = lora_model()
    config = TrainConfig(epochs=1, batch_size=16, warmup_steps=0)
    for _, parameter in prepared.trainable_parameters():  # an overflowing step, as a huge rate
        parameter.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(DivergenceError, match=r"trained parameters became NaN or infinite at "
                                              r"step 1 .*lower the learning rate \(--rate\)"):
        train(prepared.model, encoded, config, progress=False, rate_option="--rate")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_outputs_that_are_not_finite_are_refused_not_scored(
    encoded: data.EncodedDataset, value: float
) -> None:
    """The argmax of NaN logits is class 0: scoring them would report an accuracy."""
    prepared = lora_model()
    with torch.no_grad():
        prepared.model.base_model.model.classifier.modules_to_save.default.bias[1] = value
    message = r"outputs \(test\) are NaN or infinite, so they cannot be scored.*\(--lr\)"
    with pytest.raises(DivergenceError, match=message):
        evaluate(prepared.model, encoded, batch_size=32, description="test")


@pytest.mark.parametrize("name", ["xpu", "hpu", "meta", "xla", "nonsense", "cuda:99"])
def test_only_the_documented_devices_that_are_present_are_accepted(name: str) -> None:
    """torch knows xpu, hpu and meta, which failed only after the run had started."""
    from qpeft.train.loop import resolve_device

    with pytest.raises(ConfigError, match=r"not supported|unknown device|no CUDA GPU|names GPU"):
        resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_index_beyond_the_visible_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from qpeft.train.loop import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device cuda:2 names GPU 2, but 2 CUDA GPU\(s\) are "
                                          r"visible \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_a_head_learning_rate_that_cannot_train_is_refused(rate: float) -> None:
    with pytest.raises(ConfigError, match="head learning rate .* must be positive and finite"):
        TrainConfig(head_learning_rate=rate)
    with pytest.raises(ConfigError, match="--lr must be positive and finite"):
        TrainConfig(learning_rate=rate)


def test_a_resumed_run_reports_the_highest_peak_of_its_parts(
    encoded: data.EncodedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peaks = iter([7_000_000] * 100)
    monkeypatch.setattr(PeakMemory, "so_far", lambda self: next(peaks))
    checkpoint = tmp_path / "checkpoint.pt"
    first = lora_model()
    part = train(first.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
                 stop_after_step=5)
    assert part.peak_memory_bytes == 7_000_000
    peaks = iter([1_000] * 100)  # the resumed part adds less
    second = lora_model()
    resumed = train(second.model, encoded, CONFIG, progress=False, checkpoint_path=checkpoint,
                    resume=True)
    assert resumed.completed and resumed.peak_memory_bytes == 7_000_000
