"""QPeftModel on tiny BERT and GPT-2 models built from transformers configs."""

from __future__ import annotations

import contextlib
import io
import re
from unittest import mock

import peft
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as transformers_logging

import qpeft
from qpeft.adapters import QPeftConfig, QPeftLinear, QPeftModel, get_qpeft_model
from qpeft.adapters.frames import compiled_frame
from qpeft.errors import ConfigError

transformers_logging.set_verbosity_error()

BERT_TARGETS = ["query", "key", "value", "attention.output.dense"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """Hidden 48 (= 3·2⁴, not a power of two), intermediate 96, 2 layers, 3 labels."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=96,
                        max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """n_embd 24 (= 3·2³), 2 layers; c_attn maps 24 → 72, mlp.c_fc 24 → 96."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_embd=24, n_layer=2, n_head=4, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tokens(batch: int = 4, length: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def perturb(model: QPeftModel, scale: float = 0.5) -> None:
    """Move every adapter value away from its initial value (as training would)."""
    with torch.no_grad():
        for layer in model.qpeft_layers().values():
            for adapter in layer.qpeft_lambda:
                for parameter in layer.adapter_parameters(adapter):
                    parameter.add_(scale * torch.randn_like(parameter))


def frame_parameter_count(model: QPeftModel, adapter: str = "default") -> int:
    """Σ over adapted layers of P_out + P_in + K (closed form from the circuits)."""
    total = 0
    for layer in model.qpeft_layers(adapter).values():
        specs = layer.frame_specs[adapter]
        total += specs["out"].num_parameters + specs["in"].num_parameters + layer.rank[adapter]
    return total


# -- wrapping ----------------------------------------------------------------------------------
def test_bert_output_at_init_equals_the_base_model():
    ids = tokens()
    reference = tiny_bert()(ids).logits
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=4,
                                                     modules_to_save=["classifier"]))
    assert len(model.qpeft_layers()) == 8
    assert torch.equal(model(ids).logits, reference)


def test_gpt2_conv1d_output_at_init_equals_the_base_model():
    ids = tokens()
    reference = tiny_gpt2()(ids).logits
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules="all-linear", rank=4))
    names = set(model.qpeft_layers())
    assert "lm_head" not in names and "transformer.h.0.mlp.c_fc" in names
    assert torch.equal(model(ids).logits, reference)


@pytest.mark.parametrize("rank", range(1, 9))
def test_the_update_at_init_is_exactly_zero_for_every_rank(rank):
    ids = tokens()
    with torch.no_grad():
        for factory, targets in ((tiny_bert, BERT_TARGETS), (tiny_gpt2, "all-linear")):
            reference = factory()(ids).logits
            model = get_qpeft_model(factory(), QPeftConfig(target_modules=targets, rank=rank))
            assert torch.equal(model(ids).logits, reference)
        layer = QPeftLinear(torch.nn.Linear(48, 48), rank=rank)
        h = torch.randn(40, 48, generator=torch.Generator().manual_seed(rank))
        assert torch.equal(layer(h), layer.base_layer(h))


def test_trainable_count_is_the_closed_form_and_peft_format():
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=4,
                                                     layers=2, modules_to_save=["classifier"]))
    circuit = qpeft.ansatz.for_dimension(48, layers=2)
    head = 48 * 3 + 3
    expected = 8 * (2 * circuit.num_parameters + 4) + head
    assert frame_parameter_count(model) == 8 * (2 * circuit.num_parameters + 4)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == expected
    assert total == sum(p.numel() for p in tiny_bert().parameters()) + expected
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model.print_trainable_parameters()
    assert printed.getvalue() == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}\n"
    )


def test_only_adapters_and_saved_modules_are_trainable():
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2,
                                                     modules_to_save=["classifier"]))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(("qpeft_" in n) or (".modules_to_save.default." in n) for n in names)


def test_layers_to_transform_and_exclude_modules():
    config = QPeftConfig(target_modules=["query", "value"], rank=2, layers_to_transform=[1])
    model = get_qpeft_model(tiny_bert(), config)
    assert sorted(model.qpeft_layers()) == [
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"
    ]
    blocks = torch.nn.Module()  # the layer list at the top: "layers.0.fc", "layers.1.fc"
    blocks.layers = torch.nn.ModuleList(torch.nn.Sequential() for _ in range(2))
    for block in blocks.layers:
        block.fc = torch.nn.Linear(8, 8)
    config = QPeftConfig(target_modules=["fc"], rank=2, layers_to_transform=1)
    assert list(get_qpeft_model(blocks, config).qpeft_layers()) == ["layers.1.fc"]
    config = QPeftConfig(target_modules="all-linear", rank=2, exclude_modules=["dense"])
    names = get_qpeft_model(tiny_bert(), config).qpeft_layers()
    assert names and not any(n.endswith("dense") for n in names)
    # with a string target the layer filter would be ignored: refused, as in peft
    for target in ("all-linear", r".*\.query"):
        with pytest.raises(ConfigError, match="layers_to_transform cannot be used when"):
            get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=target, rank=2,
                                                     layers_to_transform=[0]))
        with pytest.raises(ConfigError, match="layers_pattern cannot be used when"):
            get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=target, rank=2,
                                                     layers_pattern="layer"))


