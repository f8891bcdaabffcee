"""The adapter configuration: :class:`QPeftConfig`.

Field names follow peft's ``LoraConfig`` where the idea is the same
(``target_modules``, ``exclude_modules``, ``modules_to_save``,
``layers_to_transform``, ``layers_pattern``); the rest are Quantum-PEFT's own.

>>> config = QPeftConfig(target_modules=["query", "value"], rank=4, layers=2)
>>> config.ansatz, config.alpha, config.init
('qudit', 1.0, 'offset')
>>> QPeftConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qpeft.adapters.quantize import check_bits
from qpeft.circuit import Circuit
from qpeft.errors import ConfigError

FORMAT = "qpeft.adapter"
"""The ``format`` key of ``adapter_config.json``."""

FORMAT_VERSION = 1
"""Newest adapter file format this qpeft reads and the one it writes."""

INIT_SCHEMES = ("offset", "zero_lambda")
"""``offset``: ΔW = α(UΛVᵀ − U₀Λ₀V₀ᵀ) with frozen initial values (default);
``zero_lambda``: λ = 0 and random angles (LoRA-like). See docs/adapters.md."""

ALL_LINEAR = "all-linear"

AnsatzChoice = str | Circuit
"""A catalog name (``"qudit"``, ``"shannon"``, ``"pauli"``, …), a mapping name
(``"cayley"``, ``"exponential"``, ``"householder"``, ``"givens"``, ``"taylor"``)
or a :class:`~qpeft.circuit.Circuit` whose dimension equals the side's width."""


