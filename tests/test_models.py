"""Model sources: hub names without a network."""

from __future__ import annotations

import pytest
import torch

from qpeft import models
from qpeft.errors import ConfigError


class _Loader:
    """A stand-in for a transformers Auto class that records its keywords."""

    def __init__(self, cached: bool) -> None:
        self.cached, self.calls = cached, []

    def from_pretrained(self, location: str, **kwargs):
        self.calls.append(kwargs)
        if kwargs.get("local_files_only") and not self.cached:
            raise OSError("not in the cache")
        return "model"


def test_an_unreachable_hub_loads_from_the_cache_at_once(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    source = models.ModelSource("hub", "org/name", "org/name")
    cached = _Loader(cached=True)
    assert models._load(cached, source, num_labels=3) == "model"
    assert cached.calls == [{"num_labels": 3, "local_files_only": True}]
    with pytest.raises(ConfigError, match="cannot be reached and 'org/name' is not in the local"):
        models._load(_Loader(cached=False), source)
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    online = _Loader(cached=False)
    assert models._load(online, source) == "model" and online.calls == [{}]


def test_the_probe_is_skipped_behind_a_proxy(monkeypatch) -> None:
    models.hub_reachable.cache_clear()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setattr(models.socket, "create_connection",
                        lambda *a, **k: pytest.fail("probed behind a proxy"))
    try:
        assert models.hub_reachable() is True
    finally:
        models.hub_reachable.cache_clear()


# ------------------------------------------------------------ decoder classifiers


def _pad_less_tokenizer(folder):
    """A GPT-2-like tokenizer: an end-of-text token and no padding token."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from qpeft.train.testing import VOCABULARY

    words = [*VOCABULARY[1:], "<|endoftext|>"]  # no [PAD]
    backend = Tokenizer(WordLevel({word: index for index, word in enumerate(words)},
                                  unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        unk_token="[UNK]")
    tokenizer.save_pretrained(str(folder))
    return len(words)


def _tiny_decoder(folder, kind: str, with_pad_token: bool):
    """A tiny GPT-2 or Llama backbone saved like a released one (no pad_token_id)."""
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    from qpeft.train.testing import VOCABULARY, write_tokenizer

    if with_pad_token:
        write_tokenizer(folder)  # word pieces with [PAD]
        vocabulary = len(VOCABULARY)
    else:
        vocabulary = _pad_less_tokenizer(folder)
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2Model(GPT2Config(vocab_size=vocabulary, n_embd=32, n_layer=2, n_head=2,
                                     n_positions=64))
    else:
        model = LlamaModel(LlamaConfig(vocab_size=vocabulary, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=2, intermediate_size=64,
                                       max_position_embeddings=64))
    assert model.config.pad_token_id is None
    model.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("with_pad_token", [True, False])
def test_decoder_classifiers_score_a_padded_batch_as_each_example_alone(
    tmp_path, kind: str, with_pad_token: bool
) -> None:
    """GPT-2 and Llama classifiers read the score at the last token that is not
    padding: the configuration's padding id must be the one the data is padded with."""
    from qpeft.train.data import TextDataset, encode

    folder = _tiny_decoder(tmp_path / kind, kind, with_pad_token)
    source = models.resolve_model(str(folder))
    tokenizer = models.load_tokenizer(source)
    assert tokenizer.pad_token_id is not None
    if not with_pad_token:
        assert tokenizer.pad_token == tokenizer.eos_token
    model = models.load_sequence_classifier(source, ["a", "b", "c"], tokenizer=tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    model.eval()
    texts = ["the car is good", "a very old road today was bad and the ride fine", "my seat"]
    encoded = encode(tokenizer, TextDataset(texts, [0, 1, 2], ("a", "b", "c")), 32)
    batch = encoded.batch([0, 1, 2])
    batch.pop("labels")
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([
            model(**{key: value[[row]][:, : len(encoded.features[row]["input_ids"])]
                     for key, value in batch.items()}).logits
            for row in range(3)
        ])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_finetune_trains_a_gpt2_classifier_whose_tokenizer_has_no_padding_token(
    tmp_path, capsys
) -> None:
    import json

    from qpeft import cli
    from qpeft.train.testing import write_sentiment_csv

    folder = _tiny_decoder(tmp_path / "gpt2", "gpt2", with_pad_token=False)
    data = write_sentiment_csv(tmp_path / "s.csv", rows=60)
    output = tmp_path / "run"
    assert cli.main(["finetune", "--model", str(folder), "--dataset", str(data), "--method",
                     "lora:r=2", "--epochs", "1", "--batch-size", "8", "--threads", "1",
                     "--no-progress", "--output-dir", str(output)]) == 0, capsys.readouterr().err
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["targets"] == ["c_attn", "attn.c_proj"]


def test_without_a_tokenizer_a_decoder_classifier_pads_with_its_end_of_text_token(
    tmp_path,
) -> None:
    """``qpeft bench train`` loads the classifier without a tokenizer."""
    folder = _tiny_decoder(tmp_path / "gpt2", "gpt2", with_pad_token=True)
    model = models.load_sequence_classifier(models.resolve_model(str(folder)), ["a", "b"])
    assert model.config.pad_token_id == model.config.eos_token_id
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (2, 2)


@pytest.mark.parametrize("spec", ["org/name\n", "name\n"])
def test_a_hub_name_with_a_trailing_newline_is_refused(spec) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        models.resolve_model(spec)


def _classifier_checkpoint(folder, labels: list[str]) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16,
                        id2label=dict(enumerate(labels)),
                        label2id={name: i for i, name in enumerate(labels)})
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.fill_(0.123)
    model.save_pretrained(folder)


@pytest.mark.parametrize("saved_labels", [["positive", "neutral", "negative"],
                                          ["a", "b", "c", "d", "e"]])
def test_a_classification_checkpoint_gets_a_new_head(tmp_path, saved_labels) -> None:
    """Its trained head (for other labels, or the same number of them in another
    order) is not reused: the run starts from a new head, as on a base model."""
    _classifier_checkpoint(tmp_path, saved_labels)
    source = models.ModelSource("local", str(tmp_path), "checkpoint")
    model = models.load_sequence_classifier(source, ["negative", "neutral", "positive"])
    weight = model.classifier.weight
    assert weight.shape == (3, 16) and not torch.any(weight == 0.123)
    assert 0.005 < float(weight.std()) < 0.05 and not torch.any(model.classifier.bias)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


def test_a_base_checkpoint_keeps_the_head_transformers_makes(tmp_path) -> None:
    """No extra initialisation (nor random numbers) where the head is new anyway."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=16)).save_pretrained(tmp_path)
    torch.manual_seed(5)
    model = models.load_sequence_classifier(models.ModelSource("local", str(tmp_path), "base"),
                                            ["x", "y"])
    torch.manual_seed(5)
    with models.quiet_transformers():
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert torch.equal(model.classifier.weight, plain.classifier.weight)


def _distilbert_base(folder) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=30, dim=16, n_layers=1, n_heads=2,
                                     hidden_dim=32, max_position_embeddings=16)
                    ).save_pretrained(folder)


def _bart_base(folder) -> None:
    from transformers import BartConfig, BartModel

    BartModel(BartConfig(vocab_size=30, d_model=16, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2,
                         encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=16)
              ).save_pretrained(folder)


def _bert_without_pooler(folder) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=16), add_pooling_layer=False
              ).save_pretrained(folder)


@pytest.mark.parametrize("save, heads", [
    (_distilbert_base, ("classifier", "pre_classifier")),
    (_bart_base, ("classification_head",)),
    (_bert_without_pooler, ("bert.pooler", "classifier")),
    (_classifier_checkpoint, ("classifier",)),
])
@pytest.mark.parametrize("method", ["head", "lora:r=2", "qpeft:K=2,L=1"])
def test_every_module_the_checkpoint_lacks_is_a_head_every_method_trains(
        tmp_path, save, heads, method) -> None:
    """Whatever transformers made anew (or qpeft initialised again) starts random:
    each method trains it, counts it as head and saves it."""
    from qpeft.train.methods import MethodSpec, prepare_model

    if save is _classifier_checkpoint:
        save(tmp_path, ["p", "q"])
    else:
        save(tmp_path)
    model = models.load_sequence_classifier(models.ModelSource("local", str(tmp_path), "x"),
                                            ["x", "y"])
    assert model.qpeft_new_modules == heads
    new = {name: p.numel() for name, p in model.named_parameters()
           if any(name.startswith(head + ".") for head in heads)}
    targets = {"distilbert": ("q_lin",), "bart": ("q_proj",)}.get(model.config.model_type,
                                                                   ("query",))
    prepared = prepare_model(model, MethodSpec.parse(method), targets)
    counts = prepared.parameter_counts()  # the trainable parameters inside a head
    assert counts.head == sum(new.values())
