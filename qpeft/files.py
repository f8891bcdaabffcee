"""Files written whole or not at all.

:func:`write_atomically` writes into a temporary file beside the target,
flushes it to disk and moves it into place with ``os.replace``, so that a
crash or an interrupt never leaves a truncated file, and a reader sees the
old file or the new one. The temporary file is created as ``open()`` creates
a file (mode ``0o666``, which the kernel reduces by the umask or the folder's
default ACL), not with the owner-only mode of :func:`tempfile.mkstemp`, and
the process's umask is never changed (it is shared by every thread).

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_atomically(folder / "a.txt", lambda handle: handle.write(b"hello"))
>>> (folder / "a.txt").read_bytes(), sorted(p.name for p in folder.iterdir())
(b'hello', ['a.txt'])
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _create(folder: Path, prefix: str) -> tuple[int, Path]:
    """A new, empty file in ``folder`` with the mode ``open()`` would give.

    Its name is ``prefix`` cut to 200 bytes, so that with the dot, the random
    part and ``.tmp`` it stays within the 255 bytes a file name may have on
    common file systems, whatever the length of the target's name."""
    prefix = os.fsencode(prefix)[:200].decode(errors="ignore")
    for _ in range(100):
        candidate = folder / f".{prefix}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(candidate, _FLAGS, 0o666), candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")  # pragma: no cover


def file_mode(folder: str | os.PathLike) -> int:
    """The mode a new file in ``folder`` gets from ``open()`` (the umask and any
    default ACL applied), found by creating one; the process umask is left alone."""
    descriptor, probe = _create(Path(folder), "mode")
    try:
        return os.fstat(descriptor).st_mode & 0o7777
    finally:
        os.close(descriptor)
        probe.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then move it
    into place. On any error the temporary file is removed and ``path`` is
    left as it was."""
    path = Path(path)
    descriptor, temporary = _create(path.parent, path.name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


__all__ = ["file_mode", "write_atomically"]
