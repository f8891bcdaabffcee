"""Saving and loading adapters: exact round trips, the file format, bad directories."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from test_adapters_model import (
    BERT_TARGETS,
    perturb,
    tiny_bert,
    tiny_gpt2,
    tokens,
)

import qpeft
from qpeft.adapters import QPeftConfig, QPeftLinear, QPeftModel, get_qpeft_model
from qpeft.adapters.io import CONFIG_NAME, WEIGHTS_NAME
from qpeft.errors import AdapterFileError

pytestmark = pytest.mark.usefixtures("one_thread")


def trained_bert(**options) -> QPeftModel:
    config = QPeftConfig(target_modules=BERT_TARGETS, rank=4, modules_to_save=["classifier"],
                         **options)
    model = get_qpeft_model(tiny_bert(), config)
    perturb(model)
    with torch.no_grad():
        model.get_submodule("base_model.classifier").modules_to_save["default"].bias.add_(0.3)
    return model.eval()


def assert_round_trip(model: QPeftModel, directory, factory) -> QPeftModel:
    """Save ``model``, load it onto a fresh ``factory()`` model, compare outputs exactly."""
    ids = tokens()
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(directory)
    loaded = QPeftModel.from_pretrained(factory(), directory)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    return loaded


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_save_then_load_reproduces_outputs_exactly(tmp_path):
    model = trained_bert()
    loaded = assert_round_trip(model, tmp_path, tiny_bert)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert not loaded.training
    trainable = QPeftModel.from_pretrained(tiny_bert(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == model.get_nb_trainable_parameters()


def test_gpt2_round_trip_with_zero_lambda_init(tmp_path):
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules="all-linear", rank=3,
                                                     init="zero_lambda", layers=1))
    perturb(model)
    assert_round_trip(model, tmp_path, tiny_gpt2)


def test_the_directory_holds_json_and_pure_safetensors(tmp_path):
    model = trained_bert()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    blob = (tmp_path / WEIGHTS_NAME).read_bytes()
    (header_size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_size])
    assert blob[8:9] == b"{" and b"pickle" not in blob and not blob.startswith(b"PK")
    names = set(header) - {"__metadata__"}
    end = max(entry["data_offsets"][1] for name, entry in header.items() if name in names)
    assert 8 + header_size + end == len(blob)  # tensors and nothing else
    assert names == {"qpeft.theta", "qpeft.lambda", "qpeft.initial.theta",
                     "qpeft.initial.lambda", "classifier.modules_to_save.weight",
                     "classifier.modules_to_save.bias"}
    angles = 16 * model.qpeft_layers()["bert.encoder.layer.0.attention.self.query"] \
        .frame_specs["default"]["in"].num_parameters
    assert header["qpeft.theta"]["shape"] == [angles] and header["qpeft.lambda"]["shape"] == [32]
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert document["format"] == "qpeft.adapter" and document["format_version"] == 1
    assert document["target_modules"] == BERT_TARGETS and document["rank"] == 4
    assert len(document["circuits"]) == 1  # one 48-wide circuit, shared by all 16 sides
    fingerprint = next(iter(document["circuits"]))
    assert all(m["out"] == m["in"] == {"circuit": fingerprint}
               for m in document["modules"])
    assert [m["path"] for m in document["modules"]] == list(model.qpeft_layers())


def safetensors_header(path) -> dict:
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + size])


def adapter_bytes(header: dict) -> int:
    """Bytes of the adapter's own tensors (not the saved head)."""
    return sum(entry["data_offsets"][1] - entry["data_offsets"][0]
               for name, entry in header.items() if name.startswith("qpeft."))


