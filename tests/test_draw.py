"""Drawing: the shared column layout, the text and matplotlib outputs, the CLI."""

from __future__ import annotations

import io
import itertools
import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.mathtext import MathTextParser
from matplotlib.patches import FancyBboxPatch

import qpeft
from qpeft.ansatz import catalog_names, load_ansatz, pauli, real_amplitudes
from qpeft.circuit import Barrier, Circuit, ParameterVector, controlled
from qpeft.cli import main
from qpeft.draw import draw, draw_text, layout, save
from qpeft.draw.layout import format_symbol
from qpeft.draw.mpl import draw_mpl
from qpeft.draw.text import _LINES
from qpeft.errors import ConfigError


def small_circuit() -> Circuit:
    theta = ParameterVector("theta", 2)
    return (
        Circuit(3)
        .ry(0, theta[0])
        .cx(0, 2)
        .h(1)
        .barrier("mix")
        .swap(1, 2)
        .cz(0, 1)
        .rx(2, 2 * theta[1] + 0.5)
    )


GOLDEN = """\
     ┌──────────┐         mix
q0: ─┤ RY(θ[0]) ├─●────────┆────────────●──────────
     └──────────┘ │ ┌───┐  ┆            │
q1: ──────────────┼─┤ H ├──┆──×─────────●──────────
                  │ └───┘  ┆  │ ┌────────────────┐
q2: ──────────────⊕────────┆──×─┤ RX(2·θ[1]+0.5) ├─
                                └────────────────┘"""


# -- layout ------------------------------------------------------------------


def test_text_matches_golden_drawing():
    assert draw(small_circuit()) == GOLDEN
    assert small_circuit().draw() == GOLDEN


def test_a_gate_waits_for_the_wires_its_connector_crosses():
    drawing = layout(Circuit(3).h(1).cx(0, 2).h(1))
    assert [p.column for p in drawing.placements] == [0, 1, 2]


def test_a_barrier_takes_a_column_across_all_wires():
    drawing = layout(Circuit(3).h(0).barrier("b").h(2))
    assert [p.column for p in drawing.placements] == [0, 1, 2]
    assert drawing.is_barrier_column(1) and not drawing.is_barrier_column(0)


def test_a_controlled_barrier_is_drawn_as_its_barrier():
    # layout() once raised "a barrier has no glyph" for it
    plain = Circuit(3).h(0).append(Barrier((1, 2), "mid")).h(2)
    under_control = Circuit(3).h(0).append(controlled(Barrier((1, 2), "mid"), [0])).h(2)
    drawing = layout(under_control)
    assert drawing.placements[1].is_barrier and drawing.placements[1].gate == Barrier((1, 2), "mid")
    assert draw(under_control) == draw(plain)
    labels = [t.get_text() for t in draw(under_control, output="mpl").axes[0].texts]
    assert labels == [t.get_text() for t in draw(plain, output="mpl").axes[0].texts]


def test_gates_on_disjoint_wires_share_a_column():
    drawing = layout(pauli(qubits=4, layers=1))
    assert [len(column) for column in drawing.columns()] == [4, 1, 2, 4, 1, 2]


def test_line_characters_cover_every_light_and_heavy_junction():
    assert len(_LINES) == 80  # 3 states (none, light, heavy) for 4 directions, minus blank
    light_vertical_heavy_left = frozenset({("u", "LIGHT"), ("d", "LIGHT"), ("l", "HEAVY")})
    assert _LINES[light_vertical_heavy_left] == "┥"


# -- text --------------------------------------------------------------------


def test_folding_keeps_every_line_within_the_width():
    circuit = real_amplitudes(qubits=4, layers=4)
    text = draw(circuit, width=60)
    assert max(len(line) for line in text.splitlines()) <= 60
    wire_rows = [line for line in text.splitlines() if line.startswith("q")]
    blocks = [wire_rows[start:start + 4] for start in range(0, len(wire_rows), 4)]
    assert len(blocks) > 1
    for number, block in enumerate(blocks):
        assert [row.split(":")[0] for row in block] == ["q0", "q1", "q2", "q3"]
        assert all(row.endswith("»") == (number < len(blocks) - 1) for row in block)
        assert all(row.split(": ", 1)[1].startswith("«") == (number > 0) for row in block)
    unfolded = [line for line in draw(circuit, width=None).splitlines() if line.startswith("q")]
    assert len(unfolded) == 4


