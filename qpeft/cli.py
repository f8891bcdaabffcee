"""The ``qpeft`` command line.

Each subcommand lives in its own module, listed in :data:`COMMANDS`. Such a
module exposes ``add_parser(subparsers)``, which registers its subparser and
sets ``func`` with ``set_defaults(func=run)``; ``run(args)`` returns an exit
code (``None`` means 0). The first line of the module's docstring is the
summary shown by ``qpeft --help``.

Only the module of the subcommand being run is imported, so ``qpeft --help``
and ``qpeft --version`` stay fast and one subcommand's dependencies never slow
down another. A module that does not exist is not offered; an import error
inside a module that does exist is raised as it is.

A :class:`~qpeft.errors.QpeftError` raised by a command is printed as
``error: <message>`` on standard error, with exit code 2 and no traceback; so
are a file the system refuses (an ``OSError``) and memory it cannot allocate
(see :func:`~qpeft.errors.system_error_message`).
Output piped into a reader that stops early (``qpeft ... | head -1``) ends
the command quietly with exit code 1.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from qpeft._version import __version__
from qpeft.errors import QpeftError, system_error_message

#: Subcommand name -> module that implements it.
COMMANDS: dict[str, str] = {
    "finetune": "qpeft.train.finetune",
    "compare": "qpeft.train.compare",
    "bench": "qpeft.bench.cli",
    "verify": "qpeft.interop.cli_verify",
    "draw": "qpeft.draw.cli",
    "count": "qpeft.adapters.count",
}

class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: …)`` to an option's help only where it says something:
    not for a ``None`` default and not when the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


#: Exit code of a command that raised a QpeftError (argparse uses 2 for usage errors too).
ERROR_EXIT_CODE = 2


def _is_missing(error: ModuleNotFoundError, module_name: str) -> bool:
    """True when ``error`` says that ``module_name`` itself (or a package that
    contains it) does not exist, as opposed to a missing import inside it."""
    missing = error.name
    return missing is not None and (module_name == missing or module_name.startswith(missing + "."))


def available_commands() -> dict[str, str]:
    """The subcommands whose modules exist, without importing those modules.

    Example:
        >>> "count" in COMMANDS
        True
        >>> set(available_commands()) <= set(COMMANDS)
        True
    """
    found: dict[str, str] = {}
    for name, module_name in COMMANDS.items():
        if module_name in sys.modules:
            found[name] = module_name
            continue
        try:
            spec = importlib.util.find_spec(module_name)
        except ModuleNotFoundError as error:
            if _is_missing(error, module_name):
                continue
            raise
        if spec is not None:
            found[name] = module_name
    return found


def _summary(module_name: str) -> str:
    """First line of a module's docstring, read from its source without running it."""
    module = sys.modules.get(module_name)
    if module is not None:
        docstring = module.__doc__
    else:
        spec = importlib.util.find_spec(module_name)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(".py"):
            return ""
        with open(origin, encoding="utf-8") as source:
            docstring = ast.get_docstring(ast.parse(source.read(), filename=origin))
    return docstring.strip().splitlines()[0] if docstring else ""


def _load(module_name: str) -> ModuleType:
    module = importlib.import_module(module_name)
    if not callable(getattr(module, "add_parser", None)):
        raise TypeError(
            f"{module_name} is listed in qpeft.cli.COMMANDS but defines no add_parser(subparsers)"
        )
    return module


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only ``command``'s module is imported and asked for
    its full subparser; the other subcommands are listed with their summary."""
    parser = argparse.ArgumentParser(
        prog="qpeft",
        description="Quantum-PEFT: fine-tuning with orthogonal factors from quantum circuits.",
    )
    parser.add_argument("--version", action="version", version=f"qpeft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in available_commands().items():
        if name == command:
            _load(module_name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=_summary(module_name), add_help=False)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line: the first non-option argument
    (``qpeft`` itself takes no option with a value)."""
    for argument in argv:
        if argument == "--":
            return None
        if not argument.startswith("-"):
            return argument
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qpeft`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(arguments))
    args = parser.parse_args(arguments)
    run = getattr(args, "func", None)
    if run is None:
        raise TypeError(
            f"the add_parser of {COMMANDS[args.command]} did not call set_defaults(func=run)"
        )
    try:
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except QpeftError as error:
        print(f"error: {error}", file=sys.stderr)
        return ERROR_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader (``| head``) has gone: drop what is still buffered, as the Python
        # docs advise for SIGPIPE, so that the exit flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (OSError, MemoryError, RuntimeError) as error:
        message = system_error_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return ERROR_EXIT_CODE
    return 0 if code is None else int(code)
