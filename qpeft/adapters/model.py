"""The model wrapper: find target layers, replace them with :class:`QPeftLinear`,
and offer peft's model API (merge, disable, named adapters, save/load).

>>> import torch, qpeft
>>> base = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.ReLU(), torch.nn.Linear(48, 24))
>>> model = qpeft.get_qpeft_model(base, qpeft.QPeftConfig(target_modules=["0", "2"], rank=2))
>>> model.print_trainable_parameters()
trainable params: 90 || all params: 2,466 || trainable%: 3.6496
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from qpeft.adapters.config import ALL_LINEAR, QPeftConfig
from qpeft.adapters.frames import FrameBank, FrameSpec, resolve_frame_spec
from qpeft.adapters.layer import (
    ModulesToSaveWrapper,
    QPeftLinear,
    check_adapter_name,
    check_merges,
    check_untied,
    is_supported_linear,
    linear_shape,
)
from qpeft.errors import ConfigError

PathSpecs = dict[str, dict[str, FrameSpec]]
"""``{module path: {"out": spec of U, "in": spec of V}}``."""


# -- which modules ------------------------------------------------------------------------------
def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, QPeftLinear) or is_supported_linear(module)


def _walk(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named submodules, not looking inside adapter layers and saved-module wrappers."""
    skip: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in skip):
            continue
        if isinstance(module, (QPeftLinear, ModulesToSaveWrapper)):
            skip.append(name)
        yield name, module


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named linear layers (or already adapted ones)."""
    return [(name, module) for name, module in _walk(model) if _is_linear(module)]


def _suffix_match(key: str, names: list[str]) -> bool:
    return any(key == n or key.endswith("." + n) for n in names)


def _layer_index(key: str, pattern: list[str] | str | None) -> int | None:
    if not pattern:
        # the first numbered segment after a name: "layers.0.…", "bert.encoder.layer.0.…"
        match = re.match(r"(?:.*?\.)??[^.]+\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for name in [pattern] if isinstance(pattern, str) else pattern:
            match = re.match(rf"(?:^|.*?\.){re.escape(name)}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def is_excluded(config: QPeftConfig, key: str) -> bool:
    excluded = config.exclude_modules
    if isinstance(excluded, str):
        if re.fullmatch(excluded, key):
            return True
    elif excluded and _suffix_match(key, excluded):
        return True
    return _saved(config, key)


def _saved(config: QPeftConfig, key: str) -> bool:
    """Whether ``key`` is (inside) a module of ``modules_to_save``."""
    return any(
        re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", key) for m in config.modules_to_save or ()
    )


def _targeted(config: QPeftConfig, key: str) -> bool:
    targets = config.target_modules
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if not _suffix_match(key, list(targets or ())):
        return False
    if config.layers_to_transform is None:
        return True
    wanted = config.layers_to_transform
    index = _layer_index(key, config.layers_pattern)
    if index is None:
        return False
    return index == wanted if isinstance(wanted, int) else index in wanted


def _output_embedding_names(model: nn.Module) -> set[str]:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        return set()
    return {name for name, module in model.named_modules() if module is head}


def linear_suffixes(model: nn.Module) -> list[str]:
    """Distinct last names of the model's linear layers, e.g. ``['dense', 'query', …]``."""
    return sorted({name.rsplit(".", 1)[-1] for name, _ in _candidates(model)})