def test_an_adapter_saved_with_an_ignored_layer_filter_still_loads(tmp_path):
    """Saved before the filter was refused: its module list says what it adapted."""
    import json

    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules="all-linear", rank=2))
    perturb(model)
    model.save_pretrained(tmp_path)
    config = tmp_path / "adapter_config.json"
    document = json.loads(config.read_text())
    document["layers_to_transform"] = [0]
    config.write_text(json.dumps(document))
    loaded = QPeftModel.from_pretrained(tiny_bert(), tmp_path)
    assert loaded.qpeft_layers().keys() == model.qpeft_layers().keys()


# -- training ----------------------------------------------------------------------------------
def test_training_lowers_the_loss_moves_everything_and_keeps_frames_orthonormal():
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules=["c_attn", "c_proj"],
                                                     rank=4, modules_to_save=["ln_f"]))
    model.train()
    ids = tokens(batch=8, length=12)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.Adam(trainable.values(), lr=2e-2)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01
    assert all(not torch.equal(start[n], p) for n, p in trainable.items())
    for layer in model.qpeft_layers().values():
        U, V = layer.frames("default")
        eye = torch.eye(4)
        torch.testing.assert_close(U.T @ U, eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(V.T @ V, eye, atol=1e-5, rtol=0)


def test_frames_are_computed_in_one_call_per_circuit_group_and_cached():
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS + ["dense"],
                                                     rank=4))
    layer = next(iter(model.qpeft_layers().values()))
    # widths 48 and 96 → two circuits; every side of every layer is one of them
    specs = {s.group_key: s for lay in model.qpeft_layers().values()
             for s in lay.frame_specs["default"].values()}
    assert len(specs) == 2
    calls = []
    handles = [
        compiled_frame(spec, torch.device("cpu"), torch.float32).register_forward_hook(
            lambda module, args, out: calls.append(tuple(args[0].shape)))
        for spec in specs.values()
    ]
    try:
        ids = tokens()
        model.train()
        model(ids)
        # 16 sides of width 48 (8 attention layers × 2, the intermediate/output
        # dense layers give 2 more) … all batched: one call per group (plus the
        # frozen initial frames, computed once)
        trainable_calls = len(calls)
        assert trainable_calls == 4  # 2 groups × (trainable + initial)
        calls.clear()
        model(ids)
        assert len(calls) == 2  # initial frames are cached
        model.eval()
        with torch.no_grad():
            calls.clear()
            first = model(ids).logits
            second = model(ids).logits
            assert len(calls) == 2 and torch.equal(first, second)  # cached on the 2nd pass
            layer.qpeft_lambda["default"].add_(0.0)  # a version bump (no value change)
            calls.clear()
            model(ids)
            assert len(calls) == 0  # λ is not a frame input: frames still valid
            layer.qpeft_theta_in["default"].add_(0.1)
            model(ids)
            assert len(calls) == 2
    finally:
        for handle in handles:
            handle.remove()


def test_bank_frames_equal_per_layer_frames():
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules="all-linear", rank=3))
    perturb(model)
    ids = tokens()
    batched = model(ids).logits
    model.frame_bank.detach()  # every layer now computes its own frames
    torch.testing.assert_close(model(ids).logits, batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["offset", "zero_lambda"])
