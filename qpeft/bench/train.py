"""Benchmark one training step against peft's LoRA, OFT and BOFT (``qpeft bench train``).

Every method is set up exactly as ``qpeft finetune`` and ``qpeft compare``
set it up (:func:`qpeft.train.methods.prepare_model`): the same model, the
same target modules (the attention projections by default), the same rank
K for Quantum-PEFT and LoRA, the new classifier head trained in each. Then:

* **train step**: forward, cross-entropy loss, backward and one AdamW step
  on a batch of random token ids, timed in interleaved rounds (every method
  in turn, so that load from other processes hits all alike) after warm-up
  steps; the median is reported with its ratio to LoRA's;
* **memory** of a training step. On CUDA: ``torch.cuda.max_memory_allocated``
  during one step above what was allocated before it, plus the model's own
  weights and optimizer state. On CPU a peak of the process is too coarse
  (it mixes all the models held for the interleaving), so the bytes are
  counted: weights and buffers, gradients of the trainable parameters, the
  AdamW state, and the distinct storages autograd saves in one forward pass
  (:func:`qpeft.compiler.recompute.autograd_saved_bytes`; weights not
  counted twice). The report says which measure was used;
* **merged inference**: the trained Quantum-PEFT model after
  ``merge_and_unload`` against the plain base model, eval mode, no
  gradients, median forward latency; the merged model must have exactly the
  base model's module types and parameter shapes, and its outputs must equal
  the adapted model's.

Targets: Quantum-PEFT's step at most 1.05× LoRA's; merged inference 1.00×
the base model (same architecture, latency within the 5 % timing noise).
A failed target is a measurement, not an error: the exit code stays 0.

>>> report = run_benchmark(TrainBenchConfig.quick(methods=("qpeft", "lora")))
>>> [m["method"] for m in report["methods"]], sorted(report["targets"][0])
(['qpeft', 'lora'], ['measured', 'name', 'status', 'threshold'])
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from qpeft.bench.cli import max_threads, synchronize
from qpeft.bench.unitary import time_interleaved
from qpeft.compiler.recompute import autograd_saved_bytes
from qpeft.errors import ConfigError
from qpeft.models import check_sequence_length
from qpeft.train.loop import SEED_LIMIT

#: The methods compared, in table order; ``lora`` is the reference of every ratio.
METHODS = ("qpeft", "lora", "oft", "boft")
REFERENCE = "lora"
#: A peer that peft cannot build or run on the model is reported as skipped;
#: Quantum-PEFT and the reference must work.
OPTIONAL = ("oft", "boft")
#: ``--model`` of the embedded all-MiniLM-L6-v2 (see :mod:`qpeft.models`).
EMBEDDED = "embedded"
#: The model of ``--quick``: :func:`qpeft.train.testing.tiny_bert_config`.
TINY = "tiny"
LABELS = ("negative", "positive")

STEP_TARGET = 1.05
#: Merged and base models run the same modules; a latency ratio within this
#: factor of 1 is timing noise.
INFERENCE_TOLERANCE = 1.05
#: The merged model's outputs may differ from the adapted model's by this much, relative
#: to the outputs' largest magnitude (float32 rounding of W + ΔW: 1.1e-6 on MiniLM).
MERGE_TOLERANCE = 1e-4
#: The most tokens (batch × sequence length) one timed step may hold: 2^20, 512
#: times the default 32 × 64, at which MiniLM's activations alone exceed 100 GiB.
MAX_TOKENS = 2**20


@dataclass(frozen=True)
class TrainBenchConfig:
    """What ``qpeft bench train`` measures (see the module docstring).

    ``model``: ``embedded``, a model folder, a hub name, or ``tiny`` (a
    2-layer BERT of width 32 built from a config, used by ``--quick``).
    ``targets`` ``None``: the model's attention projections.
    """

    model: str = EMBEDDED
    methods: tuple[str, ...] = METHODS
    rank: int = 4
    layers: int = 2
    ansatz: str = "qudit"
    targets: tuple[str, ...] | None = None
    batch_size: int = 32
    seq_len: int = 64
    repeats: int = 8
    inference_repeats: int = 6
    threads: int = 1
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> TrainBenchConfig:
        """The tiny BERT, a small batch and few repeats: seconds (used by the tests)."""
        values: dict[str, Any] = {"model": TINY, "batch_size": 4, "seq_len": 16, "repeats": 3,
                                  "inference_repeats": 3}
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(METHODS)}")
        for name in ("rank", "layers", "batch_size", "seq_len", "repeats", "inference_repeats",
                     "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, "
                                  f"not {getattr(self, name)}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"--seed must be a whole number from 0 to {SEED_LIMIT - 1} "
                              f"(as in qpeft finetune), not {self.seed}")
        if self.batch_size * self.seq_len > MAX_TOKENS:
            raise ConfigError(f"--batch-size {self.batch_size} × --seq-len {self.seq_len} tokens "
                              f"is more than the {MAX_TOKENS} a step here may hold; choose a "
                              "smaller batch")
        if self.threads > max_threads():
            raise ConfigError(f"--threads {self.threads} must lie in 1 … {max_threads()} (the "
                              "CPUs of this machine); 1, the default, gives the steadiest timings")


# ---------------------------------------------------------------------------
# models, methods, batches


def load_base_model(config: TrainBenchConfig) -> Any:
    """The sequence classifier every method starts from (a fresh two-class head)."""
    torch.manual_seed(config.seed)
    if config.model == TINY:
        from transformers import BertForSequenceClassification

        from qpeft.train.testing import tiny_bert_config

        return BertForSequenceClassification(tiny_bert_config(num_labels=len(LABELS)))
    from qpeft.models import load_sequence_classifier, resolve_model

    return load_sequence_classifier(resolve_model(config.model), LABELS)


def method_spec(name: str, config: TrainBenchConfig) -> Any:
    """The :class:`~qpeft.train.methods.MethodSpec` of ``name``: Quantum-PEFT
    and LoRA at rank K, OFT and BOFT with the block sizes ``qpeft compare`` uses."""
    from qpeft.train.methods import MethodSpec

    if name == "qpeft":
        return MethodSpec("qpeft", rank=config.rank, layers=config.layers, ansatz=config.ansatz)
    if name == "lora":
        return MethodSpec("lora", rank=config.rank)
    return MethodSpec(name)


def random_batch(model: Any, config: TrainBenchConfig, device: torch.device) -> dict:
    """Random token ids (all attended) and labels."""
    check_sequence_length(model, config.seq_len, "--seq-len")
    generator = torch.Generator().manual_seed(config.seed)
    ids = torch.randint(0, model.config.vocab_size, (config.batch_size, config.seq_len),
                        generator=generator)
    labels = torch.randint(0, len(LABELS), (config.batch_size,), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {key: value.to(device) for key, value in batch.items()}


class Trainer:
    """One method's model, its AdamW optimizer and a training step."""

    def __init__(self, name: str, prepared: Any, batch: dict, device: torch.device) -> None:
        self.name = name
        self.prepared = prepared
        self.model = prepared.model.to(device)
        self.model.train()
        self.batch = batch
        self.device = device
        from qpeft.train.loop import TrainConfig, parameter_groups

        named = list(prepared.trainable_parameters())
        self.parameters = [p for _, p in named]
        # the optimizer and clipping of `qpeft finetune`
        self.config = TrainConfig(learning_rate=prepared.spec.learning_rate,
                                  head_learning_rate=prepared.spec.head_learning_rate)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(named, self.config, set(prepared.head_parameter_names())))

    def loss(self) -> torch.Tensor:
        return self.model(**self.batch).loss

    def _update(self) -> None:
        """Gradient clipping and the AdamW step, as in ``qpeft finetune``."""
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()

    def step(self) -> None:
        """Forward, backward, AdamW step."""
        self.loss().backward()
        self._update()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)

    def counts(self) -> dict[str, int]:
        counts = self.prepared.parameter_counts()
        reported, _ = self.model.get_nb_trainable_parameters()
        return {"adapter_parameters": counts.adapter, "trainable_parameters": counts.trainable,
                "reported_trainable_parameters": int(reported)}

    # -- memory --------------------------------------------------------------------
    def _weight_storages(self) -> dict[int, int]:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}

    def _optimizer_bytes(self) -> int:
        return sum(value.numel() * value.element_size()
                   for state in self.optimizer.state.values() for value in state.values()
                   if torch.is_tensor(value))

    def measured_step(self) -> dict[str, Any]:
        """One training step that also measures its memory (see the module docstring)."""
        weights = sum(self._weight_storages().values())
        if self.device.type == "cuda":
            from qpeft.train.loop import PeakMemory

            optimizer = self._optimizer_bytes()
            with PeakMemory(self.device) as peak:
                self.step()
            added = int(peak.peak_bytes or 0)
            return {"total_bytes": weights + optimizer + added, "weight_bytes": weights,
                    "optimizer_bytes": optimizer, "step_peak_added_bytes": added}
        parameters = [*self.model.parameters(), *self.model.buffers()]
        saved, loss = autograd_saved_bytes(self.loss, exclude=parameters)
        loss.backward()
        self._update()
        self.optimizer.zero_grad(set_to_none=True)
        gradients = sum(p.numel() * p.element_size() for p in self.parameters)
        optimizer = self._optimizer_bytes()
        return {"total_bytes": weights + gradients + optimizer + saved, "weight_bytes": weights,
                "gradient_bytes": gradients, "optimizer_bytes": optimizer,
                "saved_activation_bytes": saved}


