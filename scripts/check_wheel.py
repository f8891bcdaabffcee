"""Build the qpeft wheel and check that it ships every source file.

The package list comes from setup.py (the catalog folder circuits/
is mapped to qpeft.catalog), so a packaging mistake would
work in the editable install but be missing from a real install. This check
builds the wheel, compares its contents with the files under qpeft/ and
circuits/, then installs it into a scratch folder and lists the catalog with
importlib.resources, as installed code does.

Run with the project's venv active: ``python scripts/check_wheel.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"qpeft": "qpeft", "circuits": "qpeft/catalog"}
SKIPPED_PARTS = {"__pycache__"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def expected_files() -> set[str]:
    """Paths inside the wheel that every file under the source folders must have."""
    expected = set()
    for folder, installed_as in SOURCES.items():
        for path in (ROOT / folder).rglob("*"):
            relative = path.relative_to(ROOT / folder)
            if (
                path.is_file()
                and not SKIPPED_PARTS.intersection(relative.parts)
                and path.suffix not in SKIPPED_SUFFIXES
            ):
                expected.add(f"{installed_as}/{relative.as_posix()}")
    return expected


def build_wheel(scratch: Path) -> Path:
    """Build from a copy of the sources, so that no stale build/ folder leaks old files in."""
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in SOURCES:
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    destination = scratch / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(destination),
            str(source),
        ],
        check=True,
    )
    (wheel,) = destination.glob("qpeft-*.whl")
    return wheel


def catalog_listing(wheel: Path, target: Path) -> list[str]:
    """Install the wheel into ``target`` and list qpeft.catalog from there."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    program = (
        "import importlib.resources, qpeft\n"
        f"assert qpeft.__path__[0].startswith({str(target)!r}), qpeft.__path__\n"
        "catalog = importlib.resources.files('qpeft.catalog')\n"
        "print('\\n'.join(sorted(p.name for p in catalog.iterdir() if p.name.endswith('.py'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=target,
        env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"check_wheel: the installed wheel does not import:\n{result.stderr}")
    return result.stdout.split()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="qpeft-wheel-") as scratch:
        scratch_path = Path(scratch)
        wheel = build_wheel(scratch_path)
        with zipfile.ZipFile(wheel) as archive:
            shipped = set(archive.namelist())
        missing = sorted(expected_files() - shipped)
        if missing:
            print(
                "check_wheel: the wheel lacks these files; add their package to the "
                "packages list in setup.py (data files: [tool.setuptools.package-data] in "
                "pyproject.toml):",
                *missing,
                sep="\n  ",
            )
            return 1
        listed = catalog_listing(wheel, scratch_path / "site")
        in_folder = sorted(p.name for p in (ROOT / "circuits").glob("*.py"))
        if listed != in_folder:
            print(f"check_wheel: installed qpeft.catalog lists {listed}, circuits/ has {in_folder}")
            return 1
        print(f"check_wheel: {wheel.name} ships {len(shipped)} files; catalog: {len(listed)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
