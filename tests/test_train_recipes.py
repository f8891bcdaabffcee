"""Every recipe's loading, training and evaluation code, offline, on tiny
random models and synthetic data built here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from qpeft.errors import ConfigError
from qpeft.train.recipes import RECIPES, cifar10, e2e, glue
from qpeft.train.recipes.__main__ import build_parser
from qpeft.train.recipes.common import recipe_from_args
from qpeft.train.testing import MARKERS, sentiment_rows, write_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


class Split:
    def __init__(self, **columns: list) -> None:
        self.columns = columns

    def __getitem__(self, name: str) -> list:
        return self.columns[name]


# ------------------------------------------------------------------ GLUE


def tiny_deberta(num_labels: int):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    return DebertaV2ForSequenceClassification(DebertaV2Config(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
        pooler_hidden_size=32, cls_dropout=0.0,
    ))


def test_a_saved_deberta_loads_with_the_recipes_classifier_dropout(tmp_path: Path) -> None:
    """DebertaV2Config declares no cls_dropout, so it cannot be a from_pretrained
    keyword (the model's __init__ would refuse it): it is set on the config."""
    from qpeft.models import ModelSource, load_sequence_classifier

    tiny_deberta(2).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("cls_dropout", None)  # as in microsoft/deberta-v3-base's config.json
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_sequence_classifier(ModelSource("local", str(tmp_path), "tiny"),
                                     ["no", "yes"], cls_dropout=0.1)
    assert model.config.cls_dropout == 0.1 and model.config.num_labels == 2
    dropout = model.dropout
    assert getattr(dropout, "p", getattr(dropout, "drop_prob", None)) == 0.1


def glue_loader(name: str, task: str) -> dict[str, Split]:
    rows = sentiment_rows(64, seed=1)
    first = [text for text, _ in rows]
    second = [label for _, label in rows]  # the second sentence reveals the answer
    if task == "stsb":
        scores = [float(index % 5) for index in range(len(rows))]
        split = Split(sentence1=first, sentence2=[str(s) for s in scores], label=scores)
    else:
        labels = [0 if label == "positive" else 1 for _, label in rows]
        split = Split(sentence1=first, sentence2=[MARKERS[y] for y in second], label=labels)
    return {"train": split, "validation": split}


def test_glue_recipe_trains_and_scores_rte(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tok")
    recipe = glue.GlueRecipe(task="rte", method="lora:r=2", epochs=2, batch_size=16,
                             max_length=24, learning_rate=5e-3, device="cpu")
    metrics = glue.run(recipe, tmp_path / "rte", model=tiny_deberta(2), tokenizer=tokenizer,
                       loader=glue_loader, progress=False)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["protocol"] == glue.PROTOCOL
    assert metrics["hyperparameters"]["lora_alpha"] == 32  # RTE's α from the protocol
    # all six matrices of both layers, r (in + out) each
    assert metrics["trainable_parameters_adapter"] == 2 * 2 * (4 * (32 + 32) + 2 * (32 + 64))
    # DeBERTa's new head is the pooler and the classifier
    assert metrics["trainable_parameters_with_head"] - metrics["trainable_parameters_adapter"] \
        == (32 * 32 + 32) + (32 * 2 + 2)
    assert metrics["timings"]["steps"] == 2 * 4
    assert (tmp_path / "rte" / "adapter" / "adapter_model.safetensors").is_file()


def tiny_encoder(kind: str, num_labels: int = 2):
    from transformers import (
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from qpeft.train.testing import VOCABULARY, tiny_bert_config

    torch.manual_seed(0)
    if kind == "deberta-v2":
        return tiny_deberta(num_labels)
    if kind == "bert":
        return BertForSequenceClassification(tiny_bert_config(num_labels=num_labels))
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=len(VOCABULARY), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=66, num_labels=num_labels,
        pad_token_id=0))


@pytest.mark.parametrize("kind", ["deberta-v2", "bert", "roberta"])
def test_glue_recipe_adapts_all_six_weight_matrices_of_each_model_type(
    tmp_path: Path, kind: str
) -> None:
    """AdaLoRA's protocol adapts query, key, value, attention output, intermediate
    and output: BERT and RoBERTa name them otherwise than DeBERTa."""
    from qpeft.train.methods import matching_modules

    model = tiny_encoder(kind)
    targets = glue.glue_targets(model)
    layer = {name.split(".layer.0.")[1] for name in matching_modules(model, targets)
             if ".layer.0." in name}
    linear = {name.split(".layer.0.")[1] for name, module in model.named_modules()
              if ".layer.0." in name and isinstance(module, torch.nn.Linear)}
    assert layer == linear and len(layer) == 6
    recipe = glue.GlueRecipe(task="rte", method="lora:r=2", epochs=1, batch_size=16,
                             max_length=24, device="cpu")
    metrics = glue.run(recipe, tmp_path / "rte", model=model, tokenizer=write_tokenizer(
        tmp_path / "tok"), loader=glue_loader, progress=False)
    assert metrics["method"]["targets"] == list(targets)
    assert metrics["trainable_parameters_adapter"] == 2 * 2 * (4 * (32 + 32) + 2 * (32 + 64))


def test_glue_recipe_refuses_a_model_type_without_default_targets(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=1, n_head=2,
                                                     vocab_size=40, num_labels=2))
    recipe = glue.GlueRecipe(task="rte", method="lora:r=2", epochs=1, device="cpu")
    with pytest.raises(ConfigError, match="not of model type 'gpt2'; name them with --targets"):
        glue.run(recipe, tmp_path / "rte", model=model, tokenizer=write_tokenizer(
            tmp_path / "tok"), loader=glue_loader, progress=False)


