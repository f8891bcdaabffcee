"""The adapter layer :class:`QPeftLinear` and the trainable-copy wrapper
:class:`ModulesToSaveWrapper`.

``QPeftLinear`` wraps an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2,
weight stored transposed) and adds ``α · U Λ Vᵀ dropout(x)``::

    U = Q_out(θ_U)[:, :K]   (N_out × K)      V = Q_in(θ_V)[:, :K]   (N_in × K)

computed as ``(x @ left) @ rightᵀ`` with ``left = V`` and ``right = U·αλ``
(:func:`low_rank_factors`; the ``offset`` init folds its frozen term into a
rank-2K pair): no ``N × N`` and no ``N_out × N_in`` matrix is formed in the
forward pass. The layer owns its parameters
(``qpeft_theta_out``, ``qpeft_theta_in``, ``qpeft_lambda``, one entry per
named adapter), its frozen initial values (``qpeft_initial``) and its
merge/unmerge, so a model wrapper only has to find and replace modules.

>>> import torch
>>> layer = QPeftLinear(torch.nn.Linear(24, 40), rank=4, layers=2)
>>> x = torch.randn(3, 24)
>>> torch.equal(layer(x), layer.base_layer(x))       # ΔW = 0 at initialisation
True
>>> [tuple(p.shape) for p in layer.adapter_parameters("default")]
[(25,), (19,), (4,)]
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from qpeft.adapters.config import check_layer_options
from qpeft.adapters.frames import (
    SIDES,
    FrameBank,
    FrameSpec,
    compute_frames,
    resolve_frame_spec,
    storage_key,
    work_dtype,
)
from qpeft.adapters.quantize import check_bits, fake_quantize
from qpeft.circuit import Circuit
from qpeft.errors import ConfigError

FrameChoice = FrameSpec | Circuit | str


def conv1d_class() -> type | None:
    """transformers' ``Conv1D`` if transformers is loaded (no import otherwise)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


def is_supported_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and transformers' ``Conv1D``."""
    conv1d = conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def linear_shape(module: nn.Module) -> tuple[int, int, bool]:
    """``(N_in, N_out, transposed)`` of a supported linear layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if is_supported_linear(module):  # Conv1D: y = x @ W + b, W of shape (N_in, N_out)
        return int(module.weight.shape[0]), int(module.weight.shape[1]), True
    raise ConfigError(
        f"QPeftLinear wraps nn.Linear or transformers' Conv1D, got {type(module).__name__}"
    )


class _InitialValues(nn.Module):
    """Frozen θ_U⁰, θ_V⁰, λ⁰ of the ``offset`` init (buffers, saved with the adapter)."""

    def __init__(self, theta_out: torch.Tensor, theta_in: torch.Tensor, lam: torch.Tensor):
        super().__init__()
        self.register_buffer("theta_out", theta_out.detach().clone())
        self.register_buffer("theta_in", theta_in.detach().clone())
        self.register_buffer("lam", lam.detach().clone())


def low_rank_factors(
    U: torch.Tensor, c: torch.Tensor, V: torch.Tensor,
    initial: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left, right)`` with ``ΔW = right @ leftᵀ``, so that ``h @ ΔWᵀ`` is
    ``(h @ left) @ rightᵀ``: one product in and one out, as in LoRA.

    ``U`` ``(…, N_out, K)``, ``c`` ``(…, K)`` (α times the effective λ),
    ``V`` ``(…, N_in, K)``; leading dimensions batch many layers at once.
    One term: ``left = V``, ``right = U diag(c)``. With the frozen term
    ``initial = (U₀, c₀, V₀)`` of the ``offset`` init, the sum
    ``U c Vᵀ + U₀ c₀ V₀ᵀ`` is rewritten around the differences of the
    parameters, ``[(c + c₀) U₀ + c (U − U₀) | c U] [V₀ | V − V₀]ᵀ`` (rank
    2K). At initialisation ``c + c₀``, ``U − U₀`` and ``V − V₀`` are exact
    zeros (the frames agree and ``c₀ = −c``), so the update is an exact zero.
    """
    c = c.unsqueeze(-2)
    if initial is None:
        return V, U * c
    U0, c0, V0 = initial
    c0 = c0.unsqueeze(-2)
    left = torch.cat([V0, V - V0], dim=-1)
    right = torch.cat([(c + c0) * U0 + c * (U - U0), c * U], dim=-1)
    return left, right


