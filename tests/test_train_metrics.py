"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qpeft.train import metrics


def test_accuracy_confusion_and_macro_f1_on_a_worked_example() -> None:
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    predictions = [0, 0, 1, 1, 2, 2, 2, 0]
    assert metrics.accuracy(predictions, labels) == 5 / 8
    assert metrics.confusion_matrix(predictions, labels, 3) == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    # class 0: tp 2, 3 true, 3 predicted -> 2/3; class 1: 1, 2, 2 -> 1/2; class 2: 2, 3, 3 -> 2/3
    assert metrics.per_class_f1(predictions, labels, 3) == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert metrics.macro_f1(predictions, labels, 3) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_macro_f1_skips_classes_absent_from_labels_and_predictions() -> None:
    assert metrics.per_class_f1([0, 1], [0, 1], 3)[2] is None
    assert metrics.macro_f1([0, 1], [0, 1], 3) == 1.0
    # a class that is predicted but never true scores 0 and counts
    assert metrics.macro_f1([0, 2], [0, 1], 3) == pytest.approx((1 + 0 + 0) / 3)


def test_binary_f1_and_matthews_correlation() -> None:
    predictions, labels = [1, 1, 0, 0, 1], [1, 0, 0, 0, 1]  # tp 2, fp 1, tn 2, fn 0
    assert metrics.binary_f1(predictions, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    expected = (2 * 2 - 1 * 0) / math.sqrt((2 + 1) * (2 + 0) * (2 + 1) * (2 + 0))
    assert metrics.matthews_correlation(predictions, labels) == pytest.approx(expected)
    assert metrics.matthews_correlation([0, 0, 0], [0, 1, 0]) == 0.0
    assert metrics.matthews_correlation([1, 0], [0, 1]) == pytest.approx(-1.0)


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=40))
def test_multiclass_matthews_equals_the_binary_formula(pairs: list[tuple[int, int]]) -> None:
    predictions = [p for p, _ in pairs]
    labels = [y for _, y in pairs]
    tp = sum(p == 1 and y == 1 for p, y in pairs)
    tn = sum(p == 0 and y == 0 for p, y in pairs)
    fp = sum(p == 1 and y == 0 for p, y in pairs)
    fn = sum(p == 0 and y == 1 for p, y in pairs)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    expected = 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator
    assert metrics.matthews_correlation(predictions, labels) == pytest.approx(expected)


def test_correlations() -> None:
    assert metrics.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert metrics.spearman([10, 20, 30], [1, 100, 1000]) == pytest.approx(1.0)
    # ties share their average rank: ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert metrics.spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(
        metrics.pearson([1.5, 1.5, 3], [1, 2, 3]))


def test_majority_baseline_uses_the_training_majority() -> None:
    assert metrics.majority_baseline_accuracy([2, 2, 0], [0, 0, 2, 1]) == 0.25
    assert metrics.majority_baseline_accuracy([1, 0], [0, 1, 1]) == pytest.approx(1 / 3)


def test_bleu_on_worked_examples() -> None:
    # unigram precision 5/6, bigram precision 3/5, equal lengths
    assert metrics.corpus_bleu(
        ["the cat is on the mat"], [["the cat sat on the mat"]], max_order=2
    ) == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    # perfect precisions, brevity penalty exp(1 - 6/2)
    assert metrics.corpus_bleu(
        ["the cat"], [["the cat sat on the mat"]], max_order=2
    ) == pytest.approx(math.exp(-2))
    # clipping takes the largest count over references; the closest length is 3
    assert metrics.corpus_bleu(
        ["the the the"], [["the cat", "the the dog"]], max_order=1
    ) == pytest.approx(2 / 3)
    assert metrics.corpus_bleu(["Near the river."], [["near the river ."]]) == 1.0


def test_metrics_refuse_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="no examples"):
        metrics.accuracy([], [])
