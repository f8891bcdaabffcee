"""Quantum-PEFT as a Hugging Face peft method: ``peft.get_peft_model(model, QPeftPeftConfig(...))``.

Everything peft offers then works on qpeft's adapters: ``print_trainable_parameters``,
``save_pretrained`` (peft's ``adapter_config.json`` + ``adapter_model.safetensors``),
``PeftModel.from_pretrained``, ``merge_and_unload``, ``disable_adapter``, named adapters.

The layers are qpeft's own :class:`~qpeft.adapters.layer.QPeftLinear` (through
:class:`QPeftTunerLinear`, which adds peft's layer interface), targets are chosen
and frames planned by the same functions :class:`~qpeft.adapters.model.QPeftModel`
uses, and a :class:`~qpeft.adapters.frames.FrameBank` computes U and V of all
adapted layers in one batched call per circuit before every forward pass.

peft's method registry is closed (``register_peft_method`` accepts only names of
its ``PeftType`` enum), so :func:`register` adds the member ``PeftType.QPEFT``
first; this relies on peft internals and is allowed only for the peft versions
in :data:`SUPPORTED_PEFT` (a :class:`~qpeft.errors.ConfigError` otherwise).
The standalone API (:func:`qpeft.get_qpeft_model`) never imports peft.

>>> import peft, torch
>>> from qpeft.adapters.peft_bridge import QPeftPeftConfig
>>> base = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.ReLU(), torch.nn.Linear(48, 24))
>>> model = peft.get_peft_model(base, QPeftPeftConfig(target_modules=["0", "2"], rank=2))
>>> model.print_trainable_parameters()
trainable params: 90 || all params: 2,466 || trainable%: 3.6496
>>> model.peft_type
<PeftType.QPEFT: 'QPEFT'>
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata
import re
from collections.abc import Mapping
from typing import Any

from qpeft.errors import AdapterFileError, ConfigError

PEFT_TYPE = "QPEFT"
"""The ``peft_type`` written to ``adapter_config.json``."""

PREFIX = "qpeft_"
"""Prefix of every adapter parameter and buffer (``qpeft_theta_out``, ``qpeft_initial``, …)."""

SUPPORTED_PEFT = ((0, 18), (1, 0))
"""peft versions the bridge accepts, ``[low, high)`` by (major, minor): from 0.18,
the oldest whose ``BaseTuner`` needs only ``_create_and_replace`` from a method
(0.15 also wants ``_mark_only_adapters_as_trainable`` and the enable/disable
methods) and which imports with transformers 5, up to, not including, 1.0."""

TESTED_PEFT = "0.18.0, 0.20.0 and 0.21.2"


# -- the version guard (runs before peft is imported) -------------------------------------------
def installed_peft_version() -> str | None:
    """The installed peft's version string, or None when peft is not installed
    (read from the package metadata: peft is not imported)."""
    try:
        return importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if match is None:
        return ()
    return tuple(int(part or 0) for part in match.groups())


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def check_peft_version() -> str:
    """The installed peft version; a :class:`~qpeft.errors.ConfigError` that names
    it and the supported range when peft is missing or not supported.

    >>> check_peft_version() == installed_peft_version()
    True
    """
    low, high = SUPPORTED_PEFT
    wanted = f"peft>={_dotted(low)},<{_dotted(high)}"
    version = installed_peft_version()
    if version is None:
        raise ConfigError(
            f"the peft bridge needs Hugging Face peft, which is not installed; install "
            f"'{wanted}' (tested with {TESTED_PEFT}), or use qpeft's own API "
            "(qpeft.get_qpeft_model), which needs no peft"
        )
    release = _release(version)
    if not low <= release[:2] < high:
        raise ConfigError(
            f"peft {version} is installed, but the qpeft peft bridge supports {wanted} (tested "
            f"with {TESTED_PEFT}): it registers a new method through peft internals that "
            f"other versions may lay out differently; install '{wanted}', or use qpeft's own "
            "API (qpeft.get_qpeft_model), which works with any peft or none"
        )
    return version


check_peft_version()

# peft is imported only after the check, so an unsupported version fails with the message above.
from peft import PeftConfig  # noqa: E402
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING  # noqa: E402
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _ExcludedModule  # noqa: E402
from peft.utils import register_peft_method  # noqa: E402
from peft.utils.peft_types import PeftType  # noqa: E402
from torch import nn  # noqa: E402

from qpeft.adapters.config import QPeftConfig  # noqa: E402
from qpeft.adapters.frames import (  # noqa: E402
    FrameBank,
    FrameSpec,
    resolve_frame_spec,
    without_named_code,
)
from qpeft.adapters.layer import (  # noqa: E402
    ModulesToSaveWrapper,
    QPeftLinear,
    check_merges,
    check_untied,
)
from qpeft.adapters.model import (  # noqa: E402
    PathSpecs,
    add_adapter_layer,
    find_target_modules,
    is_excluded,
    layer_options,
    plan_frames,
)
from qpeft.circuit import Circuit  # noqa: E402


# -- the configuration -----------------------------------------------------------------------------
class _QPeftPeftConfigBase(PeftConfig):
    """Methods of :class:`QPeftPeftConfig` (its fields are generated below)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = register()
        fields = {name: getattr(self, name) for name in _MIRRORED}
        if _is_json_ansatz(self.ansatz):  # read back from adapter_config.json
            checked = QPeftConfig.from_dict(fields)
        else:
            checked = QPeftConfig(**fields)
        for name in _MIRRORED:  # QPeftConfig's validation and normalisation, nothing else
            setattr(self, name, getattr(checked, name))
        if self.circuits is not None and not isinstance(self.circuits, Mapping):
            raise ConfigError("circuits must be a dict from width to a circuit description")
        # peft writes this configuration next to the weights and builds it again from that
        # file, so it must not name code to run: a Python file as the ansatz is refused, or,
        # in a file that records the circuits, replaced by them
        try:
            self.ansatz = without_named_code(
                self.ansatz, (Circuit.from_dict(data) for data in (self.circuits or {}).values()))
        except AdapterFileError:
            raise ConfigError(
                f"a peft configuration is saved with the adapter and built again by peft from "
                f"that file, so its ansatz cannot name a Python file ({self.ansatz!r}); build "
                f"the circuit with qpeft.load_ansatz(path, ...) and pass the Circuit (or a dict "
                f"from width to Circuit)"
            ) from None

    def to_qpeft_config(self) -> QPeftConfig:
        """The same adapter as a :class:`~qpeft.adapters.config.QPeftConfig`, for
        :func:`qpeft.get_qpeft_model` (the recorded ``circuits`` are not part of it)."""
        return QPeftConfig(**{name: copy.deepcopy(getattr(self, name)) for name in _MIRRORED})

    @classmethod
    def from_qpeft_config(cls, config: QPeftConfig, **peft_options: Any) -> QPeftPeftConfig:
        """A peft configuration for the adapter ``config`` describes; ``peft_options``
        are peft's own fields (``task_type``, ``inference_mode``, …)."""
        values = {name: copy.deepcopy(getattr(config, name)) for name in _MIRRORED}
        return cls(**values, **peft_options)

    def to_dict(self) -> dict[str, Any]:
        """peft's dict with the ansatz as JSON (circuits as their descriptions)."""
        data = super().to_dict()
        data.update(self.to_qpeft_config().to_dict())
        return data