def test_bank_factors_are_the_per_layer_factors_in_one_batch_per_shape(init: str):
    """GPT-2's c_attn (24 → 72), c_proj (24 → 24) and c_fc (24 → 96) give three
    shapes; one layer has its own active rank and another its own λ
    quantization, so the stacked λ differ per layer."""
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules="all-linear", rank=3,
                                                     init=init, alpha=2.0))
    perturb(model)
    layers = list(model.qpeft_layers().values())
    layers[0].set_active_rank("default", 2)
    layers[1].set_quantize_bits("default", 4)
    seen: dict = {}
    original = QPeftLinear.factors

    def record(layer, adapter):
        seen[id(layer)] = original(layer, adapter)
        return seen[id(layer)]

    ids = tokens()
    with mock.patch.object(QPeftLinear, "factors", record):
        logits = model(ids).logits
    assert len(seen) == len(layers)
    model.frame_bank.detach()  # every layer now builds its own factors
    for layer in layers:
        left, right = seen[id(layer)]
        own_left, own_right = layer.factors("default")
        torch.testing.assert_close(left, own_left, atol=1e-6, rtol=0)
        torch.testing.assert_close(right, own_right, atol=1e-6, rtol=0)
        torch.testing.assert_close(right @ left.T, (layer.get_delta_weight("default").T
                                                    if layer.transposed else
                                                    layer.get_delta_weight("default")),
                                   atol=1e-6, rtol=0)
    torch.testing.assert_close(model(ids).logits, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_gives_the_gradients_of_a_plain_step(reentrant: bool):
    """transformers' gradient checkpointing recomputes each layer in the backward
    pass: non-reentrant (its default) compares the tensors saved then with those
    saved in the forward pass, and reentrant runs the forward pass without
    gradients first. Two steps with an optimizer step between them."""
    def gradients(checkpointing: bool) -> list[dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        base = BertForSequenceClassification(BertConfig(
            vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=96, num_labels=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0))
        model = get_qpeft_model(base, QPeftConfig(target_modules=BERT_TARGETS, rank=4))
        perturb(model, 0.3)
        if checkpointing:
            model.base_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            model.base_model.enable_input_require_grads()
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        out = []
        for step in range(2):
            optimizer.zero_grad()
            model(input_ids=tokens(batch=2, length=8, seed=step),
                  labels=torch.tensor([0, 2])).loss.backward()
            out.append({n: p.grad.clone() for n, p in model.named_parameters()
                        if p.requires_grad})
            optimizer.step()
        return out

    for checked, plain in zip(gradients(True), gradients(False)):
        assert checked.keys() == plain.keys() and len(plain) == 24
        for name in plain:
            torch.testing.assert_close(checked[name], plain[name], atol=1e-6, rtol=0)


class _CheckpointedNet(torch.nn.Module):
    """``a`` runs inside a checkpoint, and (``shared``) also before it."""

    def __init__(self, reentrant: bool | None, shared: bool) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.reentrant, self.shared = reentrant, shared

    def block(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            x = torch.tanh(self.a(x))
        if self.reentrant is None:
            return self.b(self.block(x))
        return self.b(torch.utils.checkpoint.checkpoint(self.block, x,
                                                        use_reentrant=self.reentrant))


@pytest.mark.parametrize("shared", [False, True], ids=["inside", "inside-and-outside"])
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointed_layers_with_a_pass_in_between_give_the_plain_gradients(
        reentrant: bool, shared: bool):
    """A no-grad pass between the forward and the backward pass, a layer used
    inside and outside the checkpoint, then an optimizer step and a layer
    called inside another backward pass: every gradient is the one without
    checkpointing, computed from the parameters of its own pass."""
    # the input requires grad: a reentrant checkpoint trains only through inputs that do
    x, x2 = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8)

    def run(mode: bool | None) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = get_qpeft_model(_CheckpointedNet(mode, shared),
                                QPeftConfig(target_modules=["a", "b"], rank=2))
        perturb(model, 0.3)
        loss = model(x).pow(2).sum()
        with torch.no_grad():
            model(x2)
        with torch.no_grad(), model.disable_adapter():  # a reference pass, as DPO takes
            model(x2)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.mul_(2.0)
        # a layer called inside the backward pass of an unrelated graph
        layer = model.qpeft_layers()["a"]
        inner = x2.clone().requires_grad_()
        outer = (inner * 1.0).sum()

        def call_layer(gradient: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                out = layer(inner.detach().requires_grad_()).sum()
            return gradient + torch.autograd.grad(out, layer.qpeft_lambda["default"])[0].sum()

        hooked = inner.register_hook(call_layer)
        outer.backward()
        hooked.remove()
        return grads + [inner.grad.clone()]

    for checked, plain in zip(run(reentrant), run(None), strict=True):
        torch.testing.assert_close(checked, plain, atol=1e-6, rtol=0)


def test_each_adapted_layer_adds_no_more_operations_than_a_lora_layer():
    """The frames and the factors are built per circuit and per shape, so a
    training step's operations grow with the number of adapted layers no faster
    than LoRA's (counted as the tensor operations torch dispatches, views left
    out: on a GPU each is a kernel launch)."""
    from peft import LoraConfig, get_peft_model
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        views = {"view", "_unsafe_view", "transpose", "t", "expand", "unsqueeze", "squeeze",
                 "slice", "select", "permute", "detach", "alias", "unbind", "as_strided",
                 "split", "_reshape_alias", "_local_scalar_dense"}

        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func.overloadpacket.__name__ not in self.views
            return func(*args, **(kwargs or {}))

    def operations(method: str, layers: int) -> int:
        torch.manual_seed(0)
        base = BertForSequenceClassification(BertConfig(
            vocab_size=100, hidden_size=48, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=96, num_labels=3))
        if method == "qpeft":
            model = get_qpeft_model(base, QPeftConfig(target_modules=BERT_TARGETS, rank=4))
        else:
            model = get_peft_model(base, LoraConfig(r=4, target_modules=BERT_TARGETS))
        model.train()
        ids, labels = tokens(batch=2, length=8), torch.tensor([0, 2])
        model(input_ids=ids, labels=labels).loss.backward()  # first call: lazy set-up
        with Count() as counter:
            model(input_ids=ids, labels=labels).loss.backward()
        return counter.count

    per_layer = {method: (operations(method, 4) - operations(method, 2)) / 2
                 for method in ("qpeft", "lora")}
    assert per_layer["qpeft"] <= per_layer["lora"], per_layer


# -- merging -----------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", [tiny_bert, tiny_gpt2])
def test_merge_unmerge_and_merge_and_unload(factory):
    targets = BERT_TARGETS if factory is tiny_bert else ["c_attn", "c_proj", "c_fc"]
    model = get_qpeft_model(factory(), QPeftConfig(target_modules=targets, rank=4))
    perturb(model)
    ids = tokens()
    weights = {
        name: layer.base_layer.weight.detach().clone()
        for name, layer in model.qpeft_layers().items()
    }
    with torch.no_grad():
        unmerged = model(ids).logits
        model.merge_adapter()
        torch.testing.assert_close(model(ids).logits, unmerged, atol=1e-5, rtol=0)
        model.unmerge_adapter()
        for name, layer in model.qpeft_layers().items():
            torch.testing.assert_close(layer.base_layer.weight, weights[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(model(ids).logits, unmerged, atol=1e-5, rtol=0)
        plain = model.merge_and_unload()
        assert not any(isinstance(m, QPeftLinear) for m in plain.modules())
        torch.testing.assert_close(plain(ids).logits, unmerged, atol=1e-5, rtol=0)


def assert_a_refused_safe_merge_changes_nothing(model, layers_of, message: str) -> None:
    """Break the last adapted layer (the layers before it would be merged first):
    ``merge_adapter`` and ``merge_and_unload`` with ``safe_merge=True`` must both
    refuse with ``message`` ("{last}" is the broken layer's name) and leave every
    weight bit for bit, unmerged and wrapped."""
    layers = layers_of(model)
    last = list(layers)[-1]
    with torch.no_grad():
        layers[last].qpeft_lambda["default"].fill_(float("nan"))
    weights = {name: layer.base_layer.weight.detach().clone() for name, layer in layers.items()}
    for merge in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(ConfigError) as refused:
            merge(safe_merge=True)
        assert layers_of(model) == layers
        for name, layer in layers.items():
            assert torch.equal(layer.base_layer.weight, weights[name]), name
            assert not layer.merged, name
        assert re.search(message.format(last=re.escape(last)), str(refused.value))


def test_a_refused_safe_merge_leaves_every_layer_unmerged():
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=4))
    perturb(model)
    assert_a_refused_safe_merge_changes_nothing(model, QPeftModel.qpeft_layers,
                                                "{last}: .*nothing was merged")


def test_merging_an_adapter_the_model_does_not_hold_is_refused():
    """A typo in adapter_names would otherwise return the plain base model."""
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=4))
    perturb(model)
    for names in (["defualt"], "default"):
        with pytest.raises(ConfigError, match="nothing was merged"):
            model.merge_and_unload(adapter_names=names)
        with pytest.raises(ConfigError, match="nothing was merged"):
            model.merge_adapter(names)
    assert not any(layer.merged for layer in model.qpeft_layers().values())


def test_disable_adapter_gives_the_base_outputs():
    ids = tokens()
    reference = tiny_bert()(ids).logits
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=4,
                                                     modules_to_save=["classifier"]))
    perturb(model)
    with torch.no_grad():
        model.get_submodule("base_model.classifier").modules_to_save["default"].weight.add_(1.0)
        adapted = model(ids).logits
        assert not torch.allclose(adapted, reference)
        with model.disable_adapter():
            assert torch.equal(model(ids).logits, reference)
        assert torch.equal(model(ids).logits, adapted)