def test_a_target_that_matches_nothing_is_refused_in_a_recipe(tmp_path: Path) -> None:
    recipe = glue.GlueRecipe(task="rte", method="lora:r=2", epochs=1, device="cpu",
                             max_length=24, targets=("query_proj", "valeu_proj"))
    with pytest.raises(ConfigError, match=r"matches the targets valeu_proj \(of --targets"):
        glue.run(recipe, tmp_path / "rte", model=tiny_deberta(2), tokenizer=write_tokenizer(
            tmp_path / "tok"), loader=glue_loader, progress=False)


def test_glue_recipe_runs_the_regression_task(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tok", words=(*_words(), *map(str, range(5))))
    recipe = glue.GlueRecipe(task="stsb", method="head", epochs=1, max_length=24, device="cpu")
    metrics = glue.run(recipe, tmp_path / "stsb", model=tiny_deberta(1), tokenizer=tokenizer,
                       loader=glue_loader, progress=False)
    assert -1.0 <= metrics["pearson"] <= 1.0 and -1.0 <= metrics["spearman"] <= 1.0


def test_glue_recipe_evaluates_and_labels_mnli_matched(tmp_path: Path) -> None:
    rows = sentiment_rows(48, seed=2)

    def split(count: int) -> Split:
        chosen = rows[:count]
        return Split(premise=[text for text, _ in chosen],
                     hypothesis=[MARKERS[label] for _, label in chosen],
                     label=[0 if label == "positive" else 2 for _, label in chosen])

    def mnli_loader(name: str, task: str) -> dict[str, Split]:
        # the hub's MNLI has no plain "validation" split
        return {"train": split(48), "validation_matched": split(20),
                "validation_mismatched": split(12)}

    tokenizer = write_tokenizer(tmp_path / "tok")
    recipe = glue.GlueRecipe(task="mnli", method="head", epochs=1, max_length=24, device="cpu")
    metrics = glue.run(recipe, tmp_path / "mnli", model=tiny_deberta(3), tokenizer=tokenizer,
                       loader=mnli_loader, progress=False)
    assert metrics["evaluation_split"] == "validation_matched"
    assert metrics["evaluation_rows"] == 20
    saved = json.loads((tmp_path / "mnli" / "metrics.json").read_text())
    assert saved["evaluation_split"] == "validation_matched"


def _words() -> tuple[str, ...]:
    from qpeft.train.testing import VOCABULARY

    return VOCABULARY


def test_glue_task_scores_pick_each_task_metric() -> None:
    from qpeft.train.loop import Predictions

    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    predictions = Predictions(logits, [1, 0, 0, 0])
    assert glue.task_scores("cola", predictions) == {
        "accuracy": 0.75, "matthews_correlation": pytest.approx(1 / 3 ** 0.5)}
    assert glue.task_scores("mrpc", predictions)["f1"] == pytest.approx(2 / 3)
    assert set(glue.task_scores("sst2", predictions)) == {"accuracy"}
    assert glue.ADALORA_GLUE["mnli"].learning_rate == 5e-4


# ------------------------------------------------------------------- E2E


FOODS = ("pub", "cafe", "diner")
AREAS = ("riverside", "centre")


def e2e_loader(name: str) -> dict[str, Split]:
    rng = random.Random(0)
    meanings, texts = [], []
    for _ in range(48):
        food, area = rng.choice(FOODS), rng.choice(AREAS)
        meanings.append(f"food [ {food} ] area [ {area} ]")
        texts.append(f"a {food} in the {area}")
    # every combination once, the first two twice: those carry two references
    combinations = [(food, area) for food in FOODS for area in AREAS]
    combinations += combinations[:2]
    test_meanings = [f"food [ {food} ] area [ {area} ]" for food, area in combinations]
    test_texts = [f"the {food} in a {area}" for food, area in combinations]
    return {
        "train": Split(meaning_representation=meanings, human_reference=texts),
        "test": Split(meaning_representation=test_meanings, human_reference=test_texts),
    }


def tiny_gpt2_and_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "food", "area", "[", "]", "||", "a", "in", "the",
             *FOODS, *AREAS]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(words), n_embd=32, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=1, eos_token_id=1,
    ))
    return model, tokenizer