def _is_json_ansatz(value: object) -> bool:
    return isinstance(value, Mapping) and ("by_width" in value or "format" in value)


_MIRRORED = tuple(field.name for field in dataclasses.fields(QPeftConfig))

QPeftPeftConfig = dataclasses.make_dataclass(
    "QPeftPeftConfig",
    [
        *(
            (field.name, field.type,
             dataclasses.field(default=field.default, default_factory=field.default_factory))
            for field in dataclasses.fields(QPeftConfig)
        ),
        ("circuits", "dict[str, dict] | None", dataclasses.field(default=None)),
    ],
    bases=(_QPeftPeftConfigBase,),
    kw_only=True,
)
QPeftPeftConfig.__module__ = __name__
QPeftPeftConfig.__doc__ = """peft's configuration of a Quantum-PEFT adapter.

    The fields are those of :class:`~qpeft.adapters.config.QPeftConfig` (``target_modules``,
    ``rank``, ``layers``, ``ansatz``, ``alpha``, ``init``, …, validated the same way)
    plus peft's (``task_type``, ``inference_mode``, ``base_model_name_or_path``, …) and
    ``circuits``: the description of the circuit used for each width, recorded when
    the adapter is created and saved in ``adapter_config.json``, so that a loaded
    adapter uses the very circuits it was trained with.
    Convert with :meth:`to_qpeft_config` and :meth:`from_qpeft_config`.

    >>> config = QPeftPeftConfig(target_modules=["query", "value"], rank=4)
    >>> config.peft_type, config.to_qpeft_config().rank
    (<PeftType.QPEFT: 'QPEFT'>, 4)
    """