def _low_rank_update(h: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``h @ ΔWᵀ`` for ``ΔW = right @ leftᵀ`` (:func:`low_rank_factors`)."""
    dtype = h.dtype
    return (h @ left.to(dtype)) @ right.to(dtype).mT


class QPeftLinear(nn.Module):
    """A linear layer plus Quantum-PEFT adapters ``α U Λ Vᵀ`` (see the module doc).

    Args:
        base_layer: the frozen ``nn.Linear`` or ``Conv1D``.
        adapter_name: name of the first adapter.
        **options: passed to :meth:`update_layer` (``rank``, ``layers``,
            ``ansatz``, ``frame_out``, ``frame_in``, ``alpha``, …).

    >>> import torch, qpeft
    >>> layer = QPeftLinear(torch.nn.Linear(16, 12), rank=2,
    ...                     frame_in=qpeft.ansatz.pauli(qubits=4, layers=1))
    >>> layer.frame_specs["default"]["in"].num_parameters
    10
    """

    adapter_layer_names = ("qpeft_theta_out", "qpeft_theta_in", "qpeft_lambda")
    """Per-adapter trainable parameters (the names peft's tuners look for)."""
    other_param_names = ("qpeft_initial", "qpeft_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str = "default", **options: Any):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features, self.transposed = linear_shape(base_layer)
        self.qpeft_theta_out = nn.ParameterDict()
        self.qpeft_theta_in = nn.ParameterDict()
        self.qpeft_lambda = nn.ParameterDict()
        self.qpeft_initial = nn.ModuleDict()
        self.qpeft_dropout = nn.ModuleDict()
        self.frame_specs: dict[str, dict[str, FrameSpec]] = {}
        self.scaling: dict[str, float] = {}
        self.rank: dict[str, int] = {}
        self.active_rank: dict[str, int] = {}
        self.quantize_bits: dict[str, int | None] = {}
        self.init: dict[str, str] = {}
        self.merged_adapters: list[str] = []
        self._active_adapters: list[str] = [adapter_name]
        self._disable_adapters = False
        self._frame_bank_ref: weakref.ref | None = None
        self._initial_frames: dict[str, tuple] = {}
        self.update_layer(adapter_name, **options)

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base layer's weight, without the adapters (models read it
        for its dtype or device, as the T5 family does; peft's layers pass it
        on the same way)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen base layer's bias (``None`` without one)."""
        return self.base_layer.bias

    def __setattr__(self, name: str, value: Any) -> None:
        # weight and bias are the base layer's: setting them (transformers' tie_weights
        # sets lm_head.weight) sets the base layer's
        if name in ("weight", "bias") and "base_layer" in self.__dict__.get("_modules", {}):
            setattr(self.base_layer, name, value)
        else:
            super().__setattr__(name, value)

    # -- adapters ------------------------------------------------------------------
    def update_layer(
        self,
        adapter_name: str,
        rank: int = 4,
        *,
        frame_out: FrameChoice | None = None,
        frame_in: FrameChoice | None = None,
        ansatz: str | Circuit = "qudit",
        layers: int = 2,
        ansatz_options: Mapping[str, Any] | None = None,
        alpha: float = 1.0,
        dropout: float = 0.0,
        init: str = "offset",
        init_lambda: float = 1.0,
        active_rank: int | None = None,
        quantize_bits: int | None = None,
        compile_method: str = "auto",
    ) -> None:
        """Add (or replace) the adapter ``adapter_name``.

        ``frame_out`` / ``frame_in`` choose the circuit of U / V: a
        :class:`FrameSpec`, a :class:`~qpeft.circuit.Circuit` (of dimension
        N_out / N_in), a catalog or mapping name; by default ``ansatz``
        (``"qudit"``: :func:`qpeft.ansatz.for_dimension`) with ``layers``.
        """
        check_adapter_name(adapter_name)
        if adapter_name in self.merged_adapters:
            raise ConfigError(f"adapter {adapter_name!r} is merged into the base weight; "
                              "unmerge it before replacing it")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"rank must be a positive integer, got {rank!r}")
        largest = min(self.in_features, self.out_features)
        if rank > largest:
            raise ConfigError(
                f"rank K={rank} is larger than this layer allows: U has {self.out_features} "
                f"rows and V has {self.in_features}, so K <= {largest}"
            )
        check_layer_options(alpha, dropout, init, init_lambda)
        if active_rank is not None:
            _check_active_rank(active_rank, rank)
        specs = {
            side: self._resolve(choice, width, rank, ansatz, layers, ansatz_options, compile_method)
            for side, choice, width in (
                ("out", frame_out, self.out_features), ("in", frame_in, self.in_features)
            )
        }
        bits = check_bits(quantize_bits)
        weight = self.base_layer.weight
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        device = weight.device
        theta_out = _random_angles(specs["out"], dtype, device)
        theta_in = _random_angles(specs["in"], dtype, device)
        lam_value = init_lambda if init == "offset" else 0.0
        lam = torch.full((rank,), float(lam_value), dtype=dtype, device=device)
        self.qpeft_theta_out[adapter_name] = nn.Parameter(theta_out)
        self.qpeft_theta_in[adapter_name] = nn.Parameter(theta_in)
        self.qpeft_lambda[adapter_name] = nn.Parameter(lam)
        if init == "offset":
            self.qpeft_initial[adapter_name] = _InitialValues(theta_out, theta_in, lam)
        elif adapter_name in self.qpeft_initial:
            del self.qpeft_initial[adapter_name]
        self.qpeft_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.frame_specs[adapter_name] = specs
        self.scaling[adapter_name] = float(alpha)
        self.rank[adapter_name] = rank
        self.active_rank[adapter_name] = rank if active_rank is None else active_rank
        self.quantize_bits[adapter_name] = bits
        self.init[adapter_name] = init
        self._initial_frames.pop(adapter_name, None)
        self._set_requires_grad()

    def _resolve(self, choice, width, rank, ansatz, layers, options, method) -> FrameSpec:
        if isinstance(choice, FrameSpec):
            if choice.dimension != width or choice.columns != rank:
                raise ConfigError(
                    f"frame spec of shape {choice.dimension}×{choice.columns} does not fit a "
                    f"side of width {width} at rank {rank}"
                )
            return choice
        return resolve_frame_spec(ansatz if choice is None else choice, width, rank, layers,
                                  options, method)

    def get_base_layer(self) -> nn.Module:
        """The wrapped ``nn.Linear`` / ``Conv1D``."""
        return self.base_layer

    def adapter_parameters(self, adapter_name: str) -> list[nn.Parameter]:
        """``[θ_U, θ_V, λ]`` of one adapter."""
        return [getattr(self, name)[adapter_name] for name in self.adapter_layer_names]

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter (it must not be merged)."""
        if adapter_name in self.merged_adapters:
            raise ConfigError(f"adapter {adapter_name!r} is merged; unmerge it before deleting")
        for name in (*self.adapter_layer_names, *self.other_param_names):
            container = getattr(self, name)
            if adapter_name in container:
                del container[adapter_name]
        for table in (self.frame_specs, self.scaling, self.rank, self.active_rank,
                      self.quantize_bits, self.init, self._initial_frames):
            table.pop(adapter_name, None)
        if adapter_name in self._active_adapters:
            # as peft's layers do: the other active ones, else the first remaining adapter
            active = [a for a in self._active_adapters if a != adapter_name]
            if not active and len(self.qpeft_lambda):
                active = [sorted(self.qpeft_lambda)[0]]  # peft's rule, the same in every layer
                warnings.warn(f"Adapter {adapter_name} was active which is now deleted. "
                              f"Setting active adapter to {active[0]}.", stacklevel=2)
            self.set_adapter(active)

    @property
    def active_adapters(self) -> list[str]:
        return list(self._active_adapters)

    @property
    def active_adapter(self) -> str | list[str]:
        return self._active_adapters[0] if len(self._active_adapters) == 1 else self.active_adapters

    def set_adapter(self, adapter_names: str | Iterable[str]) -> None:
        """Make these adapters active (and the only trainable ones). Names this
        layer does not hold are allowed (a model's adapters may target
        different layers); they contribute nothing here."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._active_adapters = names
        self._set_requires_grad()

    def _set_requires_grad(self) -> None:
        for name in self.adapter_layer_names:
            for adapter, parameter in getattr(self, name).items():
                parameter.requires_grad_(adapter in self._active_adapters)

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    def enable_adapters(self, enabled: bool) -> None:
        """Switch the adapters' contribution on or off."""
        self._disable_adapters = not enabled

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def contributing_adapters(self) -> list[str]:
        """Active adapters that add to the output now (not merged, not disabled)."""
        if self._disable_adapters:
            return []
        return [a for a in self._active_adapters
                if a in self.qpeft_lambda and a not in self.merged_adapters]

    def set_active_rank(self, adapter_name: str, active_rank: int) -> None:
        """Keep only the first ``active_rank`` values of λ (intrinsic-rank masking)."""
        if adapter_name in self.merged_adapters:
            raise ConfigError("unmerge the adapter before changing its active rank")
        _check_active_rank(active_rank, self.rank[adapter_name])
        self.active_rank[adapter_name] = active_rank

    def set_quantize_bits(self, adapter_name: str, bits: int | None) -> None:
        """Quantize this adapter's angles and λ to ``bits`` bits (None: off)."""
        if adapter_name in self.merged_adapters:
            raise ConfigError("unmerge the adapter before changing its quantization")
        self.quantize_bits[adapter_name] = check_bits(bits)
        self._initial_frames.pop(adapter_name, None)

    # -- the frame provider ----------------------------------------------------------
    @property
    def frame_bank(self) -> FrameBank | None:
        return self._frame_bank_ref() if self._frame_bank_ref is not None else None

    @frame_bank.setter
    def frame_bank(self, bank: FrameBank | None) -> None:
        self._frame_bank_ref = weakref.ref(bank) if bank is not None else None

    def side_parameter(self, adapter_name: str, side: str) -> nn.Parameter:
        """θ_U (``side="out"``) or θ_V (``side="in"``)."""
        table = self.qpeft_theta_out if side == "out" else self.qpeft_theta_in
        return table[adapter_name]

    def initial_values(self, adapter_name: str, side: str) -> torch.Tensor:
        initial = self.qpeft_initial[adapter_name]
        return initial.theta_out if side == "out" else initial.theta_in

    def _initial_signature(self, adapter_name: str) -> tuple | None:
        """What the cached initial frames were computed from (``None``: values
        without storage, see :func:`~qpeft.adapters.frames.storage_key`)."""
        initial = self.qpeft_initial[adapter_name]
        keys = tuple(storage_key(t) for t in (initial.theta_out, initial.theta_in))
        if None in keys:
            return None
        # frames computed under torch.inference_mode() cannot enter a later autograd graph
        return (self.quantize_bits[adapter_name], torch.is_inference_mode_enabled()) + keys

    def initial_frames_stale(self, adapter_name: str) -> bool:
        """True when the ``offset`` init's frozen frames must be (re)computed."""
        if self.init.get(adapter_name) != "offset":
            return False
        cached = self._initial_frames.get(adapter_name)
        return (cached is None or cached[0] is None
                or cached[0] != self._initial_signature(adapter_name))

    def store_initial_frames(self, adapter_name: str, computed: Mapping) -> None:
        key = id(self), adapter_name
        self._initial_frames[adapter_name] = (
            self._initial_signature(adapter_name),
            computed[(*key, "out")].detach(),
            computed[(*key, "in")].detach(),
        )

    def frames(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, V)``: ``(N_out, K)`` and ``(N_in, K)`` orthonormal frames (float32,
        float64 for float64 parameters); from the model's frame bank when it
        has them, else computed here."""
        bank = self.frame_bank
        if bank is not None:
            found = bank.lookup(self, adapter_name)
            if found is not None:
                return found
        slots = [(self, adapter_name, side) for side in SIDES]
        computed = compute_frames(slots, lambda s: s[0].side_parameter(s[1], s[2]))
        return computed[(id(self), adapter_name, "out")], computed[(id(self), adapter_name, "in")]

    def initial_frames(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Frozen ``(U₀, V₀)`` of the ``offset`` init, or None."""
        if self.init.get(adapter_name) != "offset":
            return None
        if self.initial_frames_stale(adapter_name):
            slots = [(self, adapter_name, side) for side in SIDES]
            with torch.no_grad():
                computed = compute_frames(slots, lambda s: s[0].initial_values(s[1], s[2]))
            self.store_initial_frames(adapter_name, computed)
        return self._initial_frames[adapter_name][1:]

    def effective_lambda(self, adapter_name: str, initial: bool = False) -> torch.Tensor:
        """λ (or λ₀) as used in the forward pass: quantized, masked to the active rank."""
        if initial:
            source = self.qpeft_initial[adapter_name].lam
        else:
            source = self.qpeft_lambda[adapter_name]
        values = fake_quantize(source.to(work_dtype(source.dtype)),
                               self.quantize_bits[adapter_name], periodic=False)
        active = self.active_rank[adapter_name]
        if active < values.shape[-1]:
            mask = torch.arange(values.shape[-1], device=values.device) < active
            values = values * mask.to(values.dtype)
        return values

    def factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left, right)`` with ``ΔW = right @ leftᵀ`` (see
        :func:`low_rank_factors`): the trainable term ``(U, αλ, V)`` and, for the
        ``offset`` init, the frozen term ``(U₀, −αλ₀, V₀)``, combined so that at
        initialisation they cancel exactly. During a model's forward pass they
        come from its frame bank, which builds those of all layers of one shape
        in one batch."""
        bank = self.frame_bank
        if bank is not None:
            found = bank.lookup_factors(self, adapter_name)
            if found is not None:
                return found
        U, V = self.frames(adapter_name)
        alpha = self.scaling[adapter_name]
        initial = self.initial_frames(adapter_name)
        if initial is not None:
            U0, V0 = initial
            initial = (U0, -alpha * self.effective_lambda(adapter_name, initial=True), V0)
        return low_rank_factors(U, alpha * self.effective_lambda(adapter_name), V, initial)

    # -- forward -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.contributing_adapters():
            delta = _low_rank_update(self.qpeft_dropout[adapter](x), *self.factors(adapter))
            result = result + delta.to(result.dtype)
        return result

    # -- merging -------------------------------------------------------------------
    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``α (UΛVᵀ − U₀Λ₀V₀ᵀ)`` in the base weight's layout and dtype (transposed
        for Conv1D). Forms the ``N_out × N_in`` matrix: for merging only."""
        with torch.no_grad():
            left, right = self.factors(adapter_name)
            delta = right @ left.T
        if self.transposed:
            delta = delta.T
        return delta.to(self.base_layer.weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """``W0 += ΔW`` for the active (or the given) adapters; exact to rounding,
        and :meth:`unmerge` subtracts the same ΔW (no matrix inverse).

        ``safe_merge`` first checks the merged weight for NaN/inf
        (:meth:`check_merge`); a refused merge writes nothing.
        """
        if safe_merge:
            self.check_merge(adapter_names)
        for adapter in self._unmerged(adapter_names):
            delta = self.get_delta_weight(adapter)
            with torch.no_grad():
                self.base_layer.weight.data += delta
            self.merged_adapters.append(adapter)

    def check_merge(self, adapter_names: list[str] | None = None) -> None:
        """Raise :class:`~qpeft.errors.ConfigError` if :meth:`merge` of these
        adapters would give NaN or infinite weights; changes nothing."""
        merged = self.base_layer.weight.detach()
        for adapter in self._unmerged(adapter_names):
            merged = merged + self.get_delta_weight(adapter)
            if not torch.isfinite(merged).all():
                raise ConfigError(
                    f"merging adapter {adapter!r} gives NaN or infinite weights; the adapter "
                    "is broken and nothing was merged (check its parameters, or retrain it)"
                )

    def _unmerged(self, adapter_names: list[str] | None) -> list[str]:
        """The active (or the given) adapters this layer holds and has not merged."""
        names = self.active_adapters if adapter_names is None else list(adapter_names)
        return [a for a in names if a not in self.merged_adapters and a in self.qpeft_lambda]

    def unmerge(self) -> None:
        """Undo :meth:`merge` for every merged adapter (last merged first)."""
        while self.merged_adapters:
            adapter = self.merged_adapters[-1]
            delta = self.get_delta_weight(adapter)
            with torch.no_grad():
                self.base_layer.weight.data -= delta
            self.merged_adapters.pop()

    # -- housekeeping ----------------------------------------------------------------
    def _apply(self, fn: Any, recurse: bool = True) -> QPeftLinear:
        """``.to()``, ``.half()``, ``.cuda()`` move the adapter values with the base
        layer, but a move to a low-precision float type (float16, bfloat16)
        leaves them float32, as when the adapter is created on such a model:
        bfloat16 rounds an angle near π by up to 0.008 (an optimizer step
        smaller than that is lost), and U and V are computed in float32 anyway.
        A move to float64 makes them float64."""
        if not recurse:
            return super()._apply(fn, recurse)

        def keep_precision(tensor: torch.Tensor) -> torch.Tensor:
            moved = fn(tensor)
            if moved.is_floating_point() and moved.dtype not in (torch.float32, torch.float64):
                return tensor.to(device=moved.device, dtype=torch.float32)
            return moved

        for module in self.children():
            module._apply(fn if module is self.base_layer else keep_precision)
        return super()._apply(fn, recurse=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_frame_bank_ref"] = None  # a weak reference neither pickles nor deep-copies
        state["_initial_frames"] = {}
        return state

    def extra_repr(self) -> str:
        parts = []
        for adapter, specs in self.frame_specs.items():
            parts.append(
                f"{adapter}: K={self.rank[adapter]}, U={specs['out'].label} "
                f"({specs['out'].num_parameters} params), V={specs['in'].label} "
                f"({specs['in'].num_parameters} params)"
            )
        return "; ".join(parts)


def check_merges(layers: Mapping[str, QPeftLinear],
                 adapter_names: list[str] | None = None) -> None:
    """:meth:`QPeftLinear.check_merge` for every layer (``{path: layer}``); the
    error names the layer. Run before merging any layer, so that a refused
    ``safe_merge`` leaves the whole model as it was."""
    for path, layer in layers.items():
        try:
            layer.check_merge(adapter_names)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def check_adapter_name(name: object) -> None:
    """Refuse an adapter name that cannot key the adapter's parameter tables
    or name its folder: it must be a non-empty string without '.', '/' or
    '\\', and not an attribute of torch's ``ParameterDict``/``ModuleDict``.

    >>> check_adapter_name("v1.0")
    Traceback (most recent call last):
    ...
    qpeft.errors.ConfigError: adapter name 'v1.0' is not usable: ...
    """
    if not isinstance(name, str):
        raise ConfigError(f"an adapter name must be a string, got {type(name).__name__} "
                          f"{name!r}")
    reserved = hasattr(nn.ParameterDict(), name) or hasattr(nn.ModuleDict(), name)
    if not name or reserved or any(c in name for c in "./\\"):
        why = ("it is an attribute of torch's parameter tables" if reserved
               else "names must be non-empty and contain no '.', '/' or '\\'")
        raise ConfigError(f"adapter name {name!r} is not usable: {why}; use e.g. 'default' "
                          "or 'task_a'")


def _check_active_rank(active_rank: object, rank: int) -> None:
    if (isinstance(active_rank, bool) or not isinstance(active_rank, int)
            or not 1 <= active_rank <= rank):
        raise ConfigError(f"active_rank must be an integer in 1..{rank}, got {active_rank!r}")


def check_untied(model: nn.Module, layers: Mapping[str, QPeftLinear]) -> None:
    """Raise :class:`~qpeft.errors.ConfigError` if the weight of an adapted layer
    (``{path in model: layer}``) is shared with another module, as a language
    model's output layer shares the input embedding (``tie_word_embeddings``):
    merging would add the update to both. Changes nothing."""
    names: dict[int, list[str]] = defaultdict(list)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names[id(parameter)].append(name)
    for path, layer in layers.items():
        own = f"{path}.base_layer.weight" if path else "base_layer.weight"
        others = [n for n in names[id(layer.base_layer.weight)] if n != own]
        if others:
            raise ConfigError(
                f"{path}: its weight is shared with {', '.join(others)} (tied embeddings), so "
                "merging would change that module too; nothing was merged. Keep the adapter "
                "unmerged, or untie the weight first: give the layer its own copy "
                "(layer.base_layer.weight = nn.Parameter(layer.base_layer.weight.detach()"
                ".clone())) and set config.tie_word_embeddings = False"
            )


def _random_angles(spec: FrameSpec, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Initial parameters of one side: uniform in [-π, π) for circuit angles; for
    a comparison mapping (not angles) small normal values of scale 1/√N."""
    count = spec.num_parameters
    if spec.circuit is not None:
        values = (torch.rand(count, dtype=dtype) * 2 - 1) * math.pi
    else:
        values = torch.randn(count, dtype=dtype) / math.sqrt(spec.dimension)
    return values.to(device)


class ModulesToSaveWrapper(nn.Module):
    """A module trained in full, one copy per adapter (peft's ``modules_to_save``).

    The original module stays frozen (used while adapters are disabled); each
    adapter trains and saves its own copy.

    >>> import torch
    >>> head = ModulesToSaveWrapper(torch.nn.Linear(4, 2), "default")
    >>> sorted(name for name, p in head.named_parameters() if p.requires_grad)
    ['modules_to_save.default.bias', 'modules_to_save.default.weight']
    """

    def __init__(self, module_to_save: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = nn.ModuleDict()
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.update(adapter_name)
        self.original_module.requires_grad_(False)

    def update(self, adapter_name: str) -> None:
        """Add a trainable copy for ``adapter_name``."""
        self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        self.modules_to_save[adapter_name].requires_grad_(adapter_name == self._active_adapter)

    @property
    def active_module(self) -> nn.Module:
        if self._disable_adapters or self._active_adapter not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self._active_adapter]

    @property
    def active_adapter(self) -> str:
        return self._active_adapter

    def set_adapter(self, adapter_name: str) -> None:
        self._active_adapter = adapter_name
        for name, module in self.modules_to_save.items():
            module.requires_grad_(name == adapter_name)

    def enable_adapters(self, enabled: bool) -> None:
        self._disable_adapters = not enabled

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "original_module" not in modules:
                raise
            return getattr(self.active_module, name)


__all__ = [
    "ModulesToSaveWrapper", "QPeftLinear", "check_merges", "conv1d_class", "is_supported_linear",
    "linear_shape",
]