@dataclass
class QPeftConfig:
    """Configuration of a Quantum-PEFT adapter: ``y = W0 x + α U Λ Vᵀ dropout(x)``.

    Args:
        target_modules: which linear layers (``nn.Linear`` or transformers'
            ``Conv1D``) get an adapter: a list of name suffixes
            (``["query", "attention.output.dense"]``), a regular expression
            matched against the whole module name, or ``"all-linear"`` (every
            linear layer except the output embedding).
        exclude_modules: names (suffixes) or a regular expression to skip.
        rank: K, the number of columns of U and V (``K ≤ min(N_in, N_out)``).
        layers: L, the number of entangling blocks of each circuit.
        ansatz: how U and V are generated; a name from the circuit catalog
            (``"qudit"``: :func:`qpeft.ansatz.for_dimension` on a mixed-radix
            register, any width; ``"shannon"``; ``"pauli"`` for power-of-two
            widths; …), a name of a comparison mapping (``"cayley"``,
            ``"exponential"``, ``"householder"``, ``"givens"``, ``"taylor"``;
            ``N·K − K(K+1)/2`` parameters, not logarithmic), a
            :class:`~qpeft.circuit.Circuit`, or a dict from width to one of
            those (``{768: "qudit", 3072: my_circuit}``).
        ansatz_options: extra keyword options for the catalog builder or the
            mapping (the builder's ``dimension``/``qubits`` and ``layers`` are
            filled in from the layer width and ``layers``).
        alpha: α, the scale of the update. The default is 1: U and V have
            orthonormal columns, so ‖ΔW‖₂ = α·max|λ| whatever K is, and the
            ``α/r`` normalisation of LoRA has nothing to correct.
        dropout: dropout probability on the adapter's input.
        modules_to_save: modules (suffixes) trained in full and saved with the
            adapter, e.g. a new classifier head.
        layers_to_transform: only adapt these layer indices (an int or list).
        layers_pattern: the name before the layer index (``"layer"``,
            ``"h"``); by default the first numbered name segment is used.
        init: ``"offset"`` (default) or ``"zero_lambda"``; both start with
            ΔW = 0, see docs/adapters.md.
        init_lambda: λ₀ of the ``offset`` scheme.
        active_rank: K' ≤ K: only the first K' values of λ are used.
        quantize_bits: quantize angles and λ to this many bits (2…16) in the
            forward pass (straight-through gradients) and in saved files.
        compile_method: the compiler's ``method`` for circuits (``"auto"``).
        format_version: adapter file format; newer than this qpeft is an error.
    """

    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    rank: int = 4
    layers: int = 2
    ansatz: AnsatzChoice | dict[int, AnsatzChoice] = "qudit"
    ansatz_options: dict[str, Any] = field(default_factory=dict)
    alpha: float = 1.0
    dropout: float = 0.0
    modules_to_save: list[str] | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    init: str = "offset"
    init_lambda: float = 1.0
    active_rank: int | None = None
    quantize_bits: int | None = None
    compile_method: str = "auto"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.exclude_modules, (set, tuple)):
            self.exclude_modules = sorted(self.exclude_modules)
        if isinstance(self.modules_to_save, (set, tuple)):
            self.modules_to_save = list(self.modules_to_save)
        if isinstance(self.ansatz, Mapping):
            self.ansatz = {_width(width): choice for width, choice in self.ansatz.items()}
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~qpeft.errors.ConfigError` on an invalid field."""
        _module_names(self.target_modules, "target_modules", pattern=True, regex=True)
        _module_names(self.exclude_modules, "exclude_modules", pattern=True, regex=True)
        _module_names(self.modules_to_save, "modules_to_save", pattern=False)
        _module_names(self.layers_pattern, "layers_pattern", pattern=True)
        _positive_int(self.rank, "rank")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0:
            raise ConfigError(f"layers must be an integer >= 0, got {self.layers!r}")
        for width, choice in _ansatz_items(self.ansatz):
            if not isinstance(choice, (str, Circuit)):
                raise ConfigError(
                    f"ansatz must be a catalog or mapping name, a Circuit, or a dict from width "
                    f"to one of those; got {type(choice).__name__} for width {width}"
                )
        if not isinstance(self.ansatz_options, Mapping):
            raise ConfigError("ansatz_options must be a dict of keyword options")
        check_layer_options(self.alpha, self.dropout, self.init, self.init_lambda)
        if self.active_rank is not None:
            _positive_int(self.active_rank, "active_rank")
            if self.active_rank > self.rank:
                raise ConfigError(
                    f"active_rank ({self.active_rank}) must not exceed rank ({self.rank})"
                )
        check_bits(self.quantize_bits)
        from qpeft.compiler import METHODS

        if self.compile_method not in METHODS:
            raise ConfigError(f"unknown compile_method {self.compile_method!r}; use one of "
                              f"{', '.join(METHODS)}")
        if (isinstance(self.format_version, bool) or not isinstance(self.format_version, int)
                or self.format_version < 1):
            raise ConfigError(
                f"format_version must be an integer >= 1, got {self.format_version!r}"
            )
        if self.format_version > FORMAT_VERSION:
            raise ConfigError(
                f"format_version {self.format_version} is newer than this qpeft understands "
                f"({FORMAT_VERSION}); upgrade qpeft to use this adapter"
            )
        if self.layers_to_transform is not None:
            indices = (
                [self.layers_to_transform]
                if isinstance(self.layers_to_transform, int)
                else self.layers_to_transform
            )
            if not isinstance(indices, (list, tuple)) or not indices or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
                raise ConfigError(
                    f"layers_to_transform must be a layer index (an int >= 0) or a non-empty "
                    f"list of them, got {self.layers_to_transform!r}"
                )

    def check_layer_filter(self) -> None:
        """Refuse ``layers_to_transform`` / ``layers_pattern`` next to a string
        ``target_modules``, which would ignore them (peft refuses the same).
        Checked when an adapter is planned, not when a saved one is read: an
        adapter saved before this check lists the modules it adapted."""
        for name in ("layers_to_transform", "layers_pattern"):
            if getattr(self, name) is not None and isinstance(self.target_modules, str):
                raise ConfigError(
                    f"{name} cannot be used when target_modules is a string "
                    f"({self.target_modules!r}: 'all-linear' or a pattern), as in peft; list "
                    "the module names instead, or write the layer indices into the pattern "
                    r"(e.g. r'.*\.layer\.0\..*\.query')"
                )

    # -- (de)serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (circuits become their JSON descriptions)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["ansatz"] = _ansatz_to_json(self.ansatz)
        data["ansatz_options"] = dict(self.ansatz_options)
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QPeftConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown QPeftConfig field(s) {', '.join(unknown)}; known fields: "
                f"{', '.join(sorted(known))}"
            )
        values = dict(data)
        if "ansatz" in values:
            values["ansatz"] = _ansatz_from_json(values["ansatz"])
        return cls(**values)

    def ansatz_for(self, width: int) -> AnsatzChoice:
        """The ansatz choice for a side of ``width`` rows."""
        if isinstance(self.ansatz, Mapping):
            if width not in self.ansatz:
                raise ConfigError(
                    f"ansatz is given per width ({', '.join(map(str, sorted(self.ansatz)))}) "
                    f"but a targeted layer has width {width}; add an entry for {width}"
                )
            return self.ansatz[width]
        return self.ansatz


def check_layer_options(alpha: object, dropout: object, init: object,
                        init_lambda: object) -> None:
    """Raise :class:`~qpeft.errors.ConfigError` on an invalid α, dropout or init
    (shared by :class:`QPeftConfig` and :meth:`QPeftLinear.update_layer`)."""
    if not _finite_number(alpha):
        raise ConfigError(f"alpha must be a finite number (within float32's range), got {alpha!r}")
    if not _finite_number(dropout) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}")
    if init not in INIT_SCHEMES:
        raise ConfigError(f"unknown init {init!r}; use one of {', '.join(INIT_SCHEMES)}")
    if not _finite_number(init_lambda) or (init == "offset" and init_lambda == 0):
        raise ConfigError(
            f"init_lambda must be a finite number (within float32's range), nonzero for "
            f"init='offset', got {init_lambda!r}"
        )


def _module_names(value: object, name: str, pattern: bool, regex: bool = False) -> None:
    """None, a list of module names, or (where ``pattern``) one string, which
    (where ``regex``) must be a valid regular expression."""
    if value is None:
        return
    if pattern and isinstance(value, str):
        if not regex or value.lower() == ALL_LINEAR:
            return
        try:
            re.compile(value)
        except re.error as error:
            raise ConfigError(
                f"{name} {value!r} is not a valid regular expression ({error}); a string is "
                "matched against whole module names, e.g. r'.*\\.(query|value)'"
            ) from None
        return
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return
    shape = "a list of module names or one string" if pattern else (
        "a list of module names, e.g. ['classifier']")
    raise ConfigError(f"{name} must be {shape}, got {value!r}")


def _positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _finite_number(value: object) -> bool:
    """A real number that float32, the adapters' compute type, holds as a finite value."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and abs(value) <= _FLOAT32_MAX  # first: math.isfinite(10**400) raises OverflowError
        and math.isfinite(value)
    )


_FLOAT32_MAX = 3.4028234663852886e38


def _ansatz_items(ansatz: object) -> list[tuple[object, object]]:
    if isinstance(ansatz, Mapping):
        return list(ansatz.items())
    return [("any", ansatz)]


def _choice_to_json(choice: AnsatzChoice) -> Any:
    return choice.to_dict() if isinstance(choice, Circuit) else choice


def _choice_from_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Circuit.from_dict(value)
    return value


def _ansatz_to_json(ansatz: Any) -> Any:
    if isinstance(ansatz, Mapping):
        return {"by_width": {str(w): _choice_to_json(c) for w, c in ansatz.items()}}
    return _choice_to_json(ansatz)


def _width(value: object) -> int:
    """A width key of a per-width ansatz (JSON writes the keys as strings)."""
    try:
        width = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        width = 0
    if isinstance(value, bool) or width < 1 or str(width) != str(value).strip():
        raise ConfigError(f"ansatz per width: {value!r} is not a layer width (a positive "
                          "integer)")
    return width


def _ansatz_from_json(value: Any) -> Any:
    if isinstance(value, Mapping) and "by_width" in value:
        by_width = value["by_width"]
        if not isinstance(by_width, Mapping):
            raise ConfigError("ansatz 'by_width' must be an object {width: ansatz}, got "
                              f"{type(by_width).__name__}")
        return {_width(w): _choice_from_json(c) for w, c in by_width.items()}
    return _choice_from_json(value)


__all__ = ["ALL_LINEAR", "FORMAT", "FORMAT_VERSION", "INIT_SCHEMES", "QPeftConfig"]
