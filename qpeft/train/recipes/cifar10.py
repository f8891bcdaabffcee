"""CIFAR-10 with ViT-B/16, following FourierFT's image-classification protocol.

Protocol source: FourierFT (Gao et al., ICML 2024), the released ViT scripts
(github.com/Chaos96/fourierft, ``experiments/ViT/cifar10-base-3000.bash`` and
``exec.py``): ViT-B/16 pre-trained on ImageNet-21k
(``google/vit-base-patch16-224-in21k``), 10 epochs, batch 50 with 4
gradient-accumulation steps (200 images per step), AdamW with weight decay
9e-5, head learning rate 1e-3, a validation split of 10 % of the training
images, adapters on the query and value projections (``query``/``value``;
``q_proj``/``v_proj`` in transformers 5), LoRA r = 16, α = 16, dropout 0.1.

Two differences, both written down here: FourierFT tunes the adapter
learning rate per method with a search (``exec_optuna.py``); this recipe
defaults to 5e-3 for the adapter (set ``--learning-rate``). Its training
augmentation is random horizontal flipping only (FourierFT also uses
random resized crops, which need torchvision); images are resized and
normalised by the model's image processor.

Run (online)::

    python -m qpeft.train.recipes cifar10 --method qpeft:K=4,L=2 --output-dir runs/cifar10
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
    "FourierFT (Gao et al., ICML 2024) ViT scripts, github.com/Chaos96/fourierft "
    "experiments/ViT/cifar10-base-3000.bash and exec.py"
)

CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


@dataclass(frozen=True)
class Cifar10Recipe:
    """A CIFAR-10 run with FourierFT's ViT-B/16 settings."""

    model: str = "google/vit-base-patch16-224-in21k"
    method: str = field(default="lora:r=16,alpha=16,dropout=0.1",
                        metadata={"help": "method spec, e.g. qpeft:K=4,L=2"})
    targets: tuple[str, ...] | None = field(default=None, metadata={
        "help": "comma-separated module suffixes (default: the query and value projections)"})
    dataset: str = "uoft-cs/cifar10"
    image_column: str = "img"
    epochs: int = 10
    batch_size: int = 50
    gradient_accumulation: int = 4
    learning_rate: float = 5e-3
    head_learning_rate: float = 1e-3
    weight_decay: float = 9e-5
    validation_fraction: float = 0.1
    eval_batch_size: int = 128
    seed: int = 0
    max_train: int | None = field(default=None, metadata={"help": "cap on training images"})
    max_eval: int | None = field(default=None, metadata={"help": "cap on test images"})
    device: str = "auto"

    def __post_init__(self) -> None:
        check_row_caps(self)
        check_recipe_values(self)
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(
                f"--validation-fraction {self.validation_fraction} must lie strictly between 0 "
                "and 1: the recipe validates every epoch on that share of the train split"
            )


class ImageDataset:
    """Images turned into ``pixel_values`` by an image processor, batch by
    batch; with ``flip`` each image is mirrored left-right with probability
    1/2 (drawn from torch's seeded generator)."""

    def __init__(self, images: Sequence[Any], labels: Sequence[int], processor: Any,
                 flip: bool = False) -> None:
        self.images = list(images)
        self.labels = list(labels)
        self.processor = processor
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        import torch

        images = [self.images[i] for i in indices]
        images = [image.convert("RGB") if hasattr(image, "convert") else image for image in images]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        if self.flip:
            mirrored = torch.rand(len(indices)) < 0.5
            pixels[mirrored] = pixels[mirrored].flip(-1)
        return {"pixel_values": pixels, "labels": torch.tensor([self.labels[i] for i in indices])}


def _split_columns(split: Any, image_column: str, where: str) -> tuple[list[Any], list[int]]:
    try:
        return list(split[image_column]), [int(value) for value in split["label"]]
    except (KeyError, ValueError):
        raise DataError(
            f"{where} lacks the columns {image_column!r} and 'label'; name the image column "
            "with --image-column"
        ) from None