# -- the layer -------------------------------------------------------------------------------------
class QPeftTunerLinear(QPeftLinear, BaseTunerLayer):
    """:class:`~qpeft.adapters.layer.QPeftLinear` with peft's tuner-layer interface.

    The parameters, forward pass and merge are QPeftLinear's; peft finds the layer
    as a ``BaseTunerLayer`` and saves everything on it except ``base_layer``:
    ``qpeft_theta_out``, ``qpeft_theta_in``, ``qpeft_lambda`` and the frozen
    initial values ``qpeft_initial`` of the ``offset`` init.
    """

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        """Make these adapters active; trainable unless ``inference_mode`` (peft's signature)."""
        super().set_adapter(adapter_names)
        if inference_mode:
            for adapter in self.active_adapters:
                if adapter in self.qpeft_lambda:
                    for parameter in self.adapter_parameters(adapter):
                        parameter.requires_grad_(False)


# -- the tuner -------------------------------------------------------------------------------------
class QPeftTuner(BaseTuner):
    """peft's tuner for Quantum-PEFT: finds targets with qpeft's rules, replaces them
    with :class:`QPeftTunerLinear`, and keeps a :class:`~qpeft.adapters.frames.FrameBank`
    attached to the model. Created by ``peft.get_peft_model``, not by hand."""

    prefix: str = PREFIX
    tuner_layer_cls = QPeftTunerLinear
    target_module_mapping: dict[str, list[str]] = {}

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """peft's ``adapter_names=`` (a different adapter for each sample of a
        batch) is a LoRA feature this tuner does not have: refused, rather than
        every sample silently running the active adapter."""
        if kwargs.get("adapter_names") is not None:
            raise ConfigError(
                "adapter_names= (a different adapter for each sample) is not supported by "
                "qpeft adapters; call model.set_adapter(name) and run one batch per adapter"
            )
        yield

    # -- which modules, with which frames --------------------------------------------------
    def _prepare_adapter_config(self, peft_config, model_config: dict):
        # no per-architecture defaults: find_target_modules says what to target instead
        return peft_config

    def _prepare_model(self, peft_config, model: nn.Module) -> None:
        """Plan the adapter before peft walks the model: its targets and their frames."""
        native = next((name for name, module in model.named_modules()
                       if isinstance(module, (QPeftLinear, ModulesToSaveWrapper))
                       and not isinstance(module, QPeftTunerLinear)), None)
        if native is not None:
            raise ConfigError(
                f"this model holds adapters of qpeft's own API ({native!r}); peft's "
                "get_peft_model would overwrite them. Add another adapter with "
                "QPeftModel.add_adapter(name, config), or unload them first "
                "(model.unload() or merge_and_unload())"
            )
        config = peft_config.to_qpeft_config()
        # a config with recorded circuits was saved (or injected) before: read, not planned
        targets = find_target_modules(model, config, new_adapter=not peft_config.circuits)
        self._plan = (peft_config, _recorded_frames(
            peft_config, plan_frames(model, config, targets)
        ), config)

    def _check_target_module_exists(self, peft_config, key: str):
        plan = self._frames_for(peft_config)
        if key in plan:
            return True
        return _ExcludedModule() if is_excluded(peft_config, key) else False

    def _frames_for(self, peft_config) -> PathSpecs:
        planned = self.__dict__.get("_plan")
        if planned is None or planned[0] is not peft_config:
            self._prepare_model(peft_config, self.model)
        return self._plan[1]

    def _create_and_replace(self, peft_config, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str,
                            parameter_name: str | None = None) -> None:
        plan = self._frames_for(peft_config)
        config = self._plan[2]
        if current_key not in plan:  # a module named by a state dict, not by the config
            plan.update(_recorded_frames(peft_config, plan_frames(self.model, config,
                                                                  [current_key])))
        specs = plan[current_key]
        options = layer_options(config)
        layer = add_adapter_layer(target, adapter_name, specs, options, QPeftTunerLinear)
        if layer is None:
            return
        if adapter_name not in self.active_adapters:
            layer.requires_grad_(False)
        self._replace_module(parent, target_name, layer, target)

    # -- the frame bank --------------------------------------------------------------------
    @property
    def frame_bank(self) -> FrameBank:
        """Computes U and V of every adapted layer once per forward pass of the model."""
        bank = self.__dict__.get("_frame_bank")
        if bank is None:
            bank = self.__dict__["_frame_bank"] = FrameBank()
        return bank

    def _sync_frame_bank(self) -> None:
        layers = [m for m in self.model.modules() if isinstance(m, QPeftLinear)]
        self.frame_bank.set_layers(layers)
        if layers:
            self.frame_bank.attach(self.model)
        else:
            self.frame_bank.detach()

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any,
                       **kwargs: Any) -> None:
        # the circuits are recorded on the model's own copy of the configuration: the
        # caller's object stays as given, so using it again (changed, or through
        # dataclasses.replace) plans new circuits rather than reusing these
        self.peft_config[adapter_name] = copy.deepcopy(self.peft_config[adapter_name])
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self.__dict__.pop("_plan", None)
        self._sync_frame_bank()

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._sync_frame_bank()

    def delete_adapter(self, adapter_name: str) -> None:
        was_active = adapter_name in self.active_adapters
        super().delete_adapter(adapter_name)
        # peft takes the new active adapter from the first adapted layer, which holds
        # none when the remaining adapters target other layers: the model would keep
        # the deleted name. Pick the sorted first remaining adapter instead.
        remaining = sorted(self.peft_config)
        if was_active and remaining and not set(self.active_adapters) & set(remaining):
            self.set_adapter(remaining[0])
        self._sync_frame_bank()

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        self.frame_bank.invalidate()

    # peft merges layer by layer; a safe merge checks every layer first, so that one
    # refused layer leaves the model as it was rather than half merged
    def _check_merges(self, adapter_names: list[str] | None, safe_merge: bool) -> None:
        layers = {path: module for path, module in self.model.named_modules()
                  if isinstance(module, QPeftLinear)}
        names = adapter_names or self.active_adapters
        check_untied(self.model, {path: layer for path, layer in layers.items()
                                  if any(n in layer.qpeft_lambda for n in names)})
        if safe_merge:
            check_merges(layers, adapter_names)

    def merge_adapter(self, adapter_names: list[str] | None = None,
                      safe_merge: bool = False) -> None:
        self._check_merges(adapter_names, safe_merge)
        super().merge_adapter(adapter_names, safe_merge=False)
        self.frame_bank.invalidate()

    def unmerge_adapter(self) -> None:
        super().unmerge_adapter()
        self.frame_bank.invalidate()

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False,
                                     safe_merge: bool = False,
                                     adapter_names: list[str] | None = None, **kwargs: Any):
        if merge:
            self._check_merges(adapter_names, safe_merge)
        model = super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=False,
            adapter_names=adapter_names, **kwargs,
        )
        self._sync_frame_bank()  # no adapted layers are left: the hooks come off
        return model