def test_causal_examples_mask_the_prompt_and_the_padding() -> None:
    _, tokenizer = tiny_gpt2_and_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    dataset = e2e.CausalLMDataset(tokenizer, ["food [ pub ] ||", "area [ centre ] ||"],
                                  ["a pub", "the centre in a cafe"], max_length=32)
    batch = dataset.batch([0, 1])
    eos = tokenizer.eos_token_id
    assert batch["input_ids"][0].tolist()[:7] == tokenizer("food [ pub ] || a pub")["input_ids"]
    assert batch["labels"][0].tolist() == [-100] * 5 + tokenizer("a pub")["input_ids"] + [eos] \
        + [-100] * 3
    assert batch["attention_mask"][0].tolist() == [1] * 8 + [0] * 3


def test_e2e_recipe_trains_generates_and_scores_bleu(tmp_path: Path) -> None:
    model, tokenizer = tiny_gpt2_and_tokenizer()
    recipe = e2e.E2ERecipe(epochs=6, batch_size=8, learning_rate=1e-3, warmup_steps=2,
                           num_beams=2, max_new_tokens=8, max_length=32, device="cpu",
                           method="lora:r=4,alpha=32,dropout=0.1,lr=0.01")
    metrics = e2e.run(recipe, tmp_path / "e2e", model=model, tokenizer=tokenizer,
                      loader=e2e_loader, progress=False)
    history = json.loads((tmp_path / "e2e" / "history.json").read_text())["steps"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert metrics["method"]["learning_rate"] == 0.01  # the method's lr= wins
    assert history[2]["learning_rate"] == pytest.approx(0.01)  # step 3, after the warm-up
    assert 0.0 <= metrics["bleu"] <= 1.0
    generations = json.loads((tmp_path / "e2e" / "generations.json").read_text())
    assert len(generations) == metrics["test_meaning_representations"] == 6
    assert len(generations[0]["references"]) == 2
    assert metrics["trainable_parameters_adapter"] == 2 * 4 * (32 + 96)  # c_attn is 32 -> 96


@pytest.mark.parametrize(("values", "message"), [
    ({"max_length": 65}, r"--max-length 65 is longer than the model allows \(64 positions\); "
                         r"use --max-length 64 or less"),
    # the test prompts are 9 tokens long and are not cut: 9 + 60 > 64
    ({"max_new_tokens": 60}, r"the longest test prompt \(9 tokens\) and --max-new-tokens 60 "
                             r"need 69 positions, more than the model's 64; use "
                             r"--max-new-tokens 55 or less"),
    # a cut after the 9-token prompt leaves no reference token to learn
    ({"max_length": 8}, r"48 of 48 training pairs have a prompt of 8 tokens or more.*raise "
                        r"--max-length \(the longest pair has 15 tokens\)"),
])
def test_e2e_recipe_checks_every_length_before_training(
    tmp_path: Path, values: dict, message: str
) -> None:
    model, tokenizer = tiny_gpt2_and_tokenizer()
    recipe = e2e.E2ERecipe(**{"epochs": 1, "batch_size": 8, "num_beams": 2, "max_new_tokens": 8,
                              "max_length": 32, "device": "cpu", **values})
    with pytest.raises(ConfigError, match=message):
        e2e.run(recipe, tmp_path / "e2e", model=model, tokenizer=tokenizer, loader=e2e_loader,
                progress=False)
    assert not (tmp_path / "e2e").exists()


def test_e2e_divergence_names_the_recipes_learning_rate_option(tmp_path: Path) -> None:
    from qpeft.errors import DivergenceError

    model, tokenizer = tiny_gpt2_and_tokenizer()
    recipe = e2e.E2ERecipe(epochs=1, batch_size=8, learning_rate=1e30, warmup_steps=0,
                           num_beams=2, max_new_tokens=8, max_length=32, device="cpu")
    with pytest.raises(DivergenceError, match=r"lower the learning rate \(--learning-rate\)"):
        e2e.run(recipe, tmp_path / "e2e", model=model, tokenizer=tokenizer, loader=e2e_loader,
                progress=False)


def test_glue_recipe_checks_the_sequence_length_against_the_positions(tmp_path: Path) -> None:
    """RTE's protocol length is 320; the tiny BERT has 64 positions."""
    tokenizer = write_tokenizer(tmp_path / "tok")
    for max_length, message in ((None, r"--max-length 320 \(the protocol's value for rte\) is "
                                       r"longer than the model allows \(64 positions\)"),
                                (65, r"--max-length 65 is longer than the model allows")):
        recipe = glue.GlueRecipe(task="rte", method="lora:r=2", epochs=1, device="cpu",
                                 max_length=max_length)
        with pytest.raises(ConfigError, match=message):
            glue.run(recipe, tmp_path / "rte", model=tiny_encoder("bert"), tokenizer=tokenizer,
                     loader=glue_loader, progress=False)


# -------------------------------------------------------------- CIFAR-10


def cifar_loader(name: str) -> dict[str, Split]:
    rng = np.random.default_rng(0)

    def images(count: int) -> tuple[list[np.ndarray], list[int]]:
        labels = [index % 10 for index in range(count)]
        pictures = []
        for label in labels:
            picture = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8)
            picture[: label + 1, :, label % 3] = 250  # the class shows as a bright band
            pictures.append(picture)
        return pictures, labels

    train_images, train_labels = images(60)
    test_images, test_labels = images(20)
    return {"train": Split(img=train_images, label=train_labels),
            "test": Split(img=test_images, label=test_labels)}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_cifar10_validation_fraction_outside_0_and_1_is_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match="--validation-fraction .* strictly between 0 and 1"):
        cifar10.Cifar10Recipe(method="lora:r=2", validation_fraction=fraction)


