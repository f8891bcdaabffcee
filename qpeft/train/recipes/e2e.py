"""E2E NLG with GPT-2 Medium, following LoRA's protocol.

Protocol source: LoRA (Hu et al., ICLR 2022), Table 11, and its released
commands (github.com/microsoft/LoRA, ``examples/NLG/README.md``): AdamW,
learning rate 2e-4, weight decay 0.01, batch size 8, 5 epochs, linear
schedule with 500 warm-up steps, no gradient clipping, label smoothing 0.1,
LoRA rank 4 with α = 32 and dropout 0.1 on the attention input projection
``c_attn`` (GPT-2 fuses query, key and value there; the paper adapts query
and value);
decoding by beam search with 10 beams, length penalty 0.9 (the paper's
table; the README's command line uses 0.8) and no repeated 4-grams.

Training pairs are ``"<meaning representation> ||"`` followed by the
reference text and the end-of-text token; the loss covers the text only.
Every distinct meaning representation of the test split is decoded once and
scored against all its references with :func:`qpeft.train.metrics.corpus_bleu`
(an own implementation with simple tokenisation: close to, not identical
with, the official e2e-metrics script).

Run (online)::

    python -m qpeft.train.recipes e2e --method qpeft:K=4,L=2 --output-dir runs/e2e
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpeft.errors import ConfigError, DataError
from qpeft.train.recipes.common import RATE_OPTION, check_recipe_values, check_row_caps

PROTOCOL = (
    "LoRA (Hu et al., ICLR 2022) Table 11 and github.com/microsoft/LoRA examples/NLG/README.md "
    "(GPT-2 Medium on E2E)"
)
SEPARATOR = " ||"


@dataclass(frozen=True)
class E2ERecipe:
    """An E2E run with LoRA's GPT-2 Medium settings."""

    model: str = "openai-community/gpt2-medium"
    method: str = field(default="lora:r=4,alpha=32,dropout=0.1",
                        metadata={"help": "method spec, e.g. qpeft:K=4,L=2"})
    targets: tuple[str, ...] = field(default=("c_attn",),
                                     metadata={"help": "comma-separated module suffixes"})
    dataset: str = "tuetschek/e2e_nlg"
    epochs: int = 5
    batch_size: int = 8
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    label_smoothing: float = 0.1
    max_length: int = 512
    num_beams: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    generation_batch_size: int = 8
    seed: int = 110
    max_train: int | None = field(default=None, metadata={"help": "cap on training pairs"})
    max_eval: int | None = field(default=None,
                                 metadata={"help": "cap on test meaning representations"})
    device: str = "auto"

    def __post_init__(self) -> None:
        check_row_caps(self)
        check_recipe_values(self)


@dataclass(frozen=True)
class Pairs:
    """Meaning representations and their reference texts, one pair per row."""

    meanings: list[str]
    texts: list[str]


def pairs_from_split(split: Any, where: str) -> Pairs:
    """Read the ``meaning_representation`` and ``human_reference`` columns."""
    try:
        meanings = [str(value) for value in split["meaning_representation"]]
        texts = [str(value) for value in split["human_reference"]]
    except (KeyError, ValueError):
        raise DataError(
            f"{where} lacks the columns meaning_representation and human_reference; "
            "give an E2E dataset in that format with --dataset"
        ) from None
    return Pairs(meanings, texts)


def group_references(pairs: Pairs) -> list[tuple[str, list[str]]]:
    """``(meaning, [references...])`` in order of first appearance.

    Example:
        >>> group_references(Pairs(["a", "b", "a"], ["x", "y", "z"]))
        [('a', ['x', 'z']), ('b', ['y'])]
    """
    grouped: dict[str, list[str]] = {}
    for meaning, text in zip(pairs.meanings, pairs.texts):
        grouped.setdefault(meaning, []).append(text)
    return list(grouped.items())


class CausalLMDataset:
    """Prompt + continuation examples for a decoder-only model; the labels
    are -100 (ignored) on the prompt and on padding. Examples are cut to
    ``max_length`` tokens; one whose prompt alone fills them (no token left to
    learn) is refused."""

    def __init__(self, tokenizer: Any, prompts: Sequence[str], continuations: Sequence[str],
                 max_length: int) -> None:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("the tokenizer has no end-of-text token; E2E training needs one")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        prompt_ids = tokenizer(list(prompts))["input_ids"]
        continuation_ids = tokenizer([" " + text for text in continuations])["input_ids"]
        self.input_ids: list[list[int]] = []
        self.labels: list[list[int]] = []
        longest = 0
        for prompt, continuation in zip(prompt_ids, continuation_ids):
            tokens = list(prompt) + list(continuation) + [eos]
            labels = [-100] * len(prompt) + list(continuation) + [eos]
            self.input_ids.append(tokens[:max_length])
            self.labels.append(labels[:max_length])
            longest = max(longest, len(tokens))
        empty = sum(all(label == -100 for label in row) for row in self.labels)
        if empty:
            raise ConfigError(
                f"{empty} of {len(self.labels)} training pairs have a prompt of {max_length} "
                f"tokens or more, so --max-length {max_length} cuts off their whole reference "
                f"text and leaves nothing to learn; raise --max-length (the longest pair has "
                f"{longest} tokens)"
            )

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        import torch

        width = max(len(self.input_ids[i]) for i in indices)

        def padded(rows: list[list[int]], fill: int) -> Any:
            return torch.tensor([row + [fill] * (width - len(row)) for row in rows])

        ids = [self.input_ids[i] for i in indices]
        return {
            "input_ids": padded(ids, self.pad_token_id),
            "attention_mask": padded([[1] * len(row) for row in ids], 0),
            "labels": padded([self.labels[i] for i in indices], -100),
        }


