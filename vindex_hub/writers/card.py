"""The dataset card (``README.md``) and the var-K plot it shows.

The card is the Jinja template ``dataset_card/vindex_card.md.j2`` (shipped in the package as
``vindex_hub/templates``) rendered with figures from the real build, below typed front matter
(``huggingface_hub.DatasetCardData``): license, tags, ``base_model``, ``configs`` (which parquet
files make which config and split: what ``load_dataset`` reads) and ``dataset_info`` (features
and split sizes, read back from the parquet files on disk so the card cannot disagree with them).

The fields a user chooses (license, author, repo id, citation, tags, name) come from
``CardOptions``: CLI options or a small YAML/JSON file (``CardOptions.from_file``).

Both outputs are deterministic: no dates are invented (the citation's year is an option) and the
PNG carries no software/time metadata, so two builds of one checkpoint are bit-identical.
"""

from __future__ import annotations

import dataclasses
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..format import filenames, mirror, selection, sidecar, statistics
from ..errors import UsageError, VindexFormatError
from ..format.layout import format_size  # noqa: F401 (the card's size figures; re-exported)
from ..fsutil import atomic_write_bytes, atomic_write_text
from .mirror import UNKNOWN

TEMPLATE_FILE = "vindex_card.md.j2"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"  # package data; dataset_card/ holds a copy
BASE_TAGS = ("vindex", "moe", "sparse-routing", "mechanistic-interpretability")


@dataclass(frozen=True)
class CardOptions:
    """Card fields the user sets. In a file, the keys are these field names."""

    license: str = "mit"
    author: str | None = None  # person or organisation, e.g. "Divinci-AI"
    repo_id: str | None = None  # where the vindex will live, for links: "Divinci-AI/deepseek-v4-flash-vindex"
    citation: str | None = None  # a BibTeX entry; None writes one from the fields here
    extra_tags: tuple[str, ...] = ()
    pretty_name: str | None = None
    year: int | None = None  # for the automatic citation (left out when None)

    @classmethod
    def from_file(cls, path: str | Path) -> "CardOptions":
        """Read a YAML (or JSON, a subset of YAML) mapping of the fields above."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"{path}: cannot read card options ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({exc})") from None
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise UsageError(f"{path}: expected a mapping of card fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{path}: unknown card option(s) {unknown}; known: {sorted(known)}")
        return cls().updated(where=str(path), **data)

    def updated(self, *, where: str = "card options", **changes: Any) -> "CardOptions":
        """A copy with the given fields replaced; ``None`` values leave a field as it is.

        ``where`` (the options file, or the CLI) names the source in error messages.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        if "extra_tags" in changes:
            tags = changes["extra_tags"]
            changes["extra_tags"] = (tags,) if isinstance(tags, str) else tuple(str(t) for t in tags)
        if "year" in changes:
            changes["year"] = _year(changes["year"], where)
        return dataclasses.replace(self, **changes)


def _year(value: Any, where: str) -> int:
    # YAML gives 2026 as an int; a CLI or a quoted value gives "2026". Nothing else is a year.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    raise UsageError(f"{where}: year is {value!r}; expected a year such as 2026")


def read_card_data(path: Path) -> dict[str, Any]:
    """The front matter of the card at ``path`` as a dict ({} without one).

    Raises ``VindexFormatError`` naming the file when the front matter is not YAML or not a mapping.
    """
    from huggingface_hub import DatasetCard

    try:
        return DatasetCard(path.read_text(encoding="utf-8")).data.to_dict()
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a front matter that is not a mapping
        raise VindexFormatError(f"{path}: the card's YAML front matter does not parse ({exc})") from None


# ---- figures for the text (pure) -------------------------------------------------------------
def title_of(index: sidecar.VindexIndex, options: CardOptions) -> str:
    if options.pretty_name:
        return options.pretty_name
    if options.repo_id:
        return options.repo_id.split("/")[-1]
    return f"{model_name(index).split('/')[-1].lower()}-vindex"


def model_name(index: sidecar.VindexIndex) -> str:
    """The Hub repo id, else the local checkpoint folder's name (a card never shows local paths)."""
    return index.display_name


