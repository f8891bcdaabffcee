"""Tiny models and synthetic data for exercising the harness offline in seconds.

Used by qpeft's own tests, and handy for trying the commands on a new
machine::

    from qpeft.train.testing import write_tiny_bert, write_sentiment_csv
    model_dir = write_tiny_bert("tiny-bert")
    csv_path = write_sentiment_csv("tiny.csv", rows=300)
    # qpeft finetune --model tiny-bert --dataset tiny.csv --method lora

The synthetic sentiment rows carry their class in a marker word
(``good`` / ``fine`` / ``bad``) among random filler words, so a model can
learn them quickly and a training run visibly lowers the loss.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
FILLER_WORDS = (
    "the", "a", "car", "road", "drive", "city", "today", "is", "was", "very", "quite", "this",
    "ride", "seat", "wheel", "trip", "new", "old", "my", "our",
)
MARKERS = {"negative": "bad", "neutral": "fine", "positive": "good"}
VOCABULARY = (*SPECIAL_TOKENS, *FILLER_WORDS, *MARKERS.values())


def write_tokenizer(folder: str | Path, words: tuple[str, ...] = VOCABULARY) -> Any:
    """A lower-casing word-piece tokenizer over ``words``, saved in ``folder``."""
    from transformers import BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def tiny_bert_config(num_labels: int = 3, **overrides: Any) -> Any:
    """A 2-layer BERT configuration with hidden size 32."""
    from transformers import BertConfig

    values: dict[str, Any] = {
        "vocab_size": len(VOCABULARY), "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
        "num_labels": num_labels,
    }
    values.update(overrides)
    return BertConfig(**values)


def write_tiny_bert(folder: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny BERT backbone and its tokenizer in
    ``folder``: loading it for sequence classification adds a new head, as
    with a real pre-trained checkpoint."""
    import torch
    from transformers import BertModel

    folder = Path(folder)
    torch.manual_seed(seed)
    BertModel(tiny_bert_config()).save_pretrained(str(folder))
    write_tokenizer(folder)
    return folder


def sentiment_rows(rows: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(text, label)`` pairs with classes in the ratio 3 : 2 : 1."""
    rng = random.Random(seed)
    names = ["negative"] * 3 + ["neutral"] * 2 + ["positive"]
    result = []
    for index in range(rows):
        label = names[index % len(names)]
        words = rng.choices(FILLER_WORDS, k=rng.randint(3, 9))
        words.insert(rng.randrange(len(words) + 1), MARKERS[label])
        result.append((" ".join(words), label))
    return result


def write_sentiment_csv(path: str | Path, rows: int = 300, seed: int = 0) -> Path:
    """Write :func:`sentiment_rows` as a CSV with columns ``text`` and ``label``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(sentiment_rows(rows, seed))
    return path
