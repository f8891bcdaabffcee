"""Check an ansatz against Qiskit and PennyLane (exit code 1 on a mismatch).

    qpeft verify pauli --qubits 12 --layers 2 --columns 8
    qpeft verify qudit --dimension 384 --against qiskit
    qpeft verify qutrit_ladder --option "dims=(3, 2)" --layers 1
    qpeft verify my_ansatz.py --option width=6
"""

from __future__ import annotations

import argparse
import ast

from qpeft.errors import CatalogError


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

    >>> parse_options(["layers=2", "dims=(3, 2)", "entanglement=full"])
    {'layers': 2, 'dims': (3, 2), 'entanglement': 'full'}
    """
    options: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CatalogError(f"--option {item!r}: write KEY=VALUE, e.g. --option layers=2")
        try:
            options[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            options[key] = text.strip()
    return options


def run(args: argparse.Namespace) -> int:
    """Build, verify, print the report; 0 when every reference agrees, else 1."""
    from qpeft.ansatz import load_ansatz
    from qpeft.interop.verify import check_tolerance, verify

    check_tolerance(args.atol, "--atol")
    options = parse_options(args.option)
    for key in ("qubits", "dimension", "layers"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    circuit = load_ansatz(args.ansatz, **options)
    report = verify(circuit, against=args.against, columns=args.columns, atol=args.atol,
                    seed=args.seed)
    print(report)
    return 0 if report.ok else 1