def find_target_modules(model: nn.Module, config: QPeftConfig, *,
                        new_adapter: bool = True) -> list[str]:
    """Names of the linear layers ``config`` adapts; a ConfigError when there are
    none, or (for a ``new_adapter``) when a layer filter would be ignored.

    >>> import torch
    >>> base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    >>> find_target_modules(base, QPeftConfig(target_modules="all-linear", rank=1))
    ['0', '1']
    """
    if new_adapter:
        config.check_layer_filter()
    if config.target_modules is None:
        raise ConfigError(
            "target_modules is not set; name the linear layers to adapt, e.g. "
            f"target_modules={linear_suffixes(model)[:4]} or 'all-linear'"
        )
    all_linear = isinstance(config.target_modules, str) and (
        config.target_modules.lower() == ALL_LINEAR
    )
    heads = _output_embedding_names(model) if all_linear else set()
    chosen = []
    for name, module in _walk(model):
        if is_excluded(config, name):
            continue
        if all_linear:
            hit = name not in heads
        else:
            hit = _targeted(config, name)
        if not hit:
            continue
        if not _is_linear(module):
            if all_linear:
                continue
            raise ConfigError(
                f"target module {name!r} is a {type(module).__name__}; Quantum-PEFT adapts "
                "nn.Linear and transformers' Conv1D layers only; target those "
                f"(linear layers here end in: {', '.join(linear_suffixes(model))})"
            )
        if isinstance(_parent(model, name)[0], nn.MultiheadAttention):
            if all_linear:
                continue
            raise ConfigError(
                f"target module {name!r} is the output projection of a torch "
                "nn.MultiheadAttention, which reads its weight directly and never calls it: "
                "an adapter there would change nothing. Target other linear layers"
            )
        chosen.append(name)
    if not chosen:
        raise ConfigError(_nothing_targeted(model, config))
    return chosen


def _nothing_targeted(model: nn.Module, config: QPeftConfig) -> str:
    """Why no module was chosen: the targets name none, or the filters took out
    all the modules they name."""
    named = [name for name, module in _walk(model) if _is_linear(module) and (
        re.fullmatch(config.target_modules, name) is not None
        if isinstance(config.target_modules, str)
        else _suffix_match(name, list(config.target_modules or ())))]
    saved = [n for n in named if _saved(config, n)]
    filters = [f"modules_to_save (trained in full: {', '.join(saved[:3])})" if saved else "",
               "exclude_modules" if config.exclude_modules else "",
               (f"layers_to_transform={config.layers_to_transform!r}"
                + (f" with layers_pattern={config.layers_pattern!r}"
                   if config.layers_pattern else ""))
               if config.layers_to_transform is not None else ""]
    if not named or not any(filters):
        return (f"target_modules {config.target_modules!r} matches no linear layer of "
                f"{type(model).__name__}; its linear layers end in: "
                f"{', '.join(linear_suffixes(model)) or '(none)'}")
    return (f"target_modules {config.target_modules!r} names {len(named)} linear layer(s) "
            f"({', '.join(named[:3])}{', …' if len(named) > 3 else ''}), but "
            f"{' and '.join(f for f in filters if f)} leave(s) none of them to adapt; "
            "change the targets or those settings")


def find_modules_to_save(model: nn.Module, names: list[str] | None) -> list[str]:
    """Module paths matched by ``modules_to_save`` (suffix match, outermost only)."""
    found = [name for name, _ in _walk(model) if _suffix_match(name, list(names or ()))]
    found = [name for name in found if not any(name.startswith(f + ".") for f in found)]
    missing = [n for n in names or () if not any(_suffix_match(f, [n]) for f in found)]
    if missing:
        raise ConfigError(
            f"modules_to_save {missing} match no module of {type(model).__name__}; "
            "give names (or suffixes) of existing modules, e.g. 'classifier'"
        )
    return found


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_name, _, child = path.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def layer_options(config: QPeftConfig) -> dict[str, Any]:
    return {
        "rank": config.rank, "layers": config.layers, "ansatz_options": config.ansatz_options,
        "alpha": config.alpha, "dropout": config.dropout, "init": config.init,
        "init_lambda": config.init_lambda, "active_rank": config.active_rank,
        "quantize_bits": config.quantize_bits, "compile_method": config.compile_method,
    }


def plan_frames(model: nn.Module, config: QPeftConfig, paths: list[str]) -> PathSpecs:
    """Resolve the U and V frame specs of every target (circuits built once per width)."""
    by_width: dict[int, FrameSpec] = {}
    plan: PathSpecs = {}
    for path in paths:
        module = model.get_submodule(path)
        base = module.base_layer if isinstance(module, QPeftLinear) else module
        n_in, n_out, _ = linear_shape(base)
        if config.rank > min(n_in, n_out):
            raise ConfigError(
                f"rank K={config.rank} is larger than {path!r} allows: it maps {n_in} to "
                f"{n_out} features, so K <= {min(n_in, n_out)}"
            )
        sides = {}
        for side, width in (("out", n_out), ("in", n_in)):
            if width not in by_width:
                by_width[width] = resolve_frame_spec(
                    config.ansatz_for(width), width, config.rank, config.layers,
                    config.ansatz_options, config.compile_method,
                )
            sides[side] = by_width[width]
        plan[path] = sides
    return plan


