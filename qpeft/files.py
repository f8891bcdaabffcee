"""Files written whole or not at all.

:func:`write_atomically` writes into a temporary file beside the target,
flushes it to disk and moves it into place with ``os.replace``, so that a
crash or an interrupt never leaves a truncated file, and a reader sees the
old file or the new one. The file gets the mode a plain ``open()`` would give
(``0o666`` less the process's umask), not the owner-only mode of a
temporary file.

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_atomically(folder / "a.txt", lambda handle: handle.write(b"hello"))
>>> (folder / "a.txt").read_bytes(), sorted(p.name for p in folder.iterdir())
(b'hello', ['a.txt'])
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then move it
    into place. On any error the temporary file is removed and ``path`` is
    left as it was."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = ["file_mode", "write_atomically"]
