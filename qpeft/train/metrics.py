"""Evaluation metrics, written out so that their definitions are on the page.

All functions take plain sequences (lists, or 1-D tensors converted with
``.tolist()``) and return Python floats; scores are fractions, not percents.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to their label.

    Example:
        >>> accuracy([0, 1, 1, 2], [0, 1, 2, 2])
        0.75
    """
    _same_length(predictions, labels)
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def confusion_matrix(
    predictions: Sequence[int], labels: Sequence[int], num_classes: int
) -> list[list[int]]:
    """``matrix[true][predicted]`` counts.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2)
        [[1, 1], [0, 1]]
    """
    _same_length(predictions, labels)
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for p, y in zip(predictions, labels):
        matrix[y][p] += 1
    return matrix


def per_class_f1(
    predictions: Sequence[int], labels: Sequence[int], num_classes: int
) -> list[float | None]:
    """F1 of each class; ``None`` for a class that is neither a label nor a
    prediction (its F1 is undefined)."""
    matrix = confusion_matrix(predictions, labels, num_classes)
    scores: list[float | None] = []
    for c in range(num_classes):
        true_positive = matrix[c][c]
        actual = sum(matrix[c])
        predicted = sum(row[c] for row in matrix)
        if actual == 0 and predicted == 0:
            scores.append(None)
        else:
            scores.append(2 * true_positive / (actual + predicted))
    return scores


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur as a label
    or a prediction (the convention of scikit-learn's ``average="macro"``).

    Example:
        >>> round(macro_f1([0, 0, 1, 2], [0, 1, 1, 2], 3), 4)  # F1 = 2/3, 2/3, 1
        0.7778
    """
    scores = [s for s in per_class_f1(predictions, labels, num_classes) if s is not None]
    return sum(scores) / len(scores)


def binary_f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (GLUE's F1 for MRPC and QQP).

    Example:
        >>> binary_f1([1, 1, 0, 0], [1, 0, 1, 0])
        0.5
    """
    _same_length(predictions, labels)
    tp = sum(1 for p, y in zip(predictions, labels) if p == positive and y == positive)
    fp = sum(1 for p, y in zip(predictions, labels) if p == positive and y != positive)
    fn = sum(1 for p, y in zip(predictions, labels) if p != positive and y == positive)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_correlation(
    predictions: Sequence[int], labels: Sequence[int], num_classes: int = 2
) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004;
    CoLA's metric); 0 when either side is constant.

    Example:
        >>> matthews_correlation([1, 1, 0, 0], [1, 1, 0, 0])
        1.0
        >>> matthews_correlation([1, 0, 1, 0], [1, 1, 0, 0])
        0.0
    """
    matrix = confusion_matrix(predictions, labels, num_classes)
    samples = sum(map(sum, matrix))
    correct = sum(matrix[c][c] for c in range(num_classes))
    true_counts = [sum(matrix[c]) for c in range(num_classes)]
    predicted_counts = [sum(row[c] for row in matrix) for c in range(num_classes)]
    covariance = correct * samples - sum(t * p for t, p in zip(true_counts, predicted_counts))
    spread_predicted = samples**2 - sum(p * p for p in predicted_counts)
    spread_true = samples**2 - sum(t * t for t in true_counts)
    if spread_predicted == 0 or spread_true == 0:
        return 0.0
    return covariance / math.sqrt(spread_predicted * spread_true)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (STS-B's metric); 0 when either side is constant.

    Example:
        >>> pearson([1, 2, 3], [2, 4, 6])
        1.0
    """
    _same_length(x, y)
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    dx = [v - mean_x for v in x]
    dy = [v - mean_y for v in y]
    denominator = math.sqrt(sum(v * v for v in dx) * sum(v * v for v in dy))
    return 0.0 if denominator == 0 else sum(a * b for a, b in zip(dx, dy)) / denominator


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for position in range(start, stop + 1):
            ranks[order[position]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties get their average rank).

    Example:
        >>> spearman([1, 2, 3, 4], [1, 3, 2, 4])
        0.8
    """
    return pearson(_ranks(x), _ranks(y))


def majority_baseline_accuracy(train_labels: Sequence[int], test_labels: Sequence[int]) -> float:
    """Test accuracy of always predicting the most frequent training class
    (ties go to the smallest class index).

    Example:
        >>> majority_baseline_accuracy([0, 1, 1], [1, 1, 0, 2])
        0.5
    """
    counts = Counter(train_labels)
    majority = min(counts, key=lambda label: (-counts[label], label))
    return sum(int(label == majority) for label in test_labels) / len(test_labels)


def classification_metrics(
    predictions: Sequence[int], labels: Sequence[int], num_classes: int
) -> dict[str, float]:
    """``accuracy`` and ``macro_f1`` (fractions)."""
    return {
        "accuracy": accuracy(predictions, labels),
        "macro_f1": macro_f1(predictions, labels, num_classes),
    }


# ---------------------------------------------------------------------- BLEU

_TOKEN = re.compile(r"\w+|[^\w\s]")


def bleu_tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks.

    Example:
        >>> bleu_tokenize("The Eagle, near Burger King.")
        ['the', 'eagle', ',', 'near', 'burger', 'king', '.']
    """
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4
) -> float:
    """Corpus BLEU (Papineni et al. 2002) with several references per hypothesis.

    Clipped n-gram precisions for n = 1..``max_order`` pooled over the corpus,
    geometric mean with uniform weights, brevity penalty against the reference
    length closest to each hypothesis (shorter on ties), no smoothing. Text
    is split by :func:`bleu_tokenize`, so scores are close to, but not the
    same as, the official E2E scripts (which use NIST tokenisation).

    Example:
        >>> corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]])
        1.0
        >>> corpus_bleu(["a b c d"], [["e f g h"]])
        0.0
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    matches = [0] * max_order
    totals = [0] * max_order
    hypothesis_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references):
        tokens = bleu_tokenize(hypothesis)
        ref_tokens = [bleu_tokenize(reference) for reference in refs]
        hypothesis_length += len(tokens)
        reference_length += min(
            (len(r) for r in ref_tokens), key=lambda n: (abs(n - len(tokens)), n)
        )
        for n in range(1, max_order + 1):
            counts = _ngrams(tokens, n)
            best: Counter[tuple[str, ...]] = Counter()
            for r in ref_tokens:
                best |= _ngrams(r, n)
            matches[n - 1] += sum(min(count, best[gram]) for gram, count in counts.items())
            totals[n - 1] += max(len(tokens) - n + 1, 0)
    if hypothesis_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    brevity = 1.0 if hypothesis_length > reference_length else math.exp(
        1 - reference_length / hypothesis_length
    )
    return brevity * math.exp(log_precision)


def _same_length(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} labels")
    if not a:
        raise ValueError("no examples to score")