def test_cifar10_recipe_trains_with_accumulation_and_flips(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
    ))
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    recipe = cifar10.Cifar10Recipe(epochs=2, batch_size=9, gradient_accumulation=2,
                                   device="cpu", method="lora:r=2,lr=0.02,head_lr=0.03")
    metrics = cifar10.run(recipe, tmp_path / "cifar", model=model, processor=processor,
                          loader=cifar_loader, progress=False)
    # the method's own learning rates win over the recipe's (5e-3, head 1e-3)
    assert metrics["method"]["learning_rate"] == 0.02
    assert metrics["method"]["head_learning_rate"] == 0.03
    history = json.loads((tmp_path / "cifar" / "history.json").read_text())["steps"]
    assert history[0]["learning_rate"] == 0.02  # no warm-up: the adapter's full rate
    # 6 images per class: 5 train (0.9 · 6, rounded) and 1 validation
    assert metrics["train_images"] == 50 and metrics["validation_images"] == 10
    assert metrics["timings"]["steps"] == 2 * 3  # 50 images, 18 per step
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["trainable_parameters_adapter"] == 2 * 2 * 2 * (32 + 32)


def test_image_flips_mirror_and_follow_the_seed() -> None:
    from transformers import ViTImageProcessor

    picture = np.zeros((8, 8, 3), dtype=np.uint8)
    picture[:, :4] = 255
    processor = ViTImageProcessor(size={"height": 8, "width": 8})
    plain = cifar10.ImageDataset([picture] * 16, [0] * 16, processor).batch(range(16))
    flipping = cifar10.ImageDataset([picture] * 16, [0] * 16, processor, flip=True)
    torch.manual_seed(3)
    first = flipping.batch(range(16))["pixel_values"]
    torch.manual_seed(3)
    assert torch.equal(first, flipping.batch(range(16))["pixel_values"])
    mirrored = [not torch.equal(first[i], plain["pixel_values"][i]) for i in range(16)]
    assert 0 < sum(mirrored) < 16
    index = mirrored.index(True)
    assert torch.equal(first[index], plain["pixel_values"][index].flip(-1))