def memory_measure(device: torch.device) -> str:
    if device.type == "cuda":
        return ("CUDA: torch.cuda.max_memory_allocated during one step above the allocation "
                "before it, plus the model's weights and AdamW state")
    return ("CPU, counted: weights and buffers + gradients + AdamW state + tensors autograd "
            "saves in one forward (distinct storages, weights not counted twice)")


def _prepare(name: str, base: Any, config: TrainBenchConfig, batch: dict,
             device: torch.device) -> Trainer:
    from qpeft.train.methods import prepare_model

    prepared = prepare_model(copy.deepcopy(base), method_spec(name, config), config.targets)
    return Trainer(name, prepared, batch, device)


# ---------------------------------------------------------------------------
# merged inference


def _architecture(model: Any) -> list[tuple[str, str]]:
    return [(name, type(module).__name__) for name, module in model.named_modules()]


def _shapes(model: Any) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def _logits(model: Any, batch: dict) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


def measure_merged_inference(trainer: Trainer, base: Any, config: TrainBenchConfig,
                             device: torch.device) -> dict[str, Any]:
    """Merge the trained Quantum-PEFT adapter and time it against the base model."""
    adapted = trainer.model.eval()
    expected = _logits(adapted, trainer.batch)
    merged = adapted.merge_and_unload().eval()
    base = base.to(device).eval()
    difference = float((_logits(merged, trainer.batch) - expected).abs().max())
    base_weights = dict(base.named_parameters())
    changed = sum(1 for name, p in merged.named_parameters()
                  if name in base_weights and not torch.equal(p, base_weights[name]))

    def forward(model: Any) -> Callable[[], object]:
        def run() -> object:
            out = _logits(model, trainer.batch)
            synchronize(device)
            return out
        return run

    times = time_interleaved({"base": forward(base), "merged": forward(merged)},
                             config.inference_repeats)
    return {
        "base_seconds": times["base"],
        "merged_seconds": times["merged"],
        "ratio": times["merged"] / times["base"],
        "same_module_types": _architecture(merged) == _architecture(base),
        "same_parameter_shapes": _shapes(merged) == _shapes(base),
        "merged_module_types": sorted({kind for _, kind in _architecture(merged)}),
        "base_module_types": sorted({kind for _, kind in _architecture(base)}),
        "changed_weights": changed,
        "max_abs_difference_to_adapted": difference,
        "adapted_output_scale": float(expected.abs().max()),
    }