def _recorded_frames(peft_config, plan: PathSpecs) -> PathSpecs:
    """Use the circuits recorded in ``peft_config.circuits`` (a loaded adapter), and
    record the circuits of the other widths (a new one)."""
    recorded = dict(peft_config.circuits or {})
    config = peft_config.to_qpeft_config()
    by_width: dict[int, FrameSpec] = {}
    for sides in plan.values():
        for side, spec in sides.items():
            key = str(spec.dimension)
            if key in recorded:
                if spec.dimension not in by_width:
                    by_width[spec.dimension] = resolve_frame_spec(
                        Circuit.from_dict(recorded[key]), spec.dimension, config.rank,
                        config.layers, config.ansatz_options, config.compile_method,
                    )
                sides[side] = by_width[spec.dimension]
    for sides in plan.values():
        for spec in sides.values():
            if spec.circuit is not None:
                recorded.setdefault(str(spec.dimension), spec.circuit.to_dict())
    peft_config.circuits = recorded or None
    return plan


# -- registration ----------------------------------------------------------------------------------
def _peft_type_member() -> PeftType:
    """``PeftType.QPEFT``, added to peft's closed enum if it is not there yet."""
    if PEFT_TYPE in PeftType.__members__:
        return PeftType[PEFT_TYPE]
    member = str.__new__(PeftType, PEFT_TYPE)
    member._name_ = PEFT_TYPE
    member._value_ = PEFT_TYPE
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_names_.append(PEFT_TYPE)
    PeftType._member_map_[PEFT_TYPE] = member
    PeftType._value2member_map_[PEFT_TYPE] = member
    type.__setattr__(PeftType, PEFT_TYPE, member)
    if not (PeftType(PEFT_TYPE) is member and PeftType[PEFT_TYPE] is member
            and member in list(PeftType)):
        raise ConfigError(
            f"could not add {PEFT_TYPE} to peft's PeftType on this Python; use qpeft's own "
            "API (qpeft.get_qpeft_model) instead of the peft bridge"
        )
    return member


