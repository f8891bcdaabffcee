"""Saving and loading adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The JSON holds the configuration (the :class:`QPeftConfig` fields at top
level, as peft writes them), the format version, the circuits of all frames
(deduplicated by fingerprint), each adapted module's widths and frames, and
the SHA-256 of the tensor file. The safetensors file holds only the numbers
that cannot be derived: angles, λ, the frozen initial values of the
``offset`` init, integer codes and scales when quantized, and the trained
copies of ``modules_to_save``. Both files are written to temporary names
and moved into place with ``os.replace``.

Loading reads and checks everything (files present, hash, JSON, circuits
against their fingerprints, tensor names, shapes, dtypes, code ranges,
finite values, module paths and widths of the target model) before the
model is changed; any problem is an :class:`~qpeft.errors.AdapterFileError`.

>>> import json, tempfile, torch, qpeft
>>> base = torch.nn.Sequential(torch.nn.Linear(12, 12))
>>> model = qpeft.get_qpeft_model(base, qpeft.QPeftConfig(target_modules=["0"], rank=2))
>>> folder = tempfile.mkdtemp()
>>> model.save_pretrained(folder)
>>> [m["path"] for m in json.load(open(f"{folder}/adapter_config.json"))["modules"]]
['0']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from qpeft._version import __version__
from qpeft.adapters.config import FORMAT, FORMAT_VERSION, QPeftConfig
from qpeft.adapters.frames import FrameSpec, without_named_code
from qpeft.adapters.layer import ModulesToSaveWrapper, QPeftLinear, linear_shape
from qpeft.adapters.quantize import (
    code_range,
    decode,
    encode,
    pack_codes,
    packed_size,
    unpack_codes,
)
from qpeft.circuit import Circuit
from qpeft.errors import AdapterFileError, ConfigError, QpeftError
from qpeft.files import write_atomically

if TYPE_CHECKING:
    from qpeft.adapters.model import QPeftModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

PACKED = ("qpeft.theta", "qpeft.lambda", "qpeft.initial.theta", "qpeft.initial.lambda")
"""The adapter values, each packed into one flat tensor in the order of the JSON's
``modules``: ``theta`` holds θ_U then θ_V of each module, ``lambda`` each
module's K values; the ``initial`` pair holds the frozen values of the
``offset`` init. Quantized, a tensor ``X`` is stored as ``X.codes`` (a packed
uint8 stream of ``bits``-bit codes) plus ``X.scale`` (float32, one per
pow2-coded vector: every λ, and the
parameters of comparison mappings). Offsets follow from the circuits, so
nothing else is stored."""
VALUE_NAMES = ("theta_out", "theta_in", "lambda", "initial_theta_out", "initial_theta_in",
               "initial_lambda")
"""Keys of :attr:`AdapterFiles.values` per module."""
SAVED_PREFIX = "modules_to_save"
"""A trained copy's tensors are saved as ``<module path>.modules_to_save.<state key>``."""
_RESERVED = ("format", "qpeft_version", "circuits", "modules", "modules_to_save_tensors",
             "tensors_sha256")


# -- saving -------------------------------------------------------------------------------------
def _canonical_header(blob: bytes) -> bytes:
    """The safetensors file with its JSON header written with sorted keys.

    safetensors writes the metadata in hash-map order, which changes from
    call to call, so the same adapter gave different bytes (and a different
    ``tensors_sha256``). The tensor data and their offsets are unchanged; the
    header stays padded with spaces to a multiple of 8 bytes, as the format
    requires.
    """
    size = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + size :]


def _atomic_write(path: Path, data: bytes) -> None:
    write_atomically(path, lambda handle: handle.write(data))


def _layer_vectors(layer: QPeftLinear, adapter: str) -> dict[str, list[tuple[torch.Tensor, bool]]]:
    """(values, periodic) of one layer, by packed tensor name."""
    specs = layer.frame_specs[adapter]
    periodic = (specs["out"].periodic, specs["in"].periodic)
    theta_out, theta_in, lam = layer.adapter_parameters(adapter)
    vectors = {
        PACKED[0]: [(theta_out, periodic[0]), (theta_in, periodic[1])],
        PACKED[1]: [(lam, False)],
    }
    if layer.init[adapter] == "offset":
        initial = layer.qpeft_initial[adapter]
        vectors[PACKED[2]] = [(initial.theta_out, periodic[0]), (initial.theta_in, periodic[1])]
        vectors[PACKED[3]] = [(initial.lam, False)]
    return vectors