def test_quantized_adapter_saves_smaller_and_loads_back_the_quantized_outputs(tmp_path):
    ids = tokens()
    full = trained_bert()
    full.save_pretrained(tmp_path / "full")
    quantized = trained_bert()
    quantized.quantize(4)
    with torch.no_grad():
        expected = quantized(ids).logits
        assert not torch.equal(expected, full(ids).logits)
    quantized.save_pretrained(tmp_path / "q4")
    headers = {name: safetensors_header(tmp_path / name / WEIGHTS_NAME) for name in ("full", "q4")}
    codes = {name: entry for name, entry in headers["q4"].items() if name.endswith(".codes")}
    assert {entry["dtype"] for entry in codes.values()} == {"U8"}
    assert "qpeft.theta.scale" not in headers["q4"]  # angles need none: the grid is fixed
    assert headers["q4"]["qpeft.lambda.scale"]["shape"] == [8]  # one power of two per module
    angles = headers["full"]["qpeft.theta"]["shape"][0]
    assert headers["q4"]["qpeft.theta.codes"]["shape"] == [angles // 2]  # 4 bits per angle
    assert adapter_bytes(headers["q4"]) * 6 < adapter_bytes(headers["full"])
    sizes = {name: (tmp_path / name / WEIGHTS_NAME).stat().st_size for name in headers}
    assert sizes["q4"] < sizes["full"] - 2000
    loaded = QPeftModel.from_pretrained(tiny_bert(), tmp_path / "q4")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)


def test_quantization_aware_training_round_trip(tmp_path):
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules=["c_attn"], rank=2,
                                                     quantize_bits=6))
    model.train()
    ids = tokens()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert_round_trip(model, tmp_path, tiny_gpt2)


def test_named_adapters_save_in_subfolders_and_load_as_named(tmp_path):
    model = trained_bert()
    model.add_adapter("second", QPeftConfig(target_modules=["value"], rank=2))
    perturb(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "second" / CONFIG_NAME).is_file()
    ids = tokens()
    with torch.no_grad():
        model.set_adapter("second")
        expected = model(ids).logits
    loaded = QPeftModel.from_pretrained(tiny_bert(), tmp_path)
    loaded.load_adapter(tmp_path / "second", "second")
    loaded.set_adapter("second")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)


def _assert_load_fails_and_model_unchanged(directory, match):
    base = tiny_bert()
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match=match):
        QPeftModel.from_pretrained(base, directory)
    assert not any(isinstance(m, QPeftLinear) for m in base.modules())
    after = snapshot(base)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_missing_files(tmp_path):
    _assert_load_fails_and_model_unchanged(tmp_path / "nowhere", "does not exist")
    trained_bert().save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    _assert_load_fails_and_model_unchanged(tmp_path, "adapter_model.safetensors is missing")
    (tmp_path / CONFIG_NAME).unlink()
    _assert_load_fails_and_model_unchanged(tmp_path, "adapter_config.json is missing")