# -------------------------------------------------------------- commands


def test_every_recipe_field_is_a_command_line_option(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["glue", "--task", "cola", "--targets", "query_proj,value_proj",
                              "--max-train", "100", "--output-dir", str(tmp_path)])
    recipe = recipe_from_args(glue.GlueRecipe, args)
    assert recipe.task == "cola" and recipe.targets == ("query_proj", "value_proj")
    assert recipe.max_train == 100 and recipe.learning_rate is None
    for name in RECIPES:
        assert parser.parse_args([name, "--output-dir", str(tmp_path)]).recipe == name


@pytest.mark.parametrize("recipe_class", [glue.GlueRecipe, e2e.E2ERecipe, cifar10.Cifar10Recipe])
def test_recipes_refuse_row_caps_of_zero_or_less(recipe_class: type) -> None:
    assert recipe_class().max_train is None and recipe_class().max_eval is None  # no cap
    for field_name in ("max_train", "max_eval"):
        option = "--" + field_name.replace("_", "-")
        for value in (0, -1):
            with pytest.raises(ConfigError, match=f"{option} must be a positive number of rows, "
                                                  f"not {value}; for no cap, omit the option"):
                recipe_class(**{field_name: value})


@pytest.mark.parametrize(("recipe_class", "values", "message"), [
    (glue.GlueRecipe, {"epochs": 0}, "--epochs must be at least 1, not 0"),
    (glue.GlueRecipe, {"epochs": -1}, "--epochs must be at least 1, not -1"),
    (glue.GlueRecipe, {"learning_rate": 0.0}, "--learning-rate must be a positive finite"),
    (glue.GlueRecipe, {"learning_rate": float("inf")}, "--learning-rate must be a positive"),
    (glue.GlueRecipe, {"max_length": 0}, "--max-length 0 is too short; use at least 8"),
    (glue.GlueRecipe, {"batch_size": 0}, "--batch-size must be at least 1, not 0"),
    (glue.GlueRecipe, {"seed": -1}, "--seed must be a whole number from 0 to 4294967295"),
    (e2e.E2ERecipe, {"learning_rate": 0.0}, "--learning-rate must be a positive finite"),
    (e2e.E2ERecipe, {"max_new_tokens": 0}, "--max-new-tokens must be at least 1, not 0"),
    (e2e.E2ERecipe, {"num_beams": 0}, "--num-beams must be at least 1, not 0"),
    (e2e.E2ERecipe, {"warmup_steps": -1}, "--warmup-steps must be 0 or more, not -1"),
    (e2e.E2ERecipe, {"label_smoothing": 1.0}, "--label-smoothing must lie in"),
    (cifar10.Cifar10Recipe, {"head_learning_rate": -1.0}, "--head-learning-rate must be a"),
    (cifar10.Cifar10Recipe, {"gradient_accumulation": 0}, "--gradient-accumulation must be"),
])
def test_recipes_refuse_values_that_cannot_train(
    recipe_class: type, values: dict, message: str
) -> None:
    """The GLUE recipe once read 0 as "the protocol's value" (``recipe.epochs or
    hyper.epochs``) and trained the protocol's epochs while recording 0."""
    with pytest.raises(ConfigError, match=message):
        recipe_class(**values)


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--learning-rate", "0"],
                                    ["--max-length", "0"], ["--targets", ",,,"],
                                    ["--targets", ""]])
