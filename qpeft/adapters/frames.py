"""The orthonormal frames U and V of the adapters, computed in batches.

A *frame* is the ``N × K`` matrix of the first K columns of an orthogonal
``Q(θ)``. :class:`FrameSpec` says how one side of one adapter gets its frame:
a compiled circuit (the paper's method) or one of the comparison mappings
(Cayley, exponential, Householder, Givens, Taylor).

Every adapted layer has two sides, and most sides of a transformer share a
width and therefore a circuit: BERT's query/key/value/output projections all
have ``N_in = N_out = hidden``. :func:`compute_frames` stacks the angle
vectors of all sides with the same circuit (same fingerprint, same K, same
quantization) into one ``(G, P)`` tensor and calls the compiled circuit once
per group. :class:`FrameBank` does that for a whole model at the start of
every forward pass and hands each layer its slices; in inference (no
gradient needed) it keeps the frames until a parameter changes.

>>> import torch
>>> spec = resolve_frame_spec("qudit", width=24, columns=4, layers=2)
>>> spec.dimension, spec.columns, spec.num_parameters, spec.periodic
(24, 4, 19, True)
>>> U = compiled_frame(spec, torch.device("cpu"), torch.float64)(torch.randn(3, 19).double())
>>> U.shape, bool(torch.allclose(U[1].T @ U[1], torch.eye(4, dtype=torch.float64)))
(torch.Size([3, 24, 4]), True)
"""

from __future__ import annotations

import inspect
import math
import sys
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from qpeft.adapters.quantize import fake_quantize
from qpeft.circuit import Circuit
from qpeft.compiler.blocks import autocast_off
from qpeft.errors import AdapterFileError, ConfigError, QpeftError

if TYPE_CHECKING:
    from qpeft.adapters.layer import QPeftLinear

SIDES = ("out", "in")
"""``out``: U (N_out rows); ``in``: V (N_in rows)."""


def mapping_names() -> tuple[str, ...]:
    """Names of the comparison mappings (``qpeft.compiler.mappings``)."""
    from qpeft.compiler.mappings import MAPPINGS

    return tuple(sorted(MAPPINGS))


