"""GLUE with DeBERTaV3-base, following AdaLoRA's protocol.

Protocol source: AdaLoRA (Zhang et al., ICLR 2023), the DeBERTaV3-base GLUE
scripts released with it (github.com/QingruZhang/AdaLoRA,
``NLU/scripts/run_debertav3_<task>.sh``); the Quantum-PEFT paper compares
against this setup. Per task:

=====  ========  ======  =======  =========  ===========  ============  =====
task   lr        epochs  max len  warm-up    cls dropout  weight decay  α
=====  ========  ======  =======  =========  ===========  ============  =====
mnli   5e-4      7       256      1000 st.   0.15         0             16
sst2   8e-4      24      128      1000 st.   0.0          0.01          16
cola   8e-4      25      64       100 st.    0.10         0             32
qqp    8e-4      5       320      2000 st.   0.15         0.01          16
qnli   5e-4      5       512      500 st.    0.1          0.01          32
rte    1.2e-3    50      320      200 st.    0.20         0.01          32
mrpc   1e-3      30      320      10 %       0.0          0.01          32
stsb   2.2e-3    25      128      100 st.    0.2          0.1           32
=====  ========  ======  =======  =========  ===========  ============  =====

Batch size 32, AdamW, linear schedule, adapters on all six weight matrices of
every layer (query, key, value, attention output, intermediate, output), as in
those scripts, named as the model type names them (:data:`GLUE_TARGETS`). α is
LoRA's scale; AdaLoRA's budget schedule and orthogonality penalty are
AdaLoRA-specific and not used here. Scores are on GLUE's validation split
(``validation_matched`` for MNLI; test labels are hidden), recorded as
``evaluation_split`` in the report: accuracy, with Matthews correlation for
CoLA, Pearson/Spearman for STS-B and F1 too for MRPC/QQP; the score after the
last epoch is reported (the scripts evaluate periodically and papers usually
quote the best evaluation).

Run (online)::

    python -m qpeft.train.recipes glue --task rte --method qpeft:K=4,L=2 --output-dir runs/rte
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpeft.errors import ConfigError
from qpeft.train.recipes.common import RATE_OPTION, check_recipe_values, check_row_caps

PROTOCOL = (
    "AdaLoRA (Zhang et al., ICLR 2023) DeBERTaV3-base GLUE scripts, "
    "github.com/QingruZhang/AdaLoRA NLU/scripts/run_debertav3_<task>.sh"
)


@dataclass(frozen=True)
class TaskHyperparameters:
    learning_rate: float
    epochs: int
    max_length: int
    warmup_steps: int | None
    warmup_ratio: float
    cls_dropout: float
    weight_decay: float
    lora_alpha: float


#: AdaLoRA's DeBERTaV3-base GLUE settings (see the module docstring).
ADALORA_GLUE: dict[str, TaskHyperparameters] = {
    "mnli": TaskHyperparameters(5e-4, 7, 256, 1000, 0.0, 0.15, 0.0, 16),
    "sst2": TaskHyperparameters(8e-4, 24, 128, 1000, 0.0, 0.0, 0.01, 16),
    "cola": TaskHyperparameters(8e-4, 25, 64, 100, 0.0, 0.10, 0.0, 32),
    "qqp": TaskHyperparameters(8e-4, 5, 320, 2000, 0.0, 0.15, 0.01, 16),
    "qnli": TaskHyperparameters(5e-4, 5, 512, 500, 0.0, 0.1, 0.01, 32),
    "rte": TaskHyperparameters(1.2e-3, 50, 320, 200, 0.0, 0.20, 0.01, 32),
    "mrpc": TaskHyperparameters(1e-3, 30, 320, None, 0.1, 0.0, 0.01, 32),
    "stsb": TaskHyperparameters(2.2e-3, 25, 128, 100, 0.0, 0.2, 0.1, 32),
}

#: All six weight matrices of a DeBERTa-v2 layer (``output.dense`` also
#: matches ``attention.output.dense``).
DEBERTA_TARGETS = ("query_proj", "key_proj", "value_proj", "intermediate.dense", "output.dense")
#: All six weight matrices of a BERT or RoBERTa layer.
BERT_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                "output.dense")

#: The default ``--targets`` per transformers ``model_type``: all six weight
#: matrices of every layer, as in the protocol (DeBERTa v1 fuses query, key
#: and value in ``in_proj``).
GLUE_TARGETS: dict[str, tuple[str, ...]] = {
    "deberta-v2": DEBERTA_TARGETS,
    "deberta": ("in_proj", "attention.output.dense", "intermediate.dense", "output.dense"),
    "bert": BERT_TARGETS,
    "roberta": BERT_TARGETS,
    "xlm-roberta": BERT_TARGETS,
}


def glue_targets(model: Any) -> tuple[str, ...]:
    """The protocol's targets for ``model``: all six weight matrices of every
    layer, named as its model type names them (:data:`GLUE_TARGETS`)."""
    from qpeft.train.methods import model_type

    kind = model_type(model)
    if kind not in GLUE_TARGETS:
        raise ConfigError(
            f"the GLUE recipe knows the weight matrices of {', '.join(GLUE_TARGETS)} models, "
            f"not of model type {kind!r}; name them with --targets"
        )
    return GLUE_TARGETS[kind]


@dataclass(frozen=True)
class GlueRecipe:
    """A GLUE run; ``None`` fields take the task's protocol value (a value
    given, checked by :func:`~qpeft.train.recipes.common.check_recipe_values`,
    is used as it is)."""

    task: str = field(default="sst2", metadata={"help": "GLUE task"})
    model: str = field(default="microsoft/deberta-v3-base", metadata={"help": "model"})
    method: str = field(default="lora:r=8", metadata={
        "help": "method spec, e.g. qpeft:K=4,L=2 or lora:r=8 (α defaults to the protocol's)"})
    targets: tuple[str, ...] | None = field(default=None, metadata={
        "help": "comma-separated module suffixes (default: all six weight matrices of every "
                "layer, named per model type: DeBERTa, BERT, RoBERTa)"})
    batch_size: int = 32
    learning_rate: float | None = None
    epochs: int | None = None
    max_length: int | None = None
    seed: int = 0
    max_train: int | None = field(default=None, metadata={"help": "cap on training rows"})
    max_eval: int | None = field(default=None, metadata={"help": "cap on evaluation rows"})
    device: str = "auto"

    def __post_init__(self) -> None:
        check_row_caps(self)
        check_recipe_values(self)

    def hyperparameters(self) -> TaskHyperparameters:
        task = self.task.lower()
        if task not in ADALORA_GLUE:
            raise ConfigError(f"unknown GLUE task {self.task!r}; choose one of "
                              f"{', '.join(ADALORA_GLUE)}")
        return ADALORA_GLUE[task]


def task_scores(task: str, predictions: Any) -> dict[str, float]:
    """GLUE's metrics of ``task`` from :class:`~qpeft.train.loop.Predictions`."""
    from qpeft.train import metrics

    task = task.lower()
    if task == "stsb":
        values = predictions.logits.squeeze(-1).tolist()
        return {"pearson": metrics.pearson(values, predictions.labels),
                "spearman": metrics.spearman(values, predictions.labels)}
    predicted = predictions.predicted_classes
    scores = {"accuracy": metrics.accuracy(predicted, predictions.labels)}
    if task == "cola":
        scores["matthews_correlation"] = metrics.matthews_correlation(predicted,
                                                                      predictions.labels)
    if task in {"mrpc", "qqp"}:
        scores["f1"] = metrics.binary_f1(predicted, predictions.labels)
    return scores


