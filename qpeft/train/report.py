"""Report folders: JSON, Markdown and PNG files, each written atomically
(to a temporary file in the same folder, then moved into place with
``os.replace``), so that an interrupted run never leaves a truncated file.

A ``qpeft finetune`` folder holds:

==============================  ==============================================
``run.json``                    the settings of the run (written first)
``metrics.json``                scores, parameter counts, timings, memory,
                                data sizes, settings (the run is complete
                                when this file exists)
``history.json``                loss and learning rate of every step,
                                validation scores of every epoch
``report.md``                   a readable summary
``loss.png``                    training loss per step
``accuracy_vs_parameters.png``  test accuracy against trainable parameters
                                (log scale) with the majority-class line
``adapter/``                    what was trained (see
                                :meth:`qpeft.train.methods.PreparedModel.save_adapter`)
==============================  ==============================================

Plots use matplotlib's Agg canvas directly (no pyplot, no display needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qpeft.files import write_atomically


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=False, default=_jsonable) + "\n")


def as_json(value: Any) -> Any:
    """``value`` as it reads back from :func:`write_json` (tuples as lists, paths
    as strings), for comparing a setting with a saved one."""
    return json.loads(json.dumps(value, default=_jsonable))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_figure(figure: Any, path: str | Path) -> None:
    """Save a matplotlib figure as PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=120,
                                                         bbox_inches="tight"))