def auto_citation(index: sidecar.VindexIndex, options: CardOptions) -> str:
    title = title_of(index, options)
    author = options.author or "vindex-hub"
    key = "_".join(re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_")
                   for part in (author, title, str(options.year or "")) if part)
    lines = [
        f"@misc{{{key},",
        f"  title = {{{title}: per-expert gate-vector vindex for {model_name(index)}}},",
        f"  author = {{{author}}},",
    ]
    if options.year:
        lines.append(f"  year = {{{options.year}}},")
    if options.repo_id:
        lines.append(f"  url = {{https://huggingface.co/datasets/{options.repo_id}}},")
    return "\n".join(lines + ["}"])


# ---- front matter ----------------------------------------------------------------------------
def mirror_configs(index: sidecar.VindexIndex, with_stats: bool) -> list[tuple[str, list[tuple[str, str]]]]:
    """(config name, [(split, parquet path)]) for each config of the mirror, default first."""
    configs = [(mirror.CONFIG_GATE_VECTORS,
                [(mirror.split_name(layer), mirror.gate_vectors_parquet(layer)) for layer in index.layer_ids])]
    if with_stats:
        configs += [(mirror.CONFIG_EXPERT_STATS, [(mirror.STATS_SPLIT, mirror.EXPERT_STATS_PARQUET)]),
                    (mirror.CONFIG_ROUTER_SVD, [(mirror.STATS_SPLIT, mirror.ROUTER_SVD_PARQUET)])]
    return configs


def dataset_info(folder: Path, configs: list[tuple[str, list[tuple[str, str]]]]) -> list[dict[str, Any]]:
    """``dataset_info`` entries read from the parquet files: features, rows, sizes.

    ``num_bytes`` is the uncompressed size of the split's data, ``download_size`` the files' size.
    Features use ``datasets``' own YAML spelling (``{name, list: float32, length: H}`` for a
    fixed-size list), the inverse of what ``load_dataset`` parses.
    """
    import pyarrow.parquet as pq
    from datasets import Features

    infos = []
    for config_name, splits in configs:
        features = None
        split_infos, download = [], 0
        for split, rel in splits:
            path = folder / rel
            try:
                meta = pq.read_metadata(path)
            except FileNotFoundError:
                raise VindexFormatError(f"{path}: missing; write the mirror before the card") from None
            if features is None:
                features = Features.from_arrow_schema(meta.schema.to_arrow_schema())
            nbytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            split_infos.append({"name": split, "num_bytes": nbytes, "num_examples": meta.num_rows})
            download += path.stat().st_size
        infos.append({
            "config_name": config_name,
            "features": features._to_yaml_list(),
            "splits": split_infos,
            "download_size": download,
            "dataset_size": sum(s["num_bytes"] for s in split_infos),
        })
    return infos


def card_data(folder: Path, index: sidecar.VindexIndex, with_stats: bool, options: CardOptions):
    from huggingface_hub import DatasetCardData

    configs = mirror_configs(index, with_stats)
    base_model = index.source.repo_id
    return DatasetCardData(
        license=options.license,
        pretty_name=title_of(index, options),
        tags=list(dict.fromkeys([*BASE_TAGS, *options.extra_tags])),
        **({"base_model": base_model} if base_model else {}),
        configs=[
            {
                "config_name": name,
                **({"default": True} if name == mirror.CONFIG_GATE_VECTORS else {}),
                "data_files": [{"split": split, "path": rel} for split, rel in splits],
            }
            for name, splits in configs
        ],
        dataset_info=dataset_info(folder, configs),
    )


