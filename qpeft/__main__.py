"""``python -m qpeft`` runs the ``qpeft`` command line."""

from qpeft.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
