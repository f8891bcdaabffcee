"""One fine-tuning run from data to report, shared by ``qpeft finetune`` and
``qpeft compare``.

:func:`load_task` reads and splits the data, loads the tokenizer and
tokenises once; :func:`run_method` then loads a fresh model, prepares it for
a :class:`~qpeft.train.methods.MethodSpec`, trains, evaluates, saves the
adapter and writes the report folder. Both commands take the options of
:func:`add_task_arguments`, so "the same data and budget" means the same
values of these options.

The default budget (``--max-train 2000 --epochs 2 --max-eval 1000``, batch
32, sequences of at most 64 tokens) finishes a LoRA run of the embedded
MiniLM on a 2-core CPU within five minutes (266 s measured on a shared
machine with one thread); see docs/results.md for the measurements.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from qpeft.errors import ConfigError

DEFAULT_MAX_TRAIN = 2000
DEFAULT_MAX_EVAL = 1000
DEFAULT_EPOCHS = 2
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_LENGTH = 64

#: Written first into every run folder; it marks a qpeft run (see :func:`read_marker`).
RUN_MARKER = "run.json"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"

#: Settings that may change between an interrupted run and its resumption.
_FREE_ON_RESUME = {"device"}


@dataclass(frozen=True)
class TaskSettings:
    """Data and budget shared by every method of a run or comparison."""

    model: str = "embedded"
    dataset: str = "embedded"
    text_column: str | None = None
    label_column: str | None = None
    encoding: str | None = None
    targets: tuple[str, ...] | None = None
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float | None = None
    max_train: int | None = DEFAULT_MAX_TRAIN
    max_eval: int | None = DEFAULT_MAX_EVAL
    split_seed: int = 0
    max_length: int = DEFAULT_MAX_LENGTH
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["targets"] = None if self.targets is None else list(self.targets)
        return values


def _rows_or_all(text: str) -> int | None:
    """``all`` (or ``none``) means no cap; a number is checked by
    :func:`settings_from_args`, which refuses 0 and negative caps."""
    if text.lower() in {"all", "none"}:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of rows or 'all', not {text!r}"
        ) from None


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for the data, the model and the training budget."""
    data = parser.add_argument_group("data and model")
    data.add_argument("--model", default="embedded",
                      help="'embedded' (bundled all-MiniLM-L6-v2, default), a local model "
                           "folder, or a Hugging Face hub name")
    data.add_argument("--dataset", default="embedded",
                      help="'embedded' (bundled tweet-sentiment corpus, default), a CSV file, "
                           "or glue:TASK (needs the datasets package and network)")
    data.add_argument("--text-column", help="CSV column holding the text (default: detected)")
    data.add_argument("--label-column", help="CSV column holding the label (default: detected)")
    data.add_argument("--encoding", help="text encoding of the CSV (default utf-8; the "
                                         "embedded corpus is mac_roman)")
    data.add_argument("--targets", help="comma-separated module-name suffixes to adapt "
                                        "(default: the attention projections)")
    data.add_argument("--split-seed", type=int, default=0,
                      help="seed of the stratified 80/10/10 split (default 0)")
    budget = parser.add_argument_group("budget")
    budget.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"passes over the training rows (default {DEFAULT_EPOCHS})")
    budget.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: per method, see docs/finetune.md)")
    budget.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"training batch size (default {DEFAULT_BATCH_SIZE})")
    budget.add_argument("--max-train", type=_rows_or_all, default=DEFAULT_MAX_TRAIN,
                        help=f"cap on training rows, stratified; 'all' for no cap "
                             f"(default {DEFAULT_MAX_TRAIN})")
    budget.add_argument("--max-eval", type=_rows_or_all, default=DEFAULT_MAX_EVAL,
                        help=f"cap on validation and on test rows, stratified; 'all' for no "
                             f"cap (default {DEFAULT_MAX_EVAL})")
    budget.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                        help=f"tokens per example (default {DEFAULT_MAX_LENGTH})")
    budget.add_argument("--device", default="cpu",
                        help="cpu (default), cuda, cuda:N, mps or auto (other device types "
                             "are refused)")
    budget.add_argument("--threads", type=_threads, default="auto",
                        help="CPU threads for torch; 'auto' (default) leaves out the cores that "
                             "other processes keep busy (1-minute load average)")
    run = parser.add_argument_group("run folder")
    run.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --output-dir from its checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --output-dir")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _threads(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of threads or 'auto', not {text!r}"
        ) from None
    from qpeft.bench.cli import max_threads

    if not 1 <= value <= max_threads():
        raise argparse.ArgumentTypeError(
            f"expected 1 … {max_threads()} threads (the CPUs of this machine) or 'auto', "
            f"not {value}"
        )
    return value