def test_truncated_files(tmp_path):
    trained_bert().save_pretrained(tmp_path)
    blob = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).write_bytes(blob[: len(blob) // 2])
    _assert_load_fails_and_model_unchanged(tmp_path, "truncated")
    text = (tmp_path / CONFIG_NAME).read_text()
    (tmp_path / CONFIG_NAME).write_text(text[: len(text) // 2])
    _assert_load_fails_and_model_unchanged(tmp_path, "not valid JSON")


def test_mismatched_files(tmp_path):
    trained_bert().save_pretrained(tmp_path / "a")
    get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2)).save_pretrained(
        tmp_path / "b")
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes((tmp_path / "b" / WEIGHTS_NAME).read_bytes())
    _assert_load_fails_and_model_unchanged(tmp_path / "a", "does not match")


def test_a_reordered_module_list_is_refused(tmp_path):
    trained_bert().save_pretrained(tmp_path)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    document["modules"] = document["modules"][::-1]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    _assert_load_fails_and_model_unchanged(tmp_path, "edited or reordered")


def test_a_file_for_another_architecture(tmp_path):
    model = get_qpeft_model(tiny_gpt2(), QPeftConfig(target_modules=["c_attn"], rank=2))
    model.save_pretrained(tmp_path)
    _assert_load_fails_and_model_unchanged(tmp_path, "has no module 'transformer.h.0.attn")


def test_a_newer_format_version_is_refused(tmp_path):
    trained_bert().save_pretrained(tmp_path)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    document["format_version"] = 2
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    _assert_load_fails_and_model_unchanged(tmp_path, "newer than this qpeft")


def test_an_edited_circuit_is_refused(tmp_path):
    trained_bert().save_pretrained(tmp_path)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    circuit = next(iter(document["circuits"].values()))
    circuit["gates"] = circuit["gates"][1:]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    _assert_load_fails_and_model_unchanged(tmp_path, "fingerprint")


def test_load_adapter_failure_leaves_the_wrapped_model_unchanged(tmp_path):
    model = trained_bert()
    model.save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x00" * 16)
    before = snapshot(model)
    with pytest.raises(AdapterFileError):
        model.load_adapter(tmp_path, "again")
    assert list(model.peft_config) == ["default"]
    after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_saving_replaces_files_atomically(tmp_path):
    model = trained_bert()
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # over an existing save: no temporary files left
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def _ansatz_file(folder, marker) -> str:
    """A user's ansatz file that leaves ``marker`` behind when it runs."""
    path = folder / "my_ansatz.py"
    path.write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from qpeft.ansatz import for_dimension\n"
        "def build(dimension, layers=1):\n"
        "    return for_dimension(dimension, layers=layers)\n"
    )
    return str(path)


def test_a_loaded_adapter_never_runs_the_file_it_names(tmp_path):
    """An adapter trained with a user's ansatz file loads from its recorded circuits
    without running the file; a file naming code and recording no circuits is refused."""
    marker = tmp_path / "ran"
    ansatz = _ansatz_file(tmp_path, marker)
    model = trained_bert(ansatz=ansatz)
    assert marker.exists()  # building the adapter in Python runs the user's own file
    marker.unlink()
    loaded = assert_round_trip(model, tmp_path / "adapter", tiny_bert)
    assert not marker.exists()
    widths = set(loaded.peft_config["default"].ansatz)
    assert widths == {48} and all(
        isinstance(c, qpeft.circuit.Circuit) for c in loaded.peft_config["default"].ansatz.values())
    path = tmp_path / "adapter" / CONFIG_NAME
    # nor does it name the file (a path of the machine it was written on)
    assert str(tmp_path) not in path.read_text() and Path(ansatz).name not in path.read_text()
    # a file that names code (as written before ansatz files were saved as circuits)
    # and records no circuits is refused
    document = json.loads(path.read_text())
    document["ansatz"] = str(ansatz)
    document["circuits"] = {}
    path.write_text(json.dumps(document))
    _assert_load_fails_and_model_unchanged(tmp_path / "adapter", "never name code to run")
    assert not marker.exists()


def _rewrite(directory, edit_document=None, edit_tensors=None) -> None:
    """Edit a saved adapter and keep its hash and module digest consistent, so that only
    the edit itself can be refused."""
    import hashlib

    from safetensors.torch import load, save

    from qpeft.adapters.io import _dump_json, _modules_digest

    blob = (directory / WEIGHTS_NAME).read_bytes()
    metadata = safetensors_header(directory / WEIGHTS_NAME)["__metadata__"]
    tensors = load(blob)
    document = json.loads((directory / CONFIG_NAME).read_text())
    if edit_tensors is not None:
        edit_tensors(tensors)
    if edit_document is not None:
        edit_document(document)
    metadata["qpeft.modules"] = _modules_digest(document["modules"])
    blob = save(tensors, metadata=metadata)
    document["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
    (directory / WEIGHTS_NAME).write_bytes(blob)
    (directory / CONFIG_NAME).write_text(_dump_json(document))


CLASSIFIER_WEIGHT = "classifier.modules_to_save.weight"


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.update({CLASSIFIER_WEIGHT: t[CLASSIFIER_WEIGHT].to(torch.int64)}),
     "'weight' is torch.int64"),
    (lambda t: t.update({CLASSIFIER_WEIGHT: t[CLASSIFIER_WEIGHT] > 0}),
     "'weight' is torch.bool"),
    (lambda t: t.update({CLASSIFIER_WEIGHT: t[CLASSIFIER_WEIGHT] * float("nan")}),
     "NaN or infinite"),
    (lambda t: t.update({CLASSIFIER_WEIGHT: t[CLASSIFIER_WEIGHT][:1]}), r"\(1, 48\)"),
], ids=["int64", "bool", "nan", "shape"])
def test_a_bad_saved_module_tensor_is_refused(tmp_path, edit, match):
    trained_bert().save_pretrained(tmp_path)
    _rewrite(tmp_path, edit_tensors=edit)
    _assert_load_fails_and_model_unchanged(tmp_path, match)


