"""``qpeft finetune`` and ``qpeft compare`` end to end on a tiny model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qpeft import cli
from qpeft.errors import ConfigError
from qpeft.train import compare, finetune
from qpeft.train.testing import write_sentiment_csv, write_tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tiny")
    return {
        "model": str(write_tiny_bert(folder / "model")),
        "dataset": str(write_sentiment_csv(folder / "sentiment.csv", rows=300)),
    }


def budget(tiny: dict[str, str], output: Path, *extra: str) -> list[str]:
    return [
        "--model", tiny["model"], "--dataset", tiny["dataset"], "--max-train", "96",
        "--max-eval", "30", "--epochs", "2", "--batch-size", "16", "--no-progress",
        "--threads", "1",
        "--output-dir", str(output), *extra,
    ]


def head_run(tiny: dict[str, str], output: Path, *options: str) -> list[str]:
    """A quick head-only ``qpeft finetune`` command writing to ``output``."""
    return ["finetune", "--method", "head", *options, *budget(tiny, output)]


def finished_head_run(tiny: dict[str, str], output: Path, *options: str) -> list[str]:
    """Run :func:`head_run` to the end; returns its command."""
    args = head_run(tiny, output, *options)
    assert cli.main(args) == 0
    return args


def test_finetune_writes_a_complete_report_and_refuses_to_overwrite_it(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    assert cli.main(["finetune", "--method", "lora", "--rank", "2", *budget(tiny, output)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    names = {p.name for p in output.iterdir()}
    assert names == {"run.json", "metrics.json", "history.json", "report.md", "loss.png",
                     "accuracy_vs_parameters.png", "adapter"}  # the checkpoint is gone
    metrics = json.loads((output / "metrics.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "validation_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["trainable_parameters_adapter"] == 2 * 4 * 2 * (32 + 32)
    assert metrics["trainable_parameters_with_head"] == metrics["trainable_parameters_adapter"] + 99
    assert metrics["majority_baseline_test_accuracy"] == pytest.approx(0.5)  # ratio 3:2:1
    assert metrics["timings"]["steps"] == 2 * 6
    assert metrics["data"]["sizes"] == {"train": 96, "validation": 30, "test": 30}
    assert metrics["config"]["model_location"] == str(Path(tiny["model"]).resolve())
    assert (output / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "| test accuracy |" in (output / "report.md").read_text()

    assert cli.main(["finetune", "--method", "lora", "--rank", "2", *budget(tiny, output)]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err

    # --resume of a complete run shows it again without training
    before = (output / "metrics.json").stat().st_mtime_ns
    assert cli.main(["finetune", "--method", "lora", "--rank", "2",
                     *budget(tiny, output, "--resume")]) == 0
    assert (output / "metrics.json").stat().st_mtime_ns == before
    assert "holds a complete run" in capsys.readouterr().err

    # ... but not with other settings
    assert cli.main(["finetune", "--method", "lora", "--rank", "4",
                     *budget(tiny, output, "--resume")]) == 2
    assert "other settings" in capsys.readouterr().err


def test_overwrite_replaces_a_run_but_never_a_foreign_folder(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    args = finished_head_run(tiny, output, "--lr", "0.05")
    first = json.loads((output / "metrics.json").read_text())
    assert first["trainable_parameters_adapter"] == 0
    assert first["method"]["learning_rate"] == 0.05
    assert cli.main([*args, "--overwrite"]) == 0
    assert json.loads((output / "metrics.json").read_text())["test_accuracy"] == pytest.approx(
        first["test_accuracy"])  # same seed, same result

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    assert cli.main([*head_run(tiny, foreign), "--overwrite"]) == 2
    assert "holds no qpeft run" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "keep me"


@pytest.mark.parametrize("content", [
    '{"experiment": "another tool", "status": "COMPLETED"}',  # another tool's run.json
    '{"kind": "training"}',
    "not json",
    "[1, 2]",
    "\udcff",
])
def test_a_run_json_that_qpeft_did_not_write_is_neither_overwritten_nor_resumed(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "run.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    (folder / "notes.txt").write_text("keep me")
    (folder / "data" / "results.csv").write_text("x,y\n")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    for option in ("--overwrite", "--resume"):
        assert cli.main([*head_run(tiny, folder), option]) == 2, option
        err = capsys.readouterr().err
        assert "is not a qpeft run marker" in err and "Traceback" not in err, option
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before
    assert (folder / "notes.txt").read_text() == "keep me"
    # compare's folder marker is checked the same way
    (folder / "compare-run.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert cli.main(["compare", "--methods", "head", "--seeds", "0",
                     *budget(tiny, folder, "--overwrite")]) == 2
    assert "is not a qpeft run marker" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "keep me"


def test_a_complete_run_whose_metrics_cannot_be_read_is_refused_with_advice(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    args = finished_head_run(tiny, output, "--epochs", "1")
    capsys.readouterr()
    (output / "metrics.json").write_text("[truncated")
    assert cli.main([*args, "--resume"]) == 2
    assert "cannot be read back" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0  # a run qpeft wrote can still be replaced


def test_a_mistyped_overwrite_leaves_the_finished_run_alone(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    args = finished_head_run(tiny, output, "--epochs", "1")
    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir()}
    capsys.readouterr()
    mistakes = [
        ["--dataset", str(tmp_path / "typo.csv")],
        ["--model", str(tmp_path / "no-model")],
        ["--batch-size", "0"],
        ["--epochs", "0"],
        ["--device", "nonsense"],
        ["--method", "lora", "--targets", "no_such_module"],
        ["--method", "lora", "--targets", "query,valeu"],
        ["--method", "oft:block=5"],
        ["--seed", "99999999999999999"],
        ["--seed", "-1"],
    ]
    for mistake in mistakes:
        assert cli.main([*args, "--overwrite", *mistake]) == 2, mistake
        assert "error: " in capsys.readouterr().err
        assert {p.name: p.stat().st_mtime_ns for p in output.iterdir()} == before, mistake


def test_a_refused_command_leaves_no_folder_behind(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    args = head_run(tiny, output, "--epochs", "1")
    assert cli.main([*args, "--batch-size", "0"]) == 2
    assert not output.exists()
    assert cli.main(args) == 0  # the corrected command is not refused

    comparison = tmp_path / "cmp"
    assert cli.main(["compare", "--methods", "head", "oft:block=5", "--seeds", "0",
                     *budget(tiny, comparison, "--epochs", "1")]) == 2
    assert "error: " in capsys.readouterr().err
    assert not comparison.exists()  # refused before training head


@pytest.mark.parametrize("device", ["xpu", "hpu", "meta"])
def test_a_device_type_that_training_does_not_support_is_refused_before_any_work(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    output = tmp_path / "run"
    assert cli.main([*head_run(tiny, output), "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"error: --device {device} is not supported; use cpu, cuda, cuda:N, mps or auto" in err
    assert not output.exists()
    assert cli.main(["bench", "train", "--quick", "--device", device]) == 2
    assert "is not supported" in capsys.readouterr().err


def test_a_max_length_beyond_the_models_positions_is_refused_before_any_work(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    limit = json.loads((Path(tiny["model"]) / "config.json").read_text())[
        "max_position_embeddings"]
    output = tmp_path / "run"
    assert cli.main([*head_run(tiny, output), "--max-length", str(limit + 1)]) == 2
    assert f"--max-length {limit + 1} is longer than the model allows" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("options", [
    ["--method", "head", "--lr", "inf"],
    ["--method", "lora:lr=inf"],
    ["--method", "lora", "--alpha", "nan"],
])
def test_non_finite_rates_and_alphas_are_refused_before_any_work(
    tiny: dict[str, str], tmp_path: Path, options: list[str]
) -> None:
    output = tmp_path / "run"
    assert cli.main(["finetune", *options, *budget(tiny, output)]) == 2
    assert not output.exists()


def test_a_run_that_diverges_reports_no_scores(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One step at --lr 1e30 leaves weights whose logits are NaN or infinite."""
    output = tmp_path / "run"
    args = ["finetune", "--method", "lora", "--lr", "1e30",
            *budget(tiny, output, "--max-train", "8", "--batch-size", "8", "--epochs", "1")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err
    assert "lower the learning rate (--lr, or lr= in the method)" in err
    assert "start again with --overwrite" in err
    assert not (output / "metrics.json").exists()
    assert cli.main([*args, "--overwrite", "--lr", "1e-3"]) == 0


@pytest.mark.parametrize("method", ["head", "full"])
def test_targets_for_a_method_without_adapters_are_refused(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    output = tmp_path / "run"
    assert cli.main(["finetune", "--method", method, "--targets", "query",
                     *budget(tiny, output)]) == 2
    assert "--targets would be ignored" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("targets", ["", ",,,", " , "])
@pytest.mark.parametrize("command", ["finetune", "compare"])
def test_targets_that_name_no_module_are_refused_not_read_as_the_default(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], targets: str,
    command: str
) -> None:
    output = tmp_path / "run"
    method = ["--method", "lora"] if command == "finetune" else ["--methods", "lora"]
    assert cli.main([command, *method, "--targets", targets, *budget(tiny, output)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --targets {targets!r} names no module; ")
    assert not output.exists()


def test_an_output_folder_that_cannot_be_made_is_a_config_error(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert cli.main(head_run(tiny, afile / "sub")) == 2
    assert "afile is a file" in capsys.readouterr().err
    assert afile.read_text() == "keep me"


def test_a_model_folder_without_model_type_or_tokenizer_is_refused(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    empty = tmp_path / "empty-config"
    shutil.copytree(tiny["model"], empty)
    (empty / "config.json").write_text("{}")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny["model"]) / name, no_tokenizer / name)
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny["model"], truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    wrong_type = tmp_path / "wrong-type"
    shutil.copytree(tiny["model"], wrong_type)
    config = json.loads((wrong_type / "config.json").read_text())
    config["hidden_size"] = str(config["hidden_size"])
    (wrong_type / "config.json").write_text(json.dumps(config))
    no_vocabulary = tmp_path / "no-vocabulary"
    shutil.copytree(tiny["model"], no_vocabulary)
    for name in ("tokenizer.json", "vocab.txt"):
        (no_vocabulary / name).unlink(missing_ok=True)
    (no_vocabulary / "vocab.txt").write_text("")
    for folder, message in ((empty, "could not load the model"),
                            (no_tokenizer, "holds no tokenizer files"),
                            (truncated, "could not load the model"),
                            (wrong_type, "could not load the model"),
                            (no_vocabulary, "cannot encode text")):
        output = tmp_path / f"run-{folder.name}"
        code = cli.main([*head_run(tiny, output), "--model", str(folder)])
        assert code == 2
        assert message in capsys.readouterr().err
        assert not output.exists()


def test_a_method_learning_rate_wins_over_the_global_lr(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    assert cli.main(["finetune", "--method", "lora:r=2,lr=0.05", "--lr", "0.001",
                     *budget(tiny, output, "--epochs", "1")]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["train"]["learning_rate"] == 0.05
    assert metrics["config"]["learning_rate"] == 0.05
    assert metrics["method"]["learning_rate"] == 0.05
    assert "note: the method's lr=0.05 is used, not --lr 0.001" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "message"), [
    (["--method", "lora:r=8", "--rank", "2"],
     "--method lora:r=8 sets r=8 but --rank gives 2; drop r= from --method or drop --rank"),
    (["--method", "qpeft:head_lr=0.5", "--head-lr", "0.01"],
     "sets head_lr=0.5 but --head-lr gives 0.01; drop head_lr= from --method or drop --head-lr"),
    (["--method", "qpeft:K=4,L=1", "--layers", "2"], "sets L=1 but --layers gives 2"),
    (["--method", "qpeft:ansatz=pauli", "--ansatz", "qudit"], "sets ansatz=pauli but --ansatz"),
    (["--method", "lora:alpha=8", "--alpha", "16"], "sets alpha=8 but --alpha gives 16"),
    (["--method", "oft:block=8", "--block-size", "16"], "sets block=8 but --block-size gives"),
    (["--method", "lora:r=2,r=8"], "sets rank twice (r=2 and r=8); keep one of them"),
    (["--method", "lora:r=2,K=2"], "sets rank twice (r=2 and K=2)"),
    (["--method", "lora:lr=0.1,learning_rate=0.2"], "sets learning rate twice"),
])
def test_a_setting_given_twice_with_different_values_is_refused(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    options: list[str], message: str
) -> None:
    """--rank once beat r=, a repeated key kept its last value, both silently."""
    output = tmp_path / "run"
    assert cli.main(["finetune", *options, *budget(tiny, output)]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_an_option_that_repeats_the_methods_own_value_is_accepted(tiny: dict[str, str]) -> None:
    args = cli.build_parser("finetune").parse_args(
        ["finetune", "--method", "lora:r=2,alpha=4", "--rank", "2", "--alpha", "4"])
    spec = finetune.method_from_args(args)
    assert (spec.rank, spec.alpha) == (2, 4.0)


def test_interrupted_finetune_resumes_to_the_uninterrupted_adapter(
    tiny: dict[str, str], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from qpeft.train.experiment import (
        load_task,
        prepare_output_dir,
        run_method,
        settings_from_args,
    )
    from qpeft.train.methods import MethodSpec

    parser = argparse.ArgumentParser()
    finetune.add_parser(parser.add_subparsers())
    args = parser.parse_args(["finetune", *budget(tiny, tmp_path / "unused")])
    task = load_task(settings_from_args(args))
    spec = MethodSpec("lora", rank=2)

    straight = tmp_path / "straight"
    prepare_output_dir(straight, resume=False, overwrite=False)
    run_method(task, spec, 3, straight, progress=False)

    split = tmp_path / "split"
    prepare_output_dir(split, resume=False, overwrite=False)
    partial = run_method(task, spec, 3, split, progress=False, stop_after_step=5)
    assert partial.metrics == {"completed": False, "steps": 5}
    assert (split / "checkpoint.pt").is_file() and not (split / "metrics.json").exists()
    resumed = run_method(task, spec, 3, split, progress=False, resume=True)
    assert resumed.metrics["timings"]["resumed_from_step"] == 5

    expected = load_file(straight / "adapter" / "adapter_model.safetensors")
    got = load_file(split / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


ANSATZ_FILE = """from qpeft import Circuit, ParameterVector


def build(dimension=32, layers=2):
    n = dimension.bit_length() - 1
    t = iter(ParameterVector("t", n + layers * n))
    c = Circuit(n)
    for w in range(n):
        c.ry(w, next(t))
    for _ in range(layers):
        for w in range(n - 1):
            c.cz(w, w + 1)
        for w in range(n):
            c.ry(w, next(t))
    return c
"""


def interrupted_run(tiny: dict[str, str], folder: Path, *options: str) -> list[str]:
    """Start ``qpeft finetune OPTIONS`` in ``folder`` and stop it after two
    steps, as Ctrl-C would; returns the command that resumes it."""
    from qpeft.train.experiment import load_task, prepare_output_dir, run_method
    from qpeft.train.experiment import settings_from_args as settings_of

    args = ["finetune", *options, *budget(tiny, folder)]
    parsed = cli.build_parser("finetune").parse_args(args)
    spec = finetune.method_from_args(parsed)
    prepare_output_dir(folder, resume=False, overwrite=False)
    partial = run_method(load_task(settings_of(parsed)), spec, parsed.seed, folder,
                         progress=False, stop_after_step=2)
    assert partial.metrics == {"completed": False, "steps": 2}
    return [*args, "--resume"]


def test_a_resume_after_the_ansatz_file_changed_is_refused(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ansatz = tmp_path / "my_ansatz.py"
    ansatz.write_text(ANSATZ_FILE)
    folder = tmp_path / "run"
    resume = interrupted_run(tiny, folder, "--method", "qpeft", "--rank", "4",
                             "--ansatz", str(ansatz))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    # another circuit with as many angles: the trainable tensors keep their shapes
    ansatz.write_text(ANSATZ_FILE.replace("c.cz(w, w + 1)", "c.cz(w + 1, w)"))
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert f"error: the ansatz file {ansatz} (--ansatz) changed since the run" in err
    assert len(err) < 300
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # refused before work

    # a run.json without the file digests (an earlier release): the checkpoint's record
    # of the circuits actually used still refuses the other circuit
    from qpeft.train.experiment import load_task, run_method
    from qpeft.train.experiment import settings_from_args as settings_of

    marker = json.loads((folder / "run.json").read_text())
    del marker["inputs"]
    (folder / "run.json").write_text(json.dumps(marker))
    parsed = cli.build_parser("finetune").parse_args(resume)
    with pytest.raises(ConfigError, match="the adapter circuits differ from the checkpoint's"):
        run_method(load_task(settings_of(parsed)), finetune.method_from_args(parsed),
                   parsed.seed, folder, progress=False, resume=True)

    ansatz.write_text(ANSATZ_FILE)  # the original file resumes
    assert cli.main(resume) == 0
    assert json.loads((folder / "metrics.json").read_text())["timings"]["resumed_from_step"] == 2


def test_a_resume_after_the_data_file_changed_is_refused(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes(Path(tiny["dataset"]).read_bytes())
    folder = tmp_path / "run"
    resume = interrupted_run({**tiny, "dataset": str(data)}, folder, "--method", "head")
    rows = data.read_text().splitlines(keepends=True)
    data.write_text("".join([rows[0], *rows[1:][::-1]]))  # same rows, another order
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert f"error: the data file {data} (--dataset) changed since the run" in err
    assert not (folder / "metrics.json").exists()


def test_compare_tables_every_method_over_seeds(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "cmp"
    code = cli.main(["compare", "--methods", "head", "lora:r=2", "--seeds", "0,1",
                     *budget(tiny, output, "--epochs", "1")])
    assert code == 0
    assert "qpeft compare" in capsys.readouterr().out
    summary = json.loads((output / "compare.json").read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    assert set(rows) == {"head", "lora r=2"}
    assert rows["lora r=2"]["seeds"] == [0, 1]
    accuracies = [run["test_accuracy"] for run in summary["runs"] if run["label"] == "lora r=2"]
    assert rows["lora r=2"]["test_accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
    assert rows["lora r=2"]["test_accuracy_std"] is not None
    assert rows["head"]["trainable_parameters_adapter"] == 0
    assert rows["head"]["trainable_parameters_with_head"] == 99
    table = (output / "compare.md").read_text()
    assert "| lora r=2 | 1,024 | 1,123 |" in table
    for name in ("accuracy_vs_parameters.png", "loss.png"):
        assert (output / name).stat().st_size > 1000
    assert (output / "runs" / "lora-r2" / "seed-1" / "metrics.json").is_file()

    # resuming a finished comparison reuses every run
    assert cli.main(["compare", "--methods", "head", "lora:r=2", "--seeds", "0,1",
                     *budget(tiny, output, "--epochs", "1", "--resume")]) == 0
    assert capsys.readouterr().err.count("(already done)") == 4
    # a run whose method changed is refused before any other run trains
    marker = output / "runs" / "lora-r2" / "seed-1" / "run.json"
    saved = json.loads(marker.read_text())
    saved["method"]["dropout"] = 0.3
    marker.write_text(json.dumps(saved))
    (output / "runs" / "head" / "seed-1" / "metrics.json").unlink()  # head would train again
    assert cli.main(["compare", "--methods", "head", "lora:r=2", "--seeds", "0,1",
                     *budget(tiny, output, "--epochs", "1", "--resume")]) == 2
    err = capsys.readouterr().err
    assert "lora-r2/seed-1 holds a run with other settings" in err
    assert "head, seed 1" not in err


def test_compare_refuses_duplicate_methods(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["compare", "--methods", "lora:r=2", "lora:rank=2",
                     *budget(tiny, tmp_path / "cmp")]) == 2
    assert "names a method twice" in capsys.readouterr().err
    assert cli.main(["compare", "--methods", "lora:r=2", "lora:r=2,lr=0.01",
                     *budget(tiny, tmp_path / "cmp")]) == 2
    assert "differ only in settings that the run folders" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_parser_options_and_defaults() -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    finetune.add_parser(subparsers)
    compare.add_parser(subparsers)
    args = parser.parse_args(["finetune"])
    assert args.method == "qpeft" and args.func is finetune.run
    assert (args.max_train, args.max_eval, args.epochs, args.batch_size) == (2000, 1000, 2, 32)
    assert parser.parse_args(["finetune", "--max-train", "all"]).max_train is None
    assert parser.parse_args(["compare", "--seeds", "4,5"]).seeds == (4, 5)
    assert args.threads == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--threads", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--seeds", "1,1"])


def test_row_caps_of_zero_or_less_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qpeft.errors import ConfigError
    from qpeft.train.experiment import settings_from_args

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    finetune.add_parser(subparsers)
    compare.add_parser(subparsers)
    for command in ("finetune", "compare"):
        for option in ("--max-train", "--max-eval"):
            for value in ("0", "-3"):  # 0 once meant "no cap"
                args = parser.parse_args([command, option, value])
                with pytest.raises(ConfigError, match=f"{option} must be a positive number of "
                                                      f"rows, not {value}; for no cap, pass "
                                                      f"{option} all"):
                    settings_from_args(args)
    assert settings_from_args(parser.parse_args(["finetune", "--max-eval", "all"])).max_eval \
        is None
    output = tmp_path / "never"
    assert cli.main(["finetune", "--method", "head", "--max-train", "0", "--output-dir",
                     str(output)]) == 2
    assert "--max-train must be a positive number of rows" in capsys.readouterr().err
    assert not output.exists()


def test_help_does_not_import_transformers_or_peft() -> None:
    program = (
        "import sys\n"
        "from qpeft import cli\n"
        "try:\n"
        "    cli.main(['finetune', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('transformers' in sys.modules, 'peft' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "False False"
    assert "--output-dir" in result.stdout


def test_overwrite_keeps_files_qpeft_did_not_write_and_the_folder_it_runs_in(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output = tmp_path / "run"
    args = finished_head_run(tiny, output)
    (output / "notes.md").write_text("keep me")
    assert cli.main([*args, "--overwrite"]) == 2
    assert "holds files qpeft did not write (notes.md)" in capsys.readouterr().err
    assert (output / "notes.md").read_text() == "keep me" and (output / "metrics.json").is_file()
    (output / "notes.md").unlink()
    (output / ".git").mkdir()  # hidden, but not one of qpeft's temporary names
    (output / ".checkpoint.pt.0123456789ab.tmp").write_bytes(b"left by an interruption")
    assert cli.main([*args, "--overwrite"]) == 2
    assert "holds files qpeft did not write (.git)" in capsys.readouterr().err
    (output / ".git").rmdir()

    monkeypatch.chdir(output / "adapter")  # --output-dir is the folder above this one
    assert cli.main([*args, "--overwrite"]) == 2
    assert "holds the folder this command runs in" in capsys.readouterr().err
    assert (output / "metrics.json").is_file()
    monkeypatch.chdir(tmp_path)


def test_a_replaced_run_that_cannot_be_deleted_stays_aside_with_a_note(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from qpeft.train import experiment

    output = tmp_path / "run"
    args = finished_head_run(tiny, output)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(experiment.shutil, "rmtree", refuse)
    assert cli.main([*args, "--overwrite"]) == 0  # the new run is complete
    monkeypatch.setattr(experiment.shutil, "rmtree", shutil.rmtree)
    assert "could not be deleted" in capsys.readouterr().err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "metrics.json").is_file()
    assert (output / "metrics.json").is_file()


def test_a_resume_may_spell_the_model_and_data_paths_differently(
    tiny: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    resume = interrupted_run(tiny, folder, "--method", "head")
    monkeypatch.chdir(Path(tiny["dataset"]).parent)
    respelled = [{tiny["dataset"]: "./" + Path(tiny["dataset"]).name,
                  tiny["model"]: "./" + Path(tiny["model"]).name}.get(a, a) for a in resume]
    assert respelled != resume
    assert cli.main(respelled) == 0


@pytest.mark.parametrize("command, message", [
    (["finetune", "--threads", "100000"], "expected 1 …"),
    (["bench", "train", "--targets", ",,"], "names no module"),
    (["bench", "unitary", "--quick", "--sizes", "100000000000000000000"], "2^24"),
])
def test_sizes_a_machine_cannot_hold_are_refused(
    command: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = cli.main(command)
    except SystemExit as exit_:  # argparse's refusal
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_path_the_system_refuses_is_an_error_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = tmp_path / ("a" * 300 + ".txt")
    assert cli.main(["draw", "pauli", "--option", "qubits=2", "--output", str(name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "File name too long" in err and "Traceback" not in err