@dataclass(frozen=True, eq=False)
class FrameSpec:
    """How one side's ``N × K`` frame is generated: a circuit or a named mapping.

    Plain data: it is saved in ``adapter_config.json`` (:meth:`describe`) and
    two specs with equal :attr:`group_key` evaluate in one batched call.

    >>> import qpeft
    >>> spec = FrameSpec.for_circuit(qpeft.ansatz.pauli(qubits=4, layers=1), columns=2)
    >>> spec.dimension, spec.num_parameters
    (16, 10)
    """

    dimension: int
    columns: int
    circuit: Circuit | None = None
    mapping: str | None = None
    mapping_options: tuple[tuple[str, Any], ...] = ()
    fingerprint: str = field(default="", compare=False)
    method: str = field(default="auto", compare=False)
    periodic: bool = field(default=False, compare=False)
    """True when every parameter is an angle of period 4π (see quantize.py): a
    circuit whose gates use its parameters with integer coefficients."""

    @classmethod
    def for_circuit(cls, circuit: Circuit, columns: int, method: str = "auto") -> FrameSpec:
        """``method``: the compiler's (``compile_method``); one that cannot evaluate
        this circuit's first ``columns`` columns is refused now, before any model
        is touched."""
        if not circuit.is_real:
            raise ConfigError(
                f"the circuit {circuit.name or circuit!r} is not real; adapter frames must be "
                "real orthogonal (use RY, Givens, CZ and Pauli rotations with an odd number of Y)"
            )
        _check_columns(columns, circuit.dimension)
        periodic = all(
            coefficient == round(coefficient)
            for gate in circuit.gates
            for expression in getattr(gate, "params", ())
            for _, coefficient in expression.terms
        )
        if method == "mps":
            from qpeft.compiler.mps import unsupported_reason

            reason = unsupported_reason(circuit, range(columns))
            if reason:
                reason = reason.split("; use method=")[0]  # the advice, in the config's terms:
                raise ConfigError(
                    f"compile_method='mps' cannot compile the frame of width "
                    f"{circuit.dimension}: {reason}; set compile_method='auto' (which picks a "
                    "method that fits) or 'columns'"
                )
        return cls(circuit.dimension, columns, circuit=circuit,
                   fingerprint=circuit.fingerprint(), periodic=periodic, method=method)

    @classmethod
    def for_mapping(cls, name: str, dimension: int, columns: int,
                    options: Mapping[str, Any] | None = None) -> FrameSpec:
        if name not in mapping_names():
            raise ConfigError(f"unknown mapping {name!r}; use one of {', '.join(mapping_names())}")
        _check_columns(columns, dimension)
        from qpeft.compiler.mappings import mapping, mapping_options

        options = dict(options or {})
        accepted = mapping_options(name) - {"dtype", "device"}
        unknown = sorted(set(options) - accepted, key=str)
        if unknown:
            raise ConfigError(
                f"ansatz_options {unknown} are not options of mapping {name!r}; it takes "
                f"{sorted(accepted)} (the adapter chooses dtype and device: float32, or "
                "float64 for float64 parameters, on the layer's device)"
            )
        try:  # checks the values now, before any model is touched (no memory on meta)
            mapping(name, dimension, columns, device="meta", **options)
        except (QpeftError, TypeError, ValueError) as error:
            raise ConfigError(f"ansatz_options of mapping {name!r}: {error}") from None
        items = tuple(sorted(options.items()))
        return cls(dimension, columns, mapping=name, mapping_options=items)

    @property
    def num_parameters(self) -> int:
        """P, the length of this side's parameter vector."""
        if self.circuit is not None:
            return self.circuit.num_parameters
        from qpeft.compiler.mappings import parameter_count

        return parameter_count(self.dimension, self.columns)

    @property
    def group_key(self) -> tuple:
        """Specs with equal keys are evaluated together."""
        if self.circuit is not None:
            return ("circuit", self.fingerprint, self.columns)
        return ("mapping", self.mapping, self.dimension, self.columns, self.mapping_options)

    @property
    def label(self) -> str:
        """A short human-readable name."""
        if self.circuit is not None:
            return self.circuit.name or f"circuit {self.fingerprint[:12]}"
        return f"{self.mapping}({self.dimension})"

    def describe(self) -> dict[str, Any]:
        """JSON description of a mapping spec (circuits are stored by fingerprint)."""
        if self.circuit is not None:
            return {"circuit": self.fingerprint}
        return {"mapping": self.mapping, "dimension": self.dimension,
                "options": dict(self.mapping_options)}

    def build(self, dtype: torch.dtype, device: torch.device | str | None) -> nn.Module:
        """A fresh torch module ``(..., P) -> (..., N, K)``."""
        if self.circuit is not None:
            return _compile_circuit(self.circuit, self.columns, dtype, device, self.method)
        from qpeft.compiler.mappings import mapping

        options = dict(self.mapping_options)
        return mapping(self.mapping, self.dimension, self.columns, dtype=dtype, device=device,
                       **options)


def _check_columns(columns: int, dimension: int) -> None:
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ConfigError(f"rank must be a positive integer, got {columns!r}")
    if columns > dimension:
        raise ConfigError(
            f"rank K={columns} is larger than a side of width {dimension} allows: a "
            f"{dimension}-row frame has at most {dimension} orthonormal columns; "
            f"use K <= {dimension}"
        )


def _compile_circuit(circuit: Circuit, columns: int, dtype: torch.dtype,
                     device: torch.device | str | None, method: str) -> nn.Module:
    from qpeft.compiler import compile_circuit  # the function behind qpeft.compile

    return compile_circuit(circuit, columns, dtype=dtype, device=device, method=method)