def _pack(name: str, vectors: list[tuple[torch.Tensor, bool]], bits: int | None,
          out: dict[str, torch.Tensor]) -> None:
    if bits is None:
        out[name] = _plain(torch.cat([v.detach().reshape(-1) for v, _ in vectors]))
        return
    codes, scales = [], []
    for values, periodic in vectors:
        encoded = encode(values.detach(), bits, periodic)
        codes.append(encoded["codes"] - code_range(bits, periodic)[0])
        if "scale" in encoded:
            scales.append(encoded["scale"])
    out[f"{name}.codes"] = _plain(pack_codes(torch.cat(codes), bits))
    if scales:
        out[f"{name}.scale"] = _plain(torch.cat(scales))


def _modules_digest(modules: list[dict[str, Any]]) -> str:
    """SHA-256 of the module list: the tensor file records the order its packed
    values follow, so an edited or reordered list is detected on load."""
    return hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()


def _dump_json(document: dict[str, Any]) -> str:
    """One top-level key per line, each value as compact JSON: readable, and the
    circuit descriptions stay small."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}"
             for key, value in document.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def save_adapter(model: QPeftModel, directory: str | os.PathLike, adapter_name: str) -> None:
    """Write one adapter of ``model`` to ``directory`` (see the module doc)."""
    from safetensors.torch import save as safetensors_bytes

    config = model.peft_config[adapter_name]
    layers = model.qpeft_layers(adapter_name)
    bits = config.quantize_bits
    circuits: dict[str, Any] = {}
    modules: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, list[tuple[torch.Tensor, bool]]] = {}
    for path, layer in layers.items():
        specs = layer.frame_specs[adapter_name]
        for spec in specs.values():
            if spec.circuit is not None:
                circuits.setdefault(spec.fingerprint, spec.circuit.to_dict())
        modules.append({
            "path": path,
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "out": specs["out"].describe(),
            "in": specs["in"].describe(),
        })
        for name, vectors in _layer_vectors(layer, adapter_name).items():
            if not all(torch.isfinite(values).all() for values, _ in vectors):
                # quantized, NaN would become an out-of-range code and inf a scale that
                # zeroes its neighbours; plain, the file would be refused on loading
                raise AdapterFileError(
                    f"adapter {adapter_name!r} of {path} holds NaN or infinite values in "
                    f"{name}; nothing was written (check the training run: learning rate, "
                    "gradient clipping)"
                )
            packed.setdefault(name, []).extend(vectors)
    for name, vectors in packed.items():
        _pack(name, vectors, bits, tensors)
    saved_keys: dict[str, list[str]] = {}
    for path, wrapper in model.saved_modules(adapter_name).items():
        state = wrapper.modules_to_save[adapter_name].state_dict()
        saved_keys[path] = sorted(state)
        for key, value in state.items():
            tensors[f"{path}.{SAVED_PREFIX}.{key}"] = _plain(value)
    metadata = {"format": "pt", "qpeft.format": FORMAT, "qpeft.modules": _modules_digest(modules)}
    blob = _canonical_header(safetensors_bytes(tensors, metadata=metadata))
    # a user's Python file as the ansatz is saved as the circuits built from it: the file
    # never names code to run, nor a path of the machine it was written on
    used = [spec.circuit for layer in layers.values()
            for spec in layer.frame_specs[adapter_name].values() if spec.circuit is not None]
    config = dataclasses.replace(config, ansatz=without_named_code(config.ansatz, used))
    document = {
        "format": FORMAT,
        **config.to_dict(),
        "format_version": FORMAT_VERSION,
        "qpeft_version": __version__,
        "circuits": circuits,
        "modules": modules,
        "modules_to_save_tensors": saved_keys,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / WEIGHTS_NAME, blob)
    _atomic_write(folder / CONFIG_NAME, _dump_json(document).encode())


# -- reading ------------------------------------------------------------------------------------
@dataclass
class AdapterFiles:
    """The checked contents of an adapter directory."""

    directory: Path
    config: QPeftConfig
    frames: dict[str, dict[str, FrameSpec]]
    widths: dict[str, tuple[int, int]]
    values: dict[str, dict[str, torch.Tensor]]
    saved_modules: dict[str, dict[str, torch.Tensor]]


def _fail(directory: Path, message: str) -> AdapterFileError:
    return AdapterFileError(f"adapter directory {directory}: {message}")


def _read_json(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise _fail(directory, f"{CONFIG_NAME} is missing; save the adapter with "
                               "save_pretrained() or point to the folder that holds it")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(directory, f"{CONFIG_NAME} is not valid JSON ({error}); the file is "
                               "truncated or corrupt, save the adapter again") from None
    found = document.get("format") if isinstance(document, dict) else None
    if found != FORMAT:
        peft_type = document.get("peft_type") if isinstance(document, dict) else None
        hint = ""
        if peft_type == "QPEFT":
            hint = ("; it was written by peft's save_pretrained (the peft bridge): load it with "
                    "peft.PeftModel.from_pretrained after importing qpeft.adapters.peft_bridge")
        elif peft_type is not None:
            hint = f"; it is a peft {peft_type} adapter: load it with peft"
        raise _fail(directory, f"{CONFIG_NAME} is not a qpeft adapter configuration "
                               f"(format {found!r}, expected {FORMAT!r}){hint}")
    version = document.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(directory, f"format_version {version!r} is not an integer")
    if version < 1:
        raise _fail(directory, f"format_version {version!r} is not a valid version (>= 1)")
    if version > FORMAT_VERSION:
        raise _fail(directory, f"written in adapter format version {version}, newer than this "
                               f"qpeft ({__version__}) reads (up to {FORMAT_VERSION}); upgrade "
                               "qpeft")
    return document


def _read_tensors(directory: Path,
                  expected_sha256: object) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load as safetensors_load

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise _fail(directory, f"{WEIGHTS_NAME} is missing; both {CONFIG_NAME} and "
                               f"{WEIGHTS_NAME} are needed")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise _fail(directory, f"{WEIGHTS_NAME} does not match {CONFIG_NAME} (SHA-256 differs): "
                               "the file is truncated, or the two files come from different "
                               "saves; save the adapter again")
    try:
        tensors = safetensors_load(blob)
        (size,) = struct.unpack("<Q", blob[:8])
        metadata = json.loads(blob[8:8 + size]).get("__metadata__") or {}
    except Exception as error:  # safetensors raises its own error types
        raise _fail(directory, f"{WEIGHTS_NAME} is not a readable safetensors file "
                               f"({error})") from None
    return tensors, metadata


def _stored_fingerprint(data: dict[str, Any]) -> str:
    """:meth:`Circuit.fingerprint` of a description as it was stored."""
    kept = {key: value for key, value in data.items() if key != "name"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _circuits(directory: Path, document: dict[str, Any]) -> dict[str, Circuit]:
    circuits = {}
    entries = document.get("circuits")
    if not isinstance(entries, dict):
        raise _fail(directory, "'circuits' must be an object {fingerprint: circuit}")
    for fingerprint, data in entries.items():
        try:
            circuit = Circuit.from_dict(data)
        except QpeftError as error:
            raise _fail(directory, f"circuit {fingerprint[:12]}… is invalid: {error}") from None
        # the print of the description as stored also counts: adapters written before
        # -0.0 was stored as 0.0 hold descriptions (and prints) with negative zeros
        if fingerprint not in (circuit.fingerprint(), _stored_fingerprint(data)):
            raise _fail(directory, f"circuit {fingerprint[:12]}… does not match its fingerprint; "
                                   "the description was edited or corrupted")
        circuits[fingerprint] = circuit
    return circuits


def _frame(directory: Path, path: str, side: str, entry: Any, width: int, rank: int,
           circuits: dict[str, Circuit], method: str) -> FrameSpec:
    """The spec of one side (a mapping's options are checked by building it)."""
    try:
        if isinstance(entry, dict) and "circuit" in entry:
            if entry["circuit"] not in circuits:
                raise _fail(directory, f"module {path!r} names circuit {entry['circuit']!r}, "
                                       "which is not in 'circuits'")
            spec = FrameSpec.for_circuit(circuits[entry["circuit"]], rank, method)
        elif isinstance(entry, dict) and "mapping" in entry:
            options = entry.get("options") or {}
            if not isinstance(options, dict):
                raise _fail(directory, f"module {path!r}, frame {side!r}: 'options' must be "
                                       "an object of keyword options")
            spec = FrameSpec.for_mapping(entry["mapping"], int(entry["dimension"]), rank,
                                         options)
        else:
            raise _fail(directory, f"module {path!r} has no valid {side!r} frame description")
    except AdapterFileError:
        raise
    except (QpeftError, TypeError, ValueError, KeyError) as error:
        raise _fail(directory, f"module {path!r}, frame {side!r}: {error}") from None
    if spec.dimension != width:
        raise _fail(directory, f"module {path!r}: the {side!r} frame has dimension "
                               f"{spec.dimension} but the module has width {width}")
    return spec


def _unpack(directory: Path, tensors: dict[str, torch.Tensor], name: str,
            layout: list[tuple[int, bool]], bits: int | None, used: set[str]) -> list[torch.Tensor]:
    """Split the packed tensor ``name`` into vectors of the given (size, periodic)."""

    def take(key: str, dtype: torch.dtype | None, length: int) -> torch.Tensor:
        if key not in tensors:
            raise _fail(directory, f"{WEIGHTS_NAME} lacks tensor {key!r}")
        value = tensors[key]
        used.add(key)
        if dtype is not None and value.dtype != dtype:
            raise _fail(directory, f"tensor {key!r} has dtype {value.dtype}, expected {dtype}")
        if tuple(value.shape) != (length,):
            raise _fail(directory, f"tensor {key!r} has shape {tuple(value.shape)}, expected "
                                   f"({length},) from the circuit descriptions")
        return value

    total = sum(size for size, _ in layout)
    if bits is None:
        flat = take(name, None, total)
        if flat.dtype not in (torch.float32, torch.float64):
            raise _fail(directory, f"tensor {name!r} has dtype {flat.dtype}, expected float32")
        vectors = list(torch.split(flat, [size for size, _ in layout]))
    else:
        packed = take(f"{name}.codes", torch.uint8, packed_size(total, bits))
        unsigned = unpack_codes(packed, bits, count=total)
        scaled = sum(1 for _, periodic in layout if not periodic)
        scales = take(f"{name}.scale", torch.float32, scaled) if scaled else None
        vectors, start, scale_index = [], 0, 0
        for size, periodic in layout:
            low, high = code_range(bits, periodic)
            part = unsigned[start:start + size] + low
            start += size
            if part.numel() and int(part.max()) > high:
                raise _fail(directory, f"tensor {name}.codes holds codes outside {low}..{high}")
            stored = {"codes": part}
            if not periodic:
                stored["scale"] = scales[scale_index:scale_index + 1]
                scale_index += 1
            vectors.append(decode(stored, bits, periodic))
    for vector in vectors:
        if not torch.isfinite(vector).all():
            raise _fail(directory, f"tensor {name!r} holds NaN or infinite values")
    return vectors


def _saved_modules(directory: Path, document: dict[str, Any], tensors: dict[str, torch.Tensor],
                   used: set[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The trained copies of ``modules_to_save``: ``{path: {state key: tensor}}``."""
    listed = document.get("modules_to_save_tensors") or {}
    if not isinstance(listed, dict) or not all(
        isinstance(keys, list) and all(isinstance(key, str) for key in keys)
        for keys in listed.values()
    ):
        raise _fail(directory, "'modules_to_save_tensors' must be an object {module path: "
                               "[state dict keys]}")
    saved: dict[str, dict[str, torch.Tensor]] = {}
    for path, keys in listed.items():
        saved[path] = {}
        for key in keys:
            name = f"{path}.{SAVED_PREFIX}.{key}"
            if name not in tensors:
                raise _fail(directory, f"{WEIGHTS_NAME} lacks tensor {name!r}")
            value = tensors[name]
            if (value.is_floating_point() or value.is_complex()) and not bool(
                torch.isfinite(value).all()
            ):
                raise _fail(directory, f"tensor {name!r} holds NaN or infinite values")
            used.add(name)
            saved[path][key] = value
    return saved


def read_adapter(directory: str | os.PathLike) -> AdapterFiles:
    """Read and check an adapter directory without touching any model."""
    folder = Path(directory)
    if not folder.is_dir():
        raise AdapterFileError(f"adapter directory {folder} does not exist")
    document = _read_json(folder)
    tensors, metadata = _read_tensors(folder, document.get("tensors_sha256"))
    fields = {f.name for f in dataclasses.fields(QPeftConfig)}
    unknown = sorted(set(document) - fields - set(_RESERVED))
    if unknown:
        raise _fail(folder, f"{CONFIG_NAME} has unknown keys {unknown}")
    try:
        config = QPeftConfig.from_dict({k: v for k, v in document.items() if k in fields})
    except QpeftError as error:
        raise _fail(folder, f"invalid configuration: {error}") from None
    circuits = _circuits(folder, document)
    config.ansatz = without_named_code(config.ansatz, circuits.values())
    modules = document.get("modules")
    if not isinstance(modules, list) or not modules:
        raise _fail(folder, "'modules' must list at least one adapted module")
    if metadata.get("qpeft.modules") != _modules_digest(modules):
        raise _fail(folder, f"the 'modules' list of {CONFIG_NAME} is not the one "
                            f"{WEIGHTS_NAME} was saved with (edited or reordered)")
    used: set[str] = set()
    frames, widths = {}, {}
    for entry in modules:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or path in frames:
            raise _fail(folder, f"'modules' entry {entry!r} lacks a unique 'path'")
        try:
            n_in, n_out = int(entry["in_features"]), int(entry["out_features"])
        except (KeyError, TypeError, ValueError):
            raise _fail(folder, f"module {path!r}: in_features/out_features missing") from None
        frames[path] = {
            side: _frame(folder, path, side, entry.get(side), width, config.rank, circuits,
                         config.compile_method)
            for side, width in (("out", n_out), ("in", n_in))
        }
        widths[path] = (n_in, n_out)
    theta_layout = [(spec.num_parameters, spec.periodic)
                    for sides in frames.values() for spec in (sides["out"], sides["in"])]
    lambda_layout = [(config.rank, False)] * len(frames)
    names = VALUE_NAMES if config.init == "offset" else VALUE_NAMES[:3]
    unpacked = {}
    for packed_name, layout, keys in (
        (PACKED[0], theta_layout, ("theta_out", "theta_in")),
        (PACKED[1], lambda_layout, ("lambda",)),
        (PACKED[2], theta_layout, ("initial_theta_out", "initial_theta_in")),
        (PACKED[3], lambda_layout, ("initial_lambda",)),
    ):
        if keys[0] not in names:
            continue
        vectors = iter(_unpack(folder, tensors, packed_name, layout, config.quantize_bits, used))
        for path in frames:
            for key in keys:
                unpacked.setdefault(path, {})[key] = next(vectors)
    values = unpacked
    saved = _saved_modules(folder, document, tensors, used)
    if bool(saved) != bool(config.modules_to_save):
        raise _fail(folder, f"modules_to_save is {config.modules_to_save!r} but "
                            f"'modules_to_save_tensors' lists {sorted(saved) or 'no modules'}; "
                            "the two must agree")
    extra = sorted(set(tensors) - used)
    if extra:
        raise _fail(folder, f"{WEIGHTS_NAME} holds tensors the configuration does not "
                            f"describe: {extra[:5]}")
    return AdapterFiles(folder, config, frames, widths, values, saved)


def check_against_model(files: AdapterFiles, model: nn.Module) -> None:
    """Check that ``model`` has every module the adapter needs, with the right widths."""
    for path, (n_in, n_out) in files.widths.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise _fail(files.directory, f"the model has no module {path!r}; this adapter was "
                                         "saved for another architecture") from None
        base = module.base_layer if isinstance(module, QPeftLinear) else module
        try:
            shape = linear_shape(base)[:2]
        except QpeftError:
            raise _fail(files.directory, f"module {path!r} of the model is a "
                                         f"{type(base).__name__}, not a linear layer") from None
        if shape != (n_in, n_out):
            raise _fail(files.directory, f"module {path!r} maps {shape[0]} to {shape[1]} "
                                         f"features, the adapter was saved for {n_in} to {n_out}")
        _refuse_meta(path, base)
    for path, state in files.saved_modules.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise _fail(files.directory, f"the model has no module {path!r} "
                                         "(modules_to_save)") from None
        if isinstance(module, ModulesToSaveWrapper):
            module = module.original_module
        _refuse_meta(path, module)
        reference = module.state_dict()
        if set(reference) != set(state):
            raise _fail(files.directory, f"saved copy of {path!r} does not fit the model's "
                                         f"module: it holds tensors {sorted(state)}, the "
                                         f"module {sorted(reference)}")
        for key, value in state.items():
            expected = reference[key]
            same_kind = value.dtype == expected.dtype or (
                value.is_floating_point() and expected.is_floating_point())  # cast on load
            if tuple(value.shape) != tuple(expected.shape) or not same_kind:
                raise _fail(files.directory, f"saved copy of {path!r}: tensor {key!r} is "
                                             f"{value.dtype} {tuple(value.shape)}, the model's "
                                             f"module has {expected.dtype} "
                                             f"{tuple(expected.shape)}")
    _check_saved_paths(files, model)


def _refuse_meta(path: str, module: nn.Module) -> None:
    """A module on the meta device (no storage) would drop the values loaded into it (the
    adapter's tensors are made beside its weights), and to_empty() would then leave garbage."""
    if any(tensor.is_meta for tensor in (*module.parameters(), *module.buffers())):
        raise ConfigError(
            f"module {path!r} of the model is on the meta device (no storage), so the "
            "adapter's values would be dropped; load the model's weights first (or "
            "to_empty(device=...) and load_state_dict), then load the adapter"
        )


def _check_saved_paths(files: AdapterFiles, model: nn.Module) -> None:
    """The saved copies are exactly the modules that ``modules_to_save`` names in ``model``."""
    from qpeft.adapters.model import find_modules_to_save

    try:
        paths = find_modules_to_save(model, files.config.modules_to_save)
    except QpeftError as error:
        raise _fail(files.directory, str(error)) from None
    if set(paths) != set(files.saved_modules):
        raise _fail(files.directory, f"modules_to_save {files.config.modules_to_save!r} names "
                                     f"the modules {sorted(paths)} of the model, but the file "
                                     f"holds copies of {sorted(files.saved_modules)}")


def apply_adapter(model: QPeftModel, files: AdapterFiles, adapter_name: str) -> None:
    """Copy the read values into the adapter ``adapter_name`` of ``model``."""
    layers = model.qpeft_layers(adapter_name)
    with torch.no_grad():
        for path, tensors in files.values.items():
            layer = layers[path]
            for name, value in tensors.items():
                target = _adapter_tensor(layer, name, adapter_name)
                target.copy_(value.to(target.dtype))
        for path, state in files.saved_modules.items():
            wrapper = model.base_model.get_submodule(path)
            wrapper.modules_to_save[adapter_name].load_state_dict(state)
    model.frame_bank.invalidate()


def _adapter_tensor(layer: QPeftLinear, name: str, adapter_name: str) -> torch.Tensor:
    """The parameter or buffer that a value of :data:`VALUE_NAMES` is loaded into."""
    trainable = {"theta_out": layer.qpeft_theta_out, "theta_in": layer.qpeft_theta_in,
                 "lambda": layer.qpeft_lambda}
    if name in trainable:
        return trainable[name][adapter_name]
    initial = layer.qpeft_initial[adapter_name]
    return {"initial_theta_out": initial.theta_out, "initial_theta_in": initial.theta_in,
            "initial_lambda": initial.lam}[name]


__all__ = ["AdapterFiles", "CONFIG_NAME", "WEIGHTS_NAME", "apply_adapter", "check_against_model",
           "read_adapter", "save_adapter"]
