"""Compare fine-tuning methods on the same data and budget over several seeds.

Example::

    qpeft compare --methods head lora:r=4 qpeft:K=4,L=1 --seeds 0,1 --output-dir runs/cmp

Every (method, seed) pair is a full ``qpeft finetune`` run in
``OUTPUT/runs/METHOD/seed-SEED``; the comparison itself is written as
``compare.json``, ``compare.md``, ``accuracy_vs_parameters.png`` and
``loss.png`` in ``OUTPUT``. See docs/finetune.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qpeft.cli import DefaultsHelpFormatter

DEFAULT_METHODS = (
    "head",
    "lora:r=1",
    "lora:r=4",
    "lora:r=8",
    "oft",
    "qpeft:K=4,L=1",
    "qpeft:K=32,L=2",
    "qpeft:K=64,L=2",
    "full",
)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_FOLDER = Path("qpeft-runs") / "compare"
COMPARE_MARKER = "compare-run.json"


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, not {text!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, not {text!r}")
    return seeds


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``compare`` on ``subparsers``."""
    from qpeft.train.experiment import add_task_arguments

    summary = __doc__.strip().splitlines()[0]
    parser = subparsers.add_parser(
        "compare", help=summary, description=summary,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
        help="methods as name or name:key=value,... (keys r/K, L, ansatz, alpha, block, "
             "factor, lr, head_lr, dropout)",
    )
    parser.add_argument("--seeds", type=_seeds, default=DEFAULT_SEEDS,
                        help="comma-separated training seeds")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_FOLDER,
                        help="folder of the comparison")
    add_task_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method label, in first-seen order: counts, adapter bytes,
    mean and sample standard deviation of test accuracy and macro-F1 over
    seeds, mean training time, seconds per step and peak memory.

    Example:
        >>> rows = aggregate([
        ...     {"label": "lora r=4", "seed": 0, "test_accuracy": 0.6, "test_macro_f1": 0.5,
        ...      "validation_accuracy": 0.6, "trainable_parameters_adapter": 10,
        ...      "trainable_parameters_with_head": 12, "adapter_bytes": 100,
        ...      "peak_memory_bytes": 1000,
        ...      "timings": {"train_seconds": 2.0, "seconds_per_step": 0.5}},
        ...     {"label": "lora r=4", "seed": 1, "test_accuracy": 0.8, "test_macro_f1": 0.7,
        ...      "validation_accuracy": 0.8, "trainable_parameters_adapter": 10,
        ...      "trainable_parameters_with_head": 12, "adapter_bytes": 100,
        ...      "peak_memory_bytes": 3000,
        ...      "timings": {"train_seconds": 4.0, "seconds_per_step": 1.0}}])
        >>> row = rows[0]
        >>> round(row["test_accuracy_mean"], 3), round(row["test_accuracy_std"], 4), row["seeds"]
        (0.7, 0.1414, [0, 1])
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["label"], []).append(run)
    rows = []
    for label, members in groups.items():
        accuracy, accuracy_std = _mean_std([m["test_accuracy"] for m in members])
        f1, f1_std = _mean_std([m["test_macro_f1"] for m in members])
        validation, validation_std = _mean_std([m["validation_accuracy"] for m in members])
        memory = [m["peak_memory_bytes"] for m in members if m.get("peak_memory_bytes") is not None]
        rows.append({
            "label": label,
            "seeds": [m["seed"] for m in members],
            "trainable_parameters_adapter": members[0]["trainable_parameters_adapter"],
            "trainable_parameters_with_head": members[0]["trainable_parameters_with_head"],
            "adapter_bytes": members[0]["adapter_bytes"],
            "test_accuracy_mean": accuracy,
            "test_accuracy_std": accuracy_std,
            "test_macro_f1_mean": f1,
            "test_macro_f1_std": f1_std,
            "validation_accuracy_mean": validation,
            "validation_accuracy_std": validation_std,
            "train_seconds_mean": statistics.fmean(m["timings"]["train_seconds"] for m in members),
            "seconds_per_step_mean": statistics.fmean(
                m["timings"]["seconds_per_step"] for m in members),
            "peak_memory_bytes_mean": statistics.fmean(memory) if memory else None,
        })
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    from qpeft.train.report import format_bytes, format_count, format_percent

    lines = [
        "| method | trainable (adapter) | trainable (with head) | adapter file | "
        "test accuracy % | test macro-F1 % | train time | s/step | peak memory |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {format_count(row['trainable_parameters_adapter'])} | "
            f"{format_count(row['trainable_parameters_with_head'])} | "
            f"{format_bytes(row['adapter_bytes'])} | "
            f"{format_percent(row['test_accuracy_mean'], row['test_accuracy_std'])} | "
            f"{format_percent(row['test_macro_f1_mean'], row['test_macro_f1_std'])} | "
            f"{row['train_seconds_mean']:.1f} s | {row['seconds_per_step_mean']:.3f} | "
            f"{format_bytes(row['peak_memory_bytes_mean'])} |"
        )
    return "\n".join(lines)