def without_named_code(ansatz: Any, circuits: Iterable[Circuit]) -> Any:
    """The ansatz choice of an adapter read from a file, naming no code to run.

    A name that is neither a catalog entry nor a mapping is the path of a
    user's Python file, which :func:`~qpeft.ansatz.load_ansatz` would run. An
    adapter file never names code: such a choice (alone or in a dict by
    width) is replaced by the ``circuits`` the file records, by width, so
    that the loaded adapter builds its frames from their JSON descriptions
    only. A file that names code and records no circuits is an
    :class:`~qpeft.errors.AdapterFileError`.
    """
    from qpeft.ansatz import catalog_names

    safe = set(catalog_names()) | set(mapping_names())
    choices = ansatz.values() if isinstance(ansatz, Mapping) else [ansatz]
    named = [c for c in choices if isinstance(c, str) and c not in safe]
    if not named:
        return ansatz
    recorded = {circuit.dimension: circuit for circuit in circuits}
    if not recorded:
        raise AdapterFileError(
            f"the adapter names {named[0]!r} as its ansatz, which is neither a catalog entry "
            f"nor a mapping, and records no circuits; adapter files carry their circuits as "
            f"JSON and never name code to run"
        )
    return recorded


def resolve_frame_spec(
    ansatz: str | Circuit,
    width: int,
    columns: int,
    layers: int,
    options: Mapping[str, Any] | None = None,
    method: str = "auto",
) -> FrameSpec:
    """The frame of a side of ``width`` rows for an ansatz choice.

    ``ansatz``: a :class:`Circuit` (its dimension must equal ``width``), a
    mapping name, or a catalog name; a catalog builder that takes
    ``dimension`` gets ``width``, one that takes ``qubits`` gets ``log2(width)``
    (power-of-two widths only), one that takes ``layers`` gets ``layers``;
    ``options`` are passed on.

    >>> resolve_frame_spec("cayley", width=8, columns=2, layers=1).num_parameters
    13
    >>> resolve_frame_spec("pauli", width=24, columns=2, layers=1)
    Traceback (most recent call last):
    ...
    qpeft.errors.ConfigError: ansatz 'pauli' needs a power-of-two width ...
    """
    options = dict(options or {})
    if isinstance(ansatz, Circuit):
        if ansatz.dimension != width:
            raise ConfigError(
                f"the circuit given as ansatz has dimension {ansatz.dimension} but the side it "
                f"was given for has width {width}; give a circuit of dimension {width} (e.g. "
                f"qpeft.ansatz.for_dimension({width}, layers={layers})) or a dict by width"
            )
        return FrameSpec.for_circuit(ansatz, columns, method)
    if not isinstance(ansatz, str):
        raise ConfigError(f"ansatz must be a name or a Circuit, got {type(ansatz).__name__}")
    if ansatz in mapping_names():
        return FrameSpec.for_mapping(ansatz, width, columns, options)
    return FrameSpec.for_circuit(_catalog_circuit(ansatz, width, layers, options), columns,
                                 method)


def _catalog_circuit(name: str, width: int, layers: int, options: dict[str, Any]) -> Circuit:
    from qpeft.ansatz import ansatz_options, load_ansatz
    from qpeft.ansatz.catalog import ansatz_option_kinds

    try:
        accepted = ansatz_options(name)
    except QpeftError as error:
        raise ConfigError(
            f"{error}; or one of the mappings {', '.join(mapping_names())}"
        ) from None
    catch_all = [option for option, kind in ansatz_option_kinds(name).items()
                 if kind is inspect.Parameter.VAR_KEYWORD]
    unnamed = [option for option, named in (
        ("the side's width (dimension=) or log2 of it (qubits=)",
         "dimension" in accepted or "qubits" in accepted),
        ("layers=", "layers" in accepted)) if not named]
    if catch_all and unnamed:
        raise ConfigError(
            f"ansatz {name!r}: its build() takes **{catch_all[0]}, so an adapter cannot tell "
            f"whether it uses {' or '.join(unnamed)}; name the options it takes, e.g. "
            "def build(qubits: int = 4, layers: int = 2)"
        )
    if "dimension" in accepted:
        options.setdefault("dimension", width)
    elif "qubits" in accepted:
        qubits = int(round(math.log2(width)))
        if 2**qubits != width:
            raise ConfigError(
                f"ansatz {name!r} needs a power-of-two width (it takes a qubit count), but a "
                f"targeted side has width {width}; use ansatz='qudit' or 'shannon' for any width"
            )
        options.setdefault("qubits", qubits)
    if "layers" in accepted:
        if options.setdefault("layers", layers) != layers:
            raise ConfigError(
                f"ansatz_options sets layers={options['layers']!r} but the configuration has "
                f"layers={layers}; set the number of layers once, with layers="
            )
    circuit = load_ansatz(name, **options)
    if circuit.dimension != width:
        hint = ("" if {"dimension", "qubits"} & set(accepted) else
                f"; its build() takes neither a dimension nor a qubits option, so the side's "
                f"width is not passed: give the options that make width {width} in "
                f"ansatz_options, or a Circuit (a dict by width for several widths)")
        raise ConfigError(
            f"ansatz {name!r} with options {options} built a circuit of dimension "
            f"{circuit.dimension}, but the side has width {width}{hint}"
        )
    return circuit