# ---------------------------------------------------------------------------
# the whole benchmark


def run_benchmark(config: TrainBenchConfig,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run everything ``config`` asks for; returns a JSON-ready report."""
    config.validate()
    from qpeft.train.loop import resolve_device

    device = resolve_device(config.device)
    note = progress or (lambda message: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, device, note)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: TrainBenchConfig, device: torch.device,
         note: Callable[[str], None]) -> dict[str, Any]:
    from qpeft.train.methods import default_targets

    methods = [m for m in METHODS if m in config.methods or m == REFERENCE]
    note(f"loading {config.model}")
    base = load_base_model(config)
    targets = tuple(config.targets or default_targets(base))
    config = replace(config, targets=targets)
    batch = random_batch(base, config, device)
    trainers: dict[str, Trainer] = {}
    rows: dict[str, dict[str, Any]] = {}
    # The CPU count of bytes does not depend on warm-up, so the first step (where a
    # method peft cannot run on this model fails) measures it; on CUDA the first step
    # holds one-time allocations, so memory is measured after the timing rounds.
    measure_first = device.type != "cuda"
    for name in methods:
        note(f"{name}: preparing")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = _prepare(name, base, config, batch, device)
                memory = trainer.measured_step() if measure_first else None
                if memory is None:
                    trainer.step()
        except Exception as error:  # noqa: BLE001 - a peer peft cannot run is reported
            if name not in OPTIONAL:
                raise
            rows[name] = {"method": name, "status": "skipped",
                          "reason": f"{type(error).__name__}: {error}".strip()}
            continue
        trainers[name] = trainer
        rows[name] = {"method": name, "label": trainer.prepared.spec.label, "status": "ok",
                      "reason": None, **trainer.counts(), "memory": memory}
    note("timing training steps (interleaved)")
    times = time_interleaved({name: trainer.step for name, trainer in trainers.items()},
                             config.repeats)
    for name, trainer in trainers.items():
        if not measure_first:
            note(f"{name}: memory")
            rows[name]["memory"] = trainer.measured_step()
        rows[name].update(step_seconds=times[name],
                          memory_bytes=rows[name]["memory"]["total_bytes"])
    reference = rows[REFERENCE]
    for row in rows.values():
        if row["status"] == "ok":
            row["step_ratio"] = row["step_seconds"] / reference["step_seconds"]
            row["memory_ratio"] = row["memory_bytes"] / reference["memory_bytes"]
    inference = None
    if "qpeft" in trainers:
        note("merged inference")
        inference = measure_merged_inference(trainers["qpeft"], base, config, device)
    report: dict[str, Any] = {
        "config": {**asdict(config), "targets": list(targets), "methods": methods,
                   "torch": torch.__version__, "device": str(device),
                   "quantity": "seconds per training step (forward + backward + AdamW), "
                               "median of interleaved rounds"},
        "model": type(base).__name__,
        "memory_measure": memory_measure(device),
        "methods": [rows[name] for name in methods],
        "inference": inference,
    }
    report["targets"] = _targets(report)
    return report


def _merged_equals_adapted(inference: dict[str, Any]) -> bool:
    """The merged model's outputs equal the adapted model's, to :data:`MERGE_TOLERANCE`
    of the outputs' scale (rounding of the float32 products)."""
    difference = inference["max_abs_difference_to_adapted"]
    scale = max(1.0, inference.get("adapted_output_scale", 1.0))
    return math.isfinite(difference) and difference <= MERGE_TOLERANCE * scale


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {row["method"]: row for row in report["methods"]}
    qpeft = rows.get("qpeft", {})
    step = qpeft.get("step_ratio")
    out = [{"name": f"qpeft step ≤ {STEP_TARGET:.2f}× LoRA", "threshold": STEP_TARGET,
            "measured": step,
            "status": "not measured" if step is None else
            ("PASS" if step <= STEP_TARGET else "FAIL")}]
    inference = report.get("inference")
    if inference is None:
        status, measured = "not measured", None
    else:
        measured = inference["ratio"]
        same = inference["same_module_types"] and inference["same_parameter_shapes"]
        status = "PASS" if (same and _merged_equals_adapted(inference)
                            and abs(math.log(measured)) <= math.log(INFERENCE_TOLERANCE)) \
            else "FAIL"
    out.append({"name": "merged inference = 1.00× base", "threshold": INFERENCE_TOLERANCE,
                "measured": measured, "status": status})
    return out


# ---------------------------------------------------------------------------
# output


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"×{value:.2f}"


def render(report: dict[str, Any], console: Any = None) -> None:
    """Print the report: the methods table, the merged-inference line, the targets."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    config = report["config"]
    console.print(f"training step on {report['model']} ({config['model']}), batch "
                  f"{config['batch_size']} × {config['seq_len']} tokens, K = {config['rank']}, "
                  f"targets {', '.join(config['targets'])};\nmedian of {config['repeats']} "
                  f"interleaved rounds, {config['threads']} torch thread(s), {config['device']}")
    table = Table()
    for column in ("method", "trainable params", "step ms", "×LoRA", "memory MiB", "×LoRA"):
        table.add_column(column, justify="left" if column == "method" else "right")
    skipped = []
    for row in report["methods"]:
        if row["status"] != "ok":
            table.add_row(row["method"], "", "skipped", "", "", "")
            skipped.append(f"  {row['method']} skipped: {row['reason']}")
            continue
        table.add_row(row["label"], f"{row['trainable_parameters']:,}",
                      f"{row['step_seconds'] * 1e3:.1f}", _ratio(row["step_ratio"]),
                      f"{row['memory_bytes'] / 2**20:.1f}", _ratio(row["memory_ratio"]))
    console.print(table)
    for line in skipped:
        console.print(line)
    console.print("  trainable params include the new classifier head")
    console.print(f"  memory: {report['memory_measure']}")
    inference = report["inference"]
    if inference is not None:
        same = inference["same_module_types"] and inference["same_parameter_shapes"]
        console.print(
            f"merged inference (qpeft after merge_and_unload vs base, eval, no_grad): "
            f"{inference['merged_seconds'] * 1e3:.1f} ms vs "
            f"{inference['base_seconds'] * 1e3:.1f} ms (×{inference['ratio']:.2f});\n  "
            f"module types and parameter shapes {'identical' if same else 'DIFFERENT'}; "
            f"{inference['changed_weights']} weights changed by the merge; outputs equal the "
            f"adapted model's to {inference['max_abs_difference_to_adapted']:.1e}")
    for target in report["targets"]:
        value = "" if target["measured"] is None else f" (×{target['measured']:.2f})"
        style = {"PASS": "green", "FAIL": "red"}.get(target["status"], "yellow")
        console.print(f"{target['name']}: [{style}]{target['status']}[/{style}]{value}")


# ---------------------------------------------------------------------------
# command line


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown) or text!r}; choose from {', '.join(METHODS)}"
        )
    return methods


def _targets_argument(text: str) -> tuple[str, ...]:
    from qpeft.train.methods import parse_targets

    try:
        return parse_targets(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` under ``qpeft bench``."""
    parser = subparsers.add_parser(
        "train",
        help="time a training step of Quantum-PEFT against peft LoRA, OFT and BOFT, and "
             "merged inference against the base model",
        description="Train-step time and memory of Quantum-PEFT against peft LoRA (same K "
                    "and targets), OFT and BOFT, and the latency of the merged model against "
                    "the base model; print the ratios and PASS/FAIL for the targets.",
    )
    parser.add_argument("--model", default=None,
                        help="'embedded' (all-MiniLM-L6-v2, the default), a model folder, a "
                             "hub name, or 'tiny' (the --quick model)")
    parser.add_argument("--methods", type=_methods, default=METHODS,
                        help=f"comma-separated subset of {','.join(METHODS)} (LoRA, the "
                             "reference, is always run)")
    parser.add_argument("--rank", type=int, default=4,
                        help="K of Quantum-PEFT and r of LoRA (default 4)")
    parser.add_argument("--layers", type=int, default=2,
                        help="circuit layers L of Quantum-PEFT (default 2)")
    parser.add_argument("--ansatz", default="qudit", help="Quantum-PEFT ansatz (default qudit)")
    parser.add_argument("--targets", type=_targets_argument, default=None,
                        help="comma-separated module-name suffixes (default: the attention "
                             "projections, query,key,value,attention.output.dense for BERT)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sequences per step (default 32; 4 with --quick)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="tokens per sequence (default 64; 16 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved timing rounds per method; the median is reported "
                             "(default 8; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a machine shared with other jobs, "
                             "multi-threaded steps wait for scheduler slices and the timings "
                             "become meaningless)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the head, the adapters and the random batch, from 0 to "
                             "2**32 - 1 (default 0)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as one JSON object on standard output "
                             "(nothing else)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny BERT built from a config, few repeats: seconds")
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainBenchConfig:
    config = TrainBenchConfig.quick() if args.quick else TrainBenchConfig()
    values: dict[str, Any] = {
        "methods": args.methods, "rank": args.rank, "layers": args.layers,
        "ansatz": args.ansatz, "targets": args.targets, "threads": args.threads,
        "device": args.device, "seed": args.seed,
    }
    for name in ("model", "batch_size", "seq_len", "repeats"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    config = replace(config, **values)
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    """``qpeft bench train``."""
    from qpeft.bench.cli import measure_and_print

    measure_and_print(run_benchmark, config_from_args(args), render, args.json)
    return 0
