"""Draw every catalog entry into ``docs/gallery/`` and write ``docs/gallery.md``.

Run it before building the site (the drawings are not edited by hand)::

    python docs/gen_gallery.py && mkdocs build

Each entry is built small: 4 qubits and 2 layers, or dimension 12 for the
entries sized by a dimension; other options keep their defaults. The SVG
files carry no date and fixed ids, so an unchanged catalog rewrites
identical files.

>>> entry_options("qudit")
{'dimension': 12, 'layers': 2}
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from collections.abc import Sequence
from pathlib import Path

#: The small size every entry is drawn at (only the options an entry takes).
SMALL_OPTIONS = {"qubits": 4, "dimension": 12, "layers": 2}

HEADER = """\
# Gallery

Every ansatz of the catalog (`qpeft.ansatz.catalog_names()`), built at a small
size and drawn with [`qpeft.draw`](drawing.md). To draw one yourself:

```bash
qpeft draw qudit --dimension 12 --layers 2 --output qudit.svg
```

This page and its images are written by `python docs/gen_gallery.py`; to change
an entry, edit its file in `circuits/`.
"""


def entry_options(name: str) -> dict[str, object]:
    """The small-size options used for catalog entry ``name``."""
    from qpeft.ansatz import ansatz_options

    accepted = ansatz_options(name)
    return {key: value for key, value in SMALL_OPTIONS.items() if key in accepted}


def _call(name: str, options: dict[str, object]) -> str:
    arguments = ", ".join([repr(name)] + [f"{k}={v!r}" for k, v in options.items()])
    return f"load_ansatz({arguments})"


def write_gallery(docs: Path) -> list[Path]:
    """Draw each entry as ``docs/gallery/NAME.svg``, write ``docs/gallery.md``;
    return the files written."""
    from qpeft.ansatz import catalog_names, load_ansatz
    from qpeft.draw import draw, save

    folder = docs / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sections = [HEADER]
    for name in catalog_names():
        options = entry_options(name)
        circuit = load_ansatz(name, **options)
        image = save(draw(circuit, output="mpl"), folder / f"{name}.svg")
        written.append(image)
        module = importlib.import_module(f"qpeft.catalog.{name}")
        description = inspect.cleandoc(module.__doc__ or "").strip()
        dims = " × ".join(str(d) for d in circuit.dims)
        gates = sum(not gate.is_identity for gate in circuit.gates)
        sections.append(
            f"## {name}\n\n"
            f"`{_call(name, options)}`: {circuit.num_parameters} parameters, "
            f"N = {circuit.dimension} (wires of dimensions {dims}), {gates} gates.\n\n"
            f"{description}\n\n"
            f"![{name}](gallery/{name}.svg)\n"
        )
    for stale in folder.glob("*.svg"):
        if stale not in written:
            stale.unlink()
    page = docs / "gallery.md"
    page.write_text("\n".join(sections), encoding="utf-8")
    return [*written, page]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parent,
                        help="the docs folder (default: the one holding this script)")
    args = parser.parse_args(argv)
    for path in write_gallery(args.docs):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