# ---- the plot --------------------------------------------------------------------------------
def var_plot_png(index: sidecar.VindexIndex) -> bytes:
    """Median var{K} per layer with the q25-q75 band; PNG bytes without time/software metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    layers = index.layer_ids
    median = [index.layers[layer].median_var for layer in layers]
    q25 = [index.layers[layer].q25_var for layer in layers]
    q75 = [index.layers[layer].q75_var for layer in layers]
    k = index.num_feats
    fig = Figure(figsize=(8, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.fill_between(layers, q25, q75, alpha=0.3, linewidth=0, label="q25-q75 over experts")
    ax.plot(layers, median, marker="o", markersize=3, label=f"median {statistics.var_key(k)}")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_ylabel(f"{statistics.var_key(k)} = top-{k} energy fraction")
    ax.set_title(f"{model_name(index)}: gate_proj energy in the top {k} singular directions")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ---- the card --------------------------------------------------------------------------------
def has_stats_mirror(folder: Path) -> bool:
    """Whether the folder holds the ``expert_stats`` and ``router_svd`` configs' files."""
    return all((folder / rel).is_file() for rel in (mirror.EXPERT_STATS_PARQUET, mirror.ROUTER_SVD_PARQUET))


def render_card(folder: Path, index: sidecar.VindexIndex, options: CardOptions) -> str:
    """The card's text (front matter + body), describing the files the folder holds; reads the
    parquet files for ``dataset_info``."""
    import jinja2
    from huggingface_hub import DatasetCard

    with_stats = has_stats_mirror(folder)
    moe = index.model_config.moe
    layers = index.layer_ids
    example_layer = 1 if 1 in index.layers else layers[0]
    k = index.num_feats
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    text = env.get_template(TEMPLATE_FILE).render(
        card_data=card_data(folder, index, with_stats, options).to_yaml(),
        title=title_of(index, options),
        model=model_name(index),
        author=options.author,
        revision=index.source.revision,
        model_type=index.model_config.model_type,
        num_hidden_layers=index.model_config.num_hidden_layers,
        hidden_size=moe.hidden_size,
        moe_intermediate_size=moe.moe_intermediate_size,
        n_routed_experts=moe.n_routed_experts,
        n_shared_experts=moe.n_shared_experts,
        num_experts_per_tok=moe.num_experts_per_tok,
        num_layers=len(layers),
        layer_span=selection.layer_span(layers, labels=True),
        num_feats=k,
        method=index.builder.method,
        sign_rule=index.builder.sign_rule,
        total_size=format_size(index.total_bytes),
        plot_file=filenames.VAR_PLOT_FILE,
        files={"binary": filenames.GATE_VECTORS_BIN, "index": filenames.INDEX_JSON, "phase1": filenames.PHASE1_JSON,
               "phase2": filenames.PHASE2_JSON, "data_dir": filenames.DATA_DIR, "larql": filenames.LARQL_INDEX_JSON,
               "router": filenames.LARQL_ROUTER_BIN},
        median_key=statistics.median_var_key(k), q25_key=statistics.q25_var_key(k), q75_key=statistics.q75_var_key(k),
        var_key=statistics.var_key(k),
        has_phase1=(folder / filenames.PHASE1_JSON).exists(),
        has_phase2=(folder / filenames.PHASE2_JSON).exists(),
        has_larql=(folder / filenames.LARQL_INDEX_JSON).exists(),
        has_router_bin=(folder / filenames.LARQL_ROUTER_BIN).exists(),
        has_stats=with_stats,
        example_layer=example_layer,
        example_split=mirror.split_name(example_layer),
        example_parquet=mirror.gate_vectors_parquet(example_layer),
        repo_id=options.repo_id or f"{options.author or 'your-namespace'}/{title_of(index, options)}",
        citation=(options.citation or auto_citation(index, options)).strip(),
        builder=None if index.builder.name == UNKNOWN else f"{index.builder.name} {index.builder.version}",
        writer_version=__version__,
    )
    DatasetCard(text)  # parses the front matter: a card the Hub would reject fails here
    return text


def write_card(folder: str | Path, index: sidecar.VindexIndex, options: CardOptions | None = None) -> None:
    """Write ``README.md`` and the var-K plot it embeds, after the mirror and LarQL index: the
    card lists the configs whose files are there."""
    folder = Path(folder)
    options = options or CardOptions()
    if not index.layers:
        raise VindexFormatError(f"{folder}: the index lists no layers; nothing to describe")
    atomic_write_bytes(folder / filenames.VAR_PLOT_FILE, var_plot_png(index))
    atomic_write_text(folder / filenames.CARD_FILE, render_card(folder, index, options))
