"""``qpeft bench train``: the ``--quick --json`` report through the command line,
its exact parameter counts and byte counts, the merged model's architecture, the
table, a peer that peft cannot build, and argument errors. No timing is asserted."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from qpeft import cli
from qpeft.adapters.frames import resolve_frame_spec
from qpeft.bench import train
from qpeft.train.methods import MethodSpec
from qpeft.train.testing import tiny_bert_config

TINY = tiny_bert_config()
HIDDEN = TINY.hidden_size
TARGETS = ("query", "key", "value", "attention.output.dense")
ADAPTED_LAYERS = TINY.num_hidden_layers * len(TARGETS)
HEAD = HIDDEN * len(train.LABELS) + len(train.LABELS)  # classifier weight and bias
FLOAT32 = 4


@pytest.fixture(scope="module")
def report() -> dict:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = cli.main(["bench", "train", "--quick", "--json"])
    assert code == 0
    return json.loads(output.getvalue())


def _rows(report: dict) -> dict[str, dict]:
    return {row["method"]: row for row in report["methods"]}


def test_every_method_is_measured_or_skipped_with_a_reason(report: dict) -> None:
    rows = _rows(report)
    assert list(rows) == list(train.METHODS)
    assert rows["qpeft"]["status"] == rows["lora"]["status"] == "ok"
    for row in rows.values():
        assert row["status"] in {"ok", "skipped"}
        if row["status"] == "skipped":
            assert row["reason"]
        else:
            assert row["reason"] is None
            for key in ("step_seconds", "step_ratio", "memory_bytes", "memory_ratio"):
                assert math.isfinite(row[key]) and row[key] > 0, (row["method"], key)
    assert rows["lora"]["step_ratio"] == rows["lora"]["memory_ratio"] == 1.0
    assert rows["qpeft"]["step_ratio"] == pytest.approx(
        rows["qpeft"]["step_seconds"] / rows["lora"]["step_seconds"])
    assert report["config"]["targets"] == list(TARGETS)


def test_trainable_counts_are_exact_and_equal_the_models_own(report: dict) -> None:
    rows = _rows(report)
    for row in rows.values():
        if row["status"] == "ok":
            assert row["trainable_parameters"] == row["reported_trainable_parameters"]
            assert row["trainable_parameters"] == row["adapter_parameters"] + HEAD
    rank = report["config"]["rank"]
    assert rows["lora"]["adapter_parameters"] == ADAPTED_LAYERS * rank * (HIDDEN + HIDDEN)
    angles = resolve_frame_spec("qudit", HIDDEN, rank, report["config"]["layers"]).num_parameters
    assert rows["qpeft"]["adapter_parameters"] == ADAPTED_LAYERS * (2 * angles + rank)


def test_cpu_memory_is_the_sum_of_counted_parts(report: dict) -> None:
    assert report["memory_measure"].startswith("CPU")
    for row in _rows(report).values():
        if row["status"] != "ok":
            continue
        memory = row["memory"]
        parts = ("weight_bytes", "gradient_bytes", "optimizer_bytes", "saved_activation_bytes")
        assert memory["total_bytes"] == row["memory_bytes"] == sum(memory[p] for p in parts)
        assert memory["gradient_bytes"] == FLOAT32 * row["trainable_parameters"]
        # AdamW: two moments per trainable number and a step counter per tensor
        assert 2 * memory["gradient_bytes"] < memory["optimizer_bytes"]
        assert memory["optimizer_bytes"] < 3 * memory["gradient_bytes"]
        assert memory["saved_activation_bytes"] > 0


def test_merged_model_is_the_base_architecture(report: dict) -> None:
    inference = report["inference"]
    assert inference["same_module_types"] and inference["same_parameter_shapes"]
    assert inference["merged_module_types"] == inference["base_module_types"]
    assert not any("QPeft" in kind or "Wrapper" in kind
                   for kind in inference["merged_module_types"])
    # every adapted weight and the trained head differ from the base model's
    assert inference["changed_weights"] == ADAPTED_LAYERS + 2
    assert inference["max_abs_difference_to_adapted"] < 1e-4
    for key in ("base_seconds", "merged_seconds", "ratio"):
        assert math.isfinite(inference[key]) and inference[key] > 0


def test_targets_carry_the_measured_ratios(report: dict) -> None:
    step, merged = report["targets"]
    assert step["measured"] == _rows(report)["qpeft"]["step_ratio"]
    assert merged["measured"] == report["inference"]["ratio"]
    assert step["status"] == ("PASS" if step["measured"] <= train.STEP_TARGET else "FAIL")
    inference = report["inference"]
    same = inference["same_module_types"] and inference["same_parameter_shapes"]
    within = abs(math.log(merged["measured"])) <= math.log(train.INFERENCE_TOLERANCE)
    assert merged["status"] == ("PASS" if same and within else "FAIL")


@pytest.mark.parametrize("difference", [3.7, math.nan, math.inf])
def test_merged_outputs_that_differ_fail_the_inference_target(difference: float) -> None:
    inference = {"ratio": 1.0, "same_module_types": True, "same_parameter_shapes": True,
                 "max_abs_difference_to_adapted": 1e-6, "adapted_output_scale": 4.0}
    report = {"methods": [{"method": "qpeft", "step_ratio": 1.0}], "inference": inference}
    assert train._targets(report)[1]["status"] == "PASS"
    inference["max_abs_difference_to_adapted"] = difference
    assert train._targets(report)[1]["status"] == "FAIL"


def test_a_peer_peft_cannot_build_is_skipped(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    chosen = train.method_spec

    def spec(name: str, config: train.TrainBenchConfig) -> MethodSpec:
        # a block size that does not divide the width 32: prepare_model refuses it
        return MethodSpec("oft", block_size=5) if name == "oft" else chosen(name, config)

    monkeypatch.setattr(train, "method_spec", spec)
    code = cli.main(["bench", "train", "--quick", "--methods", "qpeft,oft", "--repeats", "1"])
    assert code == 0
    text = capsys.readouterr().out
    assert "oft skipped: ConfigError: oft block size 5 does not divide" in text
    assert "lora r=4" in text and "qpeft K=4 L=2 qudit" in text
    assert "qpeft step ≤ 1.05× LoRA:" in text
    assert "merged inference = 1.00× base:" in text


def test_bad_arguments_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["bench", "train", "--methods", "lora,dora"])
    assert "dora" in capsys.readouterr().err
    assert cli.main(["bench", "train", "--quick", "--repeats", "0"]) == cli.ERROR_EXIT_CODE
    assert cli.main(["bench", "train", "--quick", "--seq-len", "65"]) == cli.ERROR_EXIT_CODE


def test_threads_are_bounded_by_the_cpus(capsys: pytest.CaptureFixture[str]) -> None:
    from qpeft.bench.cli import max_threads

    limit = max_threads()
    train.TrainBenchConfig.quick(threads=limit).validate()
    assert cli.main(["bench", "train", "--quick", "--threads", str(limit + 1)]) \
        == cli.ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith("error: --threads") and f"1 … {limit}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999"])
def test_seeds_outside_the_range_of_finetune_are_refused(
    capsys: pytest.CaptureFixture[str], seed: str
) -> None:
    """A seed of 2**64 or more was an OverflowError traceback, -1 was accepted."""
    assert cli.main(["bench", "train", "--quick", "--json", "--seed", seed]) \
        == cli.ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith("error: --seed must be a whole number from 0 to 4294967295")
    assert "Traceback" not in err
    train.TrainBenchConfig.quick(seed=2**32 - 1).validate()