def register() -> PeftType:
    """Register Quantum-PEFT with peft (idempotent) and return ``PeftType.QPEFT``.

    Called by :class:`QPeftPeftConfig` itself, so ``get_peft_model`` and
    ``PeftModel.from_pretrained`` work once this module is imported. Raises
    :class:`~qpeft.errors.ConfigError` for an unsupported peft version, or when
    another package has registered a different method under the same name.

    >>> register() is register()
    True
    """
    check_peft_version()
    peft_type = _peft_type_member()
    registered = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
    if registered is QPeftTuner and PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) is QPeftPeftConfig:
        return peft_type
    if registered is not None:
        raise ConfigError(
            f"peft already has a method {PEFT_TYPE} ({registered.__module__}."
            f"{registered.__qualname__}); it is not qpeft's, so the bridge cannot register"
        )
    register_peft_method(name=PEFT_TYPE.lower(), config_cls=QPeftPeftConfig,
                         model_cls=QPeftTuner, prefix=PREFIX, is_mixed_compatible=False)
    return peft_type


register()

__all__ = [
    "PEFT_TYPE", "PREFIX", "SUPPORTED_PEFT", "QPeftPeftConfig", "QPeftTuner", "QPeftTunerLinear",
    "check_peft_version", "installed_peft_version", "register",
]