def test_two_named_adapters_switch():
    ids = tokens()
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2))
    model.add_adapter("other", QPeftConfig(target_modules=["value"], rank=3, layers=1))
    assert model.active_adapter == "default"
    perturb(model)
    with torch.no_grad():
        first = model(ids).logits
        model.set_adapter("other")
        second = model(ids).logits
        assert not torch.allclose(first, second)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(n.endswith(".other") for n in trainable)
        model.set_adapter("default")
        assert torch.equal(model(ids).logits, first)
    with pytest.raises(ConfigError, match="no adapter named 'missing'"):
        model.set_adapter("missing")
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]


def test_forward_generate_and_attribute_passthrough():
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules=["c_attn"], rank=2))
    assert model.config is model.base_model.config
    assert model.get_base_model() is model.base_model
    out = model.generate(tokens(batch=1, length=4), max_new_tokens=3, do_sample=False,
                         pad_token_id=0)
    assert out.shape == (1, 7)


def test_active_rank_and_quantize_on_the_model():
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=4))
    perturb(model)
    model.set_active_rank(2)
    assert model.peft_config["default"].active_rank == 2
    for layer in model.qpeft_layers().values():
        assert layer.effective_lambda("default")[2:].abs().max() == 0
    model.quantize(3)
    for layer in model.qpeft_layers().values():
        assert layer.quantize_bits["default"] == 3


@pytest.mark.parametrize("change, match", [
    (lambda model: model.set_active_rank(10), "must not exceed rank"),
    (lambda model: model.set_active_rank(0), "positive integer"),
    (lambda model: model.quantize(99), "bits"),
    (lambda model: (model.merge_adapter(), model.quantize(3)), "is merged"),
    (lambda model: (model.merge_adapter(), model.set_active_rank(2)), "is merged"),
    (lambda model: model.quantize(3, adapter_name="nothere"), "no adapter named"),
], ids=["rank-too-large", "rank-zero", "bits-99", "quantize-merged", "rank-merged", "no-adapter"])
def test_a_refused_setting_leaves_config_and_layers_unchanged(change, match):
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=4))
    before = model.peft_config["default"].to_dict()
    with pytest.raises(ConfigError, match=match):
        change(model)
    assert model.peft_config["default"].to_dict() == before
    for layer in model.qpeft_layers().values():
        assert layer.quantize_bits["default"] is None
        assert layer.active_rank["default"] == 4


def test_cached_frames_follow_in_place_edits_and_invalidate_after_data_edits():
    ids = tokens()
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=4)).eval()
    perturb(model)
    thetas = [layer.qpeft_theta_out["default"] for layer in model.qpeft_layers().values()]

    def fresh_output():
        reference = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"],
                                                             rank=4)).eval()
        reference.load_state_dict(model.state_dict())
        return reference(ids).logits

    with torch.no_grad():
        model(ids)  # fills the cache
        for theta in thetas:
            theta.add_(0.5)
        assert torch.equal(model(ids).logits, fresh_output())
        for theta in thetas:
            theta.data.add_(0.5)  # a separate version counter: the documented limitation
        model.frame_bank.invalidate()
        assert torch.equal(model(ids).logits, fresh_output())


