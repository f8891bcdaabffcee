"""The peft bridge: Quantum-PEFT through ``peft.get_peft_model`` on tiny BERT and GPT-2.

The full cycle (wrap, train, save in peft's format, load onto a fresh model, merge)
with exact assertions; the frame bank in peft's forward path; the version guard;
and the standalone API staying free of peft.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap

import peft
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from test_adapters_model import (
    BERT_TARGETS,
    assert_a_refused_safe_merge_changes_nothing,
    tiny_bert,
    tiny_gpt2,
    tokens,
)
from transformers.utils import logging as transformers_logging

import qpeft
from qpeft.adapters import QPeftConfig, QPeftLinear, get_qpeft_model, peft_bridge
from qpeft.adapters import frames as frames_module
from qpeft.adapters import layer as layer_module
from qpeft.adapters.peft_bridge import QPeftPeftConfig, QPeftTuner, QPeftTunerLinear
from qpeft.errors import ConfigError

transformers_logging.set_verbosity_error()

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # peft asks transformers for a deprecated attribute; not ours to fix
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

MERGE_TOLERANCE = 1e-5



def train(model: torch.nn.Module, ids: torch.Tensor, steps: int = 3) -> None:
    """A few Adam steps on a made-up loss: every adapter value moves."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(steps):
        loss = model(ids).logits.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def adapter_layers(model: torch.nn.Module) -> dict[str, QPeftLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QPeftLinear)}


CASES = {
    "bert": (tiny_bert, {"target_modules": BERT_TARGETS, "modules_to_save": ["classifier"]}),
    "gpt2": (tiny_gpt2, {"target_modules": "all-linear"}),
}


# -- the full cycle ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_wrap_train_save_load_merge(case, tmp_path):
    make, options = CASES[case]
    ids = tokens()
    with torch.no_grad():
        reference = make()(ids).logits
    model = peft.get_peft_model(make(), QPeftPeftConfig(rank=4, **options))
    assert isinstance(model.base_model, QPeftTuner)
    layers = adapter_layers(model)
    assert layers and all(isinstance(layer, QPeftTunerLinear) for layer in layers.values())
    assert not any(name.endswith("lm_head") for name in layers)  # the output embedding stays
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference)  # ΔW = 0 at initialisation
        with model.disable_adapter():
            assert torch.equal(model(ids).logits, reference)

    train(model, ids)
    with torch.no_grad():
        trained = model(ids).logits
        with model.disable_adapter():
            assert torch.equal(model(ids).logits, reference)
    assert not torch.allclose(trained, reference, atol=1e-3)

    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    document = json.loads((tmp_path / "adapter_config.json").read_text())
    assert document["peft_type"] == "QPEFT" and document["rank"] == 4
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    for name, layer in layers.items():
        key = name.removeprefix("base_model.model.")
        stored = tensors[f"base_model.model.{key}.qpeft_theta_out"]
        assert torch.equal(stored, layer.qpeft_theta_out["default"].detach())
        assert torch.equal(tensors[f"base_model.model.{key}.qpeft_initial.lam"],
                           layer.qpeft_initial["default"].lam)

    loaded = PeftModel.from_pretrained(make(), tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, trained)
    merged = loaded.merge_and_unload()
    assert type(merged) is type(make())
    assert not adapter_layers(merged) and not merged._forward_pre_hooks
    with torch.no_grad():
        assert (merged(ids).logits - trained).abs().max() < MERGE_TOLERANCE


def test_peft_merge_adapter_and_unmerge_adapter():
    ids = tokens()
    model = peft.get_peft_model(tiny_gpt2(), QPeftPeftConfig(rank=4, target_modules="all-linear"))
    train(model, ids, steps=1)
    with torch.no_grad():
        unmerged = model(ids).logits
        model.merge_adapter()
        assert (model(ids).logits - unmerged).abs().max() < MERGE_TOLERANCE
        model.unmerge_adapter()
        assert torch.allclose(model(ids).logits, unmerged, atol=MERGE_TOLERANCE)


def test_peft_refused_safe_merge_leaves_every_layer_unmerged():
    model = peft.get_peft_model(tiny_gpt2(), QPeftPeftConfig(rank=4, target_modules="all-linear"))
    train(model, tokens(), steps=1)
    # peft merges (and unloads) the layers before the broken one first
    assert_a_refused_safe_merge_changes_nothing(model, adapter_layers, "nothing was merged")


