"""qpeft.files: whole files or none, with the mode open() gives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qpeft.files import file_mode, write_atomically


def test_a_write_is_whole_or_absent_and_never_touches_the_umask(tmp_path: Path, monkeypatch):
    def no_umask(mask: int) -> int:  # the umask is process-wide: other threads would see it
        raise AssertionError("os.umask was called")

    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", no_umask)
        write_atomically(target, lambda handle: handle.write(b"new"))

        def fail(handle) -> None:
            handle.write(b"partial")
            raise RuntimeError("interrupted")

        with pytest.raises(RuntimeError):
            write_atomically(target, fail)
        assert file_mode(tmp_path) == 0o640
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


@pytest.mark.parametrize("name", ["a" * 251 + ".txt", "é" * 125 + ".txt"])
def test_a_target_name_of_the_longest_allowed_length_is_written(tmp_path: Path, name: str):
    """255 bytes is the limit for a name; the temporary name must fit in it too."""
    assert len(os.fsencode(name)) <= 255
    write_atomically(tmp_path / name, lambda handle: handle.write(b"x"))
    assert [p.name for p in tmp_path.iterdir()] == [name]
