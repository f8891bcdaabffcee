"""Fine-tune a classifier with Quantum-PEFT (or a baseline method) and write a report.

Example (under five minutes on a 2-core CPU, offline)::

    qpeft finetune --method lora --rank 4 --output-dir runs/lora-r4

Without options it adapts the bundled all-MiniLM-L6-v2 on the bundled
tweet-sentiment corpus; see docs/finetune.md for every option, the split, the
defaults and the report folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qpeft.cli import DefaultsHelpFormatter

DEFAULT_RUNS_FOLDER = Path("qpeft-runs") / "finetune"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``finetune`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from qpeft.train.experiment import add_task_arguments

    parser = subparsers.add_parser(
        "finetune",
        help=__doc__.strip().splitlines()[0],
        description=__doc__.strip().splitlines()[0],
        formatter_class=DefaultsHelpFormatter,
    )
    method = parser.add_argument_group("method")
    method.add_argument(
        "--method", default="qpeft",
        help="qpeft, lora, oft, boft, head (linear probe) or full; options may follow as "
             "name:key=value,... (for example lora:r=8)",
    )
    method.add_argument("--rank", type=int, help="K of qpeft (default 32), r of lora (default 4)")
    method.add_argument("--layers", type=int, help="circuit layers L of qpeft (default 2)")
    method.add_argument("--ansatz", help="circuit family of qpeft (default qudit)")
    method.add_argument("--alpha", type=float,
                        help="scale α of qpeft, lora_alpha of lora (default 1 for qpeft, "
                             "2·r for lora)")
    method.add_argument("--block-size", type=int, help="block size of oft (32) and boft (4)")
    method.add_argument("--head-lr", type=float,
                        help="learning rate of the new head (default: 2e-2 for qpeft, the "
                             "method's learning rate for the others)")
    method.add_argument("--seed", type=int, default=0,
                        help="seed of the head initialisation, batch order and dropout")
    method.add_argument("--output-dir", type=Path,
                        help=f"report folder (default {DEFAULT_RUNS_FOLDER}/METHOD-seedSEED)")
    add_task_arguments(parser)
    parser.set_defaults(func=run)
    return parser


#: The method options of ``qpeft finetune``: field of the method spec ->
#: (option, key of the method spec).
METHOD_OPTIONS = {
    "rank": ("--rank", "r"), "layers": ("--layers", "L"), "ansatz": ("--ansatz", "ansatz"),
    "alpha": ("--alpha", "alpha"), "block_size": ("--block-size", "block"),
    "head_learning_rate": ("--head-lr", "head_lr"),
}


def method_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~qpeft.train.methods.MethodSpec` of ``--method`` and its options.

    An option that the method spec also sets, with another value (``--method
    lora:r=8 --rank 2``), is refused: one of them must go. The same value
    twice is accepted. ``--lr`` is not a method option but the learning rate
    of every method, which a method's own ``lr=`` overrides (see
    :func:`~qpeft.train.experiment.effective_spec`).
    """
    from dataclasses import replace

    from qpeft.errors import ConfigError
    from qpeft.train.methods import MethodSpec

    spec = MethodSpec.parse(args.method)
    given = {
        "rank": args.rank, "layers": args.layers, "ansatz": args.ansatz, "alpha": args.alpha,
        "block_size": args.block_size, "head_learning_rate": args.head_lr,
    }
    given = {key: value for key, value in given.items() if value is not None}
    for key, value in given.items():
        written = getattr(spec, key)
        if written is not None and written != value:
            option, spec_key = METHOD_OPTIONS[key]
            raise ConfigError(
                f"--method {args.method} sets {spec_key}={_plain(written)} but {option} gives "
                f"{_plain(value)}; drop {spec_key}= from --method or drop {option}"
            )
    return replace(spec, **given)


def _plain(value: Any) -> str:
    """``2.0`` as ``2``, other values as they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def run(args: argparse.Namespace) -> int:
    """Run ``qpeft finetune``; returns the exit code."""
    from qpeft.errors import ConfigError
    from qpeft.train.experiment import (
        RUN_MARKER,
        check_method,
        check_output_dir,
        check_same_run,
        choose_threads,
        effective_spec,
        finished_run,
        load_task,
        prepare_output_dir,
        run_marker,
        run_method,
        settings_from_args,
    )

    settings = settings_from_args(args)
    method = method_from_args(args)
    if (method.learning_rate is not None and settings.learning_rate is not None
            and method.learning_rate != settings.learning_rate):
        print(f"note: the method's lr={_plain(method.learning_rate)} is used, not --lr "
              f"{_plain(settings.learning_rate)} (a method's own lr= wins over --lr)",
              file=sys.stderr)
    spec = effective_spec(method, settings)
    if spec.name in ("head", "full") and settings.targets:
        raise ConfigError(
            f"--method {spec.name} trains no adapter, so --targets would be ignored; leave it "
            "out (qpeft compare takes --targets for the adapter methods of its list)"
        )
    folder = args.output_dir or DEFAULT_RUNS_FOLDER / f"{spec.slug}-seed{args.seed}"
    check_output_dir(folder, resume=args.resume, overwrite=args.overwrite)
    if args.resume and (folder / RUN_MARKER).is_file():
        # other settings, or an edited data or ansatz file, are refused before any work
        marker = run_marker("finetune", spec, args.seed, settings)
        check_same_run(folder, marker)
        finished = finished_run(folder, marker)
        if finished is not None:
            print(f"{folder} holds a complete run; showing its results", file=sys.stderr)
            print_summary(finished.metrics, folder)
            return 0

    threads = choose_threads(args.threads)
    print(f"fine-tuning {spec.label}: model {settings.model}, data {settings.dataset}, "
          f"{threads} CPU thread(s), report in {folder}", file=sys.stderr)
    task = load_task(settings)
    check_method(task, spec, [args.seed])
    prepare_output_dir(folder, resume=args.resume, overwrite=args.overwrite)
    try:
        outcome = run_method(task, spec, args.seed, folder, resume=args.resume,
                             progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"stopped; the last checkpoint is in {folder}: run the same command with "
              "--resume to continue", file=sys.stderr)
        raise
    print_summary(outcome.metrics, folder)
    return 0


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The (name, value) pairs of the end-of-run table."""
    from qpeft.train.report import format_bytes, format_count, format_percent

    timings = metrics["timings"]
    return [
        ("method", metrics["label"]),
        ("test accuracy", f"{format_percent(metrics['test_accuracy'])} %"),
        ("test macro-F1", f"{format_percent(metrics['test_macro_f1'])} %"),
        ("validation accuracy", f"{format_percent(metrics['validation_accuracy'])} %"),
        ("majority-class baseline",
         f"{format_percent(metrics['majority_baseline_test_accuracy'])} %"),
        ("trainable params (adapter)", format_count(metrics["trainable_parameters_adapter"])),
        ("trainable params (with head)", format_count(metrics["trainable_parameters_with_head"])),
        ("adapter files", format_bytes(metrics["adapter_bytes"])),
        ("training time", f"{timings['train_seconds']:.1f} s "
                          f"({timings['seconds_per_step']:.3f} s/step, {timings['steps']} steps)"),
        ("evaluation time", f"{timings['evaluation_seconds']:.1f} s"),
        ("peak memory added", format_bytes(metrics["peak_memory_bytes"])),
    ]


def print_summary(metrics: dict[str, Any], folder: Path) -> None:
    """Print the end-of-run table with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"qpeft finetune: {metrics['label']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for name, value in summary_rows(metrics):
        table.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(f"report: {folder / 'report.md'}")
