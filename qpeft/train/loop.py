"""The training loop: AdamW, linear warm-up and decay, gradient clipping,
seeded batch order, resumable atomic checkpoints, evaluation and resource
measurements.

Reproducibility: the batch order of epoch ``e`` is a permutation drawn from
a generator seeded with ``(seed, e)``, so it does not depend on what ran
before; dropout draws from torch's global generator, whose state is saved in
every checkpoint as it was at the start of the next step. A run interrupted
and resumed with :func:`train` (``resume=True``) therefore ends with exactly
the weights of an uninterrupted run on the same machine with the same number
of torch threads (sums may round differently with another count).

A dataset for :func:`train` and :func:`evaluate` is any object with
``__len__`` and ``batch(indices) -> dict`` of tensors that the model accepts
as keyword arguments (``labels`` included); an optional ``lengths()`` lets
evaluation batch examples of similar length together.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qpeft.errors import ConfigError, DivergenceError
from qpeft.files import write_atomically

CHECKPOINT_FORMAT = 1


#: Seeds are below 2**32, so that the per-epoch generator seed
#: ``seed * 1_000_003 + epoch`` of :func:`epoch_order` fits in 64 bits.
SEED_LIMIT = 2**32


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    ``head_learning_rate`` ``None`` uses ``learning_rate`` for the head too.
    ``warmup_steps`` overrides ``warmup_ratio`` (fraction of all steps).
    Weight decay applies to matrices only (not to biases, norms, angles or
    other 1-D parameters). ``max_grad_norm`` ``None`` disables clipping.
    ``checkpoint_every`` is in optimizer steps; a checkpoint is also written
    at the end of every epoch, at the end of training and on Ctrl-C.
    """

    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-3
    head_learning_rate: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    max_grad_norm: float | None = 1.0
    seed: int = 0
    eval_batch_size: int = 64
    checkpoint_every: int = 50
    gradient_accumulation: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.eval_batch_size < 1:
            raise ConfigError(f"--eval-batch-size must be at least 1, not {self.eval_batch_size}")
        for option, rate in (("--lr", self.learning_rate),
                             ("the head learning rate (--head-lr)", self.head_learning_rate)):
            if rate is not None and not 0 < rate < math.inf:
                raise ConfigError(f"{option} must be positive and finite, not {rate}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"warm-up ratio must be in [0, 1], not {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"warm-up steps must be 0 or more, not {self.warmup_steps}")
        if self.checkpoint_every < 1:
            raise ConfigError(
                f"checkpoints must come every 1 or more steps, not {self.checkpoint_every}"
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(
                f"the gradient-clipping norm must be positive (or None for no clipping), "
                f"not {self.max_grad_norm}"
            )
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight decay must be 0 or more, not {self.weight_decay}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(
                f"--seed must be a whole number from 0 to {SEED_LIMIT - 1}, not {self.seed}"
            )
        if self.gradient_accumulation < 1:
            raise ConfigError(
                f"gradient accumulation must be at least 1, not {self.gradient_accumulation}"
            )

    @property
    def examples_per_step(self) -> int:
        """Examples per optimizer step: ``batch_size`` × ``gradient_accumulation``."""
        return self.batch_size * self.gradient_accumulation

    def steps_per_epoch(self, examples: int) -> int:
        return math.ceil(examples / self.examples_per_step)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` measured.

    ``history``: one ``{"step", "epoch", "loss", "learning_rate"}`` per step
    (the learning rate that step used, of the first parameter group).
    ``epoch_metrics``: what ``on_epoch_end`` returned, with ``epoch``.
    ``train_seconds``: wall time of the training steps, summed over resumed
    parts, without the ``on_epoch_end`` calls. ``peak_memory_bytes``: see
    :class:`PeakMemory`; the highest of the resumed parts (each measured from
    its own start).
    """

    history: list[dict[str, float]]
    epoch_metrics: list[dict[str, Any]]
    steps: int
    total_steps: int
    train_seconds: float
    peak_memory_bytes: int | None
    memory_measure: str
    resumed_from_step: int = 0
    completed: bool = True

    @property
    def seconds_per_step(self) -> float:
        return self.train_seconds / max(self.steps, 1)


# ---------------------------------------------------------------- resources


#: The device types that training supports (``--device``).
DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA when present).

    Any other device type that torch knows (``xpu``, ``hpu``, ``meta``...) is
    refused, as is a device that is not available here (no CUDA GPU, a GPU
    index beyond those visible, no MPS): a :class:`~qpeft.errors.ConfigError`
    before any work.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("meta")
        Traceback (most recent call last):
        ...
        qpeft.errors.ConfigError: --device meta is not supported; use cpu, cuda, cuda:N, ...
    """
    choices = "use cpu, cuda, cuda:N, mps or auto"
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; {choices}") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"--device {name} is not supported; {choices}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"--device {name} names GPU {device.index}, but {count} CUDA GPU(s) are visible "
                f"(cuda:0 to cuda:{count - 1}); choose one of them"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS is not available; use --device cpu")
    return device


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so
    that the next :class:`PeakMemory` starts from a low baseline."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory that a block of code added.

    - CUDA device: ``torch.cuda.max_memory_allocated`` minus the allocation
      at entry (tensors only, not the caching allocator's reserve).
    - CPU on Linux: the process's resident set size (RSS), sampled every
      ``interval`` seconds by a background thread; the result is the highest
      sample minus the RSS at entry: the memory the block added (activations,
      gradients, optimizer state, allocator growth), without the model weights
      already loaded. Peaks shorter than ``interval`` can be missed.
    - elsewhere: ``ru_maxrss`` growth (the process's all-time peak), which
      reads 0 when an earlier peak was higher.

    Example:
        >>> release_free_memory()  # so that no collection frees memory inside the block
        >>> with PeakMemory(torch.device("cpu")) as memory:
        ...     block = torch.ones(16_000_000)  # 64 MB: fresh pages (above the mmap threshold)
        >>> memory.peak_bytes > 32_000_000
        True
    """

    def __init__(self, device: torch.device, interval: float = 0.01) -> None:
        self.device = device
        self.interval = interval
        self.peak_bytes: int | None = None
        self.measure = ""
        self._baseline = 0
        self._highest = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            value = _resident_bytes()
            if value is not None:
                self._highest = max(self._highest, value)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            self.measure = "CUDA allocated tensors, peak minus start"
            return self
        resident = _resident_bytes()
        if resident is not None:
            self._baseline = self._highest = resident
            self.measure = "process RSS sampled every 10 ms, peak minus start"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._baseline = self._max_rss()
            self.measure = "ru_maxrss growth"
        return self

    @staticmethod
    def _max_rss() -> int:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024

    def so_far(self) -> int:
        """The peak the block has added up to now (inside the block)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._baseline
        if self._thread is not None:
            now = _resident_bytes()
            if now is not None:
                self._highest = max(self._highest, now)
            return self._highest - self._baseline
        return max(self._max_rss() - self._baseline, 0)

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak_bytes = self.so_far()


def _highest(*peaks: int | None) -> int | None:
    """The highest of the peaks that were measured (``None``: none was)."""
    known = [peak for peak in peaks if peak is not None]
    return max(known) if known else None


# ------------------------------------------------------------------ batching


def epoch_order(examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch, a function of ``(seed, epoch)`` only.

    Example:
        >>> epoch_order(6, seed=0, epoch=1) == epoch_order(6, seed=0, epoch=1)
        True
        >>> sorted(epoch_order(6, seed=0, epoch=1))
        [0, 1, 2, 3, 4, 5]
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(examples, generator=generator).tolist()


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        key: value.to(device) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate factor: linear rise over ``warmup`` steps, then linear decay to 0.

    Example:
        >>> factor = linear_schedule(2, 10)
        >>> [round(factor(step), 3) for step in (0, 1, 2, 6, 10)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(warmup, 1)
        return max(0.0, (total - step) / max(total - warmup, 1))

    return factor


def parameter_groups(
    named: Sequence[tuple[str, torch.nn.Parameter]], config: TrainConfig, heads: set[str]
) -> list[dict[str, Any]]:
    """AdamW parameter groups: the head's parameters (names in ``heads``) at
    ``head_learning_rate``, weight decay on matrices only."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in named:
        groups.setdefault((name in heads, parameter.ndim >= 2), []).append(parameter)
    result = []
    for (is_head, decays), parameters in sorted(groups.items()):
        learning_rate = config.learning_rate
        if is_head and config.head_learning_rate is not None:
            learning_rate = config.head_learning_rate
        result.append({
            "params": parameters,
            "lr": learning_rate,
            "weight_decay": config.weight_decay if decays else 0.0,
        })
    return result


# --------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file beside ``path``,
    then move it into place, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda handle: torch.save(dict(state), handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise ConfigError(
            f"{path} is not a readable qpeft checkpoint ({error}); start again with --overwrite"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a qpeft checkpoint of format {CHECKPOINT_FORMAT}; "
                          "start again with --overwrite")
    return state


#: Fingerprint entries compared only when the checkpoint has them (earlier
#: releases did not record them).
_RECORDED_LATER = {"circuits"}


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One short line per fingerprint entry that differs."""
    keys = sorted(set(saved) | set(current))
    lines = []
    for key in keys:
        if saved.get(key) == current.get(key) or (key in _RECORDED_LATER and key not in saved):
            continue
        if key == "trainable":
            lines.append(_trainable_difference(saved.get(key), current.get(key)))
        elif key == "circuits":
            lines.append("the adapter circuits differ from the checkpoint's (the ansatz "
                         "changed since the run started)")
        else:
            lines.append(f"{key}: {_short(saved.get(key))} in the checkpoint, "
                         f"{_short(current.get(key))} now")
    return lines


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _trainable_difference(saved: Any, current: Any, shown: int = 3) -> str:
    """The trainable tensors that differ: counts and the first few names."""
    def shapes(entries: Any) -> dict[str, Any]:
        try:
            return {str(name): list(shape) for name, shape in entries}
        except (TypeError, ValueError):
            return {}

    before, now = shapes(saved), shapes(current)
    parts = [f"{len(before)} trainable tensors in the checkpoint, {len(now)} now"]
    groups = (
        ("missing now", [name for name in before if name not in now]),
        ("new", [name for name in now if name not in before]),
        ("of another shape", [name for name in now if name in before
                              and before[name] != now[name]]),
    )
    for what, names in groups:
        if names:
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {what}: {', '.join(names[:shown])}{more}")
    if len(parts) == 1:
        parts.append("the same tensors in another order")
    return "; ".join(parts)


# ------------------------------------------------------------------ training


def train(
    model: torch.nn.Module,
    dataset: Any,
    config: TrainConfig,
    *,
    head_parameter_names: set[str] | frozenset[str] = frozenset(),
    device: torch.device | str = "cpu",
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    stop_after_step: int | None = None,
    compute_loss: Callable[[Any, Mapping[str, Any]], torch.Tensor] | None = None,
    on_epoch_end: Callable[[int], Mapping[str, Any]] | None = None,
    progress: bool = True,
    description: str = "train",
    rate_option: str = "--lr",
) -> TrainResult:
    """Train the parameters of ``model`` that require gradients.

    ``compute_loss(outputs, batch)`` defaults to ``outputs.loss``.
    ``on_epoch_end(epoch)`` runs after each epoch (e.g. validation); its
    result is kept in :attr:`TrainResult.epoch_metrics`.

    With ``checkpoint_path``, checkpoints (trainable tensors, optimizer,
    scheduler, RNG states, step, history, elapsed time) are written there;
    ``resume=True`` continues from one if it exists, after checking that
    ``fingerprint`` and the training configuration match.
    ``stop_after_step`` ends the call after that global step with a
    checkpoint written, as an interruption would (``completed`` is False).

    A loss or a trained parameter that becomes NaN or infinite stops training
    with a :class:`~qpeft.errors.DivergenceError` whose advice names
    ``rate_option``, the option that sets the learning rate.
    """
    device = torch.device(device)
    if len(dataset) == 0:
        raise ConfigError("the training set is empty; check --max-train and the dataset")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the model has no trainable parameter; check the method and targets")
    path = Path(checkpoint_path) if checkpoint_path is not None else None

    steps_per_epoch = config.steps_per_epoch(len(dataset))
    total_steps = steps_per_epoch * config.epochs
    warmup = (
        config.warmup_steps if config.warmup_steps is not None
        else round(config.warmup_ratio * total_steps)
    )
    full_fingerprint = {
        **dict(fingerprint or {}),
        **{f"train.{key}": value for key, value in config.to_dict().items()},
        "examples": len(dataset),
        "trainable": [[n, list(p.shape)] for n, p in named],
    }

    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(parameter_groups(named, config, set(head_parameter_names)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total_steps))

    start_step = 0
    history: list[dict[str, float]] = []
    epoch_metrics: list[dict[str, Any]] = []
    previous_seconds = 0.0
    previous_peak: int | None = None
    if resume and path is not None and path.exists():
        state = load_checkpoint(path)
        mismatch = _differences(state["fingerprint"], full_fingerprint)
        if mismatch:
            raise ConfigError(
                "the checkpoint was made with other settings (" + "; ".join(mismatch[:4])
                + "); resume with the original settings or start again with --overwrite"
            )
        parameters = dict(named)
        with torch.no_grad():
            for name, tensor in state["trainable"].items():
                parameters[name].copy_(tensor)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_step = int(state["step"])
        history = list(state["history"])
        epoch_metrics = list(state["epoch_metrics"])
        previous_seconds = float(state["train_seconds"])
        previous_peak = state.get("peak_memory_bytes")  # absent before this was recorded

    model.to(device)
    rng_at_step_start = _rng_state()

    def checkpoint(step: int, seconds: float) -> None:
        if path is None:
            return
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "trainable": {n: p.detach().cpu().clone() for n, p in named},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_at_step_start,
            "history": history,
            "epoch_metrics": epoch_metrics,
            "train_seconds": seconds,
            "peak_memory_bytes": _highest(previous_peak, memory.so_far()),
            "fingerprint": full_fingerprint,
        })

    finished = start_step // steps_per_epoch
    if (on_epoch_end is not None and finished and start_step % steps_per_epoch == 0
            and all(entry["epoch"] != finished for entry in epoch_metrics)):
        # interrupted during the end-of-epoch evaluation, after the epoch's checkpoint:
        # evaluate that epoch now, from the same weights, as the uninterrupted run did
        epoch_metrics.append({"epoch": finished, **dict(on_epoch_end(finished))})
        _set_rng_state(rng_at_step_start)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start_step, desc=description, disable=not progress,
               dynamic_ncols=True, leave=False)
    step = start_step
    outside_seconds = 0.0  # time spent in on_epoch_end and checkpoints
    updating = False
    order: list[int] = []
    started = time.perf_counter()
    memory = PeakMemory(device)
    try:
        with memory:
            while step < total_steps:
                epoch, position = divmod(step, steps_per_epoch)
                if position == 0 or not order:
                    order = epoch_order(len(dataset), config.seed, epoch)
                rng_at_step_start = _rng_state()
                per_step = config.examples_per_step
                indices = order[position * per_step : (position + 1) * per_step]
                model.train()
                value = 0.0
                for micro in _batches(indices, config.batch_size):
                    batch = _to_device(dataset.batch(micro), device)
                    outputs = model(**batch)
                    loss = compute_loss(outputs, batch) if compute_loss else outputs.loss
                    if not math.isfinite(float(loss.detach())):
                        raise DivergenceError(
                            f"the loss became {float(loss.detach())} at step {step + 1}; lower "
                            f"the learning rate ({rate_option}) or check the data"
                        )
                    # weight by size so that the step's gradient is the mean over its examples
                    share = len(micro) / len(indices)
                    (loss * share).backward()
                    value += float(loss.detach()) * share
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_([p for _, p in named], config.max_grad_norm)
                learning_rate = optimizer.param_groups[0]["lr"]  # the rate of this step
                updating = True
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                updating = False
                step += 1
                if not _all_finite(p for _, p in named):
                    raise DivergenceError(
                        f"the trained parameters became NaN or infinite at step {step} "
                        f"(training diverged); lower the learning rate ({rate_option})"
                    )
                rng_at_step_start = _rng_state()
                history.append({
                    "step": step,
                    "epoch": epoch + (position + 1) / steps_per_epoch,
                    "loss": value,
                    "learning_rate": learning_rate,
                })
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)

                aside = time.perf_counter()
                epoch_done = step % steps_per_epoch == 0
                if epoch_done and on_epoch_end is not None:
                    epoch_metrics.append({"epoch": step // steps_per_epoch,
                                          **dict(on_epoch_end(step // steps_per_epoch))})
                    # whatever the callback drew must not change the next steps
                    _set_rng_state(rng_at_step_start)
                if (
                    epoch_done or step == total_steps or step % config.checkpoint_every == 0
                    or step == stop_after_step
                ):
                    outside_seconds += time.perf_counter() - aside
                    elapsed = time.perf_counter() - started - outside_seconds
                    aside = time.perf_counter()
                    checkpoint(step, previous_seconds + elapsed)
                outside_seconds += time.perf_counter() - aside
                if step == stop_after_step and step < total_steps:
                    break
    except KeyboardInterrupt:
        if not updating:
            checkpoint(step, previous_seconds + time.perf_counter() - started - outside_seconds)
        raise
    finally:
        bar.close()
    seconds = previous_seconds + time.perf_counter() - started - outside_seconds
    return TrainResult(
        history=history,
        epoch_metrics=epoch_metrics,
        steps=step,
        total_steps=total_steps,
        train_seconds=seconds,
        peak_memory_bytes=_highest(previous_peak, memory.peak_bytes),
        memory_measure=memory.measure,
        resumed_from_step=start_step,
        completed=step >= total_steps,
    )


def _all_finite(tensors: Iterator[torch.Tensor] | Sequence[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite (one device synchronisation)."""
    checks = [torch.isfinite(tensor).all() for tensor in tensors]
    return bool(torch.stack(checks).all()) if checks else True


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(item) for item in value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------- evaluation


@dataclass
class Predictions:
    """Model outputs over a dataset, in dataset order: ``logits`` (CPU tensor,
    ``examples × classes``) and the ``labels``."""

    logits: torch.Tensor
    labels: list[Any]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_classes(self) -> list[int]:
        return self.logits.argmax(dim=-1).tolist()


def _batches(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "evaluate",
    rate_option: str = "--lr",
) -> Predictions:
    """Logits of ``model`` on every example of ``dataset`` (no gradients,
    dropout off). Examples are batched by length when the dataset has
    ``lengths()``, which cuts padding; the result is in dataset order.

    Logits that are NaN or infinite (a model whose training diverged) cannot
    be scored: they raise a :class:`~qpeft.errors.DivergenceError` whose
    advice names ``rate_option``, the option that sets the learning rate."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    order = list(range(len(dataset)))
    lengths = getattr(dataset, "lengths", None)
    if callable(lengths):
        sizes = lengths()
        order.sort(key=lambda index: sizes[index])
    was_training = model.training
    model.eval()
    outputs: list[torch.Tensor] = [torch.empty(0)] * len(dataset)
    labels: list[Any] = [None] * len(dataset)
    started = time.perf_counter()
    try:
        with torch.no_grad():
            chunks = list(_batches(order, batch_size))
            for indices in tqdm(chunks, desc=description, disable=not progress, leave=False,
                                dynamic_ncols=True):
                batch = dataset.batch(indices)
                batch_labels = batch.pop("labels")
                logits = model(**_to_device(batch, device)).logits.float().cpu()
                if not torch.isfinite(logits).all():
                    raise DivergenceError(
                        f"the model's outputs ({description}) are NaN or infinite, so they "
                        "cannot be scored: training diverged; lower the learning rate "
                        f"({rate_option})"
                    )
                for row, index in enumerate(indices):
                    outputs[index] = logits[row]
                    labels[index] = batch_labels[row].item()
    finally:
        model.train(was_training)
    return Predictions(torch.stack(outputs), labels, time.perf_counter() - started)
