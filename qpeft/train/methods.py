"""What is trained: one :class:`MethodSpec` per fine-tuning method.

=========  ===============================================================
``head``   linear probe: only the new head (classifier) is trained
``full``   every parameter is trained
``lora``   peft LoRA of rank ``rank`` on the target modules
``oft``    peft OFT (block-diagonal orthogonal factor, ``block_size``)
``boft``   peft BOFT (butterfly orthogonal factor, ``block_size``,
           ``butterfly_factor``)
``qpeft``  Quantum-PEFT: ``ΔW = α U Λ Vᵀ`` with ``rank`` columns from a
           circuit of ``layers`` layers of ``ansatz``
=========  ===============================================================

In every method the new head (``classifier`` for BERT) is trained too; it
is counted apart so that "adapter-only" counts compare methods fairly.

A method is written on the command line as ``name`` or
``name:key=value,key=value``, for example ``lora:r=4`` or
``qpeft:K=4,L=2,ansatz=pauli`` (see :meth:`MethodSpec.parse`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any

from qpeft.errors import ConfigError
from qpeft.files import file_mode

METHODS = ("qpeft", "lora", "oft", "boft", "head", "full")

#: Learning rate of each method when ``--lr`` is not given. Chosen on the
#: default budget of ``qpeft finetune`` (see docs/finetune.md).
DEFAULT_LEARNING_RATES = {
    "head": 2e-2,
    "full": 1e-4,
    "lora": 2e-3,
    "oft": 2e-3,
    "boft": 2e-3,
    "qpeft": 1e-1,
}

#: Learning rate of the new head when ``head_lr`` is not given: ``None`` means
#: the method's own learning rate. Quantum-PEFT's angle learning rate is far
#: above what a freshly initialised linear head trains well with.
DEFAULT_HEAD_LEARNING_RATES: dict[str, float | None] = {"qpeft": 2e-2}

#: Default ``rank`` of LoRA (r) and of Quantum-PEFT (K), ``layers`` of
#: Quantum-PEFT, block sizes of OFT and BOFT. Quantum-PEFT's K costs one
#: parameter per column (the angles do not depend on K), so its default is far
#: above LoRA's; K = 32, L = 2 had the best validation accuracy of the settings
#: tried on the default budget (docs/results.md).
DEFAULT_RANK = {"lora": 4, "qpeft": 32}
DEFAULT_LAYERS = 2
DEFAULT_OFT_BLOCK_SIZE = 32
DEFAULT_BOFT_BLOCK_SIZE = 4
#: peft runs BOFT with butterfly factor 1 unless its CUDA extension builds.
DEFAULT_BOFT_BUTTERFLY_FACTOR = 1

_BERT_ATTENTION = ("query", "key", "value", "attention.output.dense")
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")

#: Attention projections per transformers ``model_type``: the default
#: targets. transformers has renamed modules between versions (ViT's
#: ``query`` became ``q_proj`` in 5.x), so the names of the installed version
#: are checked: the first spelling each of whose names matches a module of the model wins,
#: then ``q_proj, k_proj, v_proj, o_proj``.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": _BERT_ATTENTION,
    "roberta": _BERT_ATTENTION,
    "xlm-roberta": _BERT_ATTENTION,
    "deberta-v2": ("query_proj", "key_proj", "value_proj", "attention.output.dense"),
    "deberta": ("in_proj", "attention.output.dense"),
    "vit": _BERT_ATTENTION,
    "gpt2": ("c_attn", "attn.c_proj"),
    "llama": _PROJECTIONS,
    "mistral": _PROJECTIONS,
}

#: Newly initialised modules that every method trains, per ``model_type``
#: (default: whichever of ``classifier`` and ``score`` the model has).
HEAD_MODULES: dict[str, tuple[str, ...]] = {
    "deberta-v2": ("pooler", "classifier"),
    "deberta": ("pooler", "classifier"),
}

#: The options each method uses besides ``learning_rate``, ``head_learning_rate``
#: and ``targets``; any other is refused rather than silently ignored.
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "qpeft": ("rank", "layers", "ansatz", "alpha", "dropout"),
    "lora": ("rank", "alpha", "dropout"),
    "oft": ("block_size",),
    "boft": ("block_size", "butterfly_factor"),
    "head": (),
    "full": (),
}

#: How an option is written in a method spec and on the command line.
_OPTION_NAMES = {
    "rank": "r (--rank)", "layers": "L (--layers)", "ansatz": "ansatz (--ansatz)",
    "alpha": "alpha (--alpha)", "block_size": "block (--block-size)",
    "butterfly_factor": "factor", "dropout": "dropout",
}

_KEY_ALIASES = {
    "r": "rank", "k": "rank", "rank": "rank",
    "l": "layers", "layers": "layers",
    "ansatz": "ansatz",
    "alpha": "alpha",
    "block": "block_size", "block_size": "block_size",
    "factor": "butterfly_factor", "butterfly_factor": "butterfly_factor",
    "lr": "learning_rate", "learning_rate": "learning_rate",
    "head_lr": "head_learning_rate", "head_learning_rate": "head_learning_rate",
    "dropout": "dropout",
}


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method and its hyperparameters.

    Fields a method does not use stay ``None``; :meth:`resolved` fills the
    defaults. ``targets`` ``None`` means the model's attention projections.

    Example:
        >>> spec = MethodSpec.parse("qpeft:K=4,L=2")
        >>> spec.name, spec.rank, spec.layers, spec.label
        ('qpeft', 4, 2, 'qpeft K=4 L=2')
        >>> MethodSpec.parse("lora:r=8").resolved().label
        'lora r=8'
    """

    name: str
    rank: int | None = None
    layers: int | None = None
    ansatz: str | None = None
    alpha: float | None = None
    block_size: int | None = None
    butterfly_factor: int | None = None
    learning_rate: float | None = None
    dropout: float | None = None
    targets: tuple[str, ...] | None = None
    head_learning_rate: float | None = None

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ConfigError(f"unknown method {self.name!r}; choose one of {', '.join(METHODS)}")
        for key in ("rank", "layers", "block_size", "butterfly_factor"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{self.name} {key} must be at least 1, not {value}")
        for rate in (self.learning_rate, self.head_learning_rate):
            if rate is not None and not (rate > 0 and math.isfinite(rate)):
                raise ConfigError(f"learning rates must be positive finite numbers, not {rate}")
        if self.alpha is not None and not math.isfinite(self.alpha):
            raise ConfigError(f"{self.name} alpha must be a finite number, not {self.alpha}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"adapter dropout must be in [0, 1), not {self.dropout}")
        used = METHOD_OPTIONS[self.name]
        unused = [key for key in _OPTION_NAMES if getattr(self, key) is not None
                  and key not in used]
        if unused:
            options = [_OPTION_NAMES[key].split(" ")[0] for key in used] + ["lr", "head_lr"]
            raise ConfigError(
                f"{self.name} does not use {', '.join(_OPTION_NAMES[key] for key in unused)}; "
                f"leave it out (the options of {self.name} are {', '.join(options)})"
            )

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        """Read ``name`` or ``name:key=value,...`` (keys: ``r``/``K``/``rank``,
        ``L``/``layers``, ``ansatz``, ``alpha``, ``block``, ``factor``, ``lr``,
        ``head_lr``, ``dropout``). A setting given twice (``r=2,r=8``, or
        ``r=2,K=2``) is refused."""
        name, _, options = text.strip().partition(":")
        values: dict[str, Any] = {}
        written: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in options.split(","))):
            key, equals, value = item.partition("=")
            field_name = _KEY_ALIASES.get(key.strip().lower())
            if not equals or field_name is None:
                raise ConfigError(
                    f"cannot read {item!r} in method {text!r}; write name:key=value,... with "
                    "keys r (or K), L, ansatz, alpha, block, factor, lr, head_lr, dropout"
                )
            if field_name in values:
                raise ConfigError(
                    f"method {text!r} sets {field_name.replace('_', ' ')} twice "
                    f"({written[field_name]} and {item}); keep one of them"
                )
            values[field_name] = value.strip()
            written[field_name] = item
        try:
            for key in ("rank", "layers", "block_size", "butterfly_factor"):
                if key in values:
                    values[key] = int(values[key])
            for key in ("alpha", "learning_rate", "head_learning_rate", "dropout"):
                if key in values:
                    values[key] = float(values[key])
        except ValueError as error:
            raise ConfigError(f"method {text!r}: {error}; use numbers for numeric keys") from None
        return cls(name.strip().lower(), **values)

    def resolved(self) -> MethodSpec:
        """A copy with each default the method uses filled in."""
        values: dict[str, Any] = {}
        if self.name in DEFAULT_RANK and self.rank is None:
            values["rank"] = DEFAULT_RANK[self.name]
        if self.name == "qpeft" and self.layers is None:
            values["layers"] = DEFAULT_LAYERS
        if self.name == "lora" and self.alpha is None:
            values["alpha"] = 2.0 * (values.get("rank") or self.rank)
        if self.name == "oft" and self.block_size is None:
            values["block_size"] = DEFAULT_OFT_BLOCK_SIZE
        if self.name == "boft":
            if self.block_size is None:
                values["block_size"] = DEFAULT_BOFT_BLOCK_SIZE
            if self.butterfly_factor is None:
                values["butterfly_factor"] = DEFAULT_BOFT_BUTTERFLY_FACTOR
        if self.learning_rate is None:
            values["learning_rate"] = DEFAULT_LEARNING_RATES[self.name]
        if self.head_learning_rate is None:
            values["head_learning_rate"] = DEFAULT_HEAD_LEARNING_RATES.get(self.name)
        return replace(self, **values)

    @property
    def label(self) -> str:
        """Short name for tables and plots, such as ``lora r=4`` or ``qpeft K=4 L=1``."""
        parts = [self.name]
        if self.name == "lora" and self.rank is not None:
            parts.append(f"r={self.rank}")
        if self.name == "qpeft":
            if self.rank is not None:
                parts.append(f"K={self.rank}")
            if self.layers is not None:
                parts.append(f"L={self.layers}")
            if self.ansatz is not None:
                parts.append(self.ansatz)
        if self.name in {"oft", "boft"} and self.block_size is not None:
            parts.append(f"b={self.block_size}")
        if self.name == "boft" and self.butterfly_factor is not None:
            parts.append(f"m={self.butterfly_factor}")
        return " ".join(parts)

    @property
    def slug(self) -> str:
        """:attr:`label` as a file name: ``lora-r4``, ``qpeft-K4-L1``. An ansatz
        given as a file path appears as its stem and a digest of the path as
        given (``qpeft-K4-L1-he-1f0c2a9b``), so the slug never holds a path
        separator and two files of one name get two folders.

        >>> MethodSpec.parse("qpeft:K=2,ansatz=../../he.py").slug
        'qpeft-K2-he-c5aebac5'
        """
        label = self.label
        if self.ansatz is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.ansatz):
            digest = hashlib.sha256(self.ansatz.encode()).hexdigest()[:8]
            stem = re.sub(r"[^A-Za-z0-9_-]", "-", PurePath(self.ansatz).stem) or "ansatz"
            label = label.replace(self.ansatz, f"{stem}-{digest}")
        return label.replace("=", "").replace(" ", "-")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["targets"] = None if self.targets is None else list(self.targets)
        return values