def write_comparison(
    folder: Path,
    runs: Sequence[dict[str, Any]],
    histories: dict[str, list[dict[str, float]]],
    settings: dict[str, Any],
) -> list[dict[str, Any]]:
    """Write ``compare.json``, ``compare.md`` and the two plots; return the rows."""
    from qpeft.train.report import plot_accuracy_vs_parameters, plot_loss, write_json, write_text

    rows = aggregate(runs)
    baseline = runs[0]["majority_baseline_test_accuracy"]
    write_json(folder / "compare.json", {
        "settings": settings, "rows": rows, "majority_baseline_test_accuracy": baseline,
        "runs": [
            {key: run[key] for key in (
                "label", "seed", "test_accuracy", "test_macro_f1", "validation_accuracy",
                "trainable_parameters_adapter", "trainable_parameters_with_head",
                "adapter_bytes", "peak_memory_bytes", "timings", "method")}
            for run in runs
        ],
        "data": runs[0]["data"],
        "environment": runs[0]["environment"],
    })
    plot_accuracy_vs_parameters(
        [{"label": row["label"], "parameters": row["trainable_parameters_adapter"],
          "accuracy": row["test_accuracy_mean"], "accuracy_std": row["test_accuracy_std"]}
         for row in rows],
        folder / "accuracy_vs_parameters.png",
        baselines={"majority class": baseline},
        title="Test accuracy (mean ± std over seeds) against trainable parameters",
    )
    plot_loss(histories, folder / "loss.png")
    data = runs[0]["data"]
    seeds = sorted({run["seed"] for run in runs})
    text = "\n".join([
        "# Method comparison",
        "",
        f"Model `{runs[0]['config']['model']}`, data `{data['source']}` (stratified split, "
        f"seed {data['split_seed']}: " + ", ".join(f"{k} {v}" for k, v in data["sizes"].items())
        + f" rows), {settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"seeds {', '.join(map(str, seeds))}, device {settings['device']}.",
        "",
        markdown_table(rows),
        "",
        f"Majority-class baseline: {100 * baseline:.1f} % test accuracy. Accuracy and macro-F1 "
        "are mean ± sample standard deviation over seeds; the adapter file holds the trained "
        "tensors including the head; peak memory is what training added "
        f"({runs[0].get('memory_measure', '')}).",
        "",
        "Plots: `accuracy_vs_parameters.png`, `loss.png` (first seed of each method). "
        "Each run's own report is in `runs/`.",
        "",
    ])
    write_text(folder / "compare.md", text)
    return rows


