"""Count trainable parameters: Quantum-PEFT next to LoRA, per layer type and in total.

    qpeft count                                    # DeBERTaV3-base, attention, K=4, L=2
    qpeft count --model llama-3-70b --rank 4 --layers 2
    qpeft count --model all --targets all --json
    qpeft count --model ./my-model --targets query,value
    qpeft count --model mistral-7b --plot count.svg

A model is a built-in table of layer shapes (deberta-v3-base, gpt2-medium,
vit-b-16, mistral-7b, llama-3-70b: nothing is downloaded), ``embedded`` (the
bundled all-MiniLM-L6-v2), or a local folder with a transformers
``config.json``, whose skeleton is built on the meta device (no weights are
read or allocated). The adapter counts come from the code path of
``get_qpeft_model``: the same target selection and the same frame specs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qpeft.adapters.config import ALL_LINEAR, QPeftConfig
from qpeft.adapters.layer import is_supported_linear, linear_shape
from qpeft.adapters.model import find_target_modules, plan_frames
from qpeft.errors import ConfigError

LORA_RANKS = (1, 4, 8)
"""The LoRA ranks shown next to Quantum-PEFT (plus the chosen K)."""

PLOT_WIDTHS = tuple(sorted({2**n for n in range(6, 16)} | {384, 768, 1536, 3072, 5120, 11008}))
"""Widths N of the square N × N layers in ``--plot``: 64 … 32768 and common
non-power-of-two hidden sizes."""


# -- built-in shapes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BuiltinModel:
    """The linear layers of a published architecture: ``blocks`` repeats of
    ``layers`` (``(name inside a block, N_in, N_out)``) under ``prefix.<i>.``."""

    title: str
    reference: str
    prefix: str
    blocks: int
    layers: tuple[tuple[str, int, int], ...]


def _attention_mlp(q: tuple[int, int], kv: tuple[int, int], hidden: int, mlp: int
                   ) -> tuple[tuple[str, int, int], ...]:
    """A Llama-style decoder block (grouped-query attention, gated MLP)."""
    return (
        ("self_attn.q_proj", *q), ("self_attn.k_proj", *kv), ("self_attn.v_proj", *kv),
        ("self_attn.o_proj", q[1], q[0]),
        ("mlp.gate_proj", hidden, mlp), ("mlp.up_proj", hidden, mlp),
        ("mlp.down_proj", mlp, hidden),
    )


def _bert_block(attention: str, names: tuple[str, str, str], hidden: int, mlp: int
                ) -> tuple[tuple[str, int, int], ...]:
    """A BERT-style encoder block (query/key/value, output, intermediate, output)."""
    return (
        *((f"{attention}.{name}", hidden, hidden) for name in names),
        ("attention.output.dense", hidden, hidden),
        ("intermediate.dense", hidden, mlp), ("output.dense", mlp, hidden),
    )


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "deberta-v3-base": BuiltinModel(
        "DeBERTaV3-base", "microsoft/deberta-v3-base", "encoder.layer", 12,
        _bert_block("attention.self", ("query_proj", "key_proj", "value_proj"), 768, 3072),
    ),
    "gpt2-medium": BuiltinModel(
        "GPT-2 Medium", "openai-community/gpt2-medium", "h", 24,
        (("attn.c_attn", 1024, 3072), ("attn.c_proj", 1024, 1024),
         ("mlp.c_fc", 1024, 4096), ("mlp.c_proj", 4096, 1024)),
    ),
    "vit-b-16": BuiltinModel(
        "ViT-B/16", "google/vit-base-patch16-224", "encoder.layer", 12,
        _bert_block("attention.attention", ("query", "key", "value"), 768, 3072),
    ),
    "mistral-7b": BuiltinModel(
        "Mistral-7B", "mistralai/Mistral-7B-v0.1", "layers", 32,
        _attention_mlp((4096, 4096), (4096, 1024), 4096, 14336),
    ),
    "llama-3-70b": BuiltinModel(
        "Llama-3-70B", "meta-llama/Meta-Llama-3-70B", "layers", 80,
        _attention_mlp((8192, 8192), (8192, 1024), 8192, 28672),
    ),
}
"""Built-in architectures by ``--model`` name (the shapes of their configs on the hub)."""


class ModelSkeleton(nn.Module):
    """Named linear layers on the meta device: the shapes of a model, no weights."""


def builtin_skeleton(name: str) -> ModelSkeleton:
    """The linear layers of a built-in model on the meta device.

    >>> skeleton = builtin_skeleton("llama-3-70b")
    >>> skeleton.get_submodule("layers.79.self_attn.k_proj")
    Linear(in_features=8192, out_features=1024, bias=False)
    """
    model = BUILTIN_MODELS.get(name.lower())
    if model is None:
        raise ConfigError(f"no built-in model named {name!r}; {_model_choices()}")
    return _skeleton(
        (f"{model.prefix}.{block}.{layer}", n_in, n_out)
        for block in range(model.blocks) for layer, n_in, n_out in model.layers
    )


def _skeleton(layers: Iterable[tuple[str, int, int]]) -> ModelSkeleton:
    root = ModelSkeleton()
    with torch.device("meta"):
        for path, n_in, n_out in layers:
            parent: nn.Module = root
            *parents, leaf = path.split(".")
            for part in parents:
                if part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            parent.add_module(leaf, nn.Linear(n_in, n_out, bias=False))
    return root


def local_skeleton(folder: str | Path) -> nn.Module:
    """The transformers model of ``folder/config.json`` (``AutoModel``, no
    task head), built on the meta device: nothing is read but the config."""
    path = Path(folder).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if not (path / "config.json").is_file():
        problem = ("is neither a built-in model nor an existing folder" if not path.exists()
                   else "is not a model folder (it holds no config.json)")
        raise ConfigError(f"{str(folder)!r} {problem}; {_model_choices()}")
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError:
        raise ConfigError(
            "counting a model folder needs transformers; install it with "
            "`pip install 'qpeft[models]'`, or use a built-in model"
        ) from None
    from qpeft.models import quiet_transformers

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            with torch.device("meta"):
                return AutoModel.from_config(config)
    except Exception as error:  # noqa: BLE001 - transformers and huggingface_hub raise many types
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"transformers cannot build a model from {path / 'config.json'}: {first}"
        ) from None


def _model_choices() -> str:
    return (
        f"give a built-in model ({', '.join(BUILTIN_MODELS)}, or 'all'), 'embedded', "
        "or a folder holding a transformers config.json"
    )


# -- which layers -------------------------------------------------------------------------------
def layer_type(path: str) -> str:
    """What a module path names once the block index is taken away: the part
    after the last numeric segment (the whole path when there is none).

    >>> layer_type("encoder.layer.11.attention.self.query_proj"), layer_type("pooler.dense")
    ('attention.self.query_proj', 'pooler.dense')
    """
    match = re.match(r"(?:.*\.)?\d+\.(?P<rest>.+)$", path)
    return match.group("rest") if match else path


def is_attention(layer_type_name: str) -> bool:
    """True for a layer type inside an attention block (a name segment says
    ``attn`` or ``attention``: BERT, GPT-2, Llama, T5, Falcon, …).

    >>> is_attention("self_attn.k_proj"), is_attention("mlp.c_proj")
    (True, False)
    """
    return any("attn" in part or "attention" in part
               for part in layer_type_name.lower().split("."))


def target_modules_for(model: nn.Module, targets: str) -> list[str] | str:
    """The ``QPeftConfig.target_modules`` that ``--targets`` means for ``model``:
    ``"all"`` is ``"all-linear"``; ``"attention"`` is a regular expression for
    exactly the attention layer types; anything else is a comma-separated list
    of name suffixes, as ``QPeftConfig`` reads them.

    >>> pattern = target_modules_for(builtin_skeleton("gpt2-medium"), "attention")
    >>> [bool(re.fullmatch(pattern, name)) for name in ("h.3.attn.c_proj", "h.3.mlp.c_proj")]
    [True, False]
    >>> target_modules_for(builtin_skeleton("gpt2-medium"), "c_fc, c_attn")
    ['c_fc', 'c_attn']
    """
    choice = targets.strip()
    if choice.lower() == "all":
        return ALL_LINEAR
    if choice.lower() != "attention":
        names = [name.strip() for name in choice.split(",") if name.strip()]
        if not names:
            raise ConfigError(f"--targets {targets!r} names no layer; {_targets_help(model)}")
        return names
    types = _linear_types(model)
    attention = [name for name in types if is_attention(name)]
    if not attention:
        raise ConfigError(
            f"no attention layer found in {type(model).__name__} (no linear layer name has "
            f"'attn' or 'attention' in it); {_targets_help(model)}"
        )
    # the optional prefix ends in a block index, so a type matches only itself
    return r"(?:(?:.*\.)?\d+\.)?(?:" + "|".join(re.escape(name) for name in attention) + ")"


def _linear_types(model: nn.Module) -> list[str]:
    types = (layer_type(name) for name, module in model.named_modules()
             if is_supported_linear(module))
    return list(dict.fromkeys(types))


def _targets_help(model: nn.Module) -> str:
    return (
        f"choose --targets attention, all, or names from: {', '.join(_linear_types(model))}"
    )


# -- counting -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCount:
    """Trainable parameters of the adapters on one layer type of one shape.

    ``circuit_out`` / ``circuit_in``: the parameter counts of the frame specs of
    U and V; a Quantum-PEFT adapter trains those plus ``rank`` values of λ.
    """

    layer_type: str
    in_features: int
    out_features: int
    count: int
    rank: int
    circuit_out: int
    circuit_in: int

    @property
    def qpeft_per_layer(self) -> int:
        return self.circuit_out + self.circuit_in + self.rank

    @property
    def qpeft(self) -> int:
        return self.count * self.qpeft_per_layer

    def lora(self, rank: int) -> int:
        """LoRA at rank ``rank`` on these layers: ``r (N_in + N_out)`` each."""
        return self.count * rank * (self.in_features + self.out_features)


def count_parameters(model: nn.Module, config: QPeftConfig) -> list[LayerCount]:
    """Trainable adapter parameters that ``get_qpeft_model(model, config)`` would
    create, grouped by layer type and shape (in the model's order), without
    creating them: the same target search and frame specs, no compiled circuit.
    The trained copies of ``config.modules_to_save`` (a classifier head, say)
    are not adapter parameters and are not counted; they are the same for
    every method (``get_nb_trainable_parameters`` counts them).

    >>> import torch, qpeft
    >>> base = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 24))
    >>> rows = count_parameters(base, qpeft.QPeftConfig(target_modules="all-linear", rank=4))
    >>> [(row.layer_type, row.circuit_out, row.circuit_in, row.qpeft) for row in rows]
    [('0', 25, 19, 48), ('1', 19, 25, 48)]
    """
    paths = find_target_modules(model, config)
    plan = plan_frames(model, config, paths)
    groups: dict[tuple, int] = {}
    for path in paths:
        n_in, n_out, _ = linear_shape(model.get_submodule(path))
        specs = plan[path]
        key = (layer_type(path), n_in, n_out,
               specs["out"].num_parameters, specs["in"].num_parameters)
        groups[key] = groups.get(key, 0) + 1
    return [
        LayerCount(name, n_in, n_out, count, config.rank, p_out, p_in)
        for (name, n_in, n_out, p_out, p_in), count in groups.items()
    ]


@dataclass(frozen=True)
class CountReport:
    """The counts of one model, with what produced them."""

    model: str
    source: str
    target_modules: list[str] | str
    config: QPeftConfig
    rows: tuple[LayerCount, ...]
    lora_ranks: tuple[int, ...]
    base_parameters: int | None = None

    @property
    def qpeft(self) -> int:
        return sum(row.qpeft for row in self.rows)

    def lora(self, rank: int) -> int:
        return sum(row.lora(rank) for row in self.rows)

    @property
    def ratio(self) -> float:
        """LoRA at r = K over Quantum-PEFT at K."""
        return self.lora(self.config.rank) / self.qpeft

    def to_dict(self) -> dict[str, Any]:
        rank = self.config.rank
        return {
            "model": self.model,
            "source": self.source,
            "rank": rank,
            "layers": self.config.layers,
            "ansatz": self.config.ansatz if isinstance(self.config.ansatz, str) else "custom",
            "target_modules": self.target_modules,
            "lora_ranks": list(self.lora_ranks),
            "base_parameters": self.base_parameters,
            "rows": [
                {
                    "layer_type": row.layer_type,
                    "in_features": row.in_features,
                    "out_features": row.out_features,
                    "count": row.count,
                    "circuit_out": row.circuit_out,
                    "circuit_in": row.circuit_in,
                    "qpeft_per_layer": row.qpeft_per_layer,
                    "qpeft": row.qpeft,
                    "lora": {str(r): row.lora(r) for r in self.lora_ranks},
                    "ratio": row.lora(rank) / row.qpeft,
                }
                for row in self.rows
            ],
            "total": {
                "count": sum(row.count for row in self.rows),
                "qpeft": self.qpeft,
                "lora": {str(r): self.lora(r) for r in self.lora_ranks},
                "ratio": self.ratio,
            },
        }


def count_model(model: str, config_options: dict[str, Any], targets: str = "attention",
                lora_ranks: Sequence[int] = LORA_RANKS) -> CountReport:
    """Count the adapters of a built-in model, ``embedded`` or a model folder.

    ``config_options`` are :class:`~qpeft.adapters.config.QPeftConfig` fields
    (``rank``, ``layers``, ``ansatz``, …) other than ``target_modules``.

    >>> report = count_model("deberta-v3-base", {"rank": 4, "layers": 2})
    >>> [(row.layer_type, row.count, row.qpeft_per_layer) for row in report.rows][:2]
    [('attention.self.query_proj', 12, 92), ('attention.self.key_proj', 12, 92)]
    >>> report.qpeft, report.lora(4)
    (4416, 294912)
    """
    name = model.lower()
    if name in BUILTIN_MODELS:
        skeleton: nn.Module = builtin_skeleton(name)
        title, source = BUILTIN_MODELS[name].title, f"built-in ({BUILTIN_MODELS[name].reference})"
        base_parameters = None
    else:
        folder = Path(model)
        if name == "embedded":
            from qpeft.models import EMBEDDED_MODEL_NAME, embedded_model_dir

            folder, title = embedded_model_dir(), EMBEDDED_MODEL_NAME
        else:
            title = folder.name or str(folder)
        skeleton = local_skeleton(folder)
        source = str(folder)
        base_parameters = sum(p.numel() for p in skeleton.parameters())
    target_modules = target_modules_for(skeleton, targets)
    config = QPeftConfig(target_modules=target_modules, **config_options)
    ranks = tuple(sorted({*lora_ranks, config.rank}))
    rows = tuple(count_parameters(skeleton, config))
    return CountReport(title, source, target_modules, config, rows, ranks, base_parameters)


def width_curve(config_options: dict[str, Any], widths: Iterable[int] = PLOT_WIDTHS
                ) -> tuple[list[tuple[int, int]], list[str]]:
    """Quantum-PEFT parameters of one square ``N × N`` layer for each width N.

    Returns ``[(N, parameters)]`` and the reasons for the widths left out (an
    ansatz for powers of two only, K larger than N).

    >>> width_curve({"rank": 4, "layers": 2}, [384, 768])[0]
    [(384, 82), (768, 92)]
    """
    points, skipped = [], []
    for width in widths:
        config = QPeftConfig(target_modules=["layer"], **config_options)
        try:
            (row,) = count_parameters(_skeleton([("layer", width, width)]), config)
        except ConfigError as error:
            skipped.append(f"N={width}: {error}")
            continue
        points.append((width, row.qpeft_per_layer))
    return points, skipped


# -- output -------------------------------------------------------------------------------------
def print_report(report: CountReport, targets: str) -> None:
    """One table: a row per layer type and shape, then the total."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    config = report.config
    rank = config.rank
    ansatz = report.to_dict()["ansatz"]
    table = Table(
        title=f"{report.model}: Quantum-PEFT ({ansatz}, K={rank}, L={config.layers}) "
              f"vs LoRA, targets: {targets}",
        box=box.SIMPLE_HEAD, title_justify="left",
    )
    table.add_column("layer type")
    table.add_column("N_in→N_out", justify="right")
    table.add_column("layers", justify="right")
    table.add_column("qpeft/layer (P_U+P_V+K)", justify="right")
    table.add_column("qpeft", justify="right")
    for r in report.lora_ranks:
        table.add_column(f"LoRA r={r}", justify="right")
    table.add_column(f"LoRA r={rank} / qpeft", justify="right")
    for row in report.rows:
        table.add_row(
            row.layer_type, f"{row.in_features}→{row.out_features}", str(row.count),
            f"{row.qpeft_per_layer} ({row.circuit_out}+{row.circuit_in}+{rank})",
            f"{row.qpeft:,}", *(f"{row.lora(r):,}" for r in report.lora_ranks),
            f"{row.lora(rank) / row.qpeft:,.1f}",
        )
    table.add_section()
    table.add_row(
        "total", "", str(sum(row.count for row in report.rows)), "", f"{report.qpeft:,}",
        *(f"{report.lora(r):,}" for r in report.lora_ranks), f"{report.ratio:,.1f}",
    )
    # as wide as the table needs (rich would squeeze it into 80 columns when piped)
    needed = Console(width=1000).measure(table).maximum
    console = Console(highlight=False, width=max(Console().width, needed))
    console.print(table)
    notes = [f"source: {report.source}"]
    if report.base_parameters:
        share = 100 * report.qpeft / report.base_parameters
        notes.append(f"base model: {report.base_parameters:,} parameters; "
                     f"Quantum-PEFT trains {share:.4f}%")
    notes.append("layer types: " + ", ".join(dict.fromkeys(row.layer_type for row in report.rows))
                 + " (--json gives the exact target_modules)")
    print("\n".join(notes), end="\n\n")


