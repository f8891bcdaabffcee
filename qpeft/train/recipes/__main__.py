"""``python -m qpeft.train.recipes NAME [options]`` runs one recipe."""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from qpeft.cli import DefaultsHelpFormatter
from qpeft.errors import QpeftError, system_error_message
from qpeft.train.recipes import RECIPES


def build_parser() -> argparse.ArgumentParser:
    from qpeft.train.recipes.common import add_recipe_arguments

    parser = argparse.ArgumentParser(
        prog="python -m qpeft.train.recipes",
        description="Run one of the paper's experiments (needs network access).",
    )
    subparsers = parser.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    for name, (module_name, class_name) in RECIPES.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        sub = subparsers.add_parser(name, help=summary, description=summary,
                                    formatter_class=DefaultsHelpFormatter)
        add_recipe_arguments(sub, getattr(module, class_name))
        sub.add_argument("--output-dir", type=Path, required=True, help="report folder")
        sub.add_argument("--resume", action="store_true", help="continue an interrupted run")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from qpeft.errors import ConfigError
    from qpeft.train.experiment import (
        RUN_MARKER,
        check_output_dir,
        check_same_run,
        holds_run,
        input_digests,
        prepare_output_dir,
        read_marker,
        set_aside,
    )
    from qpeft.train.methods import MethodSpec
    from qpeft.train.recipes.common import recipe_from_args
    from qpeft.train.report import as_json, read_json, write_json

    args = build_parser().parse_args(argv)
    module_name, class_name = RECIPES[args.recipe]
    module = importlib.import_module(module_name)
    folder: Path = args.output_dir
    started_here = created_here = False
    aside: Path | None = None
    try:
        recipe = recipe_from_args(getattr(module, class_name), args)
        # "settings" as qpeft finetune's marker: compared option by option, the device free
        marker = as_json({"kind": f"recipe:{args.recipe}", "settings": recipe.__dict__,
                          "inputs": input_digests(None, MethodSpec.parse(recipe.method))})
        check_output_dir(folder, resume=args.resume, overwrite=args.overwrite)
        if args.resume and (folder / RUN_MARKER).is_file():
            saved = read_marker(folder / RUN_MARKER) or {}
            if "settings" in saved:  # not a run of an earlier release
                check_same_run(folder, marker)  # other settings are refused, not trained over
            if (folder / "metrics.json").is_file():
                try:
                    metrics = read_json(folder / "metrics.json")
                    if not isinstance(metrics, dict):
                        raise ValueError("not a JSON object")
                except (OSError, UnicodeDecodeError, ValueError) as error:
                    raise ConfigError(
                        f"the complete run in {folder} cannot be read back (metrics.json: "
                        f"{error}); pass --overwrite to run it again"
                    ) from None
                print(f"{folder} holds a complete run; showing its results", file=sys.stderr)
                return _show(metrics, folder)
        if args.overwrite and holds_run(folder):
            # the run to replace is set aside, not deleted, until the recipe has loaded its
            # model and data: a command refused before any work gives it back
            aside = set_aside(folder)
        started_here = not (folder / RUN_MARKER).is_file()
        created_here = not folder.exists()
        prepare_output_dir(folder, resume=args.resume, overwrite=args.overwrite)
        write_json(folder / RUN_MARKER, marker)
        metrics = module.run(recipe, folder, resume=args.resume)
    except QpeftError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, MemoryError, RuntimeError) as error:
        message = system_error_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        if started_here and refused_before_work(folder):
            # refused before any work (a model that does not load, say): leave no run
            # behind that would refuse the corrected command, nor a folder made for it
            (folder / RUN_MARKER).unlink()
            if created_here:
                folder.rmdir()
            if aside is not None:
                aside.rename(folder)
        elif aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return _show(metrics, folder)


def refused_before_work(folder: Path) -> bool:
    """Whether ``folder`` holds the run marker and nothing else."""
    from qpeft.train.experiment import RUN_MARKER

    return folder.is_dir() and sorted(p.name for p in folder.iterdir()) == [RUN_MARKER]


def _show(metrics: dict, folder: Path) -> int:
    scores = {key: value for key, value in metrics.items() if isinstance(value, float)}
    print(", ".join(f"{key} {value:.4f}" for key, value in scores.items()))
    print(f"report: {folder / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