def run(
    recipe: Cifar10Recipe,
    output_dir: str | Path,
    *,
    model: Any = None,
    processor: Any = None,
    loader: Any = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on CIFAR-10's train split (less the validation part), report
    validation and test accuracy into ``output_dir``."""
    import torch

    from qpeft.models import quiet_transformers, resolve_model
    from qpeft.train import metrics as scores
    from qpeft.train.data import stratified_sample, stratified_split
    from qpeft.train.loop import TrainConfig, evaluate, resolve_device, train
    from qpeft.train.methods import MethodSpec, pick_targets, prepare_model
    from qpeft.train.recipes.common import load_hub_dataset, recipe_method, write_recipe_report

    started = time.perf_counter()
    folder = Path(output_dir)
    device = resolve_device(recipe.device)
    dataset = load_hub_dataset(recipe.dataset, loader)
    images, labels = _split_columns(dataset["train"], recipe.image_column,
                                    f"{recipe.dataset} train")
    test_images, test_labels = _split_columns(dataset["test"], recipe.image_column,
                                              f"{recipe.dataset} test")
    fractions = (1 - recipe.validation_fraction, recipe.validation_fraction)
    train_rows, validation_rows = stratified_split(labels, fractions, recipe.seed)
    test_rows = list(range(len(test_labels)))
    if recipe.max_train is not None:
        train_rows = stratified_sample(labels, train_rows, recipe.max_train, recipe.seed)
    if recipe.max_eval is not None:
        validation_rows = stratified_sample(labels, validation_rows, recipe.max_eval, recipe.seed)
        test_rows = stratified_sample(test_labels, test_rows, recipe.max_eval, recipe.seed)

    torch.manual_seed(recipe.seed)
    if model is None or processor is None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        source = resolve_model(recipe.model)
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(source.location)
            model = AutoModelForImageClassification.from_pretrained(
                source.location, num_labels=len(CIFAR10_LABELS),
                id2label=dict(enumerate(CIFAR10_LABELS)),
                label2id={name: i for i, name in enumerate(CIFAR10_LABELS)},
                ignore_mismatched_sizes=True,
            )
    spec = recipe_method(MethodSpec.parse(recipe.method), recipe.learning_rate,
                         recipe.head_learning_rate)
    targets = recipe.targets or pick_targets(model, ("query", "value"), ("q_proj", "v_proj"))
    if targets is None:  # the protocol adapts query and value; guess nothing else
        raise ConfigError(
            f"{type(model).__name__} has no query/value (or q_proj/v_proj) modules, which "
            "the CIFAR-10 protocol adapts; name the attention projections with --targets"
        )
    prepared = prepare_model(model, spec, targets)
    config = TrainConfig(
        epochs=recipe.epochs, batch_size=recipe.batch_size,
        gradient_accumulation=recipe.gradient_accumulation,
        learning_rate=spec.learning_rate, head_learning_rate=spec.head_learning_rate,
        weight_decay=recipe.weight_decay, warmup_ratio=0.0, max_grad_norm=None,
        seed=recipe.seed, eval_batch_size=recipe.eval_batch_size,
    )

    def subset(rows: Sequence[int], source_images: Sequence[Any], source_labels: Sequence[int],
               flip: bool) -> ImageDataset:
        return ImageDataset([source_images[i] for i in rows], [source_labels[i] for i in rows],
                            processor, flip)

    validation_set = subset(validation_rows, images, labels, False)

    def validate(epoch: int) -> dict[str, Any]:
        predictions = evaluate(prepared.model, validation_set, batch_size=config.eval_batch_size,
                               device=device, progress=progress, description="validation",
                               rate_option=RATE_OPTION)
        return {"accuracy": scores.accuracy(predictions.predicted_classes, predictions.labels)}

    result = train(
        prepared.model, subset(train_rows, images, labels, True), config,
        head_parameter_names=prepared.head_parameter_names(), device=device,
        checkpoint_path=folder / "checkpoint.pt", resume=resume,
        fingerprint=prepared.fingerprint(recipe="cifar10"), on_epoch_end=validate,
        progress=progress, description=f"cifar10 {spec.label}", rate_option=RATE_OPTION,
    )
    test = evaluate(prepared.model, subset(test_rows, test_images, test_labels, False),
                    batch_size=config.eval_batch_size, device=device, progress=progress,
                    description="test", rate_option=RATE_OPTION)
    metrics = write_recipe_report(
        folder, recipe=recipe, source=PROTOCOL, prepared=prepared, result=result,
        scores={
            "test_accuracy": scores.accuracy(test.predicted_classes, test.labels),
            "test_macro_f1": scores.macro_f1(test.predicted_classes, test.labels,
                                             len(CIFAR10_LABELS)),
            "validation_accuracy": result.epoch_metrics[-1]["accuracy"],
        },
        extra={"train_images": len(train_rows), "validation_images": len(validation_rows),
               "test_images": len(test_rows), "total_seconds": time.perf_counter() - started},
    )
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return metrics