def run(
    recipe: GlueRecipe,
    output_dir: str | Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    loader: Any = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune on one GLUE task and write the report into ``output_dir``.

    ``model``/``tokenizer`` default to ``recipe.model`` from the hub (with the
    protocol's classifier dropout); ``loader`` defaults to
    ``datasets.load_dataset`` (see :func:`qpeft.train.data.load_glue`).
    """
    from dataclasses import replace

    import torch

    from qpeft.models import (
        align_padding,
        load_sequence_classifier,
        load_tokenizer,
        position_limit,
        resolve_model,
    )
    from qpeft.train.data import encode, glue_task, load_glue, stratified_sample
    from qpeft.train.loop import TrainConfig, evaluate, resolve_device, train
    from qpeft.train.methods import MethodSpec, prepare_model
    from qpeft.train.recipes.common import recipe_method, write_recipe_report

    started = time.perf_counter()
    folder = Path(output_dir)
    hyper = recipe.hyperparameters()
    device = resolve_device(recipe.device)
    max_length = hyper.max_length if recipe.max_length is None else recipe.max_length
    parts = load_glue(recipe.task, loader=loader)
    train_data, evaluation_data = parts["train"], parts["evaluation"]
    regression = train_data.label_names is None
    if recipe.max_train is not None:
        chosen = (range(min(recipe.max_train, len(train_data))) if regression else
                  stratified_sample(train_data.labels, range(len(train_data)),
                                    recipe.max_train, recipe.seed))
        train_data = train_data.subset(list(chosen))
    if recipe.max_eval is not None:
        evaluation_data = evaluation_data.subset(range(min(recipe.max_eval,
                                                           len(evaluation_data))))

    torch.manual_seed(recipe.seed)
    if model is None or tokenizer is None:
        source = resolve_model(recipe.model)
        tokenizer = load_tokenizer(source)
        model = load_sequence_classifier(source, train_data.label_names,
                                         cls_dropout=hyper.cls_dropout)
    align_padding(model, tokenizer)
    limit = position_limit(model)
    if limit is not None and max_length > limit:
        protocol = "" if recipe.max_length is not None else (
            f" (the protocol's value for {recipe.task.lower()})")
        raise ConfigError(
            f"--max-length {max_length}{protocol} is longer than the model allows ({limit} "
            f"positions); use --max-length {limit} or less"
        )
    spec = MethodSpec.parse(recipe.method)
    if spec.name == "lora" and spec.alpha is None:
        spec = replace(spec, alpha=hyper.lora_alpha)
    spec = recipe_method(spec, hyper.learning_rate if recipe.learning_rate is None
                         else recipe.learning_rate)
    prepared = prepare_model(model, spec, recipe.targets or glue_targets(model))
    config = TrainConfig(
        epochs=hyper.epochs if recipe.epochs is None else recipe.epochs,
        batch_size=recipe.batch_size,
        learning_rate=spec.learning_rate, head_learning_rate=spec.head_learning_rate,
        weight_decay=hyper.weight_decay, warmup_steps=hyper.warmup_steps,
        warmup_ratio=hyper.warmup_ratio, seed=recipe.seed,
    )
    evaluation_set = encode(tokenizer, evaluation_data, max_length)
    result = train(
        prepared.model, encode(tokenizer, train_data, max_length), config,
        head_parameter_names=prepared.head_parameter_names(), device=device,
        checkpoint_path=folder / "checkpoint.pt", resume=resume,
        fingerprint=prepared.fingerprint(recipe="glue", task=recipe.task),
        progress=progress, description=f"{recipe.task} {spec.label}",
        rate_option=RATE_OPTION,
    )
    predictions = evaluate(prepared.model, evaluation_set, batch_size=config.eval_batch_size,
                           device=device, progress=progress, rate_option=RATE_OPTION)
    scores = task_scores(recipe.task, predictions)
    metrics = write_recipe_report(
        folder, recipe=recipe, source=PROTOCOL, prepared=prepared, result=result,
        scores={"task": recipe.task,
                "evaluation_split": glue_task(recipe.task).evaluation_split, **scores},
        extra={"hyperparameters": hyper.__dict__, "train_rows": len(train_data),
               "evaluation_rows": len(evaluation_data),
               "total_seconds": time.perf_counter() - started},
    )
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return metrics