@pytest.mark.parametrize("init", ["offset", "zero_lambda"])
def test_frames_cached_under_inference_mode_do_not_reach_a_later_backward(init):
    ids = tokens()
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=4,
                                                     init=init))
    with torch.inference_mode():
        model(ids)  # an evaluation pass before training
    model(ids).logits.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.requires_grad_(False)  # frozen: the no-grad cache is kept, then a gradient is asked
    with torch.inference_mode():
        model(ids)
    embeddings = model.bert.embeddings.word_embeddings(ids).detach().requires_grad_()
    model(inputs_embeds=embeddings).logits.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


# -- bad input ---------------------------------------------------------------------------------
def test_targets_that_match_nothing_list_the_linear_layers():
    with pytest.raises(ConfigError, match="matches no linear layer.*query.*value") as error:
        get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["q_proj"], rank=2))
    assert "dense" in str(error.value)
    with pytest.raises(ConfigError, match="target_modules is not set"):
        get_qpeft_model(tiny_bert(), QPeftConfig(rank=2))
    with pytest.raises(ConfigError, match="not a linear|Quantum-PEFT adapts"):
        get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["attention"], rank=2))


def test_wrapping_twice_is_refused():
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2))
    with pytest.raises(ConfigError, match="already holds"):
        get_qpeft_model(model.base_model, QPeftConfig(target_modules=["value"], rank=2))


def test_rank_too_large_fails_before_any_change():
    base = tiny_gpt2()
    with pytest.raises(ConfigError, match="K <= 24"):
        get_qpeft_model(base, QPeftConfig(target_modules=["c_attn"], rank=30))
    assert not any(isinstance(m, QPeftLinear) for m in base.modules())


def test_config_errors():
    with pytest.raises(ConfigError, match="active_rank"):
        QPeftConfig(target_modules=["q"], rank=2, active_rank=3)
    with pytest.raises(ConfigError, match="newer"):
        QPeftConfig(target_modules=["q"], format_version=99)
    with pytest.raises(ConfigError, match="quantize_bits"):
        QPeftConfig(target_modules=["q"], quantize_bits=1)
    with pytest.raises(ConfigError, match="unknown init"):
        QPeftConfig(target_modules=["q"], init="zeros")
    with pytest.raises(ConfigError, match="unknown QPeftConfig field"):
        QPeftConfig.from_dict({"target_modules": ["q"], "r": 4})
    with pytest.raises(ConfigError, match=r"modules_to_save must be a list .*\['classifier'\]"):
        QPeftConfig(target_modules=["q"], modules_to_save="classifier")  # not 10 letters
    with pytest.raises(ConfigError, match="target_modules must be a list of module names"):
        QPeftConfig(target_modules=[0, 2])
    with pytest.raises(ConfigError, match="exclude_modules must be"):
        QPeftConfig(target_modules=["q"], exclude_modules=5)
    with pytest.raises(ConfigError, match="width 96"):
        get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["intermediate.dense"],
                                                 ansatz={48: "qudit"}))


def test_ansatz_by_width_and_user_circuits():
    circuit = qpeft.ansatz.for_dimension(48, layers=1, method="shannon")
    config = QPeftConfig(target_modules=["query", "intermediate.dense"], rank=2,
                         ansatz={48: circuit, 96: "cayley"})
    model = get_qpeft_model(tiny_bert(), config)
    layer = model.get_submodule("base_model.bert.encoder.layer.0.intermediate.dense")
    assert layer.frame_specs["default"]["in"].circuit == circuit
    assert layer.frame_specs["default"]["out"].mapping == "cayley"
    assert QPeftConfig.from_dict(config.to_dict()) == config


def _interrupted_pass(model: QPeftModel, ids: torch.Tensor, grad: bool) -> None:
    """A forward pass stopped by Ctrl-C inside the model: torch runs no forward
    hook for a KeyboardInterrupt, so the bank never hears that the pass ended."""
    def stop(*_):
        raise KeyboardInterrupt

    handle = model.base_model.bert.encoder.layer[1].register_forward_hook(stop)
    try:
        with torch.set_grad_enabled(grad), pytest.raises(KeyboardInterrupt):
            model(ids)
    finally:
        handle.remove()


def _reference_logits(model: QPeftModel, ids: torch.Tensor) -> torch.Tensor:
    fresh = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=3))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        return fresh(ids).logits


@pytest.mark.parametrize("grad", [False, True])
def test_a_pass_interrupted_by_ctrl_c_leaves_later_passes_right(grad):
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=3))
    perturb(model)
    ids = tokens()
    _interrupted_pass(model, ids, grad)
    with torch.no_grad():
        for layer in model.qpeft_layers().values():
            layer.qpeft_lambda["default"].mul_(3.0)
        expected = _reference_logits(model, ids)
        # a direct layer call and a merge, before any other pass, use the new values too
        layer = model.base_model.bert.encoder.layer[0].attention.self.query
        hidden = torch.randn(2, 5, 48)
        fresh_layer = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS,
                                                               rank=3))
        fresh_layer.load_state_dict(model.state_dict())
        fresh_query = fresh_layer.base_model.bert.encoder.layer[0].attention.self.query
        torch.testing.assert_close(layer(hidden), fresh_query(hidden), rtol=0, atol=0)
        model.merge_adapter()
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)
    # training goes on: each step builds its own graph (once "backward through the
    # graph a second time", reusing the interrupted pass's factors)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(ids).logits.square().sum().backward()
        optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, _reference_logits(model, ids),
                                   rtol=0, atol=0)