def test_saved_module_tensors_are_cast_to_a_model_in_another_float_dtype(tmp_path):
    model = trained_bert()
    model.save_pretrained(tmp_path)
    saved = model.get_submodule("base_model.classifier").modules_to_save["default"].weight
    loaded = QPeftModel.from_pretrained(tiny_bert().to(torch.bfloat16), tmp_path)
    weight = loaded.get_submodule("base_model.classifier").modules_to_save["default"].weight
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, saved.to(torch.bfloat16))


def test_a_model_moved_to_bfloat16_keeps_float32_adapter_values_and_round_trips(tmp_path):
    model = trained_bert()
    values = {name: p.detach().clone() for name, p in model.named_parameters() if "qpeft_" in name}
    model.to(torch.bfloat16)
    assert model.base_model.classifier.original_module.weight.dtype == torch.bfloat16
    for name, parameter in model.named_parameters():
        if "qpeft_" in name:
            assert parameter.dtype == torch.float32 and torch.equal(parameter, values[name])
    assert all(b.dtype == torch.float32 for n, b in model.named_buffers() if "qpeft_" in n)
    assert_round_trip(model, tmp_path, lambda: tiny_bert().to(torch.bfloat16))
    model.half()
    assert all(torch.equal(p, values[n]) for n, p in model.named_parameters() if "qpeft_" in n)
    model.to(torch.float64)
    for name, parameter in model.named_parameters():
        if "qpeft_" in name:
            assert parameter.dtype == torch.float64 and torch.equal(parameter.float(), values[name])


def _set(key, value):
    return lambda document: document.update({key: value})


def _mapping_options(options):
    def edit(document):
        for module in document["modules"]:
            module["out"] = {"mapping": "cayley", "dimension": 48, "options": options}
    return edit


@pytest.mark.parametrize("edit, match", [
    (_set("compile_method", "bogus"), "unknown compile_method 'bogus'"),
    (_set("modules_to_save", None), "the two must agree"),
    (_set("modules_to_save", ["query"]), r"holds copies of \['classifier'\]"),
    (_set("modules_to_save", ["nothere"]), "match no module"),
    (_set("modules_to_save_tensors", ["classifier"]), "'modules_to_save_tensors' must be"),
    (_set("modules_to_save_tensors", {"classifier": "weight"}),
     "'modules_to_save_tensors' must be"),
    (_set("ansatz", {"by_width": {"abc": "qudit"}}), "'abc' is not a layer width"),
    (_set("ansatz", {"by_width": 5}), "'by_width' must be an object"),
    (_set("format_version", 0), "not a valid version"),
    (_mapping_options({"bogus": 1}), "frame 'out'"),
    (_mapping_options({"x": [1, 2]}), "frame 'out'"),
    (_mapping_options([1]), "'options' must be an object"),
], ids=["compile_method", "modules_to_save-null", "modules_to_save-other", "modules_to_save-none",
        "tensors-list", "tensors-keys-string", "by_width-key", "by_width-int", "format_version-0",
        "options-unknown", "options-unhashable", "options-list"])
def test_a_bad_configuration_is_refused_before_the_model_is_touched(tmp_path, edit, match):
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=2,
                                                     ansatz="cayley",
                                                     modules_to_save=["classifier"]))
    model.save_pretrained(tmp_path)
    _rewrite(tmp_path, edit_document=edit)
    _assert_load_fails_and_model_unchanged(tmp_path, match)


def test_loading_onto_a_model_on_the_meta_device_is_refused(tmp_path):
    """Copying the values into meta tensors would keep nothing (and to_empty() would then
    leave garbage): refused before the model is touched."""
    trained_bert().save_pretrained(tmp_path)
    with torch.device("meta"):
        base = tiny_bert()
    with pytest.raises(qpeft.errors.ConfigError, match="on the meta device"):
        QPeftModel.from_pretrained(base, tmp_path)
    assert not any(isinstance(m, QPeftLinear) for m in base.modules())
    # a saved copy (modules_to_save) on the meta device would be dropped just the same
    base = tiny_bert()
    base.classifier.to("meta")
    with pytest.raises(qpeft.errors.ConfigError, match="module 'classifier' of the model is on"):
        QPeftModel.from_pretrained(base, tmp_path)
    model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=BERT_TARGETS, rank=2))
    model.to("meta")
    with pytest.raises(qpeft.errors.ConfigError, match="on the meta device"):
        model.load_adapter(tmp_path, "other")
    assert "other" not in model.peft_config