def plot_curve(points: Sequence[tuple[int, int]], config_options: dict[str, Any],
               lora_ranks: Sequence[int], filename: str | Path) -> Path:
    """Parameters per ``N × N`` layer versus N on log-log axes; written atomically."""
    from matplotlib.figure import Figure

    from qpeft.draw import save

    rank = config_options["rank"]
    widths = [width for width, _ in points]
    figure = Figure(figsize=(6.4, 4.4))
    axes = figure.add_subplot()
    for r in lora_ranks:
        axes.plot(widths, [r * 2 * width for width in widths], linestyle="--",
                  label=f"LoRA r={r}: r·2N")
    label = (f"Quantum-PEFT ({config_options.get('ansatz', 'qudit')}, K={rank}, "
             f"L={config_options['layers']}): P_U+P_V+K")
    axes.plot(widths, [count for _, count in points], color="black", marker="o",
              markersize=3, label=label)
    odd = [(width, count) for width, count in points if width & (width - 1)]
    if odd:
        axes.plot(*zip(*odd), linestyle="none", marker="s", markerfacecolor="none",
                  color="tab:red", label="widths not a power of two")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("layer width N (an N × N layer)")
    axes.set_ylabel("trainable parameters per layer")
    axes.set_title("log N (Quantum-PEFT) versus N (LoRA)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return save(figure, filename)


# -- command line -------------------------------------------------------------------------------
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``count`` subcommand on ``subparsers``.

    >>> parser = argparse.ArgumentParser(prog="qpeft")
    >>> _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["count", "--model", "llama-3-70b", "--rank", "8"])
    >>> args.model, args.rank, args.layers, args.ansatz, args.targets
    ('llama-3-70b', 8, 2, 'qudit', 'attention')
    """
    parser = subparsers.add_parser(
        "count",
        help=__doc__.strip().splitlines()[0],
        description=(
            "Print the trainable parameters of Quantum-PEFT at rank K and L circuit layers "
            "next to LoRA at r = 1, 4, 8 (and K), per layer type and in total. Models: "
            f"{', '.join(BUILTIN_MODELS)} (built-in shapes, no download), 'all' for every "
            "built-in, 'embedded', or a local folder with a transformers config.json."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("--model", default="deberta-v3-base", metavar="NAME_OR_PATH",
                        help="built-in name, 'all', 'embedded' or a model folder "
                             "(default deberta-v3-base)")
    parser.add_argument("--rank", type=int, default=4, metavar="K",
                        help="K, the columns of U and V (default 4)")
    parser.add_argument("--layers", type=int, default=2, metavar="L",
                        help="L, the circuit's entangling blocks (default 2)")
    parser.add_argument("--ansatz", default="qudit",
                        help="catalog or mapping name, or a .py file (default qudit)")
    parser.add_argument("--targets", default="attention",
                        help="'attention' (default), 'all', or comma-separated layer names "
                             "(suffixes, as in QPeftConfig.target_modules)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw parameters per N × N layer versus N on log axes "
                             "(.png, .svg or .pdf)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Count, print (tables or JSON) and optionally plot; returns 0."""
    if args.plot is not None:
        from qpeft.draw import image_path

        image_path(args.plot, example="count.png")  # before any counting is printed
    options = {"rank": args.rank, "layers": args.layers, "ansatz": args.ansatz}
    models = list(BUILTIN_MODELS) if args.model.lower() == "all" else [args.model]
    reports = [count_model(model, options, args.targets) for model in models]
    if args.json:
        document = {"rank": args.rank, "layers": args.layers, "ansatz": args.ansatz,
                    "models": [report.to_dict() for report in reports]}
        print(json.dumps(document, indent=2))
    else:
        for report in reports:
            print_report(report, args.targets)
    if args.plot is not None:
        points, skipped = width_curve(options)
        if not points:
            raise ConfigError("no width could be plotted: " + "; ".join(skipped))
        for reason in skipped:
            print(f"--plot leaves out {reason}", file=sys.stderr)
        path = plot_curve(points, options, reports[0].lora_ranks, args.plot)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
