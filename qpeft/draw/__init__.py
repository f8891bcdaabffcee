"""Draw circuits: Unicode text (:func:`draw_text`) or matplotlib figures
(:func:`qpeft.draw.mpl.draw_mpl`), with wire 0 on top.

Both outputs share one column layout (:mod:`qpeft.draw.layout`) and read
the circuit description only. ``Circuit.draw(...)`` calls :func:`draw`.

>>> from qpeft.ansatz import pauli
>>> print(draw(pauli(qubits=2, layers=1), width=None).splitlines()[1])
q0: ─┤ RY(θ[0]) ├────┆────●─┤ RY(θ[2]) ├─
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from qpeft.circuit import Circuit
from qpeft.circuit.gates import is_real_number
from qpeft.draw.layout import Layout, layout
from qpeft.draw.text import draw_text
from qpeft.errors import ConfigError
from qpeft.files import write_atomically

#: Output names accepted by :func:`draw`.
OUTPUTS = ("text", "mpl")
#: File suffixes a matplotlib drawing can be saved as.
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")
#: File suffixes a text drawing can be saved as.
TEXT_SUFFIXES = (".txt",)


def _drawer(output: str) -> Callable[..., Any]:
    if output == "text":
        return draw_text
    if output == "mpl":
        from qpeft.draw.mpl import draw_mpl  # matplotlib is imported only when asked for

        return draw_mpl
    raise ConfigError(f"unknown output {output!r}; use one of {', '.join(OUTPUTS)}")


def draw(
    circuit: Circuit,
    output: str = "text",
    *,
    filename: str | os.PathLike | None = None,
    **options: Any,
):
    """Draw ``circuit``: a ``str`` for ``output="text"``, a matplotlib
    ``Figure`` for ``output="mpl"``; also saved to ``filename`` when given.

    Options of ``"text"``: ``width`` (fold to this many characters, default
    100; ``None`` never folds), ``precision`` (significant digits of bound
    angles, default 3), ``show_parameters`` (default True). Options of
    ``"mpl"``: ``fold`` (columns per row, default 25; ``None`` one row),
    ``scale`` (default 1.0), ``precision``, ``show_parameters``.

    >>> from qpeft.circuit import Circuit
    >>> print(draw(Circuit(2).ry(0, 0.25).cx(0, 1)))
         ┌──────────┐
    q0: ─┤ RY(0.25) ├─●─
         └──────────┘ │
    q1: ──────────────⊕─
    """
    if not isinstance(circuit, Circuit):
        raise ConfigError(f"draw() takes a qpeft Circuit, got {type(circuit).__name__}")
    drawer = _drawer(output)
    accepted = [name for name, p in inspect.signature(drawer).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for output={output!r}; "
            f"accepted: {', '.join(accepted)}, filename"
        )
    drawing = drawer(circuit, **options)
    if filename is not None:
        save(drawing, filename)
    return drawing


def save(drawing, filename: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write a drawing to ``filename`` atomically (a temporary file in the
    same folder, then renamed over the target) and return the path.

    A text drawing goes to a ``.txt`` file; a figure to ``.png`` (at ``dpi``),
    ``.svg`` or ``.pdf``. SVG and PDF files carry no date, so drawing the
    same circuit twice writes identical files.

    >>> import pathlib, tempfile
    >>> from qpeft.circuit import Circuit
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> save(draw(Circuit(1).h(0)), folder / "h.txt").read_text(encoding="utf-8").splitlines()[1]
    'q0: ─┤ H ├─'
    """
    if not isinstance(filename, (str, os.PathLike)):
        raise ConfigError(f"filename is a path (str or pathlib.Path), got {filename!r}")
    path = Path(filename)
    suffix = path.suffix.lower()
    if not is_real_number(dpi) or not 0 < dpi < math.inf:
        raise ConfigError(f"dpi must be a positive number of dots per inch, got {dpi!r}")
    if isinstance(drawing, str):
        if suffix not in TEXT_SUFFIXES:
            raise ConfigError(
                f"a text drawing is saved as .txt, not {suffix or 'a file without suffix'} "
                f"({path}); draw with output='mpl' for {', '.join(IMAGE_SUFFIXES)}"
            )
        data = (drawing + "\n").encode("utf-8")
        _write_atomically(path, lambda handle: handle.write(data))
        return path
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    if not isinstance(drawing, Figure):
        raise ConfigError(f"cannot save a {type(drawing).__name__}; pass a str or a Figure")
    if suffix not in IMAGE_SUFFIXES:
        raise ConfigError(
            f"cannot save a figure as {suffix or 'a file without suffix'} ({path}); "
            f"use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    image_format = suffix[1:]
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(image_format)

    def write(handle: IO[bytes]) -> None:
        # a fixed salt makes the ids inside an SVG the same from run to run
        with rc_context({"svg.hashsalt": "qpeft"}):
            try:
                drawing.savefig(handle, format=image_format, dpi=dpi, metadata=metadata,
                                facecolor="white")
            except (ValueError, TypeError, MemoryError) as error:  # Agg's size limits
                width, height = drawing.get_size_inches() * dpi
                raise ConfigError(
                    f"cannot write {path}: the image would be {width:.0f} x {height:.0f} "
                    f"pixels at dpi {dpi} ({type(error).__name__}: {error}); lower the dpi "
                    "or the scale, or fold the drawing into more rows"
                ) from error

    _write_atomically(path, write)
    return path


def image_path(filename: str, *, option: str = "--plot", example: str = "figure.png") -> Path:
    """``filename`` checked before a command does any work: a file, not a folder,
    ending in a suffix of :data:`IMAGE_SUFFIXES`, in a writable folder that
    exists. Errors name the command-line ``option`` and suggest ``example``.

    >>> image_path("unitary.xyz")
    Traceback (most recent call last):
    ...
    qpeft.errors.ConfigError: --plot unitary.xyz: use a file ending in .png, .svg, .pdf
    """
    path = Path(filename)
    if path.is_dir():
        raise ConfigError(f"{option} {filename} is a folder; name a file in it, such as "
                          f"{path / example}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"{option} {filename}: use a file ending in "
                          f"{', '.join(IMAGE_SUFFIXES)}")
    folder = path.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist; create it first"
        raise ConfigError(f"{option} {filename}: the folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {filename}: the folder {folder} is not writable; choose "
                          f"another")
    return path


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"cannot write {path}: the folder {folder} {what}")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; name a file inside it")
    try:
        write_atomically(path, write)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror or error}") from error


def __getattr__(name: str):
    if name == "draw_mpl":  # imports matplotlib, so only on first use
        from qpeft.draw.mpl import draw_mpl

        return draw_mpl
    raise AttributeError(f"module 'qpeft.draw' has no attribute {name!r}")


__all__ = ["IMAGE_SUFFIXES", "OUTPUTS", "TEXT_SUFFIXES", "Layout", "draw", "draw_mpl",
           "draw_text", "image_path", "layout", "save"]
