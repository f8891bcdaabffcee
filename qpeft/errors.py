"""Every error qpeft raises derives from :class:`QpeftError`.

Each message says what was wrong and what to do about it.
"""

from __future__ import annotations


class QpeftError(Exception):
    """Base class of all qpeft errors."""


class WireError(QpeftError, ValueError):
    """A gate names a wire that does not exist, names one wire twice, or
    does not fit the wire's dimension (a qubit gate on a qutrit)."""


class ParameterError(QpeftError, ValueError):
    """A parameter is unknown, unbound where a value is needed, or a value is
    NaN, infinite or of the wrong shape."""


class NotUnitaryError(QpeftError, ValueError):
    """A matrix given as a gate is not unitary (or not square)."""


class DescriptionError(QpeftError, ValueError):
    """A circuit description (JSON or dict) is malformed or of an unknown
    format version."""


class CatalogError(QpeftError, LookupError):
    """An ansatz name is not in the catalog, or a catalog file is invalid."""


class CompileError(QpeftError, ValueError):
    """A circuit cannot be compiled with the requested options."""


class InteropError(QpeftError, ValueError):
    """A circuit cannot be converted to or from another framework."""


class ConfigError(QpeftError, ValueError):
    """An adapter or run configuration is invalid."""


class DivergenceError(ConfigError):
    """Training diverged: the loss, the trained parameters or the model's
    outputs became NaN or infinite (usually a learning rate that is too high)."""


class AdapterFileError(QpeftError, OSError):
    """An adapter directory is missing files, truncated or mismatched."""


class DataError(QpeftError, ValueError):
    """A dataset file is missing columns, empty, or holds unusable rows."""


def system_error_message(error: BaseException) -> str | None:
    """The ``error:`` line a command prints for a failure of the system rather
    than of qpeft's input checks: a file or folder it may not read or write (an
    ``OSError``), or memory that cannot be allocated. ``None`` for any other error,
    which is a bug to report with its traceback.

    >>> system_error_message(PermissionError(13, "Permission denied", "data.csv"))
    'data.csv: Permission denied; check the path and its permissions'
    >>> system_error_message(MemoryError())
    'out of memory; choose smaller sizes (model, batch, N, rank or layers)'
    """
    if isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "allocate memory" in str(error)
    ):
        return "out of memory; choose smaller sizes (model, batch, N, rank or layers)"
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename is not None else ""
        return f"{where}{error.strerror or error}; check the path and its permissions"
    return None