# -- compiled modules, built once per (group, device, dtype) ---------------------------------
_COMPILED: dict[tuple, nn.Module] = {}


def compiled_frame(spec: FrameSpec, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The compiled module of ``spec`` on ``device`` in ``dtype``, built on first use
    (one built while ``torch.export`` traces holds placeholder tensors: not kept). A
    first use under ``torch.compile`` builds it outside the trace: building reads the
    circuit with NumPy, which dynamo cannot trace."""
    key = (spec.group_key, spec.method, str(device), dtype)
    module = _COMPILED.get(key)
    if module is None:
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            module = _build_eagerly(spec, dtype, device)
        else:
            module = spec.build(dtype, device)
        module.requires_grad_(False)
        if not torch.compiler.is_exporting():
            _COMPILED[key] = module
    return module


@torch.compiler.disable
def _build_eagerly(spec: FrameSpec, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return spec.build(dtype, device)


def storage_key(tensor: torch.Tensor) -> tuple | None:
    """What identifies ``tensor``'s current values for a cache: its storage, version,
    dtype and device. ``None`` for a tensor without storage (a placeholder of
    ``torch.export``, a ``torch.func`` transform's wrapper), whose results must
    not be reused."""
    try:
        return tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device
    except RuntimeError:
        return None


def clear_compiled_cache() -> None:
    """Forget every compiled frame module (they are rebuilt on demand)."""
    _COMPILED.clear()


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Frames are computed in float32, or float64 when the parameters are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- batched evaluation ------------------------------------------------------------------------
Slot = tuple["QPeftLinear", str, str]
"""(layer, adapter name, side)."""


def compute_frames(
    slots: Iterable[Slot], values_of: Callable[[Slot], torch.Tensor]
) -> dict[tuple[int, str, str], torch.Tensor]:
    """Frames of many sides, one compiled call per group.

    ``values_of(slot)`` gives the raw parameter vector of a side; slots whose
    specs share a group key, quantization and device are stacked into one
    ``(G, P)`` tensor, quantized together and evaluated in one call. Returns
    ``{(id(layer), adapter, side): (N, K) frame}``.
    """
    groups: dict[tuple, list[tuple[Slot, torch.Tensor]]] = defaultdict(list)
    for slot in slots:
        layer, adapter, side = slot
        spec = layer.frame_specs[adapter][side]
        values = values_of(slot)
        key = (spec.group_key, spec.method, layer.quantize_bits[adapter], values.device,
               work_dtype(values.dtype))
        groups[key].append((slot, values))
    frames: dict[tuple[int, str, str], torch.Tensor] = {}
    for (_, _, bits, device, dtype), members in groups.items():
        first_layer, first_adapter, first_side = members[0][0]
        spec = first_layer.frame_specs[first_adapter][first_side]
        stacked = torch.stack([values.to(dtype) for _, values in members])
        stacked = fake_quantize(stacked, bits, spec.periodic)
        module = compiled_frame(spec, device, dtype)
        with autocast_off(device):
            batch = module(stacked)
        # unbind: one stack in the backward pass, where indexing each frame would add a
        # zero-filled (G, N, K) gradient per frame and sum them
        for frame, ((layer, adapter, side), _) in zip(batch.unbind(0), members):
            frames[(id(layer), adapter, side)] = frame
    return frames


def batched_factors(
    slots: Iterable[Slot], frames: Mapping[tuple[int, str, str], torch.Tensor]
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """:meth:`QPeftLinear.factors` of every adapter in ``slots``, built in one
    batch per shape: the frames, λ and the ``offset`` init's frozen terms of
    all layers with the same ``(N_out, N_in, K)``, init, dtype and device are
    stacked, and :func:`~qpeft.adapters.layer.low_rank_factors` runs once on
    the stack. Each layer's forward pass is then two thin products, as in LoRA,
    and the work that grew with the number of layers is a handful of
    operations per shape. Returns ``{(id(layer), adapter): (left, right)}``."""
    from qpeft.adapters.layer import low_rank_factors

    groups: dict[tuple, list] = defaultdict(list)
    for layer, adapter, side in slots:
        if side != "out":
            continue
        U, V = frames[(id(layer), adapter, "out")], frames[(id(layer), adapter, "in")]
        initial = layer.initial_frames(adapter)
        key = (U.shape, V.shape, U.dtype, U.device, initial is not None)
        groups[key].append((layer, adapter, U, V, initial))
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for members in groups.values():
        U = torch.stack([m[2] for m in members])
        V = torch.stack([m[3] for m in members])
        c = _stacked_lambdas(members, initial=False)
        initial = None
        if members[0][4] is not None:
            initial = (torch.stack([m[4][0] for m in members]),
                       -_stacked_lambdas(members, initial=True),
                       torch.stack([m[4][1] for m in members]))
        left, right = low_rank_factors(U, c, V, initial)
        for (layer, adapter, *_), one_left, one_right in zip(members, left.unbind(0),
                                                              right.unbind(0)):
            factors[(id(layer), adapter)] = (one_left, one_right)
    return factors


def _innermost_checkpoint_hook() -> str | None:
    """``"_checkpoint_hook"`` inside the forward pass of a non-reentrant
    ``torch.utils.checkpoint``, ``"_recomputation_hook"`` while it recomputes
    that pass during the backward pass, else None (read from the innermost
    saved-tensor hook; a torch that does not expose it gives None)."""
    try:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    except (AttributeError, TypeError, RuntimeError):
        return None
    if not hooks:
        return None
    name = getattr(hooks[0], "__qualname__", "").split(".")[0]
    return name if name in ("_checkpoint_hook", "_recomputation_hook") else None


def _values_signature(layer: QPeftLinear, adapter: str) -> tuple:
    """What the factors of ``layer``'s adapter are computed from: its
    parameters (identity and version counter) and settings."""
    return tuple((id(p), p._version) for p in layer.adapter_parameters(adapter)) + (
        layer.scaling[adapter], layer.active_rank[adapter], layer.quantize_bits[adapter])


def _stacked_lambdas(members: list, initial: bool) -> torch.Tensor:
    """``(G, K)``: α times the effective λ (or λ₀) of each member, in one
    multiplication when the members share α (the usual case)."""
    lambdas = torch.stack([layer.effective_lambda(adapter, initial=initial)
                           for layer, adapter, *_ in members])
    alphas = [layer.scaling[adapter] for layer, adapter, *_ in members]
    if len(set(alphas)) == 1:
        return alphas[0] * lambdas
    return lambdas * torch.tensor(alphas, dtype=lambdas.dtype, device=lambdas.device)[:, None]


class FrameBank:
    """Computes the frames of every adapted layer of a model once per forward pass.

    :meth:`attach` installs a forward pre-hook on the model: before each
    forward pass the bank evaluates the trainable frames of all active
    adapters with :func:`compute_frames` (one call per circuit group) and
    the layers read their slices with :meth:`lookup`, and the two thin
    factors of their update, built for all layers of one shape at once
    (:func:`batched_factors`), with :meth:`lookup_factors`. The frozen initial
    frames of the ``offset`` init are cached on each layer and recomputed in
    one batch when their values change. When no gradient is needed (inference
    or ``torch.no_grad``) the trainable frames are reused too, as long as no
    parameter changed (checked by tensor identity and version counter).
    A layer called outside the model's forward computes its own frames.

    >>> bank = FrameBank()
    >>> bank.layers()
    []
    """

    def __init__(self) -> None:
        self._layers: list[weakref.ref] = []
        self._frames: dict[tuple[int, str, str], torch.Tensor] = {}
        self._factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._factors_grad = False  # whether _factors were built with grad enabled
        # factors read inside a non-reentrant checkpoint, with the parameters' signature
        self._checkpointed: dict[tuple[int, str], tuple[tuple, tuple]] = {}
        self._signature: tuple | None = None
        self._depth = 0
        self._pass_frame: FrameType | None = None  # where the outermost pass was called
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __getstate__(self) -> dict[str, Any]:
        # weak references and hook handles do not pickle; an unpickled bank
        # serves no layers until set_layers() (the layers compute their own frames)
        return {"_layers": [], "_frames": {}, "_factors": {}, "_factors_grad": False,
                "_checkpointed": {}, "_signature": None, "_depth": 0, "_pass_frame": None,
                "_handles": []}

    # -- membership --------------------------------------------------------------
    def set_layers(self, layers: Iterable[QPeftLinear]) -> None:
        """Serve these layers (replaces the previous set)."""
        self._layers = [weakref.ref(layer) for layer in layers]
        for layer in self.layers():
            layer.frame_bank = self
        self.invalidate()

    def layers(self) -> list[QPeftLinear]:
        return [layer for ref in self._layers if (layer := ref()) is not None]

    def invalidate(self) -> None:
        """Drop cached frames (after a change the version counters cannot see).

        The factors kept for a checkpoint's recomputation stay: a pass made
        between the forward and the backward pass (a reference pass under
        ``disable_adapter()``, as DPO takes) must not change what the
        checkpoint recomputes, and each is served only while its layer's
        parameters and settings are those it was built from."""
        self._frames = {}
        self._factors = {}
        self._signature = None

    # -- hooks ---------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Compute frames before every forward pass of ``model``."""
        self.detach()
        self._handles = [
            model.register_forward_pre_hook(self._before_forward),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]

    def adopt(self, model: nn.Module) -> None:
        """Attach to ``model``, a copy (deepcopy, pickle) of one this bank's original
        was attached to: the hooks copied with it, which no handle of this bank
        removes, are dropped first."""
        copied = {key for hooks in (model._forward_pre_hooks, model._forward_hooks)
                  for key, hook in hooks.items() if getattr(hook, "__self__", None) is self}
        for hooks in (model._forward_pre_hooks, model._forward_hooks,
                      model._forward_hooks_always_called):
            for key in copied:
                hooks.pop(key, None)
        self.attach(model)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._depth = 0
        self._pass_frame = None

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        tracked = not torch.compiler.is_compiling()  # dynamo cannot trace sys._getframe
        if tracked and self._depth and not self._outer_pass_running():
            # the last pass ended by an exception torch runs no forward hook for
            # (KeyboardInterrupt): this pass is not nested in it, start afresh
            self._depth = 0
        self._depth += 1
        if self._depth == 1:
            self._pass_frame = sys._getframe(1) if tracked else None
            self.refresh()

    def _outer_pass_running(self) -> bool:
        """Whether the pass that set ``_pass_frame`` is still on the call stack
        (a nested pass), rather than ended without ``_after_forward``."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame is self._pass_frame:
                return True
            frame = frame.f_back
        return False

    def _in_pass(self) -> bool:
        """Whether a forward pass of the model is running now: one that ended
        without ``_after_forward`` (Ctrl-C) does not count, so that a merge or a
        direct layer call after it never reads that pass's frames."""
        if self._depth == 0:
            return False
        if self._pass_frame is None or self._outer_pass_running():  # (None: under dynamo)
            return True
        self._depth = 0
        self._pass_frame = None
        return False

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            self._pass_frame = None
            self._factors = {}  # built from λ on every pass
            if self._signature is None:
                self._frames = {}  # frames with a graph are not kept past the pass

    # -- evaluation ------------------------------------------------------------------
    def slots(self) -> list[Slot]:
        """(layer, adapter, side) of every side that contributes now."""
        return [
            (layer, adapter, side)
            for layer in self.layers()
            for adapter in layer.contributing_adapters()
            for side in SIDES
        ]

    def refresh(self) -> None:
        """Compute (or reuse) the frames of every contributing side, and the
        factors of every contributing adapter."""
        self._factors_grad = torch.is_grad_enabled()
        slots = self.slots()
        layers = {id(layer): layer for layer, _, _ in slots}
        initial = [slot for slot in slots if slot[0].initial_frames_stale(slot[1])]
        if initial:
            computed = compute_frames(initial, lambda s: s[0].initial_values(s[1], s[2]))
            for layer, adapter, _ in initial:
                layers[id(layer)].store_initial_frames(adapter, computed)
        parameters = [layer.side_parameter(adapter, side) for layer, adapter, side in slots]
        needs_graph = torch.is_grad_enabled() and any(p.requires_grad for p in parameters)
        if needs_graph:
            self._signature = None
        else:
            # frames computed under torch.inference_mode() cannot enter a later autograd graph
            keys = [storage_key(p) for p in parameters]
            signature = None if None in keys else (torch.is_inference_mode_enabled(),) + tuple(
                (id(layer), adapter, side, id(p), key, layer.quantize_bits[adapter])
                for (layer, adapter, side), p, key in zip(slots, parameters, keys)
            )
            if signature is not None and signature == self._signature:
                self._factors = batched_factors(slots, self._frames)
                return
            self._signature = signature
        self._frames = compute_frames(slots, lambda s: s[0].side_parameter(s[1], s[2]))
        self._factors = batched_factors(slots, self._frames)

    def lookup_factors(self, layer: QPeftLinear,
                       adapter: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(left, right) of ``layer``'s adapter during a model forward pass, else None.

        None also where the grad mode differs from the one they were built in
        (a pass under ``torch.no_grad`` inside one with gradients, or the no-grad
        first pass of a reentrant checkpoint): the layer then builds its own.
        A layer recomputed during the backward pass by a non-reentrant
        checkpoint (``torch.utils.checkpoint(..., use_reentrant=False)``, the
        transformers default) gets the factors it read inside that checkpoint
        in the forward pass, so that it saves the same tensors, as long as its
        parameters and settings are unchanged; any other call gets None."""
        key = (id(layer), adapter)
        if self._in_pass():
            if torch.is_grad_enabled() != self._factors_grad:
                return None
            found = self._factors.get(key)
            if found is not None and _innermost_checkpoint_hook() == "_checkpoint_hook":
                self._checkpointed[key] = (found, _values_signature(layer, adapter))
            return found
        if _innermost_checkpoint_hook() == "_recomputation_hook":
            kept = self._checkpointed.get(key)
            if kept is not None and kept[1] == _values_signature(layer, adapter):
                return kept[0]
        return None

    def lookup(self, layer: QPeftLinear, adapter: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(U, V) of ``layer``'s adapter during a model forward pass, else None."""
        if not self._in_pass():
            return None
        key = id(layer), adapter
        out = self._frames.get((*key, "out"))
        inp = self._frames.get((*key, "in"))
        if out is None or inp is None:
            return None
        return out, inp


__all__ = [
    "FrameBank", "FrameSpec", "SIDES", "clear_compiled_cache", "compiled_frame",
    "compute_frames", "mapping_names", "resolve_frame_spec", "work_dtype",
]