def choose_threads(requested: str | int) -> int:
    """Set torch's CPU thread count and return it.

    ``auto`` keeps torch's default unless other processes keep cores busy:
    torch's threads wait for each other at every operation, so on a shared
    machine fewer threads than cores run faster (on 2 cores at load 4, a
    MiniLM LoRA step took 6.3 s with 2 threads and 2.0 s with 1). ``auto``
    uses the cores left free by the 1-minute load average, at least one.
    Results can differ in the last bits between thread counts.
    """
    import torch

    if requested == "auto":
        default = torch.get_num_threads()
        try:
            cores = len(os.sched_getaffinity(0))
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            return default
        threads = max(1, min(default, round(cores - busy)))
    else:
        threads = int(requested)
    torch.set_num_threads(threads)
    return threads


def settings_from_args(args: argparse.Namespace) -> TaskSettings:
    from qpeft.train.data import check_cap
    from qpeft.train.loop import resolve_device
    from qpeft.train.methods import parse_targets

    targets = None if args.targets is None else parse_targets(args.targets)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass only one")
    if args.max_length < 8:
        raise ConfigError(f"--max-length {args.max_length} is too short; use at least 8 tokens")
    check_cap(args.max_train, "--max-train", "pass --max-train all")
    check_cap(args.max_eval, "--max-eval", "pass --max-eval all")
    resolve_device(args.device)  # an unsupported or absent device, before the data loads
    return TaskSettings(
        model=args.model, dataset=args.dataset, text_column=args.text_column,
        label_column=args.label_column, encoding=args.encoding, targets=targets,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        max_train=args.max_train, max_eval=args.max_eval, split_seed=args.split_seed,
        max_length=args.max_length, device=args.device,
    )


# ---------------------------------------------------------------------- data


@dataclass
class Task:
    """Data ready for training: the split, the tokenizer and the encoded parts."""

    settings: TaskSettings
    splits: Any
    model_source: Any
    tokenizer: Any
    train: Any
    validation: Any
    test: Any
    load_seconds: float = 0.0

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.splits.label_names)


