"""``qpeft count``: exact adapter counts for the built-in shapes, agreement with
``get_qpeft_model`` and peft's LoRA on a real (tiny) transformers model, the
JSON output, the plot file and the error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import qpeft
from qpeft import cli
from qpeft.adapters.count import BUILTIN_MODELS, PLOT_WIDTHS, count_model, width_curve
from qpeft.catalog import qudit


def run_count(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = cli.main(["count", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def count_json(capsys: pytest.CaptureFixture[str], *arguments: str) -> dict:
    code, out, err = run_count(capsys, *arguments, "--json")
    assert code == 0, err
    return json.loads(out)


def circuit_parameters(width: int, layers: int) -> int:
    """P of the qudit circuit of one side, from the catalog builder."""
    return qpeft.load_ansatz("qudit", dimension=width, layers=layers).num_parameters


# -- built-in shapes -----------------------------------------------------------------------
def test_deberta_attention_counts_are_exact(capsys: pytest.CaptureFixture[str]) -> None:
    document = count_json(capsys, "--model", "deberta-v3-base", "--rank", "4", "--layers", "2")
    (report,) = document["models"]
    p = circuit_parameters(768, 2)
    assert p == qudit.parameter_count(768, 2) == 44  # the builder and the documented closed form
    assert [row["layer_type"] for row in report["rows"]] == [
        "attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
        "attention.output.dense",
    ]
    for row in report["rows"]:
        assert (row["in_features"], row["out_features"], row["count"]) == (768, 768, 12)
        assert (row["circuit_out"], row["circuit_in"], row["qpeft_per_layer"]) == (p, p, 2 * p + 4)
    total = report["total"]
    assert total["count"] == 48
    assert total["qpeft"] == 48 * (2 * p + 4) == 4416
    assert total["lora"] == {str(r): 48 * r * (768 + 768) for r in (1, 4, 8)}
    assert total["ratio"] == pytest.approx(48 * 4 * 1536 / (48 * (2 * p + 4)))


def test_llama_3_70b_attention_counts_are_exact() -> None:
    report = count_model("llama-3-70b", {"rank": 4, "layers": 2})
    wide, narrow = circuit_parameters(8192, 2), circuit_parameters(1024, 2)
    per_block = 2 * (2 * wide + 4) + 2 * (wide + narrow + 4)  # q, o square; k, v 8192 -> 1024
    assert report.qpeft == 80 * per_block
    assert report.lora(4) == 80 * 4 * (2 * (8192 + 8192) + 2 * (8192 + 1024)) == 16_384_000
    assert report.ratio == pytest.approx(16_384_000 / report.qpeft)


EXPECTED_SHAPES = {
    "deberta-v3-base": (12, {
        "attention.self.query_proj": (768, 768), "attention.self.key_proj": (768, 768),
        "attention.self.value_proj": (768, 768), "attention.output.dense": (768, 768),
        "intermediate.dense": (768, 3072), "output.dense": (3072, 768),
    }),
    "gpt2-medium": (24, {
        "attn.c_attn": (1024, 3072), "attn.c_proj": (1024, 1024),
        "mlp.c_fc": (1024, 4096), "mlp.c_proj": (4096, 1024),
    }),
    "vit-b-16": (12, {
        "attention.attention.query": (768, 768), "attention.attention.key": (768, 768),
        "attention.attention.value": (768, 768), "attention.output.dense": (768, 768),
        "intermediate.dense": (768, 3072), "output.dense": (3072, 768),
    }),
    "mistral-7b": (32, {
        "self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 1024),
        "self_attn.v_proj": (4096, 1024), "self_attn.o_proj": (4096, 4096),
        "mlp.gate_proj": (4096, 14336), "mlp.up_proj": (4096, 14336),
        "mlp.down_proj": (14336, 4096),
    }),
    "llama-3-70b": (80, {
        "self_attn.q_proj": (8192, 8192), "self_attn.k_proj": (8192, 1024),
        "self_attn.v_proj": (8192, 1024), "self_attn.o_proj": (8192, 8192),
        "mlp.gate_proj": (8192, 28672), "mlp.up_proj": (8192, 28672),
        "mlp.down_proj": (28672, 8192),
    }),
}


def test_builtin_shapes_and_default_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(EXPECTED_SHAPES) == set(BUILTIN_MODELS)
    everything = count_json(capsys, "--model", "all", "--targets", "all")
    attention = count_json(capsys, "--model", "all")
    for name, every, attn in zip(BUILTIN_MODELS, everything["models"], attention["models"]):
        blocks, shapes = EXPECTED_SHAPES[name]
        assert {row["layer_type"]: (row["in_features"], row["out_features"])
                for row in every["rows"]} == shapes
        assert all(row["count"] == blocks for row in every["rows"])
        assert [row["layer_type"] for row in attn["rows"]] == [
            kind for kind in shapes if "attn" in kind or "attention" in kind
        ]


def test_table_prints_rows_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_count(capsys, "--model", "deberta-v3-base")
    assert code == 0
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert total.split() == ["total", "48", "4,416", "73,728", "294,912", "589,824", "66.8"]
    assert out.count("92 (44+44+4)") == 4
    assert "LoRA r=4 / qpeft" in out


# -- a real model: the count is what get_qpeft_model and peft create ------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=96, max_position_embeddings=16,
    )
    config.save_pretrained(folder)
    return folder, config


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize(("targets", "ansatz", "rank", "layers"), [
    ("attention", "qudit", 3, 1),
    ("all", "shannon", 2, 2),
    ("query,intermediate.dense", "cayley", 4, 1),
])
def test_count_matches_get_qpeft_model_and_peft(
    capsys: pytest.CaptureFixture[str], tiny_bert, targets: str, ansatz: str, rank: int,
    layers: int,
) -> None:
    peft = pytest.importorskip("peft")
    from transformers import BertModel

    folder, config = tiny_bert
    document = count_json(capsys, "--model", str(folder), "--targets", targets,
                          "--ansatz", ansatz, "--rank", str(rank), "--layers", str(layers))
    (report,) = document["models"]
    model = qpeft.get_qpeft_model(BertModel(config), qpeft.QPeftConfig(
        target_modules=report["target_modules"], rank=rank, layers=layers, ansatz=ansatz,
    ))
    assert model.get_nb_trainable_parameters()[0] == report["total"]["qpeft"]
    assert len(model.qpeft_layers()) == report["total"]["count"]
    assert report["base_parameters"] == sum(p.numel() for p in BertModel(config).parameters())

    layer_types = [row["layer_type"] for row in report["rows"]]
    for r in (1, 4, 8):
        lora = peft.get_peft_model(BertModel(config),
                                   peft.LoraConfig(r=r, target_modules=layer_types))
        assert lora.get_nb_trainable_parameters()[0] == report["total"]["lora"][str(r)]


def test_attention_targets_of_a_model_folder(capsys: pytest.CaptureFixture[str],
                                             tiny_bert) -> None:
    folder, _ = tiny_bert
    (report,) = count_json(capsys, "--model", str(folder))["models"]
    assert [row["layer_type"] for row in report["rows"]] == [
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense",
    ]
    assert report["total"]["count"] == 8


# -- the plot ----------------------------------------------------------------------------------
def test_plot_writes_a_png_and_no_temporary_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "count.png"
    code, out, err = run_count(capsys, "--plot", str(target))
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [path.name for path in tmp_path.iterdir()] == ["count.png"]
    assert f"wrote {target}" in out


@pytest.mark.parametrize("name, message", [
    ("missing/count.png", "folder .*missing does not exist"),
    ("count.xyz", "use a file ending in .png, .svg, .pdf"),
    (".", "is a folder"),
])
def test_plot_path_is_checked_before_anything_is_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str) -> None:
    code, out, err = run_count(capsys, "--plot", str(tmp_path / name))
    assert code == cli.ERROR_EXIT_CODE
    assert out == "" and err.startswith("error: --plot") and "Traceback" not in err
    assert re.search(message, err)
    assert list(tmp_path.iterdir()) == []


def test_width_curve_is_the_adapter_count_and_stays_below_lora() -> None:
    points, skipped = width_curve({"rank": 4, "layers": 2})
    assert skipped == []
    assert [width for width, _ in points] == list(PLOT_WIDTHS)
    for width, count in points:
        assert count == 2 * circuit_parameters(width, 2) + 4
        assert count < 1 * 2 * width  # below LoRA at r = 1 at every plotted width
    power_of_two = [count for width, count in points if width & (width - 1) == 0]
    assert power_of_two == sorted(power_of_two)


def test_width_curve_leaves_out_widths_an_ansatz_cannot_take() -> None:
    points, skipped = width_curve({"rank": 4, "layers": 1, "ansatz": "pauli"}, [384, 1024])
    assert points == [(1024, 2 * qpeft.ansatz.pauli(qubits=10, layers=1).num_parameters + 4)]
    assert len(skipped) == 1 and skipped[0].startswith("N=384: ")


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("arguments", "message"), [
    (["--model", "gpt-5"], "'gpt-5' is neither a built-in model nor an existing folder"),
    (["--rank", "1000"], "rank K=1000 is larger than"),
    (["--targets", "nothing_here"], "matches no linear layer"),
    (["--plot", "count.txt"], "--plot count.txt: use a file ending in .png"),
])
def test_bad_input_exits_2_with_a_message(capsys: pytest.CaptureFixture[str],
                                          arguments: list[str], message: str) -> None:
    code, out, err = run_count(capsys, *arguments)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err


def test_folder_without_config_lists_the_builtins(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_count(capsys, "--model", str(tmp_path))
    assert code == 2
    assert "it holds no config.json" in err
    assert all(name in err for name in BUILTIN_MODELS)


def test_a_circuit_json_file_as_ansatz_is_an_error(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(qpeft.Circuit(1).ry(0, "a").to_json())
    code, _, err = run_count(capsys, "--ansatz", str(path))
    assert code == 2 and "not a .py file" in err