# --------------------------------------------------------------------- plots


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values.

    Example:
        >>> moving_average([1, 2, 3, 4], 2)
        [1.0, 1.5, 2.5, 3.5]
    """
    result, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        result.append(total / min(index + 1, window))
    return result


def plot_loss(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> None:
    """Training loss per step of each labelled history, raw (faint) and as a
    moving average over a tenth of the steps."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2))
    axes = figure.add_subplot()
    colors = [f"C{index % 10}" for index in range(len(histories))]
    for color, (label, history) in zip(colors, histories.items()):
        if not history:
            continue
        steps = [entry["step"] for entry in history]
        losses = [entry["loss"] for entry in history]
        axes.plot(steps, losses, color=color, alpha=0.25, linewidth=0.8)
        window = max(1, len(losses) // 10)
        axes.plot(steps, moving_average(losses, window), color=color, linewidth=1.8, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_title("Training loss (faint: per step; bold: moving average)")
    axes.grid(alpha=0.3)
    if histories:
        axes.legend(fontsize=8)
    save_figure(figure, path)


def plot_accuracy_vs_parameters(
    points: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    baselines: Mapping[str, float] | None = None,
    title: str = "Test accuracy against trainable parameters",
) -> None:
    """One marker per point (``label``, ``parameters``, ``accuracy``, optional
    ``accuracy_std`` drawn as an error bar) on a log x-axis, and a horizontal
    line per baseline accuracy. A point with 0 adapter parameters (head only)
    cannot sit on a log axis and is drawn as a baseline line instead."""
    from matplotlib.figure import Figure

    baselines = dict(baselines or {})
    for point in points:
        if point["parameters"] <= 0:
            baselines[point["label"]] = point["accuracy"]
    points = [point for point in points if point["parameters"] > 0]
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for index, point in enumerate(points):
        axes.errorbar(
            [point["parameters"]], [point["accuracy"]], yerr=[point.get("accuracy_std") or 0.0],
            fmt="o", color=f"C{index % 10}", capsize=3, label=point["label"],
        )
        axes.annotate(point["label"], (point["parameters"], point["accuracy"]),
                      textcoords="offset points", xytext=(5, 4), fontsize=7)
    for index, (label, value) in enumerate(baselines.items()):
        axes.axhline(value, color="gray", linestyle=["--", ":", "-."][index % 3], linewidth=1,
                     label=label)
    axes.set_xscale("log")
    if not points:
        axes.set_xlim(1, 1e6)
    axes.set_xlabel("trainable parameters, adapter only (log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, loc="lower right")
    save_figure(figure, path)


# -------------------------------------------------------------- formatting


def format_count(value: int | None) -> str:
    """``1234567`` -> ``1,234,567``."""
    return "n/a" if value is None else f"{value:,}"


def format_bytes(value: int | float | None) -> str:
    """Binary units: ``1536`` -> ``1.5 KiB``.

    Example:
        >>> format_bytes(1536), format_bytes(3 * 2**20)
        ('1.5 KiB', '3.0 MiB')
    """
    if value is None:
        return "n/a"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_percent(value: float | None, std: float | None = None) -> str:
    """A fraction as a percentage with one decimal, optionally ``± std``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{100 * value:.1f}"
    return text if std is None else f"{text} ± {100 * std:.1f}"


# ------------------------------------------------------------ run reports


def _last_part(timings: Mapping[str, Any]) -> str:
    """A resumed run's wall times cover the command that finished it."""
    start = timings.get("resumed_from_step") or 0
    return f" (the part resumed at step {start})" if start else ""


def run_report_markdown(metrics: Mapping[str, Any]) -> str:
    """``report.md`` of one fine-tuning run, from its ``metrics.json``."""
    counts = metrics["parameters"]
    timings = metrics["timings"]
    data = metrics["data"]
    config = metrics["config"]
    lines = [
        f"# Fine-tuning report: {metrics['label']}",
        "",
        f"Model `{config['model']}`, data `{data['source']}`, seed {metrics['seed']}, "
        f"device {config['device']}.",
        "",
        "| | value |",
        "|---|---|",
        f"| test accuracy | {format_percent(metrics['test_accuracy'])} % |",
        f"| test macro-F1 | {format_percent(metrics['test_macro_f1'])} % |",
        f"| validation accuracy | {format_percent(metrics['validation_accuracy'])} % |",
        "| majority-class baseline (test accuracy) | "
        f"{format_percent(metrics['majority_baseline_test_accuracy'])} % |",
        f"| trainable parameters, adapter only | {format_count(counts['adapter'])} |",
        f"| trainable parameters, with head | {format_count(counts['trainable'])} |",
        f"| parameters of the model | {format_count(counts['total'])} |",
        f"| adapter files | {format_bytes(metrics.get('adapter_bytes'))} |",
        f"| optimizer steps | {timings['steps']} |",
        f"| training time | {timings['train_seconds']:.1f} s "
        f"({timings['seconds_per_step']:.3f} s/step) |",
        f"| evaluation time | {timings['evaluation_seconds']:.1f} s |",
        f"| loading the model, training and evaluation{_last_part(timings)} | "
        f"{timings['total_seconds']:.1f} s |",
        f"| loading the data | {timings['data_seconds']:.1f} s |",
        f"| peak memory added by training | {format_bytes(metrics.get('peak_memory_bytes'))} "
        f"({metrics.get('memory_measure', '')}) |",
        "",
        "## Data",
        "",
        f"Split (seed {data['split_seed']}, stratified): "
        + ", ".join(f"{name} {size}" for name, size in data["sizes"].items())
        + f" rows; fractions {data['fractions']} before the caps.",
        "",
    ]
    if metrics.get("label_names"):
        names = metrics["label_names"]
        matrix = metrics["test_confusion_matrix"]
        lines += [
            "## Test confusion matrix (rows: true class, columns: predicted)",
            "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        lines += [f"| {name} | " + " | ".join(map(str, row)) + " |"
                  for name, row in zip(names, matrix)]
        lines.append("")
    if metrics.get("epoch_metrics"):
        lines += ["## Validation per epoch", "", "| epoch | accuracy | macro-F1 |", "|---|---|---|"]
        lines += [
            f"| {entry['epoch']} | {format_percent(entry['accuracy'])} % | "
            f"{format_percent(entry['macro_f1'])} % |"
            for entry in metrics["epoch_metrics"]
        ]
        lines.append("")
    lines += [
        "## Settings",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
        "Plots: `loss.png`, `accuracy_vs_parameters.png`. Adapter: `adapter/`.",
        "",
    ]
    return "\n".join(lines)


def write_run_report(
    folder: str | Path, metrics: Mapping[str, Any], history: Sequence[Mapping[str, float]]
) -> None:
    """Write ``metrics.json`` (last, so that its presence means complete),
    ``history.json``, ``report.md`` and the two plots into ``folder``."""
    folder = Path(folder)
    write_json(folder / "history.json", {
        "steps": list(history), "epochs": list(metrics.get("epoch_metrics", [])),
    })
    plot_loss({metrics["label"]: history}, folder / "loss.png")
    plot_accuracy_vs_parameters(
        [{"label": metrics["label"], "parameters": metrics["parameters"]["adapter"],
          "accuracy": metrics["test_accuracy"]}],
        folder / "accuracy_vs_parameters.png",
        baselines={"majority class": metrics["majority_baseline_test_accuracy"]},
    )
    write_text(folder / "report.md", run_report_markdown(metrics))
    write_json(folder / "metrics.json", metrics)