def load_task(settings: TaskSettings) -> Task:
    """Read, split and tokenise the data of ``settings``."""
    from qpeft.models import load_tokenizer, resolve_model
    from qpeft.train.data import encode, load_splits

    started = time.perf_counter()
    source = resolve_model(settings.model)
    splits = load_splits(
        settings.dataset, text_column=settings.text_column, label_column=settings.label_column,
        encoding=settings.encoding, seed=settings.split_seed, max_train=settings.max_train,
        max_eval=settings.max_eval,
    )
    tokenizer = load_tokenizer(source)
    return Task(
        settings=settings, splits=splits, model_source=source, tokenizer=tokenizer,
        train=encode(tokenizer, splits.train, settings.max_length),
        validation=encode(tokenizer, splits.validation, settings.max_length),
        test=encode(tokenizer, splits.test, settings.max_length),
        load_seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------- run folder

#: ``kind`` of the markers that ``qpeft finetune`` and ``qpeft compare`` write;
#: a recipe's is ``recipe:NAME``.
MARKER_KINDS = ("finetune", "compare")


def read_marker(path: Path) -> dict[str, Any] | None:
    """The qpeft run marker in ``path``, or ``None`` when ``path`` is not one.

    A marker is a JSON object whose ``kind`` is one of :data:`MARKER_KINDS` or
    ``recipe:NAME``; a file that merely has the marker's name (another tool's
    ``run.json``, a damaged file) is not one, so that ``--overwrite`` never
    deletes a folder that qpeft did not make.
    """
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    kind = value.get("kind")
    if not isinstance(kind, str) or not (kind in MARKER_KINDS or kind.startswith("recipe:")):
        return None
    return value


#: The entries that ``finetune``, ``compare`` and the recipes write in an output folder
#: (with their temporary names): ``--overwrite`` replaces a folder that holds only these.
RUN_OUTPUTS = frozenset({
    RUN_MARKER, "compare-run.json", METRICS_NAME, CHECKPOINT_NAME, "history.json",
    "report.md", "loss.png", "accuracy_vs_parameters.png", "adapter", "runs",
    "compare.json", "compare.md", "generations.json",
})


#: The temporary names qpeft's writers leave after an interruption: the atomic
#: writer's ``.NAME.<hex>.tmp`` and the adapter's staging folder ``.adapter.tmp-PID``.
_OWN_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp|\.adapter\.tmp-\d+")


def set_aside(folder: Path) -> Path:
    """Move ``folder`` to a hidden sibling and return where it went."""
    for _ in range(100):
        aside = folder.with_name(f".{folder.name}.replaced-{secrets.token_hex(4)}")
        if not aside.exists():
            folder.rename(aside)
            return aside
    raise FileExistsError(f"no free name beside {folder}")  # pragma: no cover


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace ``folder`` when it holds files qpeft did not write, or
    holds the working folder (``--output-dir .``)."""
    here = Path.cwd().resolve()
    if folder.resolve() in (here, *here.parents):
        raise ConfigError(
            f"--overwrite would replace {folder}, which holds the folder this command runs "
            "in; run it from elsewhere, or choose another --output-dir"
        )
    foreign = sorted(entry.name for entry in folder.iterdir()
                     if entry.name not in RUN_OUTPUTS and not _OWN_TEMPORARY.fullmatch(entry.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise ConfigError(
            f"{folder} holds files qpeft did not write ({shown}); --overwrite replaces the "
            "whole folder, so move them out first, or choose another --output-dir"
        )


def holds_run(folder: Path, marker: str = RUN_MARKER) -> bool:
    """Whether ``folder`` holds a qpeft run: its ``marker`` file is a qpeft marker."""
    return (folder / marker).is_file() and read_marker(folder / marker) is not None


def check_output_dir(folder: Path, *, resume: bool, overwrite: bool,
                     marker: str = RUN_MARKER) -> None:
    """Refuse ``folder`` as a run folder, without changing anything on disk.

    An empty or missing folder is fine. A folder holding a qpeft run (its
    ``marker`` is a qpeft marker, see :func:`read_marker`) is refused unless
    ``resume`` (continue it) or ``overwrite`` (replace it). A non-empty folder
    that is not a qpeft run is always refused, so that ``--overwrite`` cannot
    delete unrelated files; so is one whose ``marker`` file is not a qpeft
    marker (another tool's ``run.json``, or a damaged file). A folder that
    cannot be created (its parent is a file, or not writable) is refused too.
    """
    try:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder} is a file; choose a folder for --output-dir")
        if folder.is_dir() and any(folder.iterdir()):
            if not (folder / marker).is_file():
                raise ConfigError(
                    f"{folder} is not empty and holds no qpeft run ({marker}); choose an empty "
                    "or new folder for --output-dir"
                )
            if read_marker(folder / marker) is None:
                raise ConfigError(
                    f"{folder / marker} is not a qpeft run marker (not a JSON object with "
                    f"the 'kind' qpeft writes), so {folder} is not treated as a qpeft run and "
                    "is neither resumed nor overwritten; choose an empty or new folder for "
                    "--output-dir (delete the folder yourself if it is a damaged qpeft run)"
                )
            if not (overwrite or resume):
                raise ConfigError(
                    f"{folder} already holds a run; pass --resume to continue it, --overwrite "
                    "to replace it, or choose another --output-dir"
                )
            if overwrite:
                _check_replaceable(folder)
        ancestor = folder.absolute()
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
    except OSError as error:
        raise ConfigError(f"cannot use {folder} for --output-dir ({error})") from None
    if not ancestor.is_dir():
        raise ConfigError(
            f"cannot create {folder} for --output-dir: {ancestor} is a file; choose another folder"
        )


def prepare_output_dir(folder: Path, *, resume: bool, overwrite: bool,
                       marker: str = RUN_MARKER) -> None:
    """Make ``folder`` ready for a run, after :func:`check_output_dir`: with
    ``overwrite`` the run in it is replaced (moved aside in one rename, then
    deleted; a part that cannot be deleted stays aside, named in a note). Call it
    only once every other check has passed, so that a mistyped command leaves the
    old run alone."""
    check_output_dir(folder, resume=resume, overwrite=overwrite, marker=marker)
    aside = None
    try:
        if overwrite and holds_run(folder, marker):
            aside = set_aside(folder)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if aside is not None and not folder.exists():
            aside.rename(folder)  # the old run stays as it was
        raise ConfigError(
            f"cannot prepare {folder} for --output-dir ({error}); choose a folder you can write"
        ) from None
    if aside is not None:
        try:
            shutil.rmtree(aside)
        except OSError as error:
            print(f"note: the replaced run was moved to {aside}, and could not be deleted "
                  f"({error}); delete it yourself", file=sys.stderr)


def check_method(task: Task, spec: Any, seeds: Sequence[int]) -> None:
    """Check everything about training ``spec`` on ``task`` that can fail
    before the first step: the budget, the seeds, the device, the targets and
    the method's own options (it loads the model and prepares it once)."""
    from qpeft.models import check_sequence_length, load_sequence_classifier
    from qpeft.train.loop import resolve_device
    from qpeft.train.methods import prepare_model

    settings = task.settings
    spec = effective_spec(spec, settings)
    for seed in seeds:
        train_config(settings, spec, seed)
    resolve_device(settings.device)
    model = load_sequence_classifier(task.model_source, task.label_names,
                                     tokenizer=task.tokenizer)
    check_sequence_length(model, settings.max_length, "--max-length")
    prepare_model(model, spec, settings.targets)


def train_config(settings: TaskSettings, spec: Any, seed: int) -> Any:
    """The :class:`~qpeft.train.loop.TrainConfig` of ``spec`` under ``settings``."""
    from qpeft.train.loop import TrainConfig

    return TrainConfig(
        epochs=settings.epochs, batch_size=settings.batch_size,
        learning_rate=spec.learning_rate, head_learning_rate=spec.head_learning_rate, seed=seed,
    )


def _same_setting(key: str, saved: Any, given: Any) -> bool:
    """Equal values; for ``--model`` and ``--dataset`` also two spellings of one
    existing file or folder (``data.csv``, ``./data.csv``, an absolute path)."""
    if saved == given:
        return True
    if key not in ("model", "dataset") or not (isinstance(saved, str) and isinstance(given, str)):
        return False
    try:
        return os.path.samefile(Path(saved).expanduser(), Path(given).expanduser())
    except (OSError, ValueError):
        return False


def check_same_run(folder: Path, expected: Mapping[str, Any], marker: str = RUN_MARKER) -> None:
    """Refuse to resume ``folder`` when its marker differs from ``expected``
    (keys absent from ``expected`` are not compared), or is not a qpeft marker."""
    saved = read_marker(folder / marker)
    if saved is None:
        raise ConfigError(
            f"{folder / marker} is not a qpeft run marker, so {folder} cannot be resumed; "
            "choose an empty or new folder for --output-dir"
        )
    differences = [
        key for key in sorted(expected)
        if key not in {"settings", "inputs"} and saved.get(key) != expected.get(key)
    ]
    saved_settings = saved.get("settings", {})
    expected_settings = expected.get("settings", {})
    if not isinstance(saved_settings, dict):
        saved_settings = {"settings": saved_settings}
    differences += [
        f"--{key.replace('_', '-')}" for key in sorted(set(saved_settings) | set(expected_settings))
        if key not in _FREE_ON_RESUME
        and not _same_setting(key, saved_settings.get(key), expected_settings.get(key))
    ]
    if differences:
        raise ConfigError(
            f"{folder} holds a run with other settings ({', '.join(differences)} differ); "
            "resume with the original options, or pass --overwrite to start again"
        )
    # a run of an earlier release recorded no digests: nothing to compare
    saved_inputs = saved.get("inputs")
    expected_inputs = expected.get("inputs")
    if isinstance(saved_inputs, dict) and isinstance(expected_inputs, dict):
        ansatz = (expected.get("method") or {}).get("ansatz")
        files = {  # a recipe names its ansatz inside --method
            "ansatz": ("ansatz", f"{ansatz} (--ansatz)" if ansatz else
                       f"of --method {expected_settings.get('method')}"),
            "dataset": ("data", f"{expected_settings.get('dataset')} (--dataset)"),
        }
        for key, (what, name) in files.items():
            # a file that is gone now is reported by the command that reads it
            if (key in saved_inputs and key in expected_inputs
                    and saved_inputs[key] != expected_inputs[key]):
                raise ConfigError(
                    f"the {what} file {name} changed since the run in {folder} "
                    "started; restore the original file to resume, or pass --overwrite to "
                    "start again"
                )


# ----------------------------------------------------------------------- run


def environment(device: Any) -> dict[str, Any]:
    """Versions and hardware, recorded with every result."""
    import peft
    import torch
    import transformers

    from qpeft import __version__

    return {
        "qpeft": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "gpu": (torch.cuda.get_device_name(device)
                if getattr(device, "type", "") == "cuda" else None),
    }


@dataclass
class RunOutcome:
    """The metrics of a finished run and whether they were read from disk."""

    metrics: dict[str, Any]
    reused: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def effective_spec(spec: Any, settings: TaskSettings) -> Any:
    """``spec`` with its defaults filled: ``--lr`` is the learning rate of a
    method that names none of its own (``lora:lr=0.05`` keeps 0.05)."""
    if settings.learning_rate is not None and spec.learning_rate is None:
        spec = replace(spec, learning_rate=settings.learning_rate)
    return spec.resolved()


def _file_digest(path: Path) -> str | None:
    """SHA-256 of the bytes of ``path``; ``None`` when it cannot be read (the
    command that reads it reports that)."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def input_digests(settings: TaskSettings | None, spec: Any = None) -> dict[str, str]:
    """SHA-256 of the files a run reads that its options only name: the
    ``--dataset`` CSV file and the ``--ansatz`` .py file. The options stay the
    same when such a file is edited, so a resume compares these digests.
    (``settings`` ``None``: a recipe, whose data is never a file of the user's.)"""
    from qpeft.ansatz.catalog import names_file
    from qpeft.train.data import EMBEDDED_DATASET

    digests: dict[str, str] = {}
    dataset = EMBEDDED_DATASET if settings is None else settings.dataset
    if dataset != EMBEDDED_DATASET and not dataset.lower().startswith("glue:"):
        value = _file_digest(Path(dataset))
        if value is not None:
            digests["dataset"] = value
    ansatz = getattr(spec, "ansatz", None)
    if ansatz is not None and names_file(ansatz):
        value = _file_digest(Path(ansatz))
        if value is not None:
            digests["ansatz"] = value
    return digests


def run_marker(kind: str, spec: Any, seed: int, settings: TaskSettings) -> dict[str, Any]:
    """What ``run.json`` holds: enough to refuse resuming with other settings
    or with an edited data or ansatz file (see :func:`input_digests`)."""
    spec = effective_spec(spec, settings)
    return {"kind": kind, "method": spec.to_dict(), "seed": seed, "settings": settings.to_dict(),
            "inputs": input_digests(settings, spec)}


def finished_run(folder: Path, marker: Mapping[str, Any]) -> RunOutcome | None:
    """The outcome of the complete run in ``folder``, if there is one; an
    error if that run had other settings than ``marker``."""
    from qpeft.train.report import read_json

    if not (folder / RUN_MARKER).is_file() or not (folder / METRICS_NAME).is_file():
        return None
    check_same_run(folder, marker)
    try:
        metrics = read_json(folder / METRICS_NAME)
        history = read_json(folder / "history.json")["steps"]
        if not isinstance(metrics, dict) or not isinstance(history, list):
            raise ValueError("not the objects qpeft writes")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        raise ConfigError(
            f"the complete run in {folder} cannot be read back ({METRICS_NAME} or "
            f"history.json: {type(error).__name__}: {error}); pass --overwrite to run it again"
        ) from None
    return RunOutcome(metrics, reused=True, history=history)


#: Where the learning rate of ``qpeft finetune`` and ``qpeft compare`` is set.
RATE_OPTIONS = "--lr, or lr= in the method"


@contextmanager
def _divergence_advice(folder: Path) -> Iterator[None]:
    """Add to a :class:`~qpeft.errors.DivergenceError` how to start the run again."""
    from qpeft.errors import DivergenceError

    try:
        yield
    except DivergenceError as error:
        raise DivergenceError(
            f"{error}; {folder} keeps the unfinished run: start again with --overwrite"
        ) from None


def run_method(
    task: Task,
    spec: Any,
    seed: int,
    folder: Path,
    *,
    kind: str = "finetune",
    resume: bool = False,
    progress: bool = True,
    stop_after_step: int | None = None,
) -> RunOutcome:
    """Train ``spec`` on ``task`` with ``seed`` and write the report into
    ``folder`` (made ready by :func:`prepare_output_dir`). With ``resume``, a
    complete run is read back and an interrupted one continues."""
    import torch

    from qpeft.models import load_sequence_classifier
    from qpeft.train import metrics as scores
    from qpeft.train.loop import evaluate, release_free_memory, resolve_device, train
    from qpeft.train.methods import prepare_model
    from qpeft.train.report import write_json, write_run_report

    settings = task.settings
    spec = effective_spec(spec, settings)
    marker = run_marker(kind, spec, seed, settings)
    if resume and (folder / RUN_MARKER).is_file():
        check_same_run(folder, marker)
        finished = finished_run(folder, marker)
        if finished is not None:
            return finished
        # kept as written when the run started: a resume refused later (by the
        # checkpoint) must not record the refused files as the run's own
    else:
        write_json(folder / RUN_MARKER, marker)

    started = time.perf_counter()
    device = resolve_device(settings.device)
    release_free_memory()
    torch.manual_seed(seed)
    model = load_sequence_classifier(task.model_source, task.label_names,
                                     tokenizer=task.tokenizer)
    prepared = prepare_model(model, spec, settings.targets)
    counts = prepared.parameter_counts()
    num_classes = len(task.label_names)
    config = train_config(settings, spec, seed)

    def validate(epoch: int) -> dict[str, Any]:
        predictions = evaluate(prepared.model, task.validation, batch_size=config.eval_batch_size,
                               device=device, progress=progress, description="validation",
                               rate_option=RATE_OPTIONS)
        return {
            **scores.classification_metrics(predictions.predicted_classes, predictions.labels,
                                            num_classes),
            "seconds": predictions.seconds,
        }

    with _divergence_advice(folder):
        result = train(
            prepared.model, task.train, config,
            head_parameter_names=prepared.head_parameter_names(), device=device,
            checkpoint_path=folder / CHECKPOINT_NAME, resume=resume,
            fingerprint=prepared.fingerprint(model=task.model_source.location),
            stop_after_step=stop_after_step, on_epoch_end=validate, progress=progress,
            description=spec.label, rate_option=RATE_OPTIONS,
        )
        if not result.completed:
            return RunOutcome({"completed": False, "steps": result.steps},
                              history=result.history)
        test = evaluate(prepared.model, task.test, batch_size=config.eval_batch_size,
                        device=device, progress=progress, description="test",
                        rate_option=RATE_OPTIONS)
    predicted = test.predicted_classes
    final_validation = result.epoch_metrics[-1]
    adapter_bytes = prepared.save_adapter(folder / "adapter")
    evaluation_seconds = test.seconds + sum(entry["seconds"] for entry in result.epoch_metrics)
    train_labels = task.splits.train.labels
    metrics: dict[str, Any] = {
        "label": spec.label,
        "method": spec.to_dict(),
        "seed": seed,
        "test_accuracy": scores.accuracy(predicted, test.labels),
        "test_macro_f1": scores.macro_f1(predicted, test.labels, num_classes),
        "validation_accuracy": final_validation["accuracy"],
        "validation_macro_f1": final_validation["macro_f1"],
        "majority_baseline_test_accuracy": scores.majority_baseline_accuracy(
            train_labels, test.labels),
        "trainable_parameters_adapter": counts.adapter,
        "trainable_parameters_with_head": counts.trainable,
        "parameters": asdict(counts),
        "adapter_bytes": adapter_bytes,
        "timings": {
            "steps": result.steps,
            "train_seconds": result.train_seconds,
            "seconds_per_step": result.seconds_per_step,
            "evaluation_seconds": evaluation_seconds,
            "data_seconds": task.load_seconds,
            "total_seconds": time.perf_counter() - started,
            "resumed_from_step": result.resumed_from_step,
        },
        "peak_memory_bytes": result.peak_memory_bytes,
        "memory_measure": result.memory_measure,
        "label_names": list(task.label_names),
        "test_confusion_matrix": scores.confusion_matrix(predicted, test.labels, num_classes),
        "epoch_metrics": result.epoch_metrics,
        "final_training_loss": result.history[-1]["loss"],
        "data": {
            **task.splits.description,
            "train_class_counts": task.splits.train.class_counts(),
            "test_class_counts": task.splits.test.class_counts(),
        },
        "config": {
            **settings.to_dict(),
            "learning_rate": spec.learning_rate,
            "model": task.model_source.name,
            "model_location": task.model_source.location,
            "targets": list(prepared.targets) or None,
            "heads": list(prepared.heads),
            "train": config.to_dict(),
        },
        "environment": environment(device),
    }
    write_run_report(folder, metrics, result.history)
    (folder / CHECKPOINT_NAME).unlink(missing_ok=True)
    return RunOutcome(metrics, history=result.history)
