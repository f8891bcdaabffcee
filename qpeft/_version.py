"""The version of qpeft, read by the package metadata and by ``qpeft --version``."""

__version__ = "0.1.0"