def test_glue_recipe_command_refuses_values_that_cannot_train_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    from qpeft.train.recipes.__main__ import main

    output = tmp_path / "never"
    assert main(["glue", "--task", "sst2", *option, "--output-dir", str(output)]) == 2
    assert f"error: {option[0]}" in capsys.readouterr().err
    assert not output.exists()


def test_recipe_command_refuses_max_train_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qpeft.train.recipes.__main__ import main

    output = tmp_path / "never"
    assert main(["e2e", "--max-train", "0", "--output-dir", str(output)]) == 2
    assert "--max-train must be a positive number of rows" in capsys.readouterr().err
    assert not output.exists()


def test_recipe_resume_shows_a_complete_run_and_refuses_other_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qpeft.train.recipes.__main__ import main
    from qpeft.train.report import write_json

    calls = []

    def fake_run(recipe, folder, resume=False):
        calls.append(resume)
        metrics = {"test_accuracy": 0.5}
        write_json(Path(folder) / "metrics.json", metrics)
        return metrics

    monkeypatch.setattr(cifar10, "run", fake_run)
    folder = tmp_path / "run"
    command = ["cifar10", "--method", "lora:r=2", "--epochs", "2", "--output-dir", str(folder)]
    assert main(command) == 0 and calls == [False]
    assert main([*command, "--resume"]) == 0 and calls == [False]  # shown, not trained again
    assert "holds a complete run" in capsys.readouterr().err
    assert main([*command, "--resume", "--epochs", "3"]) == 2 and calls == [False]
    assert "holds a run with other settings (--epochs differ)" in capsys.readouterr().err
    assert main([*command, "--resume", "--device", "cpu"]) == 0  # the device may change

    def refuse(recipe, folder, resume=False):
        raise ConfigError("the model does not load")

    monkeypatch.setattr(cifar10, "run", refuse)
    fresh = tmp_path / "fresh"
    assert main(["cifar10", "--output-dir", str(fresh)]) == 2
    assert not fresh.exists()  # no run.json, no folder: the corrected command is not refused