def test_a_compile_method_that_cannot_compile_the_frames_is_refused_on_load(tmp_path):
    # rank 12 on 48 = 3·2^4: column 11 lies in the upper half of the qubits' block
    config = QPeftConfig(target_modules=["query"], rank=12, ansatz="qudit")
    get_qpeft_model(tiny_bert(), config).save_pretrained(tmp_path)
    _rewrite(tmp_path, edit_document=_set("compile_method", "mps"))
    _assert_load_fails_and_model_unchanged(tmp_path, "compile_method='mps' cannot compile")


def test_saved_adapter_files_get_the_mode_a_plain_open_gives(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        trained_bert().save_pretrained(tmp_path)
    finally:
        os.umask(umask)
    assert {(tmp_path / name).stat().st_mode & 0o777 for name in (CONFIG_NAME, WEIGHTS_NAME)} \
        == {0o644}


def test_a_frozen_adapter_stays_frozen_when_other_adapters_come_and_go(tmp_path):
    """Only set_adapter makes an adapter trainable again (as in peft)."""
    trained_bert().save_pretrained(tmp_path)
    loaded = QPeftModel.from_pretrained(tiny_bert(), tmp_path)

    def trainable() -> list[str]:
        return [n for n, p in loaded.named_parameters() if p.requires_grad]

    assert trainable() == []
    loaded.add_adapter("b", QPeftConfig(target_modules=["value"], rank=2))
    assert trainable() == []
    loaded.load_adapter(tmp_path, "c")
    assert trainable() == []
    loaded.delete_adapter("c")
    loaded.delete_adapter("b")
    assert trainable() == []
    loaded.set_adapter("default")
    assert len(trainable()) > 0 and all(".default" in n for n in trainable())


def test_the_same_adapter_saves_to_the_same_bytes(tmp_path):
    """safetensors writes its metadata in hash-map order; the header is
    rewritten with sorted keys, so the bytes and their checksum repeat."""
    model = trained_bert()
    contents = set()
    for index in range(6):
        model.save_pretrained(tmp_path / str(index))
        contents.add(((tmp_path / str(index) / WEIGHTS_NAME).read_bytes(),
                      (tmp_path / str(index) / CONFIG_NAME).read_bytes()))
    assert len(contents) == 1
    header = safetensors_header(tmp_path / "0" / WEIGHTS_NAME)
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(
        header["__metadata__"])
    assert_round_trip(model, tmp_path / "again", tiny_bert)


@pytest.mark.parametrize("bits", [None, 4])
def test_an_adapter_with_non_finite_values_is_not_written(tmp_path, bits):
    model = trained_bert(quantize_bits=bits)
    layer = next(iter(model.qpeft_layers().values()))
    with torch.no_grad():
        layer.qpeft_lambda["default"][0] = float("nan")
    with pytest.raises(AdapterFileError, match="NaN or infinite values in qpeft.lambda"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / WEIGHTS_NAME).exists()


def test_an_adapter_whose_circuits_hold_negative_zeros_still_loads(tmp_path, monkeypatch):
    """Adapters were written with -0.0 in descriptions (a negated angle: inverse(),
    -theta) and fingerprinted that way; -0.0 is now stored as 0.0."""
    import math

    from qpeft.circuit import parameters as parameters_module

    def keeps_negative_zero(value, what):  # the earlier rule: no normalisation
        value = float(value)
        if not math.isfinite(value):
            raise AssertionError(what)
        return value

    with monkeypatch.context() as patch:
        patch.setattr(parameters_module, "_check_finite", keeps_negative_zero)
        circuit = qpeft.ansatz.for_dimension(48, 1).inverse()
        model = get_qpeft_model(tiny_bert(), QPeftConfig(target_modules=["query"], rank=2,
                                                         ansatz={48: circuit}))
        perturb(model)
        model.eval()
        model.save_pretrained(tmp_path)
    assert "-0.0" in (tmp_path / CONFIG_NAME).read_text()
    loaded = QPeftModel.from_pretrained(tiny_bert(), tmp_path)
    ids = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