def test_a_different_adapter_per_sample_is_refused():
    model = peft.get_peft_model(tiny_gpt2(), QPeftPeftConfig(rank=2, target_modules="all-linear"))
    ids = tokens(batch=2)
    with pytest.raises(ConfigError, match="adapter_names= .* not supported"):
        model(input_ids=ids, adapter_names=["default", "default"])
    with pytest.raises(ConfigError, match="set_adapter"):
        model.generate(input_ids=ids, adapter_names=["default", "default"], max_new_tokens=2)
    assert model(input_ids=ids).logits.shape[0] == 2  # the plain call still runs


def test_named_adapters_switch_save_and_load(tmp_path):
    ids = tokens()
    with torch.no_grad():
        reference = tiny_bert()(ids).logits
    model = peft.get_peft_model(tiny_bert(), QPeftPeftConfig(rank=4, target_modules=["query"]))
    train(model, ids, steps=1)
    model.add_adapter("other", QPeftPeftConfig(rank=2, target_modules=["key"], ansatz="cayley"))
    assert model.active_adapters == ["default"]
    assert all(".default" in name for name, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        first = model(ids).logits
        model.set_adapter("other")
        assert torch.equal(model(ids).logits, reference)  # the new adapter starts at ΔW = 0
    train(model, ids, steps=1)
    with torch.no_grad():
        second = model(ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_model.safetensors").is_file()

    loaded = PeftModel.from_pretrained(tiny_bert(), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in loaded.parameters())
    loaded.load_adapter(tmp_path / "other", "other")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, first)
        loaded.set_adapter("other")
        assert torch.equal(loaded(ids).logits, second)
    loaded.delete_adapter("default")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, second)

    # deleting the active adapter makes the remaining one active, as with peft's LoRA
    again = peft.get_peft_model(tiny_bert(), QPeftPeftConfig(rank=4, target_modules=["query"]))
    again.add_adapter("b", QPeftPeftConfig(rank=2, target_modules=["query"]))
    again.add_adapter("a", QPeftPeftConfig(rank=2, target_modules=["query"]))
    with pytest.warns(UserWarning, match="Setting active adapter to a"):  # peft: sorted first
        again.delete_adapter("default")
    assert again.active_adapters == ["a"]
    assert all(".a" in name for name, p in again.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, reference)  # b is at ΔW = 0


# -- the same adapters as the standalone API -----------------------------------------------------
def test_the_bridge_builds_the_adapter_get_qpeft_model_builds():
    ids = tokens()
    options = {"target_modules": BERT_TARGETS, "rank": 3, "layers": 1}
    torch.manual_seed(7)
    bridged = peft.get_peft_model(tiny_bert(), QPeftPeftConfig(**options))
    torch.manual_seed(7)
    standalone = get_qpeft_model(tiny_bert(), QPeftConfig(**options))
    ours = adapter_layers(bridged)
    theirs = standalone.qpeft_layers()
    assert [name.removeprefix("base_model.model.") for name in ours] == list(theirs)
    with torch.no_grad():
        for layer, twin in zip(ours.values(), theirs.values()):
            for parameter, other in zip(layer.adapter_parameters("default"),
                                        twin.adapter_parameters("default")):
                assert torch.equal(parameter, other)
                step = 0.3 * torch.sin(torch.arange(parameter.numel(), dtype=parameter.dtype))
                parameter.add_(step)
                other.add_(step)
        assert torch.equal(bridged(ids).logits, standalone(ids).logits)
    trainable = [p.numel() for p in standalone.parameters() if p.requires_grad]
    assert bridged.get_nb_trainable_parameters()[0] == sum(trainable)


# -- frames in peft's forward path ---------------------------------------------------------------
def counted(monkeypatch, module, calls: list[str], label: str) -> None:
    original = module.compute_frames

    def wrapper(*args, **kwargs):
        calls.append(label)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "compute_frames", wrapper)


