"""Pieces every recipe uses: command-line options from the recipe dataclass,
and the report written at the end of a recipe run."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The option of every recipe that sets the learning rate (named in the advice
#: given when training diverges).
RATE_OPTION = "--learning-rate"


def _parser_type(annotation: str) -> Any:
    if "tuple" in annotation:
        return lambda text: tuple(part.strip() for part in text.split(",") if part.strip())
    if "float" in annotation:
        return float
    if "int" in annotation:
        return int
    return str


def add_recipe_arguments(parser: argparse.ArgumentParser, recipe_class: type) -> None:
    """One ``--field-name`` option per field of the recipe dataclass, with the
    recipe's value as default (booleans become ``--field``/``--no-field``)."""
    for spec in dataclasses.fields(recipe_class):
        option = "--" + spec.name.replace("_", "-")
        default = spec.default
        annotation = str(spec.type)
        help_text = spec.metadata.get("help", "")
        if annotation == "bool":
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            parser.add_argument(option, type=_parser_type(annotation), default=default,
                                help=help_text)


def check_row_caps(recipe: Any) -> None:
    """Refuse a recipe's ``max_train`` / ``max_eval`` below 1 (``None``, the
    default, is no cap); every recipe calls this from ``__post_init__``."""
    from qpeft.train.data import check_cap

    for name in ("max_train", "max_eval"):
        check_cap(getattr(recipe, name), "--" + name.replace("_", "-"),
                  "omit the option (None in Python)")


#: Recipe fields that must be whole numbers of at least 1.
_AT_LEAST_ONE = ("epochs", "batch_size", "gradient_accumulation", "eval_batch_size",
                 "num_beams", "max_new_tokens", "generation_batch_size")
#: Recipe fields that must be 0 or more.
_NOT_NEGATIVE = ("warmup_steps", "weight_decay", "no_repeat_ngram_size")
#: The shortest ``max_length`` accepted (as ``qpeft finetune --max-length``).
MIN_MAX_LENGTH = 8


def check_recipe_values(recipe: Any) -> None:
    """Refuse a recipe's budget and optimiser values that cannot train: an
    epoch count, batch size, beam count or token count below 1, a learning
    rate that is not a positive finite number, a negative weight decay or
    warm-up, a ``max_length`` below 8, a seed outside 0 … 2³² − 1, an empty
    ``--targets`` (``""`` or ``","``). ``None``
    (the protocol's value, in the GLUE recipe) is not checked; every recipe
    calls this from ``__post_init__``, so a bad value is refused before any work.
    """
    import math

    from qpeft.errors import ConfigError
    from qpeft.train.loop import SEED_LIMIT

    def option(name: str) -> str:
        return "--" + name.replace("_", "-")

    def value_of(name: str) -> Any:
        return getattr(recipe, name, None)

    for name in _AT_LEAST_ONE:
        value = value_of(name)
        if value is not None and value < 1:
            raise ConfigError(f"{option(name)} must be at least 1, not {value}")
    for name in ("learning_rate", "head_learning_rate"):
        value = value_of(name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{option(name)} must be a positive finite number, not {value}")
    for name in _NOT_NEGATIVE:
        value = value_of(name)
        if value is not None and not value >= 0:
            raise ConfigError(f"{option(name)} must be 0 or more, not {value}")
    length = value_of("max_length")
    if length is not None and length < MIN_MAX_LENGTH:
        raise ConfigError(f"--max-length {length} is too short; use at least "
                          f"{MIN_MAX_LENGTH} tokens")
    smoothing = value_of("label_smoothing")
    if smoothing is not None and not 0 <= smoothing < 1:
        raise ConfigError(f"--label-smoothing must lie in [0, 1), not {smoothing}")
    penalty = value_of("length_penalty")
    if penalty is not None and not math.isfinite(penalty):
        raise ConfigError(f"--length-penalty must be a finite number, not {penalty}")
    seed = value_of("seed")
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"--seed must be a whole number from 0 to {SEED_LIMIT - 1}, not {seed}")
    targets = value_of("targets")
    if targets is not None and not targets:
        raise ConfigError(
            "--targets names no module; give comma-separated module-name suffixes (for "
            "example query,value), or leave --targets out for the recipe's targets"
        )


def recipe_from_args(recipe_class: type, args: argparse.Namespace) -> Any:
    return recipe_class(**{spec.name: getattr(args, spec.name)
                           for spec in dataclasses.fields(recipe_class)})


def recipe_method(spec: Any, learning_rate: float, head_learning_rate: float | None = None) -> Any:
    """``spec`` (a :class:`~qpeft.train.methods.MethodSpec`) with the recipe's
    learning rates where the method names none, as in ``qpeft finetune``: the
    method's own ``lr=`` and ``head_lr=`` win, then its defaults are filled.

    Example:
        >>> from qpeft.train.methods import MethodSpec
        >>> recipe_method(MethodSpec.parse("lora:r=4,lr=0.01"), 2e-4).learning_rate
        0.01
        >>> recipe_method(MethodSpec.parse("lora:r=4"), 2e-4, 1e-3).head_learning_rate
        0.001
    """
    values: dict[str, Any] = {}
    if spec.learning_rate is None:
        values["learning_rate"] = learning_rate
    if spec.head_learning_rate is None and head_learning_rate is not None:
        values["head_learning_rate"] = head_learning_rate
    return dataclasses.replace(spec, **values).resolved()


def load_hub_dataset(name: str, loader: Any = None) -> Any:
    """``loader(name)``, by default ``datasets.load_dataset(name)``."""
    from qpeft.errors import ConfigError, DataError

    if loader is None:
        try:
            from datasets import load_dataset as loader
        except ImportError:
            raise ConfigError(
                f"the recipes read {name} with the 'datasets' package, which is not installed; "
                "install it with `pip install datasets` (downloading needs network access)"
            ) from None
    try:
        return loader(name)
    except (OSError, ConnectionError, ValueError) as error:
        raise DataError(
            f"could not load the dataset {name!r} ({error}); check the name, the network "
            "connection or the datasets cache"
        ) from None


def write_recipe_report(
    folder: Path,
    *,
    recipe: Any,
    source: str,
    prepared: Any,
    result: Any,
    scores: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json`` (scores, counts, timings, the recipe and its
    source protocol), ``history.json``, ``loss.png`` and ``adapter/``."""
    from qpeft.train.report import plot_loss, write_json

    counts = prepared.parameter_counts()
    adapter_bytes = prepared.save_adapter(folder / "adapter")
    metrics = {
        "recipe": type(recipe).__name__,
        "protocol": source,
        "label": prepared.spec.label,
        "method": prepared.spec.to_dict(),
        **dict(scores),
        "trainable_parameters_adapter": counts.adapter,
        "trainable_parameters_with_head": counts.trainable,
        "parameters": dataclasses.asdict(counts),
        "adapter_bytes": adapter_bytes,
        "timings": {
            "steps": result.steps,
            "train_seconds": result.train_seconds,
            "seconds_per_step": result.seconds_per_step,
        },
        "peak_memory_bytes": result.peak_memory_bytes,
        "memory_measure": result.memory_measure,
        "config": dataclasses.asdict(recipe),
        **dict(extra or {}),
    }
    write_json(folder / "history.json", {"steps": result.history, "epochs": result.epoch_metrics})
    plot_loss({prepared.spec.label: result.history}, folder / "loss.png")
    write_json(folder / "metrics.json", metrics)
    return metrics