def test_a_pass_nested_in_a_pass_reuses_its_frames():
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=3))
    perturb(model)
    ids = tokens()
    inner = []
    bank = model.frame_bank
    refreshes = []
    refresh = bank.refresh
    bank.refresh = lambda: refreshes.append(None) or refresh()

    def nested(*_):
        if not inner:
            inner.append(None)
            inner[0] = model(ids).logits

    handle = model.base_model.bert.encoder.layer[0].register_forward_hook(nested)
    try:
        with torch.no_grad():
            outer = model(ids).logits
    finally:
        handle.remove()
    assert len(refreshes) == 1  # the nested pass is served by the outer pass's frames
    expected = _reference_logits(model, ids)
    torch.testing.assert_close(outer, expected, rtol=0, atol=0)
    torch.testing.assert_close(inner[0], expected, rtol=0, atol=0)
    with torch.no_grad():  # the bank counted both passes as ended
        for layer in model.qpeft_layers().values():
            layer.qpeft_lambda["default"].mul_(2.0)
        torch.testing.assert_close(model(ids).logits, _reference_logits(model, ids),
                                   rtol=0, atol=0)


def test_an_adapted_layer_passes_on_the_base_weight_and_bias():
    """T5-family models read ``self.wo.weight.dtype`` in their forward pass."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=100, d_model=24, d_ff=48, num_layers=1, num_heads=2, d_kv=12,
                      decoder_start_token_id=0)
    base = T5ForConditionalGeneration(config).eval()
    ids = tokens(2, 6)
    with torch.no_grad():
        expected = base(input_ids=ids, decoder_input_ids=ids).logits
    model = get_qpeft_model(base, QPeftConfig(target_modules=["wi", "wo"], rank=2))
    layer = model.base_model.encoder.block[0].layer[1].DenseReluDense.wo
    assert layer.weight is layer.base_layer.weight and layer.bias is None
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, decoder_input_ids=ids).logits, expected)


def test_the_output_projection_of_torch_multihead_attention_is_not_adapted():
    """nn.MultiheadAttention reads out_proj.weight and never calls out_proj."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32,
                                             batch_first=True)
    base = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False).eval()
    with pytest.raises(ConfigError, match="never calls it"):
        get_qpeft_model(base, QPeftConfig(target_modules=["out_proj"], rank=2))
    model = get_qpeft_model(base, QPeftConfig(target_modules="all-linear", rank=2))
    assert sorted(model.qpeft_layers()) == ["layers.0.linear1", "layers.0.linear2"]


def _tied_head_model(bridge: bool):
    targets = ["lm_head", "c_attn"]
    if bridge:
        from qpeft.adapters.peft_bridge import QPeftPeftConfig

        return peft.get_peft_model(tiny_gpt2(), QPeftPeftConfig(target_modules=targets, rank=2))
    return get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules=targets, rank=2))


@pytest.mark.parametrize("bridge", [False, True])
def test_merging_into_a_weight_tied_to_the_embedding_is_refused(bridge):
    """GPT-2's lm_head shares wte's weight: a merge would change the embedding too."""
    model = _tied_head_model(bridge)
    perturb_all(model)
    ids = tokens()
    embedding = model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        expected = model(ids).logits
    for merge in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(ConfigError, match="shared with transformer.wte.weight"):
            merge()
        assert torch.equal(model.get_input_embeddings().weight, embedding)
    # untied as the error says, the merge is exact
    head = next(m for name, m in model.named_modules() if name.endswith("lm_head"))
    head.base_layer.weight = torch.nn.Parameter(head.base_layer.weight.detach().clone())
    merged = model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(merged.get_input_embeddings().weight, embedding)


def perturb_all(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5 * torch.randn_like(parameter))