def test_the_frame_bank_serves_every_layer_in_one_call(monkeypatch):
    ids = tokens()
    model = peft.get_peft_model(tiny_bert(), QPeftPeftConfig(rank=4, target_modules=BERT_TARGETS))
    model.train()
    model(ids).logits.sum().backward()  # computes and caches the frozen initial frames
    calls: list[str] = []
    counted(monkeypatch, frames_module, calls, "bank")
    counted(monkeypatch, layer_module, calls, "layer")
    model(ids).logits.sum().backward()
    # 8 layers, all 48 → 48: one circuit, so one batched call for all 16 frames
    assert calls == ["bank"]


def test_frames_follow_every_change_of_the_angles():
    ids = tokens()
    model = peft.get_peft_model(tiny_bert(), QPeftPeftConfig(rank=4, target_modules=BERT_TARGETS))
    layers = adapter_layers(model)
    with torch.no_grad():
        before = model(ids).logits
        for layer in layers.values():
            layer.qpeft_theta_in["default"].add_(0.5)  # in place, as an optimizer step
        after = model(ids).logits
        model.base_model.frame_bank.detach()  # now every layer computes its own frames
        alone = model(ids).logits
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, alone, atol=1e-6)


# -- files ---------------------------------------------------------------------------------------
def test_a_loaded_adapter_uses_the_recorded_circuits(tmp_path):
    ids = tokens()
    model = peft.get_peft_model(tiny_bert(), QPeftPeftConfig(rank=4, target_modules=BERT_TARGETS,
                                                             layers=2))
    train(model, ids, steps=1)
    with torch.no_grad():
        trained = model(ids).logits
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    document = json.loads(path.read_text())
    assert set(document["circuits"]) == {"48"}
    document["layers"] = 1  # the catalog would now build another circuit, with fewer angles
    path.write_text(json.dumps(document))
    loaded = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, trained)


def test_the_configuration_converts_both_ways(tmp_path):
    circuit = qpeft.ansatz.for_dimension(32, layers=1)
    config = QPeftConfig(target_modules=["query"], rank=2, ansatz={32: circuit}, alpha=0.5,
                         init="zero_lambda", quantize_bits=8)
    bridged = QPeftPeftConfig.from_qpeft_config(config, task_type="SEQ_CLS")
    assert bridged.to_qpeft_config() == config
    assert bridged.task_type == "SEQ_CLS"
    bridged.save_pretrained(tmp_path)
    loaded = peft.PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, QPeftPeftConfig)
    assert loaded.to_qpeft_config() == config


def test_qpeft_loader_says_how_to_load_a_peft_directory(tmp_path):
    config = QPeftPeftConfig(target_modules=["query"], rank=2)
    peft.get_peft_model(tiny_bert(), config).save_pretrained(tmp_path)
    with pytest.raises(qpeft.errors.AdapterFileError,
                       match=r"written by peft's save_pretrained .*PeftModel.from_pretrained"):
        qpeft.QPeftModel.from_pretrained(tiny_bert(), tmp_path)


def test_invalid_fields_raise_qpeft_errors():
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        QPeftPeftConfig(target_modules=["query"], rank=0)
    with pytest.raises(ConfigError, match="matches no linear layer"):
        peft.get_peft_model(tiny_bert(), QPeftPeftConfig(target_modules=["nothing"]))


# -- registration and the version guard ----------------------------------------------------------
def test_registration_is_idempotent():
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import PeftType

    assert peft_bridge.register() is peft_bridge.register() is PeftType.QPEFT
    assert PeftType("QPEFT") is PeftType.QPEFT
    assert list(PeftType).count(PeftType.QPEFT) == 1
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.QPEFT] is QPeftTuner


@pytest.mark.parametrize("version", ["0.13.2", "0.17.1", "1.0.0", "2.3.0"])
def test_an_unsupported_peft_version_is_a_clear_error(monkeypatch, version):
    monkeypatch.setattr(peft_bridge, "installed_peft_version", lambda: version)
    message = rf"peft {re.escape(version)} is installed, but .* supports peft>=0\.18,<1\.0"
    with pytest.raises(ConfigError, match=message):
        peft_bridge.register()
    with pytest.raises(ConfigError, match=message):
        QPeftPeftConfig(target_modules=["query"])


