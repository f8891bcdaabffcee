"""Draw an ansatz as text, PNG, SVG or PDF.

    qpeft draw pauli --qubits 4 --layers 2
    qpeft draw qudit --dimension 12 --output qudit.svg
    qpeft draw qutrit_ladder --option "dims=(3, 2)" --layers 1 --output ladder.png
    qpeft draw my_ansatz.py --option width=6 --output - --width 80
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from qpeft.errors import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``draw`` subcommand on ``subparsers``.

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="qpeft")
    >>> _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["draw", "qudit", "--dimension", "12", "--output", "q.svg"])
    >>> args.ansatz, args.dimension, args.output, args.fold
    ('qudit', 12, 'q.svg', 25)
    """
    parser = subparsers.add_parser(
        "draw",
        help=__doc__.strip().splitlines()[0],
        description=(
            "Build an ansatz from the catalog (or a .py file defining build(**options)) and "
            "draw it: as text on standard output (--output -, the default) or in a .txt file, "
            "or as an image (.png, .svg, .pdf)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    add_ansatz_arguments(parser)
    parser.add_argument(
        "--output", default="-", metavar="FILE",
        help="'-' prints text (default); a .txt file gets the text; .png, .svg or .pdf an image",
    )
    parser.add_argument("--width", type=int, default=100,
                        help="text: fold at this many characters, 0 never folds (default 100)")
    parser.add_argument("--fold", type=int, default=25,
                        help="image: gate columns per row, 0 never folds (default 25)")
    parser.add_argument("--scale", type=float, default=1.0, help="image: size factor (default 1)")
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    parser.add_argument("--precision", type=int, default=3,
                        help="significant digits of bound angles (default 3)")
    parser.add_argument("--no-parameters", action="store_true",
                        help="leave the angles out of the gate labels")
    parser.set_defaults(func=run)
    return parser


def add_ansatz_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that name an ansatz and its build() options."""
    parser.add_argument("ansatz", help="catalog name (pauli, qudit, ...) or path to a .py file")
    parser.add_argument("--qubits", type=int, help="passed to build() as qubits=N")
    parser.add_argument("--dimension", type=int, help="passed to build() as dimension=N")
    parser.add_argument("--layers", type=int, help="passed to build() as layers=L")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="any other build() option; VALUE is read as a Python literal when it is one "
             "(repeatable)",
    )


def circuit_from_arguments(args: argparse.Namespace):
    """Build the circuit named by :func:`add_ansatz_arguments`' arguments.

    >>> args = argparse.Namespace(ansatz="pauli", qubits=3, dimension=None, layers=None,
    ...                           option=["layers=1"])
    >>> circuit_from_arguments(args).num_parameters
    7
    """
    from qpeft.ansatz import load_ansatz
    from qpeft.interop.cli_verify import build_options

    return load_ansatz(args.ansatz, **build_options(args))


def run(args: argparse.Namespace) -> int:
    """Build the circuit, draw it, print or save it; returns 0."""
    from qpeft.draw import IMAGE_SUFFIXES, TEXT_SUFFIXES, draw, save

    target = args.output
    suffix = Path(target).suffix.lower()
    if target != "-" and suffix not in TEXT_SUFFIXES + IMAGE_SUFFIXES:
        raise ConfigError(
            f"--output {target}: write '-' for standard output, or a file ending in "
            f"{', '.join(TEXT_SUFFIXES + IMAGE_SUFFIXES)}"
        )
    for option, value in (("--width", args.width), ("--fold", args.fold)):
        if value < 0:
            raise ConfigError(f"{option} {value}: give a positive number, or 0 never to fold")
    if args.dpi <= 0:
        raise ConfigError(f"--dpi {args.dpi}: the resolution must be a positive number")
    if not 0 < args.scale < math.inf:
        raise ConfigError(f"--scale {args.scale}: the size factor must be a positive finite number")
    circuit = circuit_from_arguments(args)
    show = not args.no_parameters
    if target == "-" or suffix in TEXT_SUFFIXES:
        text = draw(circuit, "text", width=args.width or None, precision=args.precision,
                    show_parameters=show)
        if target == "-":
            sys.stdout.write(text + "\n")
            return 0
        save(text, target)
    else:
        figure = draw(circuit, "mpl", fold=args.fold or None, scale=args.scale,
                      precision=args.precision, show_parameters=show)
        save(figure, target, dpi=args.dpi)
    print(f"wrote {target}")
    return 0