@pytest.mark.parametrize("label", ["层层", "e\u0301e\u0301x", "😀 1"])
def test_labels_are_measured_in_terminal_cells(label):
    """A double-width or combining character in a barrier label keeps the
    columns under it aligned: the barrier and the box borders sit at the same
    terminal cell in every row, and the label is centred on the barrier."""
    from rich.cells import cell_len

    text = draw(Circuit(2).barrier(label).ry(0, "a").cz(0, 1), width=None)
    rows = text.splitlines()

    def cells(row: str, char: str) -> list[int]:
        return [cell_len(row[:i]) for i, c in enumerate(row) if c == char]

    barrier = {x for row in rows for x in cells(row, "┆")}
    assert len(barrier) == 1
    (centre,) = barrier
    first = next(i for i, c in enumerate(rows[0]) if not c.isspace())
    assert cell_len(rows[0][:first]) == centre - (cell_len(label) - 1) // 2
    for pair in ("┌└", "┐┘"):
        corners = [x for row in rows for char in pair for x in cells(row, char)]
        assert len(set(corners)) == 1 and len(corners) == 2


def test_folding_keeps_every_gate():
    circuit = real_amplitudes(qubits=3, layers=5)
    folded = draw(circuit, width=50)
    assert folded.count("RY(") == draw(circuit, width=None).count("RY(") == 18


def test_qudit_wires_are_labelled_with_their_dimension():
    text = draw(load_ansatz("qudit", dimension=12, layers=1))
    rows = text.splitlines()
    assert rows[1].startswith("q0 (d=3): ━")
    assert any(row.startswith("      q1: ─") for row in rows)
    assert "G01(θ[0])" in text and "CZd" in text


def test_qudit_controls_show_their_levels():
    circuit = Circuit([3, 2]).controlled(qpeft.circuit.RY(1, "a"), 0, [[0, 2]])
    assert "●[0,2]" in draw(circuit)


def test_symbolic_and_bound_labels():
    circuit = pauli(qubits=2, layers=1)
    symbolic = draw(circuit)
    assert "RY(θ[0])" in symbolic and "RY(θ[3])" in symbolic
    bound = circuit.bind([math.pi / 2, 0.123456, -math.pi, 2.0])
    text = draw(bound)
    assert "RY(π/2)" in text and "RY(0.123)" in text and "RY(-π)" in text and "RY(2)" in text
    assert "θ" not in text
    assert "RY(0.12346)" in draw(bound, precision=5)
    hidden = draw(circuit, show_parameters=False)
    assert "RY" in hidden and "(" not in hidden


def test_wrong_options_raise_typed_errors():
    with pytest.raises(ConfigError, match="unknown option"):
        draw(pauli(2, 1), fold=3)  # fold belongs to the mpl output
    with pytest.raises(ConfigError, match="unknown output"):
        draw(pauli(2, 1), output="latex")
    with pytest.raises(ConfigError, match="width"):
        draw_text(pauli(2, 1), width=0)
    with pytest.raises(ConfigError, match="precision"):
        draw(pauli(2, 1), precision=0)
    with pytest.raises(ConfigError, match="filename is a path"):
        draw(pauli(2, 1), filename=5)


def test_numpy_numbers_are_accepted_as_options(tmp_path):
    circuit = Circuit(2).ry(0, 0.123456).cz(0, 1)
    assert draw(circuit, width=np.int64(30), precision=np.int32(2)) == draw(
        circuit, width=30, precision=2)
    figure = draw(circuit, output="mpl", fold=np.int64(3), scale=np.float32(0.5))
    save(figure, tmp_path / "c.png", dpi=np.int64(20))
    assert matplotlib.image.imread(tmp_path / "c.png").shape[2] == 4


@pytest.mark.parametrize("label, shown", [("a\nb\tc", "a␊b␉c"), ("a\u2028b\u2029c", "a␤b␤c")])
def test_control_characters_in_labels_are_drawn_as_control_pictures(label, shown):
    rows = draw(Circuit(2).barrier(label).ry(0, "a").cz(0, 1)).splitlines()
    assert shown in rows[0] and len(rows) == 4  # a newline once split the label row