def test_missing_peft_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(peft_bridge, "installed_peft_version", lambda: None)
    with pytest.raises(ConfigError, match="needs Hugging Face peft, which is not installed"):
        peft_bridge.check_peft_version()


@pytest.mark.parametrize("version", ["0.18.0", "0.21.2", "0.22.0.dev0", "0.99.1"])
def test_supported_versions_pass(monkeypatch, version):
    monkeypatch.setattr(peft_bridge, "installed_peft_version", lambda: version)
    assert peft_bridge.check_peft_version() == version


def test_the_standalone_api_does_not_import_peft():
    script = textwrap.dedent("""
        import sys, torch, qpeft
        base = torch.nn.Sequential(torch.nn.Linear(8, 8))
        model = qpeft.get_qpeft_model(base, qpeft.QPeftConfig(target_modules=["0"], rank=2))
        model(torch.randn(2, 8))
        print(sorted(name for name in sys.modules if name == "peft" or name.startswith("peft.")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_a_peft_configuration_never_names_code_to_run(tmp_path):
    """peft rebuilds the configuration from adapter_config.json, so a Python file
    as ansatz is refused; in a saved file that records its circuits, an ansatz
    edited to name a file is replaced by them and the file never runs."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    with pytest.raises(ConfigError, match="cannot name a Python file"):
        QPeftPeftConfig(target_modules=BERT_TARGETS, ansatz=str(evil))
    ids = tokens()
    model = peft.get_peft_model(tiny_bert(), QPeftPeftConfig(rank=4, target_modules=BERT_TARGETS))
    train(model, ids, steps=1)
    with torch.no_grad():
        trained = model(ids).logits
    model.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    document = json.loads(path.read_text())
    document["ansatz"] = str(evil)
    path.write_text(json.dumps(document))
    loaded = PeftModel.from_pretrained(tiny_bert(), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, trained)
    document["circuits"] = None
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="cannot name a Python file"):
        PeftModel.from_pretrained(tiny_bert(), tmp_path / "adapter")
    with pytest.raises(ConfigError, match="cannot name a Python file"):
        peft.PeftConfig.from_pretrained(tmp_path / "adapter")
    assert not marker.exists()


def test_a_configuration_used_again_after_a_change_plans_new_circuits():
    """The circuits are recorded on the model's copy; the caller's object stays as given."""
    def trainable(model) -> int:
        return model.get_nb_trainable_parameters()[0]

    def fresh(**options) -> int:
        return trainable(peft.get_peft_model(tiny_bert(), QPeftPeftConfig(
            target_modules=["query", "value"], rank=2, **options)))

    config = QPeftPeftConfig(target_modules=["query", "value"], rank=2, layers=1)
    first = peft.get_peft_model(tiny_bert(), config)
    assert config.circuits is None and first.peft_config["default"].circuits
    assert trainable(first) == fresh(layers=1)
    changed = dataclasses.replace(config, layers=3)
    assert trainable(peft.get_peft_model(tiny_bert(), changed)) == fresh(layers=3) != fresh(
        layers=1)
    config.layers = 2
    assert trainable(peft.get_peft_model(tiny_bert(), config)) == fresh(layers=2)
    assert first.peft_config["default"].layers == 1  # the first model's record is its own


def test_deleting_the_active_adapter_activates_one_on_other_layers():
    model = peft.get_peft_model(tiny_bert(), QPeftPeftConfig(target_modules=["query", "value"],
                                                             rank=2))
    model.add_adapter("b", QPeftPeftConfig(target_modules=["key"], rank=2))
    model.delete_adapter("default")
    assert model.active_adapters == ["b"]
    with torch.no_grad():
        assert model(tokens()).logits.shape == (4, 3)  # once KeyError: 'default'


def test_a_model_with_native_adapters_is_refused():
    native = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2))
    layer = native.base_model.bert.encoder.layer[0].attention.self.query
    before = [p.clone() for p in layer.adapter_parameters("default")]
    with pytest.raises(ConfigError, match="holds adapters of qpeft's own API"):
        peft.get_peft_model(native.base_model,
                            QPeftPeftConfig(target_modules=["query", "value"], rank=2))
    assert list(layer.qpeft_lambda) == ["default"]
    assert all(torch.equal(a, b) for a, b in zip(layer.adapter_parameters("default"), before))