@pytest.mark.parametrize("take_out", ["merge_and_unload", "unload"])
def test_saving_after_the_layers_were_taken_out_is_refused_and_keeps_the_saved_adapter(
        tmp_path, take_out):
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=2))
    model.add_adapter("second", QPeftConfig(target_modules=["query"], rank=2))
    model.save_pretrained(tmp_path)
    saved = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    getattr(model, take_out)()
    with pytest.raises(ConfigError, match="no adapted layers left"):
        model.save_pretrained(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == saved
    QPeftModel.from_pretrained(tiny_bert(), tmp_path)  # the saved adapter still loads


@pytest.mark.parametrize("options, message", [
    ({"layers_to_transform": 2.5}, "layers_to_transform must be a layer index"),
    ({"layers_to_transform": ""}, "layers_to_transform must be a layer index"),
    ({"layers_to_transform": []}, "layers_to_transform must be a layer index"),
    ({"layers_to_transform": [0, -1]}, "layers_to_transform must be a layer index"),
    ({"alpha": 1e39}, "alpha must be a finite number"),
    ({"init_lambda": -1e39}, "init_lambda must be a finite number"),
    ({"alpha": 10**400}, "alpha must be a finite number"),
])
def test_config_values_of_the_wrong_type_or_range_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        QPeftConfig(target_modules=["query"], rank=2, **options)


def test_tie_weights_on_an_adapted_tied_head_ties_the_base_layer():
    """transformers' tie_weights sets lm_head.weight: that is the base layer's weight."""
    model = _tied_head_model(bridge=False)
    head = model.base_model.lm_head
    embedding = model.base_model.transformer.wte
    head.base_layer.weight = torch.nn.Parameter(head.base_layer.weight.detach().clone())
    model.base_model.tie_weights()
    assert head.base_layer.weight is embedding.weight and head.weight is embedding.weight
    assert "weight" not in head._parameters


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules"])
def test_an_invalid_regular_expression_is_a_config_error(field):
    options = {"target_modules": ["query"], field: r".*\.(query|value"}
    with pytest.raises(ConfigError, match=f"{field} .* is not a valid regular expression"):
        QPeftConfig(rank=2, **options)


@pytest.mark.parametrize("active_rank", [2.5, True, 0, 5])
def test_a_layer_checks_its_active_rank_as_the_config_does(active_rank):
    layer = QPeftLinear(torch.nn.Linear(8, 8), rank=4)
    with pytest.raises(ConfigError, match="active_rank must be an integer in 1..4"):
        layer.set_active_rank("default", active_rank)
    with pytest.raises(ConfigError, match="active_rank must be an integer in 1..4"):
        QPeftLinear(torch.nn.Linear(8, 8), rank=4, active_rank=active_rank)


def test_layers_given_twice_with_different_values_are_refused():
    """ansatz_options={"layers": 5} once overrode layers=2 silently (the saved
    configuration said 2)."""
    with pytest.raises(ConfigError, match="ansatz_options sets layers=5 but the configuration"):
        get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2, layers=2,
                                                 ansatz_options={"layers": 5}))
    same = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2, layers=2,
                                                    ansatz_options={"layers": 2}))
    assert same.get_nb_trainable_parameters() == get_qpeft_model(
        tiny_bert(), QPeftConfig(target_modules=["query"], rank=2)).get_nb_trainable_parameters()


def test_a_builder_without_a_width_option_says_so():
    with pytest.raises(ConfigError, match="takes neither a dimension nor a qubits option"):
        get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2,
                                                 ansatz="qutrit_ladder"))


@pytest.mark.parametrize("options, culprit", [
    ({"target_modules": ["classifier"], "modules_to_save": ["classifier"]}, "modules_to_save"),
    ({"target_modules": ["query"], "exclude_modules": ["query"]}, "exclude_modules"),
    ({"target_modules": ["query"], "layers_to_transform": [5]}, "layers_to_transform=[5]"),
])
def test_targets_that_the_filters_take_out_are_named_with_the_filter(options, culprit):
    """Not "matches no linear layer … its linear layers end in: <the very name>"."""
    with pytest.raises(ConfigError, match=f"names .* linear layer.*but {re.escape(culprit)}"):
        get_qpeft_model(tiny_bert(), QPeftConfig(rank=2, **options))


# -- names and options refused before any change -----------------------------------------------
@pytest.mark.parametrize("name", ["v1.0", "", "a/b", "a\\b", "training", "keys", 3, None])
def test_an_unusable_adapter_name_is_refused_before_any_change(name, tmp_path):
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="adapter name"):
        model.add_adapter(name, QPeftConfig(target_modules=["key"], rank=2))
    with pytest.raises(ConfigError, match="adapter name"):
        get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2),
                        adapter_name=name)
    model.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="adapter name"):
        model.load_adapter(tmp_path, name)
    with pytest.raises(ConfigError, match="adapter name"):
        QPeftModel.from_pretrained(tiny_bert(), tmp_path, adapter_name=name)
    assert list(model.peft_config) == ["default"]
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("options, match", [
    ({"trems": 8}, r"\['trems'\] are not options of mapping 'taylor'"),
    ({"dtype": torch.float64}, r"the adapter chooses dtype and device"),
    ({"terms": 0}, r"terms must be an int of at least 1"),
])
def test_mapping_options_are_checked_when_the_adapter_is_made(options, match):
    config = QPeftConfig(target_modules=["query"], rank=2, ansatz="taylor",
                         ansatz_options=options)
    with pytest.raises(ConfigError, match=match):
        get_qpeft_model(tiny_bert(), config)


def test_a_catch_all_builder_that_names_its_width_and_layers_is_used(tmp_path):
    path = tmp_path / "named.py"
    path.write_text("import qpeft\n"
                    "def build(dimension: int = 8, layers: int = 1, **extra):\n"
                    "    return qpeft.ansatz.for_dimension(dimension, layers=layers)\n")
    config = QPeftConfig(target_modules=["0"], rank=2, layers=2, ansatz=str(path))
    model = get_qpeft_model(torch.nn.Sequential(torch.nn.Linear(16, 16)), config)
    spec = model.base_model[0].frame_specs["default"]["out"]
    assert spec.circuit == qpeft.ansatz.for_dimension(16, layers=2)


def test_an_ansatz_builder_with_a_catch_all_is_refused(tmp_path):
    path = tmp_path / "catch_all.py"
    path.write_text("import qpeft\n"
                    "def build(**options):\n"
                    "    return qpeft.ansatz.pauli(qubits=options.get('qubits', 4),\n"
                    "                              layers=options.get('layers', 1))\n")
    config = QPeftConfig(target_modules=["0"], rank=2, layers=3, ansatz=str(path))
    with pytest.raises(ConfigError, match=r"takes \*\*options.*def build\(qubits"):
        get_qpeft_model(torch.nn.Sequential(torch.nn.Linear(16, 16)), config)