# -- matplotlib --------------------------------------------------------------


def gate_patches(figure: Figure) -> list:
    return [p for p in figure.axes[0].patches if p.get_gid() == "qpeft-gate"]


def test_mpl_draws_one_gate_artist_per_gate():
    circuit = small_circuit()
    figure = draw(circuit, output="mpl")
    assert isinstance(figure, Figure)
    assert len(gate_patches(figure)) == 6
    boxes = [p for p in figure.axes[0].patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == 3  # RY, H, RX; CX, SWAP and CZ are dots and crosses
    barriers = [line for line in figure.axes[0].lines if line.get_gid() == "qpeft-barrier"]
    assert len(barriers) == 1


@pytest.mark.parametrize("name", ["_", "__", "_x[2]"])
def test_mpl_draws_parameters_whose_names_start_with_an_underscore(name):
    # "_" once gave the empty math text $\mathrm{}$, on which matplotlib crashed
    figure = draw(Circuit(1).ry(0, name), output="mpl")
    labels = [t.get_text() for t in figure.axes[0].texts]
    assert "$" + format_symbol(name, tex=True) + "$" in labels
    assert format_symbol(name, tex=True).startswith(r"\mathrm{\_")


def tricky_names() -> list[str]:
    """Names built from parts that once gave one label to several names."""
    heads = ["", "w", "x", "theta", "alpha", "scale", "ab1"]
    parts = ["", "1", "0", "01", "y", "b0"]
    bases = {head + "".join("_" + p for p in chosen)
             for head in heads for size in range(3)
             for chosen in itertools.product(parts, repeat=size)}
    names = []
    for base in sorted(bases):
        names += [base + index for index in ("", "[0]", "[1]", "[12]") if base]
    return names


def test_distinct_parameter_names_get_distinct_labels_in_both_spellings():
    names = tricky_names()
    assert len(names) > 1000
    for tex in (False, True):
        labels = {format_symbol(name, tex=tex) for name in names}
        assert len(labels) == len(names)
    parser = MathTextParser("agg")
    for name in ["w_1", "x__y", "x_", "theta_b0_2", "scale_1", "_x_1[2]", "alpha__1[3]"]:
        parser.parse("$" + format_symbol(name, tex=True) + "$")  # valid math text


def test_common_names_keep_their_math_text():
    assert [format_symbol(n, tex=True) for n in ("theta[3]", "w", "theta_b0[2]", "scale[1]",
                                                 "x_y", "theta_0[3]")] == [
        r"\theta_{3}", "w", r"\theta_{b0,2}", r"\mathrm{scale}_{1}", "x_{y}", r"\theta_{0,3}"]


def test_mpl_labels_of_different_parameters_differ():
    # w_1 and w[1] were both drawn as $w_{1}$, x_y and x__y as $x_{y}$
    circuit = Circuit(2).ry(0, "w_1").ry(1, "w[1]").rx(0, "x_y").rx(1, "x__y")
    labels = [t.get_text() for t in draw(circuit, output="mpl").axes[0].texts]
    angles = [label for label in labels if label not in ("$q_{0}$", "$q_{1}$", "$R_Y$", "$R_X$")]
    assert len(angles) == 4 and len(set(angles)) == 4
    assert "$w_{1}$" in angles and "$x_{y}$" in angles


@pytest.mark.parametrize("name", catalog_names())
def test_every_catalog_entry_draws(name):
    options = load_small(name)
    circuit = load_ansatz(name, **options)
    gates = sum(not g.is_identity for g in circuit.gates)
    assert len(gate_patches(draw_mpl(circuit))) == gates
    assert draw(circuit).count("q0") >= 1


def load_small(name: str) -> dict:
    options = qpeft.ansatz.ansatz_options(name)
    small = {"qubits": 3, "layers": 1, "dimension": 12}
    return {key: value for key, value in small.items() if key in options}


def test_mpl_folds_into_rows():
    circuit = real_amplitudes(qubits=3, layers=4)  # 17 columns
    single = draw_mpl(circuit, fold=None)
    folded = draw_mpl(circuit, fold=6)
    labels = [t for t in folded.axes[0].texts if t.get_text() == "$q_{0}$"]
    assert len(labels) == 3
    assert folded.get_size_inches()[0] < single.get_size_inches()[0]
    assert folded.get_size_inches()[1] > single.get_size_inches()[1]
    assert len(gate_patches(folded)) == len(gate_patches(single))


def test_mpl_scale_enlarges_the_figure():
    small = draw_mpl(pauli(2, 1))
    large = draw_mpl(pauli(2, 1), scale=2)
    np.testing.assert_allclose(large.get_size_inches(), 2 * small.get_size_inches())


# -- saving and the command line --------------------------------------------


def test_cli_writes_png_svg_and_text(tmp_path, capsys):
    png, svg, txt = tmp_path / "c.png", tmp_path / "c.svg", tmp_path / "c.txt"
    assert main(["draw", "pauli", "--qubits", "3", "--layers", "1", "--output", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 100
    assert main(["draw", "qudit", "--dimension", "12", "--layers", "1", "--output", str(svg)]) == 0
    root = ElementTree.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert 'id="qpeft-gate' in svg.read_text(encoding="utf-8")
    assert main(["draw", "pauli", "--qubits", "3", "--layers", "1", "--output", str(txt)]) == 0
    expected = draw(pauli(3, 1))
    assert txt.read_text(encoding="utf-8") == expected + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "c.svg", "c.txt"]
    capsys.readouterr()
    assert main(["draw", "qutrit_ladder", "--option", "dims=(3, 2)", "--layers", "1"]) == 0
    ladder = load_ansatz("qutrit_ladder", dims=(3, 2), layers=1)
    assert capsys.readouterr().out == draw(ladder) + "\n"


def test_svg_files_are_reproducible(tmp_path):
    figure = draw_mpl(pauli(3, 1))
    first = save(figure, tmp_path / "a.svg").read_bytes()
    second = save(draw_mpl(pauli(3, 1)), tmp_path / "b.svg").read_bytes()
    assert first == second


def test_cli_reports_bad_outputs(tmp_path, capsys):
    assert main(["draw", "pauli", "--output", str(tmp_path / "c.jpg")]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["draw", "pauli", "--output", str(tmp_path / "missing" / "c.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match=".txt"):
        save("text", tmp_path / "c.png")


@pytest.mark.parametrize(("arguments", "message"), [
    (["--option", "width=2", "--option", "width=5"],
     "--option width=2 and --option width=5 give width two values; keep one of them"),
    (["--qubits", "3", "--option", "qubits=5"],
     "--qubits 3 and --option qubits=5 contradict each other; drop one of them"),
])
def test_cli_refuses_contradictory_build_options_and_writes_nothing(
    tmp_path, capsys, arguments, message
):
    ansatz = tmp_path / "wires.py"
    ansatz.write_text("from qpeft import Circuit\n\n\n"
                      "def build(width=2, qubits=None):\n"
                      "    return Circuit(width)\n")
    picture = tmp_path / "c.png"
    assert main(["draw", str(ansatz), *arguments, "--output", str(picture)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not picture.exists()
    assert main(["draw", str(ansatz), "--option", "width=3", "--option", "width=3"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.split("\n\n")] == [
        "q0", "q1", "q2"]


@pytest.mark.parametrize("option", ["--width", "--fold"])
def test_cli_names_a_negative_width_or_fold(option, capsys):
    assert main(["draw", "pauli", "--qubits", "2", option, "-3"]) == 2
    assert capsys.readouterr().err == (
        f"error: {option} -3: give a positive number, or 0 never to fold\n")


def test_save_names_a_target_that_is_a_folder_or_under_a_file(tmp_path):
    (tmp_path / "c.txt").mkdir()
    with pytest.raises(ConfigError, match=r"c\.txt: it is a folder; name a file inside it"):
        save("text", tmp_path / "c.txt")
    (tmp_path / "plain").write_text("")
    with pytest.raises(ConfigError, match="the folder .*plain is a file, not a folder"):
        save("text", tmp_path / "plain" / "c.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "plain"]


def test_save_refuses_an_image_too_large_to_render(tmp_path):
    # Agg renders at most 2**23 pixels a side; its ValueError once escaped save()
    figure = draw_mpl(Circuit(1).h(0))
    with pytest.raises(ConfigError, match=r"pixels at dpi 10000000 .*lower the dpi"):
        save(figure, tmp_path / "h.png", dpi=10_000_000)
    assert list(tmp_path.iterdir()) == []


# -- agreement with Qiskit's drawer -----------------------------------------


def to_qiskit_by_hand(circuit: Circuit):
    """The same circuit in Qiskit, wire w -> qubit w (names kept as labels)."""
    qiskit = pytest.importorskip("qiskit")
    from qiskit.circuit import Parameter

    symbols: dict[str, Parameter] = {}
    qc = qiskit.QuantumCircuit(circuit.num_wires)
    for gate in circuit.gates:
        if gate.name == "barrier":
            qc.barrier(label=gate.text)
            continue
        if gate.name in ("RY", "RX", "RZ"):
            ((name, _),) = gate.params[0].terms
            symbol = symbols.setdefault(name, Parameter(name))
            getattr(qc, gate.name.lower())(symbol, gate.wires[0])
            continue
        getattr(qc, gate.name.lower())(*gate.wires)
    return qc


def our_sequence(circuit: Circuit, wire: int) -> list[str]:
    return [p.gate.name.lower() + ",".join(p.gate.params[0].parameters if p.gate.params else ())
            for p in layout(circuit).wire_sequence(wire)]


def qiskit_sequence(qc, qubit: int) -> list[str]:
    out = []
    for instruction in qc.data:
        indices = [qc.find_bit(q).index for q in instruction.qubits]
        if qubit in indices and instruction.operation.name != "barrier":
            params = ",".join(str(p) for p in instruction.operation.params)
            out.append(instruction.operation.name + params)
    return out


QISKIT_CASES = {
    "pauli": pauli(qubits=4, layers=2),
    "real_amplitudes_full": real_amplitudes(qubits=4, layers=2, entanglement="full"),
    "mixed": Circuit(4).h(1).cx(0, 2).swap(1, 3).cz(0, 3).ry(2, "a").barrier("x").cx(3, 0),
}


@pytest.mark.parametrize("name", sorted(QISKIT_CASES))
def test_per_wire_order_matches_qiskit(name):
    circuit = QISKIT_CASES[name]
    qc = to_qiskit_by_hand(circuit)
    for wire in range(circuit.num_wires):
        assert our_sequence(circuit, wire) == qiskit_sequence(qc, wire)


# Qiskit layers a circuit by its dependency graph, so in "mixed" it may draw a
# gate before an earlier one whose connector merely crosses its wire; our
# columns keep circuit order there. Without such crossings the columns agree.
@pytest.mark.parametrize("name", ["pauli", "real_amplitudes_full"])
def test_columns_match_qiskit_layers(name):
    utils = pytest.importorskip("qiskit.visualization.circuit._utils")
    layered = getattr(utils, "_get_layered_instructions", None)
    if layered is None:
        pytest.skip("this Qiskit has no _get_layered_instructions")
    circuit = QISKIT_CASES[name]
    qc = to_qiskit_by_hand(circuit)
    _, _, layers = layered(qc)
    theirs = []
    for column, nodes in enumerate(layers):
        for node in nodes:
            wires = sorted(qc.find_bit(q).index for q in node.qargs)
            theirs.append((column, node.op.name, tuple(wires)))
    ours = [(p.column, p.gate.name.lower(), tuple(sorted(p.gate.wires)))
            for p in layout(circuit).placements]
    assert sorted(ours) == sorted(theirs)


def test_the_folded_example_in_the_docs_is_current():
    page = (Path(__file__).resolve().parents[1] / "docs" / "drawing.md").read_text("utf-8")
    expected = page.split("```text\n", 1)[1].split("\n```", 1)[0]
    assert draw(load_ansatz("qudit", dimension=12, layers=1), width=70) == expected


def test_cli_names_a_circuit_json_file_as_the_wrong_kind_of_file(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(pauli(2, 1).to_json())
    assert main(["draw", str(path)]) == 2
    assert "error: " in capsys.readouterr().err


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf")])
def test_scale_must_be_positive_and_finite(scale):
    with pytest.raises(ConfigError, match="scale"):
        draw(pauli(2, 1), "mpl", scale=scale)


@pytest.mark.parametrize("dpi", [0, -5, float("nan"), float("inf"), True])
def test_save_refuses_a_dpi_that_is_not_positive(tmp_path, dpi):
    with pytest.raises(ConfigError, match="dpi"):
        save(draw_mpl(pauli(2, 1)), tmp_path / "c.png", dpi=dpi)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", [["--dpi", "0"], ["--dpi", "-3"], ["--scale", "inf"],
                                    ["--scale", "nan"], ["--scale", "0"]])
def test_cli_refuses_bad_dpi_and_scale_with_an_error(tmp_path, capsys, option):
    assert main(["draw", "pauli", "--qubits", "2", "--output", str(tmp_path / "c.png"),
                 *option]) == 2
    assert capsys.readouterr().err.startswith("error: " + option[0])
    assert list(tmp_path.iterdir()) == []


def test_barrier_text_is_drawn_as_written_not_as_math():
    """A label with dollar signs (from a downloaded circuit, say) is the
    user's text: it is drawn literally, and a stray ``$x^{`` saves fine."""
    figure = draw_mpl(Circuit(2).h(0).barrier("cost $5 or $6").h(1).barrier("$x^{$"))
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "cost $5 or $6" in texts and "$x^{$" in texts
    labels = [t for t in figure.axes[0].texts if t.get_text() in ("cost $5 or $6", "$x^{$")]
    assert len(labels) == 2 and not any(t.get_parse_math() for t in labels)
    figure.savefig(io.BytesIO(), format="png")  # renders without a parse error


def test_a_dpi_too_large_for_the_renderer_is_a_config_error(tmp_path):
    figure = draw_mpl(pauli(3, 2))
    with pytest.raises(ConfigError, match="lower the dpi"):
        save(figure, tmp_path / "huge.png", dpi=1e9)
    assert list(tmp_path.iterdir()) == []


def test_saved_files_get_the_mode_a_plain_open_gives(tmp_path):
    import os

    umask = os.umask(0o027)
    try:
        save(draw_text(pauli(2, 1)), tmp_path / "c.txt")
        save(draw_mpl(pauli(2, 1)), tmp_path / "c.svg")
    finally:
        os.umask(umask)
    assert {(tmp_path / name).stat().st_mode & 0o777 for name in ("c.txt", "c.svg")} == {0o640}


def test_long_barrier_labels_get_room_and_do_not_overlap():
    figure = draw_mpl(Circuit(2).barrier("a very long barrier label text").barrier("second label")
                      .h(0).barrier("third long label"))
    renderer = figure.canvas.get_renderer()
    labels = [t for t in figure.axes[0].texts if "label" in t.get_text()]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda box: box.x0)
    assert len(boxes) == 3
    assert all(left.x1 <= right.x0 for left, right in zip(boxes, boxes[1:]))
    assert boxes[0].x0 >= figure.axes[0].get_window_extent(renderer).x0  # not clipped


def test_the_docs_gallery_is_what_gen_gallery_draws_now(tmp_path):
    """docs/gallery is written by docs/gen_gallery.py; a change to the drawings
    must come with the regenerated pictures."""
    import subprocess
    import sys

    docs = Path(__file__).resolve().parents[1] / "docs"
    subprocess.run([sys.executable, str(docs / "gen_gallery.py"), "--docs", str(tmp_path)],
                   check=True, capture_output=True)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(docs): p.read_bytes()
                 for p in [docs / "gallery.md", *(docs / "gallery").iterdir()]}
    assert sorted(fresh) == sorted(committed)
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"regenerate with python docs/gen_gallery.py: {stale}"


def test_every_control_of_a_nested_controlled_gate_inside_its_box_is_drawn(tmp_path):
    from qpeft.circuit import controlled, pauli_rotation

    inner = controlled(pauli_rotation("XZ", [0, 2], 0.3), [3], [[0]])  # open control on q3
    circuit = Circuit(4).append(controlled(inner, [1]))  # a control on q1, inside the box
    rows = {row[:3]: row for row in circuit.draw(width=None).splitlines() if row.startswith("q")}
    assert "●" in rows["q1:"] and "○" in rows["q3:"]
    assert "X" in rows["q0:"] and "Z" in rows["q2:"]
    circuit.draw(output="mpl").savefig(tmp_path / "nested.png")  # the same marks as pins
