"""Check an ansatz against Qiskit and PennyLane (exit code 1 on a mismatch).

    qpeft verify pauli --qubits 12 --layers 2 --columns 8
    qpeft verify qudit --dimension 384 --against qiskit
    qpeft verify qutrit_ladder --option "dims=(3, 2)" --layers 1
    qpeft verify my_ansatz.py --option width=6
"""

from __future__ import annotations

import argparse
import ast

from qpeft.errors import CatalogError, ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``verify`` subcommand on ``subparsers``.

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="qpeft")
    >>> _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["verify", "pauli", "--qubits", "3", "--option", "layers=1"])
    >>> args.ansatz, args.qubits, args.option, args.against
    ('pauli', 3, ['layers=1'], 'qiskit,pennylane')
    """
    parser = subparsers.add_parser(
        "verify",
        help=__doc__.strip().splitlines()[0],
        description=(
            "Build an ansatz from the catalog (or a .py file defining build(**options)), draw "
            "seeded random angles, and compare qpeft's compiled columns with Qiskit's and "
            "PennyLane's. Full unitaries for N <= 256, else the first K columns."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("ansatz", help="catalog name (pauli, qudit, ...) or path to a .py file")
    parser.add_argument("--qubits", type=int, help="passed to build() as qubits=N")
    parser.add_argument("--dimension", type=int, help="passed to build() as dimension=N")
    parser.add_argument("--layers", type=int, help="passed to build() as layers=L")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="any other build() option; VALUE is read as a Python literal when it is one "
             "(repeatable)",
    )
    parser.add_argument(
        "--columns", type=int,
        help="compare the first K columns (default: full unitary for N <= 256, else 8)",
    )
    parser.add_argument(
        "--against", default="qiskit,pennylane",
        help="comma-separated references, each once (default: qiskit,pennylane)",
    )
    parser.add_argument("--atol", type=float, default=1e-10, help="tolerance (default 1e-10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random angles (default 0)")
    parser.set_defaults(func=run)
    return parser


def parse_options(items: list[str]) -> dict[str, object]:
    """``["layers=2", "name=x"]`` → ``{"layers": 2, "name": "x"}``.

    A key given twice with different values (``--option width=2 --option
    width=5``) is refused; the same value twice is accepted.

    >>> parse_options(["layers=2", "dims=(3, 2)", "entanglement=full"])
    {'layers': 2, 'dims': (3, 2), 'entanglement': 'full'}
    """
    return _read_options(items)[0]


def _read_options(items: list[str]) -> tuple[dict[str, object], dict[str, str]]:
    """The options of ``items`` and, for each key, the item that first gave it."""
    options: dict[str, object] = {}
    written: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CatalogError(f"--option {item!r}: write KEY=VALUE, e.g. --option layers=2")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = text.strip()
        if key in options and not _same(options[key], value):
            raise ConfigError(
                f"--option {written[key]} and --option {item} give {key} two values; "
                "keep one of them"
            )
        if key not in options:  # the same value again changes nothing
            options[key] = value
            written[key] = item
    return options, written


#: The build() options that have their own flag.
FLAG_OPTIONS = ("qubits", "dimension", "layers")


def build_options(args: argparse.Namespace) -> dict[str, object]:
    """The build() options of ``--option`` and of the flags of
    :data:`FLAG_OPTIONS`. An ``--option`` that a flag also gives, with another
    value (``--qubits 3 --option qubits=5``), is refused; the same value is
    accepted.

    >>> args = argparse.Namespace(qubits=3, dimension=None, layers=None, option=["layers=1"])
    >>> build_options(args)
    {'layers': 1, 'qubits': 3}
    """
    options, written = _read_options(args.option)
    for key in FLAG_OPTIONS:
        value = getattr(args, key)
        if value is None:
            continue
        if key in options and not _same(options[key], value):
            raise ConfigError(
                f"--{key} {value} and --option {written[key]} contradict each other; "
                "drop one of them"
            )
        options[key] = value
    return options


def _same(first: object, second: object) -> bool:
    """Whether two option values are equal (``2`` and ``2.0`` are; ``True`` and
    ``1`` are not)."""
    if isinstance(first, bool) != isinstance(second, bool):
        return False
    try:
        return bool(first == second)
    except Exception:  # a comparison that cannot be made is a difference
        return False


def run(args: argparse.Namespace) -> int:
    """Build, verify, print the report; 0 when every reference agrees, else 1."""
    from qpeft.ansatz import load_ansatz
    from qpeft.interop.verify import check_tolerance, verify

    check_tolerance(args.atol, "--atol")
    circuit = load_ansatz(args.ansatz, **build_options(args))
    report = verify(circuit, against=args.against, columns=args.columns, atol=args.atol,
                    seed=args.seed)
    print(report)
    return 0 if report.ok else 1