def test_modules_to_save_holding_another_adapters_layer_is_refused():
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2))
    config = QPeftConfig(target_modules=["key"], rank=2,
                         modules_to_save=["layer.0.attention"])
    with pytest.raises(ConfigError, match=r"holds the adapted layer "
                                          r"'bert\.encoder\.layer\.0\.attention\.self\.query'"):
        model.add_adapter("b", config)
    assert list(model.peft_config) == ["default"]
    assert not model.saved_modules()
    assert list(model.qpeft_layers("b")) == []
    itself = QPeftConfig(target_modules=["key"], rank=2,
                         modules_to_save=["layer.0.attention.self.query"])
    with pytest.raises(ConfigError, match=r"names 'bert\.encoder\.layer\.0\.attention\.self"
                                          r"\.query', which is an adapted layer of another"):
        model.add_adapter("b", itself)


# -- torch.export and torch.func ---------------------------------------------------------------
def small_adapted(init: str, seed: int = 0) -> QPeftModel:
    torch.manual_seed(seed)
    base = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.ReLU(), torch.nn.Linear(48, 24))
    model = get_qpeft_model(base, QPeftConfig(target_modules="all-linear", rank=4, init=init))
    perturb(model)
    return model


@pytest.mark.parametrize("init", ["offset", "zero_lambda"])
def test_an_exported_model_computes_the_eager_outputs_and_leaves_them_alone(init):
    from qpeft.adapters import frames

    frames.clear_compiled_cache()  # the export builds the compiled frames itself
    x = torch.randn(5, 24)
    model = small_adapted(init)
    with torch.no_grad():
        eager = model(x)
    for traced in (model, model.base_model):
        program = torch.export.export(traced, (x,))
        torch.testing.assert_close(program.module()(x), eager, atol=1e-6, rtol=0)
    with torch.no_grad():
        after = model(x)
    assert type(after) is torch.Tensor
    torch.testing.assert_close(after, eager, atol=0, rtol=0)
    other = small_adapted(init, seed=1)
    torch.export.export(other.base_model, (x,))  # nothing of the first export is left behind


@pytest.mark.parametrize("init", ["offset", "zero_lambda"])
def test_per_sample_gradients_through_torch_func_match_a_loop(init):
    from torch.func import functional_call, grad, vmap

    model = small_adapted(init)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    x, target = torch.randn(3, 24), torch.randn(3, 24)

    def loss(values, sample, wanted):
        out = functional_call(model, values, (sample[None],))
        return (out - wanted[None]).square().sum()

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(3):  # plain autograd, one sample at a time
        leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
        one = dict(zip(leaves, torch.autograd.grad(loss(leaves, x[i], target[i]),
                                                   list(leaves.values()))))
        for name in params:
            torch.testing.assert_close(batched[name][i], one[name], atol=1e-6, rtol=1e-5)


def test_an_ensemble_through_torch_func_matches_each_model():
    from torch.func import functional_call, stack_module_state, vmap

    models = [small_adapted("offset", seed) for seed in (0, 1)]
    params, buffers = stack_module_state(models)
    x = torch.randn(5, 24)

    def run(p, b, sample):
        return functional_call(models[0], (p, b), (sample,))

    with torch.no_grad():
        ensemble = vmap(run, in_dims=(0, 0, None))(params, buffers, x)
        for index, model in enumerate(models):
            torch.testing.assert_close(ensemble[index], model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("copy_of", ["deepcopy", "pickle"])
def test_a_copied_model_batches_its_own_layers_and_unloads_clean(copy_of):
    import copy
    import pickle as pickle_module

    model = small_adapted("offset")
    x = torch.randn(5, 24)
    with torch.no_grad():
        expected = model(x)
    copied = (copy.deepcopy(model) if copy_of == "deepcopy"
              else pickle_module.loads(pickle_module.dumps(model)))
    layers = list(copied.qpeft_layers().values())
    assert copied.frame_bank.layers() == layers
    assert all(layer.frame_bank is copied.frame_bank for layer in layers)
    with torch.no_grad():
        torch.testing.assert_close(copied(x), expected, atol=0, rtol=0)
    plain = copied.merge_and_unload()
    assert not plain._forward_pre_hooks and not plain._forward_hooks
    assert model.frame_bank.layers() == list(model.qpeft_layers().values())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


def test_a_compile_method_that_cannot_compile_a_frame_is_refused_before_any_change() -> None:
    base = torch.nn.Sequential(torch.nn.Linear(24, 24))
    config = qpeft.QPeftConfig(target_modules=["0"], rank=6, compile_method="mps")
    with pytest.raises(ConfigError, match=r"compile_method='mps' cannot compile the frame of "
                       r"width 24: .*column 5 of 24 is not; set compile_method='auto'"):
        qpeft.get_qpeft_model(base, config)
    assert isinstance(base[0], torch.nn.Linear) and type(base[0]) is torch.nn.Linear
    # where it can, mps is used as asked
    model = qpeft.get_qpeft_model(base, qpeft.QPeftConfig(target_modules=["0"], rank=4,
                                                         compile_method="mps"))
    assert model(torch.randn(2, 24)).shape == (2, 24)