def run(args: argparse.Namespace) -> int:
    """Run ``qpeft compare``; returns the exit code."""
    from qpeft.errors import ConfigError
    from qpeft.train.experiment import (
        RUN_MARKER,
        check_method,
        check_output_dir,
        check_same_run,
        choose_threads,
        effective_spec,
        input_digests,
        load_task,
        prepare_output_dir,
        run_marker,
        run_method,
        settings_from_args,
    )
    from qpeft.train.methods import MethodSpec
    from qpeft.train.report import write_json

    settings = settings_from_args(args)
    specs = [effective_spec(MethodSpec.parse(text), settings) for text in args.methods]
    labels = [spec.label for spec in specs]
    for index, spec in enumerate(specs):
        for earlier, text in zip(specs[:index], args.methods):
            if earlier.slug != spec.slug:  # one run folder each
                continue
            if earlier == spec:
                raise ConfigError(f"--methods names a method twice ({spec.label}); list each "
                                  "once")
            raise ConfigError(
                f"--methods {text!r} and {args.methods[index]!r} differ only in settings that "
                f"the run folders and tables do not name (lr, head_lr, alpha, dropout), so both "
                f"would be {spec.label!r}; compare them in separate runs, each with its own "
                "--output-dir"
            )
    if any(spec.name == "qpeft" for spec in specs):
        _check_qpeft_available()
    folder: Path = args.output_dir
    check_output_dir(folder, resume=args.resume, overwrite=args.overwrite, marker=COMPARE_MARKER)
    marker = {"kind": "compare", "settings": settings.to_dict(),
              "inputs": input_digests(settings)}
    if args.resume and (folder / COMPARE_MARKER).is_file():
        check_same_run(folder, marker, marker=COMPARE_MARKER)
        # each run with other settings is refused now, not after the runs before it trained
        for spec in specs:
            for seed in args.seeds:
                run_folder = folder / "runs" / spec.slug / f"seed-{seed}"
                if (run_folder / RUN_MARKER).is_file():
                    check_same_run(run_folder, run_marker("compare", spec, seed, settings))

    threads = choose_threads(args.threads)
    print(f"comparing {len(specs)} methods over seeds {', '.join(map(str, args.seeds))} on "
          f"{threads} CPU thread(s): {', '.join(labels)}", file=sys.stderr)
    task = load_task(settings)
    for spec in specs:
        check_method(task, spec, args.seeds)
    prepare_output_dir(folder, resume=args.resume, overwrite=args.overwrite, marker=COMPARE_MARKER)
    write_json(folder / COMPARE_MARKER, {**marker, "methods": args.methods,
                                         "seeds": list(args.seeds)})
    runs: list[dict[str, Any]] = []
    histories: dict[str, list[dict[str, float]]] = {}
    for spec in specs:
        for seed in args.seeds:
            run_folder = folder / "runs" / spec.slug / f"seed-{seed}"
            run_folder.mkdir(parents=True, exist_ok=True)
            try:
                outcome = run_method(task, spec, seed, run_folder, kind="compare",
                                     resume=args.resume, progress=not args.no_progress)
            except KeyboardInterrupt:
                print(f"stopped during {spec.label}, seed {seed}; run the same command with "
                      "--resume to continue", file=sys.stderr)
                raise
            metrics = outcome.metrics
            runs.append(metrics)
            histories.setdefault(spec.label, outcome.history)
            note = " (already done)" if outcome.reused else ""
            print(f"{spec.label}, seed {seed}: test accuracy "
                  f"{100 * metrics['test_accuracy']:.1f} %{note}", file=sys.stderr)
    rows = write_comparison(folder, runs, histories, settings.to_dict())
    _print_table(rows, folder)
    return 0


def _check_qpeft_available() -> None:
    from qpeft.errors import ConfigError

    try:
        import qpeft

        qpeft.get_qpeft_model  # noqa: B018 - resolves the lazy import
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"the Quantum-PEFT adapters are not available in this installation ({error}); "
            "leave the qpeft methods out of --methods"
        ) from None


def _print_table(rows: Sequence[dict[str, Any]], folder: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from qpeft.train.report import format_bytes, format_count, format_percent

    table = Table(title="qpeft compare")
    for name in ("method", "adapter params", "with head", "adapter file", "test acc %",
                 "macro-F1 %", "train s", "peak mem"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for row in rows:
        table.add_row(
            row["label"], format_count(row["trainable_parameters_adapter"]),
            format_count(row["trainable_parameters_with_head"]),
            format_bytes(row["adapter_bytes"]),
            format_percent(row["test_accuracy_mean"], row["test_accuracy_std"]),
            format_percent(row["test_macro_f1_mean"], row["test_macro_f1_std"]),
            f"{row['train_seconds_mean']:.1f}", format_bytes(row["peak_memory_bytes_mean"]),
        )
    console = Console()
    console.print(table)
    console.print(f"report: {folder / 'compare.md'}")
