"""Benchmarks: the compiler against its peers (unitary), a training step against peft (train)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

#: Benchmark name -> module exposing ``add_parser(bench_subparsers)`` and ``run(args)``.
#: A module that does not exist is not offered.
BENCHMARKS: dict[str, str] = {
    "unitary": "qpeft.bench.unitary",
    "train": "qpeft.bench.train",
}


def max_threads() -> int:
    """The most torch threads a benchmark accepts: the CPUs of this machine."""
    return os.cpu_count() or 1


def synchronize(device: Any) -> None:
    """Wait for the device's queued work, so that a timing covers it (CUDA and
    MPS run asynchronously; on the CPU there is nothing to wait for)."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def available_benchmarks() -> dict[str, str]:
    """The benchmarks whose modules exist.

    >>> "unitary" in available_benchmarks()
    True
    """
    found = {}
    for name, module_name in BENCHMARKS.items():
        try:
            spec = importlib.util.find_spec(module_name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found[name] = module_name
    return found


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``qpeft bench`` and one sub-subcommand per available benchmark."""
    parser = subparsers.add_parser("bench", help=__doc__.splitlines()[0],
                                   description=__doc__.splitlines()[0])
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for module_name in available_benchmarks().values():
        importlib.import_module(module_name).add_parser(benchmarks)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int | None:
    """Run the benchmark named on the command line."""
    module = importlib.import_module(BENCHMARKS[args.benchmark])
    return module.run(args)


def measure_and_print(run_benchmark: Callable[..., dict[str, Any]], config: Any,
                      render: Callable[[dict[str, Any]], None], as_json: bool) -> dict[str, Any]:
    """Run ``run_benchmark(config, progress=...)`` under a spinner on standard
    error, then print the report: as JSON, or with ``render``. Returns it."""
    from rich.console import Console

    with Console(stderr=True).status("benchmarking") as status:
        report = run_benchmark(config, progress=lambda message: status.update(message))
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(report)
    return report