def check_generation_length(model: Any, tokenizer: Any, prompts: Sequence[str],
                            max_new_tokens: int) -> None:
    """Refuse test prompts that, with ``max_new_tokens`` generated tokens,
    need more positions than the model has (the prompts are not cut)."""
    from qpeft.models import position_limit

    limit = position_limit(model)
    if limit is None or not prompts:
        return
    longest = max(len(ids) for ids in tokenizer(list(prompts))["input_ids"])
    if longest >= limit:
        raise ConfigError(
            f"the longest test prompt has {longest} tokens, which fills the model's {limit} "
            "positions and leaves none to generate; choose a model with more positions"
        )
    if longest + max_new_tokens > limit:
        raise ConfigError(
            f"the longest test prompt ({longest} tokens) and --max-new-tokens {max_new_tokens} "
            f"need {longest + max_new_tokens} positions, more than the model's {limit}; use "
            f"--max-new-tokens {limit - longest} or less"
        )


def label_smoothed_loss(smoothing: float) -> Any:
    """Next-token cross-entropy with label smoothing, ignoring label -100."""
    import torch.nn.functional as functional

    def compute(outputs: Any, batch: dict[str, Any]) -> Any:
        logits = outputs.logits[:, :-1, :]
        labels = batch["labels"][:, 1:]
        return functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
            ignore_index=-100, label_smoothing=smoothing,
        )

    return compute


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], recipe: E2ERecipe,
             device: Any, progress: bool = False) -> list[str]:
    """Beam-search continuations of ``prompts`` (left-padded batches), up to
    the first end-of-text token or line break."""
    import torch
    from tqdm.auto import tqdm

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(prompts), recipe.generation_batch_size)
        for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
            chunk = list(prompts[start : start + recipe.generation_batch_size])
            encoded = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                produced = model.generate(
                    **encoded, num_beams=recipe.num_beams, length_penalty=recipe.length_penalty,
                    no_repeat_ngram_size=recipe.no_repeat_ngram_size,
                    max_new_tokens=recipe.max_new_tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = produced[:, encoded["input_ids"].shape[1]:]
            for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                outputs.append(text.strip().split("\n")[0].strip())
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def run(
    recipe: E2ERecipe,
    output_dir: str | Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    loader: Any = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on E2E's train split, decode the test split, write the report
    (with ``generations.json``) into ``output_dir``."""
    import torch

    from qpeft.models import check_sequence_length, quiet_transformers, resolve_model
    from qpeft.train.loop import TrainConfig, resolve_device, train
    from qpeft.train.methods import MethodSpec, prepare_model
    from qpeft.train.metrics import corpus_bleu
    from qpeft.train.recipes.common import load_hub_dataset, recipe_method, write_recipe_report
    from qpeft.train.report import write_json

    started = time.perf_counter()
    folder = Path(output_dir)
    device = resolve_device(recipe.device)
    dataset = load_hub_dataset(recipe.dataset, loader)
    train_pairs = pairs_from_split(dataset["train"], f"{recipe.dataset} train")
    test_groups = group_references(pairs_from_split(dataset["test"], f"{recipe.dataset} test"))
    if recipe.max_train is not None:
        train_pairs = Pairs(train_pairs.meanings[: recipe.max_train],
                            train_pairs.texts[: recipe.max_train])
    if recipe.max_eval is not None:
        test_groups = test_groups[: recipe.max_eval]

    torch.manual_seed(recipe.seed)
    if model is None or tokenizer is None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = resolve_model(recipe.model)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source.location)
            model = AutoModelForCausalLM.from_pretrained(source.location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # every length is checked before training: a traceback at the first long batch,
    # or after hours of training at generation, would leave a run behind
    check_sequence_length(model, recipe.max_length, "--max-length")
    prompts = [meaning + SEPARATOR for meaning, _ in test_groups]
    check_generation_length(model, tokenizer, prompts, recipe.max_new_tokens)
    training_set = CausalLMDataset(
        tokenizer, [meaning + SEPARATOR for meaning in train_pairs.meanings], train_pairs.texts,
        recipe.max_length,
    )
    spec = recipe_method(MethodSpec.parse(recipe.method), recipe.learning_rate)
    prepared = prepare_model(model, spec, recipe.targets)
    config = TrainConfig(
        epochs=recipe.epochs, batch_size=recipe.batch_size, learning_rate=spec.learning_rate,
        weight_decay=recipe.weight_decay, warmup_steps=recipe.warmup_steps,
        max_grad_norm=None, seed=recipe.seed,
    )
    result = train(
        prepared.model, training_set, config, device=device,
        head_parameter_names=prepared.head_parameter_names(),
        checkpoint_path=folder / "checkpoint.pt", resume=resume,
        fingerprint=prepared.fingerprint(recipe="e2e"),
        compute_loss=label_smoothed_loss(recipe.label_smoothing),
        progress=progress, description=f"e2e {spec.label}", rate_option=RATE_OPTION,
    )
    generation_started = time.perf_counter()
    hypotheses = generate(prepared.model, tokenizer, prompts, recipe, device, progress)
    references = [refs for _, refs in test_groups]
    write_json(folder / "generations.json", [
        {"meaning_representation": meaning, "generated": text, "references": refs}
        for (meaning, refs), text in zip(test_groups, hypotheses)
    ])
    metrics = write_recipe_report(
        folder, recipe=recipe, source=PROTOCOL, prepared=prepared, result=result,
        scores={"bleu": corpus_bleu(hypotheses, references),
                "test_meaning_representations": len(test_groups)},
        extra={"train_pairs": len(train_pairs.meanings),
               "generation_seconds": time.perf_counter() - generation_started,
               "total_seconds": time.perf_counter() - started},
    )
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return metrics