# ---------------------------------------------------------------- model parts


def model_type(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") or ""


def pick_targets(model: Any, *candidates: Sequence[str]) -> tuple[str, ...] | None:
    """The first of ``candidates`` each of whose suffixes names a module of
    ``model`` (see :func:`unmatched_targets`)."""
    for candidate in candidates:
        if candidate and not unmatched_targets(model, candidate):
            return tuple(candidate)
    return None


def unmatched_targets(model: Any, targets: Sequence[str]) -> list[str]:
    """The entries of ``targets`` that name no module of ``model``."""
    names = [name for name, _ in model.named_modules()]
    return [
        target for target in targets
        if not any(name == target or name.endswith("." + target) for name in names)
    ]


def parse_targets(text: str, default: str = "the attention projections") -> tuple[str, ...]:
    """The module-name suffixes of a comma-separated ``--targets``; one that
    names none (``""``, ``",,"``) is a ConfigError, not the default targets.

    >>> parse_targets(" query, value ,")
    ('query', 'value')
    """
    targets = tuple(part.strip() for part in text.split(",") if part.strip())
    if not targets:
        raise ConfigError(
            f"--targets {text!r} names no module; give comma-separated module-name suffixes "
            f"(for example query,value), or leave --targets out to adapt {default}"
        )
    return targets


def default_targets(model: Any) -> tuple[str, ...]:
    """Attention projections of ``model`` (see :data:`DEFAULT_TARGETS`)."""
    kind = model_type(model)
    found = pick_targets(model, *([DEFAULT_TARGETS[kind]] if kind in DEFAULT_TARGETS else []),
                         _PROJECTIONS)
    if found is None:
        raise ConfigError(
            f"no default target modules for model type {kind!r}; name them with --targets "
            f"(for example: {', '.join(_linear_names(model)[:6])})"
        )
    return found


def head_modules(model: Any) -> tuple[str, ...]:
    """Names of the newly initialised head modules of ``model``; empty for a
    model without one (a causal language model keeps its tied output layer).

    A model loaded by :func:`qpeft.models.load_sequence_classifier` records
    them (``qpeft_new_modules``: every module transformers made anew or that was
    initialised again); for another, the :data:`HEAD_MODULES` of its type, else
    whichever of ``classifier`` and ``score`` it has."""
    recorded = getattr(model, "qpeft_new_modules", None)
    if recorded is not None:
        return tuple(recorded)
    kind = model_type(model)
    if kind in HEAD_MODULES:
        return HEAD_MODULES[kind]
    return tuple(name for name in ("classifier", "score") if hasattr(model, name))


def _linear_names(model: Any) -> list[str]:
    import torch

    return [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
    ]


def matching_modules(model: Any, targets: Sequence[str]) -> list[str]:
    """Module names equal to a target or ending in ``.target`` (peft's rule)."""
    names = [name for name, _ in model.named_modules()]
    return [
        name for name in names
        if any(name == target or name.endswith("." + target) for target in targets)
    ]


def _is_head(name: str, heads: Sequence[str]) -> bool:
    parts = name.split(".")
    for head in heads:
        head_parts = head.split(".")
        for start in range(len(parts) - len(head_parts) + 1):
            if parts[start : start + len(head_parts)] == head_parts:
                return True
    return False


# ------------------------------------------------------------------ prepared


@dataclass(frozen=True)
class ParameterCounts:
    """Trainable parameters: ``adapter`` (without the head), ``head``,
    ``trainable`` (both) and ``total`` (every parameter of the model)."""

    adapter: int
    head: int
    trainable: int
    total: int


@dataclass
class PreparedModel:
    """A model ready to train with one method."""

    model: Any
    spec: MethodSpec
    heads: tuple[str, ...]
    targets: tuple[str, ...] = field(default_factory=tuple)

    def trainable_parameters(self) -> list[tuple[str, Any]]:
        """``(name, parameter)`` of every trainable parameter, in model order."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def head_parameter_names(self) -> set[str]:
        return {n for n, _ in self.trainable_parameters() if _is_head(n, self.heads)}

    def parameter_counts(self) -> ParameterCounts:
        """Trainable parameter counts, adapter-only and with the head.

        Parameters shared between modules (tied weights) count once.
        """
        seen: set[int] = set()
        adapter = head = total = 0
        for name, parameter in self.model.named_parameters(remove_duplicate=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            total += parameter.numel()
            if parameter.requires_grad:
                if _is_head(name, self.heads):
                    head += parameter.numel()
                else:
                    adapter += parameter.numel()
        # peft keeps a frozen copy of each module in modules_to_save; it is not a model weight.
        total -= sum(
            p.numel() for n, p in self.model.named_parameters()
            if ".original_module." in n and not p.requires_grad
        )
        return ParameterCounts(adapter, head, adapter + head, total)

    def circuits_digest(self) -> str | None:
        """SHA-256 of what generates each Quantum-PEFT frame (the circuit
        fingerprints or mappings of every adapted layer), so that a checkpoint
        is not resumed with other circuits of the same size; ``None`` for the
        other methods."""
        if self.spec.name != "qpeft":
            return None
        model = self.model
        adapter = getattr(model, "active_adapter", "default")
        frames = [
            [path, {side: spec.describe() for side, spec in sorted(
                layer.frame_specs[adapter].items())}]
            for path, layer in sorted(model.qpeft_layers(adapter).items())
        ]
        return hashlib.sha256(json.dumps(frames, sort_keys=True).encode()).hexdigest()

    def fingerprint(self, **entries: Any) -> dict[str, Any]:
        """What a training checkpoint must match to be resumed: ``entries``
        (the task, the model), the method's label and :meth:`circuits_digest`."""
        return {**entries, "method": self.spec.label, "circuits": self.circuits_digest()}

    def trainable_state(self) -> dict[str, Any]:
        """Detached CPU copies of the trainable parameters, by name."""
        return {n: p.detach().cpu().clone() for n, p in self.trainable_parameters()}

    def save_adapter(self, directory: str | Path) -> int:
        """Save what was trained into ``directory``; return the bytes written.

        Quantum-PEFT uses its ``save_pretrained`` (angles, λ, ansatz
        description, head). Other methods write the trainable tensors to
        ``adapter_model.safetensors`` plus ``adapter_config.json``. The
        directory is written beside the target and moved into place.
        """
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        try:
            if self.spec.name == "qpeft":
                self.model.save_pretrained(str(staging))
            else:
                from safetensors.torch import save_file

                tensors = {
                    n: p.detach().cpu().contiguous() for n, p in self.trainable_parameters()
                }
                save_file(tensors, str(staging / "adapter_model.safetensors"))
                config = {"method": self.spec.to_dict(), "targets": list(self.targets),
                          "heads": list(self.heads)}
                (staging / "adapter_config.json").write_text(
                    json.dumps(config, indent=2) + "\n", encoding="utf-8"
                )
            mode = file_mode(staging)
            for path in staging.rglob("*"):
                if path.is_file():
                    path.chmod(mode)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return sum(path.stat().st_size for path in target.rglob("*") if path.is_file())


def prepare_model(
    model: Any, spec: MethodSpec, targets: Sequence[str] | None = None
) -> PreparedModel:
    """Wrap or freeze ``model`` for ``spec``; the head is always trainable.

    ``targets`` (module-name suffixes) default to :func:`default_targets`;
    each must name at least one module (a misspelt one is refused, not
    dropped). ``head`` and ``full`` ignore them.
    """
    spec = spec.resolved()
    heads = head_modules(model)
    if spec.name in {"head", "full"}:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(spec.name == "full" or _is_head(name, heads))
        return PreparedModel(model, spec, heads)

    chosen = tuple(targets or spec.targets or default_targets(model))
    unmatched = unmatched_targets(model, chosen)
    if unmatched:
        others = ("" if len(unmatched) == len(chosen) else
                  f" (of --targets {','.join(chosen)}; each target must match)")
        raise ConfigError(
            f"no module of the model matches the targets {', '.join(unmatched)}{others}; "
            f"linear modules are named like {', '.join(_linear_names(model)[:6])}: "
            "pass suffixes of such names to --targets"
        )
    # a head's modules are trained in full (modules_to_save), never adapted
    matched = [name for name in matching_modules(model, chosen) if not _is_head(name, heads)]
    spec = replace(spec, targets=chosen)
    if spec.name in {"oft", "boft"}:
        _check_block_size(model, matched, spec)
    if spec.name == "lora":
        _check_lora_rank(model, matched, spec.rank)
    if spec.name == "qpeft":
        wrapped = _wrap_qpeft(model, spec, heads)
    else:
        wrapped = _wrap_peft(model, spec, heads)
    return PreparedModel(wrapped, spec, heads, chosen)


def _check_lora_rank(model: Any, matched: Sequence[str], rank: int) -> None:
    """A LoRA rank above a target's narrower side adds nothing a full update
    lacks, and one far above it does not fit in memory: refused, as qpeft's K."""
    from qpeft.adapters.layer import is_supported_linear, linear_shape

    modules = dict(model.named_modules())
    for name in matched:
        if is_supported_linear(modules[name]):
            n_in, n_out, _ = linear_shape(modules[name])
            if rank > min(n_in, n_out):
                raise ConfigError(
                    f"LoRA rank r={rank} is larger than {name!r} allows: it maps {n_in} to "
                    f"{n_out} features, so r <= {min(n_in, n_out)}"
                )


def _check_block_size(model: Any, matched: Sequence[str], spec: MethodSpec) -> None:
    """peft would silently change a block size that does not divide a layer's
    width; refuse instead, so that the reported setting is the one trained."""
    modules = dict(model.named_modules())
    widths = set()
    for name in matched:
        module = modules[name]
        width = getattr(module, "in_features", None)
        if width is None and getattr(module, "weight", None) is not None:
            width = module.weight.shape[0]  # transformers' Conv1D stores (in, out)
        if width is not None:
            widths.add(int(width))
    widths = sorted(widths)
    bad = [width for width in widths if width % (spec.block_size or 1)]
    if bad:
        raise ConfigError(
            f"{spec.name} block size {spec.block_size} does not divide the layer width "
            f"{bad[0]}; choose a block size that divides {', '.join(map(str, widths))}"
        )


def _check_butterfly(wrapped: Any, spec: MethodSpec) -> None:
    if spec.name != "boft" or (spec.butterfly_factor or 1) == 1:
        return
    from peft.tuners.boft.layer import get_fbd_cuda

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(CUDA extension|butterfly_factor).*")
        available = get_fbd_cuda()
    if not available:
        raise ConfigError(
            f"peft trains BOFT with butterfly factor {spec.butterfly_factor} only with its CUDA "
            "extension, which could not be built here (peft falls back to factor 1); use "
            "boft:factor=1, or a CUDA machine with ninja"
        )


def _wrap_peft(model: Any, spec: MethodSpec, heads: tuple[str, ...]) -> Any:
    from peft import BOFTConfig, LoraConfig, OFTConfig, get_peft_model

    targets = list(spec.targets or ())
    fan_in_fan_out = model_type(model) == "gpt2"
    if spec.name == "lora":
        config: Any = LoraConfig(
            r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout or 0.0,
            target_modules=targets,
            modules_to_save=list(heads) or None, fan_in_fan_out=fan_in_fan_out,
        )
    elif spec.name == "oft":
        config = OFTConfig(
            oft_block_size=spec.block_size, r=0, target_modules=targets,
            modules_to_save=list(heads) or None, fan_in_fan_out=fan_in_fan_out,
        )
    else:
        config = BOFTConfig(
            boft_block_size=spec.block_size, boft_n_butterfly_factor=spec.butterfly_factor,
            target_modules=targets, modules_to_save=list(heads) or None,
            fan_in_fan_out=fan_in_fan_out,
        )
    try:
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers method deprecated in 5.x; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                    category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*(CUDA extension|butterfly_factor).*")
            wrapped = get_peft_model(model, config)
    except ValueError as error:
        raise ConfigError(
            f"peft cannot build {spec.label} on this model ({error}); check the method's "
            "settings against the layer widths"
        ) from None
    _check_butterfly(wrapped, spec)
    return wrapped


def _wrap_qpeft(model: Any, spec: MethodSpec, heads: tuple[str, ...]) -> Any:
    try:
        from qpeft import QPeftConfig, get_qpeft_model
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"the Quantum-PEFT adapters are not available in this installation ({error}); "
            "reinstall qpeft, or choose another --method"
        ) from None
    options: dict[str, Any] = {
        "target_modules": list(spec.targets or ()),
        "rank": spec.rank,
        "layers": spec.layers,
        "modules_to_save": list(heads) or None,
    }
    if spec.ansatz is not None:
        options["ansatz"] = spec.ansatz
    if spec.alpha is not None:
        options["alpha"] = spec.alpha
    if spec.dropout is not None:
        options["dropout"] = spec.dropout
    return get_qpeft_model(model, QPeftConfig(**options))