def add_adapter_layer(module: nn.Module, adapter_name: str, specs: dict[str, FrameSpec],
                      options: dict[str, Any],
                      layer_class: type[QPeftLinear] = QPeftLinear) -> QPeftLinear | None:
    """Give ``module`` the adapter ``adapter_name`` with frames ``specs``
    (``{"out": …, "in": …}``): an adapter layer gets one more adapter and
    ``None`` is returned; a linear layer is wrapped in a new ``layer_class``,
    returned for the caller to put in its place."""
    if isinstance(module, QPeftLinear):
        module.update_layer(adapter_name, frame_out=specs["out"], frame_in=specs["in"], **options)
        return None
    return layer_class(module, adapter_name, frame_out=specs["out"], frame_in=specs["in"],
                       **options)


# -- the wrapper -------------------------------------------------------------------------------
class _BaseCall:
    """``QPeftModel.forward`` on an instance: calls the base model, and
    ``inspect.signature`` gives the base model's ``forward`` signature.

    It also looks like a bound method (``__func__``, ``__self__``) to tools
    that rebind ``forward`` that way, such as accelerate's mixed-precision
    wrapper.
    """

    def __init__(self, owner: QPeftModel) -> None:
        self.__self__ = owner
        self.__func__ = _call_base_model
        # torch.export reads the code object of the forward it traces
        self.__code__ = _call_base_model.__code__
        self.__defaults__ = _call_base_model.__defaults__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__self__.base_model(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.__self__.base_model.forward)


def _call_base_model(self: QPeftModel, *args: Any, **kwargs: Any) -> Any:
    return self.base_model(*args, **kwargs)


class _Forward:
    """``QPeftModel.forward``: calls the base model (with its hooks). On an
    instance its signature is the base model's ``forward``, so tools that read
    it see real argument names (transformers' ``Trainer`` keeps only the
    dataset columns the model accepts)."""

    def __get__(self, instance: QPeftModel | None, owner: type) -> Any:
        if instance is None:
            return _call_base_model
        return _BaseCall(instance)


