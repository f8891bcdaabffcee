"""The ansatz catalog: ``circuits/`` (shipped as ``qpeft.catalog``).

Each entry is a small Python file defining ``build(...) -> Circuit`` (its
options as named parameters) and a docstring. :func:`load_ansatz` runs an
entry by name, or any file a user points it at (only code the user chose to
run: adapters never name files, they carry the circuit's JSON description
instead).

>>> load_ansatz("pauli", qubits=3, layers=1).num_parameters
7
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import inspect
import traceback
from pathlib import Path
from types import ModuleType

from qpeft.circuit import Circuit
from qpeft.errors import CatalogError, QpeftError


def catalog_names() -> list[str]:
    """Names of the shipped catalog entries."""
    root = importlib.resources.files("qpeft.catalog")
    return sorted(
        entry.name[:-3]
        for entry in root.iterdir()
        if entry.name.endswith(".py") and not entry.name.startswith("_")
    )


def names_file(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` names a file rather than a catalog entry.

    >>> names_file("pauli"), names_file("my_ansatz.py"), names_file("circuits/x")
    (False, True, True)
    """
    text = str(name_or_path)
    return text.endswith((".py", ".json")) or "/" in text or "\\" in text


def _load_module(name_or_path: str | Path) -> ModuleType:
    text = str(name_or_path)
    if names_file(text):
        path = Path(text)
        if path.suffix != ".py":
            raise CatalogError(
                f"{text} is not a .py file: an ansatz file must be a Python file defining "
                "build(...) -> Circuit. A circuit saved as JSON is not an ansatz file; "
                "load it in Python with Circuit.from_json(text) and pass it to "
                "qpeft.draw.draw or qpeft.interop.verify.verify"
            )
        if not path.is_file():
            raise CatalogError(f"ansatz file {path} does not exist")
        return _run_file(path)
    if text not in catalog_names():
        raise CatalogError(
            f"no ansatz named {text!r} in the catalog; available: {', '.join(catalog_names())} "
            "(or pass the path of a .py file defining a build function with named options, "
            "e.g. def build(qubits: int = 4, layers: int = 2) -> Circuit)"
        )
    return importlib.import_module(f"qpeft.catalog.{text}")


#: user files already run, by (resolved path, modification time, size): a file is
#: run once for every width it builds, and again only after it changed
_FILES: dict[tuple[str, int, int], ModuleType] = {}


def _run_file(path: Path) -> ModuleType:
    status = path.stat()
    key = (str(path.resolve()), status.st_mtime_ns, status.st_size)
    if key in _FILES:
        return _FILES[key]
    spec = importlib.util.spec_from_file_location(f"qpeft_user_ansatz_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise CatalogError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise CatalogError(
            f"ansatz file {path} has a syntax error at line {exc.lineno}: {exc.msg}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import
        raise CatalogError(
            f"ansatz file {path} failed when run{_line_in(path, exc)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    _FILES[key] = module
    return module


def _call(options: dict[str, object]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in options.items())


def _line_in(path: Path, error: BaseException) -> str:
    """`` at line N``: the last line of ``path`` in ``error``'s traceback."""
    line = next((frame.lineno for frame in reversed(traceback.extract_tb(error.__traceback__))
                 if Path(frame.filename).resolve() == path.resolve()), None)
    return f" at line {line}" if line else ""


def ansatz_builder(name_or_path: str | Path):
    """The ``build`` function of a catalog entry or file."""
    module = _load_module(name_or_path)
    build = getattr(module, "build", None)
    if not callable(build):
        raise CatalogError(f"{name_or_path} defines no build(...) -> Circuit function, e.g. "
                           "def build(qubits: int = 4, layers: int = 2)")
    return build


def ansatz_option_kinds(name_or_path: str | Path) -> dict[str, inspect._ParameterKind]:
    """How each option of a catalog entry's ``build`` binds (``VAR_KEYWORD`` for a
    ``**options`` catch-all)."""
    signature = inspect.signature(ansatz_builder(name_or_path))
    return {name: p.kind for name, p in signature.parameters.items()}


def ansatz_options(name_or_path: str | Path) -> dict[str, object]:
    """The options a catalog entry accepts, with their defaults."""
    signature = inspect.signature(ansatz_builder(name_or_path))
    return {
        name: (None if p.default is inspect.Parameter.empty else p.default)
        for name, p in signature.parameters.items()
    }


def load_ansatz(name_or_path: str | Path, **options) -> Circuit:
    """Build a catalog entry (``"pauli"``) or a user file (``"my_ansatz.py"``)."""
    build = ansatz_builder(name_or_path)
    try:
        inspect.signature(build).bind(**options)
    except TypeError as exc:
        raise CatalogError(
            f"{name_or_path}: {exc}; accepted options: {', '.join(ansatz_options(name_or_path))}"
        ) from None
    try:
        circuit = build(**options)
    except QpeftError:
        raise
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{name_or_path} could not build with {options}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever a user's build() raises
        where = _line_in(Path(str(name_or_path)), exc) if names_file(str(name_or_path)) else ""
        raise CatalogError(
            f"{name_or_path}: build({_call(options)}) failed{where}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(circuit, Circuit):
        raise CatalogError(
            f"{name_or_path}: build() returned {type(circuit).__name__}, not a Circuit"
        )
    return circuit
