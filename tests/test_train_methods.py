"""Method specs, trainable parameters and their exact counts, adapter files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import qpeft
from qpeft.errors import ConfigError
from qpeft.train.methods import (
    DEFAULT_TARGETS,
    MethodSpec,
    default_targets,
    matching_modules,
    prepare_model,
)
from qpeft.train.testing import tiny_bert_config

HIDDEN, LAYERS, CLASSES = 32, 2, 3
HEAD = HIDDEN * CLASSES + CLASSES


pytestmark = pytest.mark.usefixtures("one_thread")


def bert():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


def model_size(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_specs_parse_with_aliases_and_fill_defaults() -> None:
    assert MethodSpec.parse("qpeft:K=8,L=3,ansatz=pauli,alpha=2") == MethodSpec(
        "qpeft", rank=8, layers=3, ansatz="pauli", alpha=2.0)
    assert MethodSpec.parse(" LoRA : r = 4 ").resolved() == MethodSpec(
        "lora", rank=4, alpha=8.0, learning_rate=2e-3)
    assert MethodSpec.parse("boft").resolved().label == "boft b=4 m=1"
    assert MethodSpec.parse("qpeft:K=4,L=2").resolved().slug == "qpeft-K4-L2"
    assert MethodSpec.parse("head:lr=0.1").resolved().learning_rate == 0.1
    # the head's own learning rate: qpeft's default, or given; None = the method's rate
    assert MethodSpec.parse("qpeft").resolved().head_learning_rate == 2e-2
    assert MethodSpec.parse("qpeft:head_lr=5e-3").resolved().head_learning_rate == 5e-3
    assert MethodSpec.parse("lora").resolved().head_learning_rate is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("adapter", "unknown method 'adapter'"),
        ("lora:r", "cannot read 'r'"),
        ("lora:size=4", "cannot read 'size=4'"),
        ("lora:r=four", "use numbers"),
        ("lora:r=0", "rank must be at least 1"),
        ("lora:dropout=1.5", "dropout must be in"),
        ("qpeft:head_lr=0", "learning rates must be positive"),
        ("oft:r=8", r"oft does not use r \(--rank\); leave it out \(the options of oft "
                    r"are block, lr, head_lr\)"),
        ("head:alpha=2,dropout=0.1", r"head does not use alpha \(--alpha\), dropout"),
        ("lora:L=2,ansatz=pauli", r"lora does not use L \(--layers\), ansatz"),
        ("boft:dropout=0.1", "boft does not use dropout"),
        ("lora:r=2,r=8", r"sets rank twice \(r=2 and r=8\); keep one of them"),
        ("qpeft:K=4,rank=4", r"sets rank twice \(K=4 and rank=4\)"),
        ("qpeft:head_lr=0.1,head_learning_rate=0.2", "sets head learning rate twice"),
    ],
)
def test_bad_specs_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MethodSpec.parse(text)


def test_targets_are_picked_only_when_every_name_matches() -> None:
    from qpeft.train.methods import pick_targets, unmatched_targets

    model = bert()
    assert unmatched_targets(model, ["query", "q_proj", "output.dense"]) == ["q_proj"]
    assert pick_targets(model, ("q_proj", "attention.output.dense"), ("query", "value")) == (
        "query", "value")
    assert pick_targets(model, ("q_proj", "attention.output.dense")) is None


def test_default_targets_are_the_attention_projections_of_bert() -> None:
    model = bert()
    assert default_targets(model) == DEFAULT_TARGETS["bert"]
    matched = matching_modules(model, default_targets(model))
    assert len(matched) == 4 * LAYERS
    assert "bert.encoder.layer.0.attention.output.dense" in matched
    assert "bert.encoder.layer.0.output.dense" not in matched


def test_head_only_trains_the_classifier() -> None:
    prepared = prepare_model(bert(), MethodSpec("head"))
    assert {n for n, _ in prepared.trainable_parameters()} == {
        "classifier.weight", "classifier.bias"}
    counts = prepared.parameter_counts()
    assert (counts.adapter, counts.head, counts.total) == (0, HEAD, model_size(bert()))


def test_full_trains_everything() -> None:
    prepared = prepare_model(bert(), MethodSpec("full"))
    counts = prepared.parameter_counts()
    assert counts.trainable == counts.total == model_size(bert())
    assert counts.head == HEAD


@pytest.mark.parametrize("rank", [1, 4])
def test_lora_count_is_rank_times_widths_per_target(rank: int) -> None:
    prepared = prepare_model(bert(), MethodSpec("lora", rank=rank))
    counts = prepared.parameter_counts()
    assert counts.adapter == 4 * LAYERS * rank * (HIDDEN + HIDDEN)
    assert counts.head == HEAD
    # peft's frozen copy of the head is not counted as a model weight
    assert counts.total == model_size(bert()) + counts.adapter
    assert prepared.head_parameter_names() == {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    }


def test_orthogonal_peft_methods_build_and_train_a_step() -> None:
    for spec in (MethodSpec("oft", block_size=8), MethodSpec("boft", block_size=4)):
        prepared = prepare_model(bert(), spec)
        counts = prepared.parameter_counts()
        assert 0 < counts.adapter < counts.total
        before = {n: p.detach().clone() for n, p in prepared.trainable_parameters()}
        ids = torch.tensor([[2, 5, 6, 3]])
        prepared.model(input_ids=ids, labels=torch.tensor([1])).loss.backward()
        torch.optim.SGD([p for _, p in prepared.trainable_parameters()], lr=1.0).step()
        changed = [n for n, p in prepared.trainable_parameters() if not torch.equal(before[n], p)]
        assert any("classifier" not in name for name in changed), spec.label


def test_unmatched_targets_and_bad_block_sizes_are_explained() -> None:
    with pytest.raises(ConfigError, match=r"no module .* matches the targets q_proj.*--targets"):
        prepare_model(bert(), MethodSpec("lora"), targets=["q_proj"])
    # a misspelt target among good ones is refused, not dropped
    with pytest.raises(ConfigError, match=r"matches the targets valeu, kye \(of --targets "
                                          r"query,valeu,kye; each target must match\)"):
        prepare_model(bert(), MethodSpec("lora"), targets=["query", "valeu", "kye"])
    with pytest.raises(ConfigError, match=r"matches the targets valeu \("):
        prepare_model(bert(), MethodSpec("qpeft", rank=2), targets=["query", "valeu"])
    with pytest.raises(ConfigError, match="oft block size 5 does not divide the layer width 32"):
        prepare_model(bert(), MethodSpec("oft", block_size=5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="peft may build its BOFT extension here")
def test_boft_butterfly_factor_without_peft_extension_is_refused() -> None:
    with pytest.raises(ConfigError, match="butterfly factor 2 only with its CUDA extension"):
        prepare_model(bert(), MethodSpec("boft", block_size=4, butterfly_factor=2))


def test_saved_adapter_holds_exactly_the_trainable_tensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    prepared = prepare_model(bert(), MethodSpec("lora", rank=2))
    with torch.no_grad():
        for _, parameter in prepared.trainable_parameters():
            parameter.add_(0.5)
    size = prepared.save_adapter(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert size == sum(p.stat().st_size for p in (tmp_path / "adapter").iterdir())
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    state = prepared.trainable_state()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[name], state[name]) for name in state)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["method"]["rank"] == 2 and config["heads"] == ["classifier"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no staging folder left


class FakeQPeftConfig:
    def __init__(self, **options):
        self.options = options


def test_qpeft_method_passes_its_settings_to_get_qpeft_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received = {}

    def fake_get_qpeft_model(model, config):
        received.update(config.options)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("classifier"))
        return model

    monkeypatch.setattr(qpeft, "QPeftConfig", FakeQPeftConfig, raising=False)
    monkeypatch.setattr(qpeft, "get_qpeft_model", fake_get_qpeft_model, raising=False)
    prepared = prepare_model(bert(), MethodSpec.parse("qpeft:K=4,L=2,ansatz=pauli,alpha=3"))
    assert received == {
        "target_modules": list(DEFAULT_TARGETS["bert"]), "rank": 4, "layers": 2,
        "modules_to_save": ["classifier"], "ansatz": "pauli", "alpha": 3.0,
    }
    assert prepared.spec.label == "qpeft K=4 L=2 pauli"
    received.clear()
    prepare_model(bert(), MethodSpec.parse("qpeft:K=4,dropout=0.25"))
    assert received["dropout"] == 0.25


def test_qpeft_method_trains_counts_and_saves_with_the_real_adapters(tmp_path: Path) -> None:
    prepared = prepare_model(bert(), MethodSpec("qpeft", rank=2, layers=1))
    counts = prepared.parameter_counts()
    assert counts.head == HEAD
    assert counts.adapter == sum(
        p.numel() for n, p in prepared.trainable_parameters() if "classifier" not in n)
    assert 0 < counts.adapter < 4 * LAYERS * 2 * (HIDDEN + HIDDEN)  # fewer than LoRA r=2
    before = prepared.trainable_state()
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 8, 3]])
    optimizer = torch.optim.SGD([p for _, p in prepared.trainable_parameters()], lr=0.5)
    for _ in range(2):
        prepared.model(input_ids=ids, labels=torch.tensor([1, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = prepared.trainable_state()
    assert any(not torch.equal(before[n], after[n]) for n in before if "classifier" not in n)
    size = prepared.save_adapter(tmp_path / "adapter")
    assert size == sum(p.stat().st_size for p in (tmp_path / "adapter").iterdir())


def test_a_file_ansatz_gives_a_slug_without_separators_one_per_path() -> None:
    slugs = {MethodSpec.parse(f"qpeft:K=2,ansatz={path}").slug
             for path in ("../../he.py", "he.py", "/x/he.py", "a\\he.py")}
    assert len(slugs) == 4
    assert all("/" not in slug and "\\" not in slug and ".." not in slug for slug in slugs)
    assert MethodSpec.parse("qpeft:K=2,L=1,ansatz=pauli").slug == "qpeft-K2-L1-pauli"


def test_a_lora_rank_above_a_targets_width_is_refused() -> None:
    prepare_model(bert(), MethodSpec("lora", rank=HIDDEN))  # the full width is allowed
    with pytest.raises(ConfigError, match=rf"LoRA rank r={HIDDEN + 1} is larger than .* "
                                          rf"so r <= {HIDDEN}"):
        prepare_model(bert(), MethodSpec("lora", rank=HIDDEN + 1))


def test_a_heads_modules_are_not_lora_targets_for_the_rank_check() -> None:
    """A head layer that a target suffix also names (RoBERTa's classifier.out_proj,
    BART's classification_head.out_proj) is trained in full, not adapted."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, num_labels=2))
    model.qpeft_new_modules = ("classifier",)
    prepared = prepare_model(model, MethodSpec("lora", rank=4), ["query", "out_proj"])
    assert prepared.parameter_counts().adapter == 4 * (32 + 32)  # the one query layer only
