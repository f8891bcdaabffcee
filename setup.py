"""Package discovery: every ``qpeft`` subpackage, and the ansatz catalog in the
top-level ``circuits/`` folder shipped as ``qpeft.catalog``. Everything else
is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["qpeft", "qpeft.*"]) + ["qpeft.catalog"],
    package_dir={"qpeft.catalog": "circuits"},
)