class QPeftModel(nn.Module):
    """A model with Quantum-PEFT adapters; peft's ``PeftModel`` API.

    The wrapped model is :attr:`base_model`; its targeted linear layers are
    replaced in place by :class:`QPeftLinear`. Calls, ``generate`` and unknown
    attributes pass through to it. Before every forward pass a
    :class:`~qpeft.adapters.frames.FrameBank` computes U and V of all
    adapted layers in one batched call per circuit.
    """

    def __init__(self, model: nn.Module, config: QPeftConfig, adapter_name: str = "default",
                 *, frames: PathSpecs | None = None) -> None:
        super().__init__()
        if any(isinstance(m, (QPeftLinear, ModulesToSaveWrapper)) for m in model.modules()):
            raise ConfigError(
                "this model already holds Quantum-PEFT adapters; add another with "
                "QPeftModel.add_adapter(name, config), or start from a fresh model"
            )
        self.base_model = model
        self.peft_config: dict[str, QPeftConfig] = {}
        self.active_adapter = adapter_name
        self.frame_bank = FrameBank()
        #: adapters loaded frozen (is_trainable=False); they stay frozen until set_adapter
        self._frozen: set[str] = set()
        self._inject(adapter_name, config, frames)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self._apply_active_adapter()
        self.frame_bank.attach(model)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a copy (deepcopy, pickle, torch.save): its bank serves the copied layers
        super().__setstate__(state)
        self.frame_bank.set_layers(self.qpeft_layers().values())
        self.frame_bank.adopt(self.base_model)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model" or "base_model" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["base_model"], name)

    # -- injection -------------------------------------------------------------------
    def _inject(self, adapter_name: str, config: QPeftConfig,
                frames: PathSpecs | None = None) -> None:
        """Add adapter ``adapter_name`` to every target (all checks before any change)."""
        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists already")
        if not isinstance(config, QPeftConfig):
            raise ConfigError(f"config must be a QPeftConfig, got {type(config).__name__}")
        config.validate()
        model = self.base_model
        if frames is None:
            frames = plan_frames(model, config, find_target_modules(model, config))
        saved = find_modules_to_save(model, config.modules_to_save)
        for path in saved:
            inner = next((f"{path}.{name}" if name else path for name, module
                          in model.get_submodule(path).named_modules()
                          if isinstance(module, QPeftLinear)), None)
            if inner is not None:
                where = "is" if inner == path else f"holds the adapted layer {inner!r}, which is"
                raise ConfigError(
                    f"modules_to_save names {path!r}, which {where} an adapted layer of another "
                    "adapter; a full copy of it could not be saved or loaded. Name a module "
                    "that holds no adapted layer"
                )
        options = layer_options(config)
        for path, specs in frames.items():
            layer = add_adapter_layer(model.get_submodule(path), adapter_name, specs, options)
            if layer is not None:
                parent, child = _parent(model, path)
                setattr(parent, child, layer)
        for path in saved:
            module = model.get_submodule(path)
            if isinstance(module, ModulesToSaveWrapper):
                module.update(adapter_name)
            else:
                parent, child = _parent(model, path)
                setattr(parent, child, ModulesToSaveWrapper(module, adapter_name))
        self.peft_config[adapter_name] = config
        self._apply_active_adapter()

    def _apply_active_adapter(self) -> None:
        for layer in self.qpeft_layers().values():
            layer.set_adapter(self.active_adapter)
        for wrapper in self.saved_modules().values():
            wrapper.set_adapter(self.active_adapter)
        self._freeze(self._frozen & {self.active_adapter})
        self.frame_bank.set_layers(self.qpeft_layers().values())

    def _freeze(self, adapter_names: set[str]) -> None:
        for name in adapter_names:
            for layer in self.qpeft_layers(name).values():
                for parameter in layer.adapter_parameters(name):
                    parameter.requires_grad_(False)
            for wrapper in self.saved_modules(name).values():
                wrapper.modules_to_save[name].requires_grad_(False)

    def qpeft_layers(self, adapter_name: str | None = None) -> dict[str, QPeftLinear]:
        """``{path: layer}`` of the adapted layers (holding ``adapter_name`` if given)."""
        return {
            name: module for name, module in self.base_model.named_modules()
            if isinstance(module, QPeftLinear)
            and (adapter_name is None or adapter_name in module.qpeft_lambda)
        }

    def saved_modules(self, adapter_name: str | None = None) -> dict[str, ModulesToSaveWrapper]:
        """``{path: wrapper}`` of the modules trained in full."""
        return {
            name: module for name, module in self.base_model.named_modules()
            if isinstance(module, ModulesToSaveWrapper)
            and (adapter_name is None or adapter_name in module.modules_to_save)
        }

    # -- named adapters ------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, peft_config: QPeftConfig) -> None:
        """Add another adapter (inactive and frozen until :meth:`set_adapter`)."""
        self._inject(adapter_name, peft_config)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter (the only trainable one, also
        when it was loaded frozen, as in peft). Adding, loading or deleting
        another adapter leaves a frozen active adapter frozen."""
        if adapter_name not in self.peft_config:
            raise ConfigError(
                f"no adapter named {adapter_name!r}; adapters: {', '.join(self.peft_config)}"
            )
        if any(layer.merged for layer in self.qpeft_layers().values()):
            raise ConfigError("unmerge the adapters (unmerge_adapter()) before switching")
        self.active_adapter = adapter_name
        self._frozen.discard(adapter_name)
        self._apply_active_adapter()

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter from every layer (not the active one)."""
        if adapter_name not in self.peft_config:
            raise ConfigError(f"no adapter named {adapter_name!r}")
        if adapter_name == self.active_adapter:
            raise ConfigError("cannot delete the active adapter; set_adapter() another first")
        for layer in self.qpeft_layers(adapter_name).values():
            layer.delete_adapter(adapter_name)
        for wrapper in self.saved_modules(adapter_name).values():
            wrapper.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]
        self._frozen.discard(adapter_name)
        self._apply_active_adapter()

    # -- settings after training -----------------------------------------------------------
    def quantize(self, bits: int | None, adapter_name: str | None = None) -> None:
        """Post-training quantization: from now on the adapter's angles and λ are
        used (and saved) as ``bits``-bit codes; ``None`` switches it off.

        Training on continues as quantization-aware training (straight-through).
        """
        name = adapter_name or self.active_adapter
        self._change_setting(name, "quantize_bits", bits,
                             lambda layer: layer.set_quantize_bits(name, bits))

    def set_active_rank(self, active_rank: int | None, adapter_name: str | None = None) -> None:
        """Use only the first K' values of λ (None: all K)."""
        name = adapter_name or self.active_adapter
        rank = self.peft_config[name].rank if name in self.peft_config else 0
        self._change_setting(name, "active_rank", active_rank,
                             lambda layer: layer.set_active_rank(name, active_rank or rank))

    def _change_setting(self, name: str, field: str, value: Any,
                        apply: Callable[[QPeftLinear], None]) -> None:
        """Set ``field`` of adapter ``name`` in its config and layers: the value is checked
        first, and a refused value leaves config and layers as they were."""
        if name not in self.peft_config:
            raise ConfigError(f"no adapter named {name!r}; adapters: "
                              f"{', '.join(self.peft_config)}")
        config = self.peft_config[name]
        dataclasses.replace(config, **{field: value})  # validates, changes nothing
        layers = self.qpeft_layers(name).values()
        if any(name in layer.merged_adapters for layer in layers):
            raise ConfigError(f"adapter {name!r} is merged; unmerge_adapter() before changing "
                              f"{field}")
        for layer in layers:
            apply(layer)
        setattr(config, field, value)
        self.frame_bank.invalidate()

    # -- merging ----------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None,
                      safe_merge: bool = False) -> None:
        """``W0 += α U Λ Vᵀ`` in every adapted layer (the active adapter by default).
        ``safe_merge`` checks every layer for NaN/inf before writing any: a refused
        merge leaves the model as it was."""
        names = adapter_names or [self.active_adapter]
        unknown = [name for name in names if name not in self.peft_config]
        if unknown or isinstance(adapter_names, str):
            raise ConfigError(
                f"adapter_names must be a list of this model's adapters "
                f"({', '.join(self.peft_config)}), got {adapter_names!r}; nothing was merged"
            )
        layers = self.qpeft_layers()
        check_untied(self.base_model, {path: layer for path, layer in layers.items()
                                       if any(n in layer.qpeft_lambda for n in names)})
        if safe_merge:
            check_merges(layers, names)
        for layer in layers.values():
            layer.merge(adapter_names=names)
        self.frame_bank.invalidate()

    def unmerge_adapter(self) -> None:
        """Subtract what :meth:`merge_adapter` added (no inverse needed)."""
        for layer in self.qpeft_layers().values():
            layer.unmerge()
        self.frame_bank.invalidate()

    def merge_and_unload(self, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """Merge the adapter into the weights and return the plain base model
        (adapted layers become their base layers again, saved modules their
        trained copy)."""
        self.merge_adapter(adapter_names, safe_merge=safe_merge)
        return self._unload()

    def unload(self) -> nn.Module:
        """Remove every adapter without merging; return the original model."""
        self.unmerge_adapter()
        return self._unload()

    def _unload(self) -> nn.Module:
        model = self.base_model
        for path, layer in self.qpeft_layers().items():
            parent, child = _parent(model, path)
            setattr(parent, child, layer.base_layer)
        for path, wrapper in self.saved_modules().items():
            parent, child = _parent(model, path)
            setattr(parent, child, wrapper.active_module)
        self.frame_bank.detach()
        self.frame_bank.set_layers([])
        return model

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context manager: inside it the model computes the base model's outputs."""
        layers = list(self.qpeft_layers().values())
        wrappers = list(self.saved_modules().values())
        for module in (*layers, *wrappers):
            module.enable_adapters(False)
        self.frame_bank.invalidate()
        try:
            yield
        finally:
            for module in (*layers, *wrappers):
                module.enable_adapters(True)
            self.frame_bank.invalidate()

    # -- counting ---------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` parameter counts, as peft counts them."""
        trainable = total = 0
        for parameter in self.parameters():
            total += parameter.numel()
            if parameter.requires_grad:
                trainable += parameter.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: N || all params: M || trainable%: x`` (peft's format)."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # -- passthrough ------------------------------------------------------------------------
    def get_base_model(self) -> nn.Module:
        return self.base_model

    forward = _Forward()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)

    # -- files ------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike,
                        selected_adapters: list[str] | None = None) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` per adapter:
        the ``"default"`` adapter in ``save_directory``, others in subfolders
        named after them (as peft does)."""
        from qpeft.adapters.io import save_adapter

        names = selected_adapters or list(self.peft_config)
        for name in names:  # every adapter checked before any file is written
            if name not in self.peft_config:
                raise ConfigError(f"no adapter named {name!r}; nothing was saved")
            if not self.qpeft_layers(name):
                raise ConfigError(
                    f"adapter {name!r} has no adapted layers left (merge_and_unload() or "
                    "unload() took them out), so there is nothing to save; nothing was saved. "
                    "Save before merging"
                )
        for name in names:
            target = save_directory if name == "default" else os.path.join(save_directory, name)
            save_adapter(self, target, name)

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | os.PathLike,
                        adapter_name: str = "default", is_trainable: bool = False) -> QPeftModel:
        """Load a saved adapter onto ``model``. Everything is read and checked
        before the model is touched: a bad directory raises
        :class:`~qpeft.errors.AdapterFileError` and leaves ``model`` as it was.
        Unless ``is_trainable``, the adapter is frozen and the model in eval mode."""
        from qpeft.adapters.io import apply_adapter, check_against_model, read_adapter

        check_adapter_name(adapter_name)
        files = read_adapter(model_id)
        check_against_model(files, model)
        wrapped = cls(model, files.config, adapter_name, frames=files.frames)
        apply_adapter(wrapped, files, adapter_name)
        wrapped._finish_loading(adapter_name, is_trainable)
        return wrapped

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str,
                     is_trainable: bool = False) -> None:
        """Load a saved adapter as another named adapter (checked before any change)."""
        from qpeft.adapters.io import apply_adapter, check_against_model, read_adapter

        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists already")
        files = read_adapter(model_id)
        check_against_model(files, self.base_model)
        self._inject(adapter_name, files.config, files.frames)
        apply_adapter(self, files, adapter_name)
        self._finish_loading(adapter_name, is_trainable)

    def _finish_loading(self, adapter_name: str, is_trainable: bool) -> None:
        if not is_trainable:
            self._frozen.add(adapter_name)
            self._freeze({adapter_name})
            self.eval()
        self.frame_bank.invalidate()


def get_qpeft_model(model: nn.Module, config: QPeftConfig,
                    adapter_name: str = "default") -> QPeftModel:
    """Wrap ``model`` with a Quantum-PEFT adapter (peft's ``get_peft_model``).

    The base model's parameters are frozen; the adapter's angles and λ (and
    the copies of ``modules_to_save``) are trainable.

    >>> import torch, qpeft
    >>> base = torch.nn.Sequential(torch.nn.Linear(24, 24))
    >>> model = get_qpeft_model(base, qpeft.QPeftConfig(target_modules=["0"], rank=4))
    >>> model.get_nb_trainable_parameters()[0]   # P_out + P_in + K = 19 + 19 + 4
    42
    """
    return QPeftModel(model, config, adapter_name)


__all__ = ["QPeftModel", "find_modules_to_save", "find_target_modules", "get_qpeft_model",
           "linear_suffixes", "plan_frames"]