def test_an_overwrite_refused_before_any_work_keeps_the_old_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old run is set aside, not deleted, until the recipe has loaded its model
    and data; a mistyped command with --overwrite gives it back."""
    from qpeft.train.recipes.__main__ import main
    from qpeft.train.report import write_json

    def train(recipe, folder, resume=False):
        write_json(Path(folder) / "metrics.json", {"test_accuracy": 0.5})
        return {"test_accuracy": 0.5}

    def refuse(recipe, folder, resume=False):
        raise ConfigError("the model does not load")

    folder = tmp_path / "run"
    command = ["cifar10", "--method", "lora:r=2", "--output-dir", str(folder)]
    monkeypatch.setattr(cifar10, "run", train)
    assert main(command) == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(cifar10, "run", refuse)
    assert main([*command, "--overwrite"]) == 2
    assert "the model does not load" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left aside

    def train_again(recipe, folder, resume=False):
        write_json(Path(folder) / "metrics.json", {"test_accuracy": 0.75})
        return {"test_accuracy": 0.75}

    monkeypatch.setattr(cifar10, "run", train_again)
    assert main([*command, "--overwrite"]) == 0
    assert "0.75" in (folder / "metrics.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_recipes_neither_overwrite_nor_resume_a_folder_with_a_foreign_run_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qpeft.train.recipes.__main__ import main

    monkeypatch.setattr(cifar10, "run", lambda *args, **kwargs: pytest.fail("trained"))
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for content in ('{"experiment": "sacred run 17"}', "not json", "[1]"):
        (folder / "run.json").write_text(content)
        for option in ("--overwrite", "--resume"):
            assert main(["cifar10", "--output-dir", str(folder), option]) == 2
            assert "is not a qpeft run marker" in capsys.readouterr().err
            assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "run.json"]


def test_the_sequence_length_check_knows_roberta_s_position_offset() -> None:
    """RoBERTa's family numbers positions from padding_idx + 1: 20 rows, 18 tokens."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from qpeft.models import check_sequence_length

    small = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 20}
    roberta = RobertaForSequenceClassification(RobertaConfig(**small)).eval()
    check_sequence_length(roberta, 18, "--max-length")
    roberta(torch.full((1, 18), 5))  # the longest accepted length runs
    with pytest.raises(ConfigError, match="--max-length 19 is longer than the model allows"):
        check_sequence_length(roberta, 19, "--max-length")
    bert = BertForSequenceClassification(BertConfig(**small))
    check_sequence_length(bert, 20, "--seq-len")
    with pytest.raises(ConfigError, match="--seq-len 21 is longer"):
        check_sequence_length(bert, 21, "--seq-len")
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    relative = DebertaV2ForSequenceClassification(DebertaV2Config(  # as deberta-v3-base
        **small, position_biased_input=False, relative_attention=True, pooler_hidden_size=16))
    check_sequence_length(relative, 10_000, "--max-length")  # relative positions only


def test_cifar10_recipe_refuses_a_model_without_query_and_value(tmp_path: Path) -> None:
    """The protocol adapts query and value; other modules are not guessed."""
    from transformers import ConvNextConfig, ConvNextForImageClassification, ViTImageProcessor

    model = ConvNextForImageClassification(ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=10,
        image_size=16))
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    recipe = cifar10.Cifar10Recipe(epochs=1, batch_size=9, device="cpu", method="lora:r=2")
    with pytest.raises(ConfigError, match="query/value .* with --targets"):
        cifar10.run(recipe, tmp_path / "cifar", model=model, processor=processor,
                    loader=cifar_loader, progress=False)


def test_recipe_resume_refuses_an_edited_ansatz_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qpeft.train.recipes.__main__ import main
    from qpeft.train.report import write_json

    def fake_run(recipe, folder, resume=False):
        write_json(Path(folder) / "metrics.json", {"test_accuracy": 0.5})
        return {"test_accuracy": 0.5}

    monkeypatch.setattr(cifar10, "run", fake_run)
    ansatz = tmp_path / "mine.py"
    ansatz.write_text("import qpeft\n\ndef build(dimension: int = 4, layers: int = 1):\n"
                      "    return qpeft.ansatz.for_dimension(dimension, layers=layers)\n")
    folder = tmp_path / "run"
    command = ["cifar10", "--method", f"qpeft:K=2,L=1,ansatz={ansatz}",
               "--output-dir", str(folder)]
    assert main(command) == 0
    assert json.loads((folder / "run.json").read_text())["inputs"]["ansatz"]
    ansatz.write_text(ansatz.read_text() + "# edited\n")
    assert main([*command, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"the ansatz file of --method qpeft:K=2,L=1,ansatz={ansatz} changed" in err
