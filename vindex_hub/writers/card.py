"""The dataset card (``README.md``) and the var-K plot it shows: rendering only.

The card is the Jinja template ``templates/vindex_card.md.j2`` (package data; the top-level
``dataset_card/`` folder holds the same file for readers of the repository) rendered with
figures from the real build, below the typed front matter of ``format.card_data``. The card is
handed what was written (by ``writers.derived``), so it lists exactly the files the folder holds.

Both outputs are deterministic: no dates are invented (the citation's year is an option, which the
CLI sets to the current year, or ``SOURCE_DATE_EPOCH``'s) and the
PNG carries no software/time metadata, so two builds of one checkpoint are bit-identical.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import VindexFormatError
from ..format import card_data, filenames, larql, mirror, selection, sidecar, statistics
from ..format import geometry as geometry_names
from ..format.card_data import CardOptions, author_markdown, card_front_matter, title_of
from ..format.layout import format_size
from ..format.mirror import MirrorFile
from ..fsutil import atomic_write_bytes, atomic_write_text
from .geometry import CardGeometry, geometry_plot_png, mp_baseline

TEMPLATE_FILE = "vindex_card.md.j2"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


# ---- figures for the text (pure) -------------------------------------------------------------
def auto_citation(index: sidecar.VindexIndex, options: CardOptions) -> str:
    title = title_of(index, options)
    author = options.author or "vindex-hub"
    key = "_".join(
        re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_")
        for part in (author, title, str(options.year or ""))
        if part
    )
    # BibTeX splits a name into first and last names; an organisation's is kept whole.
    bib_author = f"{{{author}}}" if options.author_kind == "org" or not options.author else author
    lines = [
        f"@misc{{{key},",
        f"  title = {{{title}: per-expert gate-vector vindex for {index.display_name}}},",
        f"  author = {{{bib_author}}},",
    ]
    if options.year:
        lines.append(f"  year = {{{options.year}}},")
    if options.repo_id:
        lines.append(f"  url = {{https://huggingface.co/datasets/{options.repo_id}}},")
    return "\n".join(lines + ["}"])


def source_model_markdown(index: sidecar.VindexIndex) -> str:
    """The card's "Source model": a link to the Hub model, and for a local build the folder it
    was read from; a local checkpoint that names no model is its folder's name alone."""
    source = index.source
    model_id = source.model_repo_id
    if model_id is None:
        return f"`{index.display_name}` (a local checkpoint; its config names no Hub model)"
    link = f"[`{model_id}`]({card_data.HUB_URL}/{model_id})"
    if source.repo_id:
        return link
    return f"{link} (built from a local copy, folder `{index.display_name}`)"


def license_markdown(index: sidecar.VindexIndex, options: CardOptions) -> str:
    """The card's license line: the license and where it came from."""
    license = card_data.card_license(index, options)
    if options.license:
        return f"`{license}`"
    if index.source.license:
        return f"`{license}`, the source model's license"
    return (
        f"`{license}`: the source model's card names none; check the source model's terms "
        "(the vectors are derived from its weights)"
    )


# ---- the plot --------------------------------------------------------------------------------
def var_plot_png(index: sidecar.VindexIndex) -> bytes:
    """``var_plot_figure`` as PNG bytes without time/software metadata."""
    fig = var_plot_figure(index)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def var_plot_png_of(index_json: dict[str, Any]) -> bytes:
    """``var_plot_png`` of the index whose ``VindexIndex.to_json`` is ``index_json`` (plain data:
    what a process rendering the plot for another is handed)."""
    return var_plot_png(sidecar.VindexIndex.from_json(index_json))


def var_plot_figure(index: sidecar.VindexIndex) -> Any:
    """Median var{K} per layer with the q25-q75 band and the Marchenko-Pastur baseline (a Gaussian
    matrix of the expert's shape). The y axis runs from 0 to 1 (var{K} is a fraction), so a 1%
    difference between layers looks like one, and the baseline is always in view."""
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
    mp = mp_baseline(index)
    ax.axhline(
        mp,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"Gaussian random matrix (Marchenko-Pastur) = {mp:.3f}",
    )
    ax.set_ylim(0, 1)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_ylabel(f"{statistics.var_key(k)} = top-{k} energy fraction")
    ax.set_title(f"{index.display_name}: gate_proj energy in the top {k} singular directions")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


# ---- the card --------------------------------------------------------------------------------
def example_layer_of(index: sidecar.VindexIndex) -> int:
    """The layer the card's examples use: layer 1 when the vindex has it, else its first."""
    return 1 if 1 in index.layers else index.layer_ids[0]


def render_card(
    index: sidecar.VindexIndex,
    options: CardOptions,
    *,
    files: Collection[str],
    mirror_files: Sequence[MirrorFile],
    feature_examples: Sequence[dict] = (),
    geometry: CardGeometry | None = None,
) -> str:
    """The card's text (front matter + body), describing the written ``files`` and ``mirror_files``;
    ``feature_examples`` are a few ``feature_tokens`` rows to quote; ``geometry`` the expert
    geometry's figures (``writers.geometry.card_figures``), when the vindex has them."""
    import jinja2
    from huggingface_hub import DatasetCard

    moe = index.model_config.moe
    layers = index.layer_ids
    example_layer = example_layer_of(index)
    feature_files = [f for f in mirror_files if f.config == mirror.CONFIG_FEATURE_TOKENS]
    k = index.num_feats
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    text = env.get_template(TEMPLATE_FILE).render(
        card_data=card_front_matter(index, mirror_files, options).to_yaml(),
        title=title_of(index, options),
        model=index.display_name,
        source_model=source_model_markdown(index),
        license=license_markdown(index, options),
        author=author_markdown(options),
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
        svd_route=index.builder.svd_route,
        sign_rule=index.builder.sign_rule,
        total_size=format_size(index.total_bytes),
        plot_file=filenames.VAR_PLOT_FILE,
        files={
            "binary": filenames.GATE_VECTORS_BIN,
            "index": filenames.SIDECAR_JSON,
            "phase1": filenames.PHASE1_JSON,
            "phase2": filenames.PHASE2_JSON,
            "data_dir": filenames.DATA_DIR,
            "larql": filenames.LARQL_INDEX_JSON,
            "router": filenames.LARQL_ROUTER_BIN,
            "embeddings": filenames.LARQL_EMBEDDINGS_BIN,
            "tokenizer": filenames.TOKENIZER_JSON,
            "feature_tokens": mirror.FEATURE_TOKENS_PARQUET,
        },
        median_key=statistics.median_var_key(k),
        q25_key=statistics.q25_var_key(k),
        q75_key=statistics.q75_var_key(k),
        var_key=statistics.var_key(k),
        has_phase1=filenames.PHASE1_JSON in files,
        has_phase2=filenames.PHASE2_JSON in files,
        router_matrix=index.router_matrix,
        has_larql=filenames.LARQL_INDEX_JSON in files,
        has_router_bin=filenames.LARQL_ROUTER_BIN in files,
        has_browse_tier=filenames.LARQL_EMBEDDINGS_BIN in files
        and filenames.TOKENIZER_JSON in files,
        gate_only_commands=", ".join(f"`{c}`" for c in larql.GATE_ONLY_COMMANDS),
        browse_commands=", ".join(f"`{c}`" for c in larql.BROWSE_COMMANDS),
        feature_tokens_k=(
            mirror.feature_tokens_k(feature_files[0].arrow_schema) if feature_files else 0
        ),
        feature_examples=[_example_row(row) for row in feature_examples],
        has_stats=any(f.config == mirror.CONFIG_EXPERT_STATS for f in mirror_files),
        example_layer=example_layer,
        example_config=mirror.layer_config(example_layer, index.model_config.num_hidden_layers),
        first_layer_config=mirror.layer_config(layers[0], index.model_config.num_hidden_layers),
        last_layer_config=mirror.layer_config(layers[-1], index.model_config.num_hidden_layers),
        example_parquet=mirror.gate_vectors_parquet(
            example_layer, index.model_config.num_hidden_layers
        ),
        repo_id=options.repo_id or f"{_namespace_of(options.author)}/{title_of(index, options)}",
        citation=(options.citation or auto_citation(index, options)).strip(),
        builder=None
        if index.builder.name == sidecar.UNKNOWN
        else f"{index.builder.name} {index.builder.version}",
        writer_version=__version__,
        mp_var=f"{mp_baseline(index):.4f}",
        geometry=_geometry_context(geometry, mirror_files),
    )
    DatasetCard(text)  # parses the front matter: a card the Hub would reject fails here
    return text


def _namespace_of(author: str | None) -> str:
    """The namespace the card's examples use when no repo id was given."""
    return author if author and card_data.is_hub_name(author) else "your-namespace"


def _geometry_context(
    figures: CardGeometry | None, mirror_files: Sequence[MirrorFile]
) -> dict | None:
    """The template's geometry section: the figure, the table of mean overlaps per layer, and
    whether ``expert_stats`` has the router-alignment columns."""
    if figures is None:
        return None
    weighted: list[float | None] = (
        list(figures.weighted_mean) if figures.weighted_mean else [None] * len(figures.layers)
    )
    return {
        "plot_file": filenames.GEOMETRY_PLOT_FILE,
        "config": geometry_names.CONFIG_EXPERT_OVERLAP,
        "parquet": geometry_names.EXPERT_OVERLAP_PARQUET,
        "baseline": f"{figures.baseline:.4f}",
        "heatmap_layer": figures.heatmap_layer,
        "top_ratio": f"{figures.top_ratio:.1f}",
        "has_weighted": figures.weighted_mean is not None,
        "alignment_columns": ", ".join(f"`{c}`" for c in geometry_names.ALIGNMENT_COLUMNS),
        "has_alignment": any(
            f.config == mirror.CONFIG_EXPERT_STATS
            and geometry_names.COL_ROUTER_ALIGNMENT in f.arrow_schema.names
            for f in mirror_files
        ),
        "rows": [
            {
                "layer": layer,
                "mean": f"{mean:.4f}",
                "ratio": f"{mean / figures.baseline:.2f}",
                "max": f"{top:.4f}",
                "weighted": "" if w is None else f"{w:.4f}",
            }
            for layer, mean, top, w in zip(
                figures.layers, figures.mean, figures.max, weighted, strict=True
            )
        ],
    }


def _example_row(row: dict) -> dict:
    """A feature_tokens row for the card's table: tokens quoted, cosines to 3 places."""
    pairs = zip(row[mirror.COL_TOKENS], row[mirror.COL_SCORES], strict=True)
    return {
        "expert": row[mirror.COL_EXPERT],
        "feature": row[mirror.COL_FEATURE],
        "tokens": ", ".join(f'`"{t}"` ({s:+.3f})'.replace("|", "\\|") for t, s in pairs),
    }


def write_card(
    folder: str | Path,
    index: sidecar.VindexIndex,
    options: CardOptions,
    *,
    files: Collection[str],
    mirror_files: Sequence[MirrorFile],
    feature_examples: Sequence[dict] = (),
    geometry: CardGeometry | None = None,
    var_plot: bytes | None = None,
) -> list[str]:
    """Write ``README.md`` and the plots it embeds; return their paths. ``var_plot``: the
    ``var_plot_png`` of ``index`` when already rendered."""
    folder = Path(folder)
    if not index.layers:
        raise VindexFormatError(f"{folder}: the index lists no layers; nothing to describe")
    atomic_write_bytes(folder / filenames.VAR_PLOT_FILE, var_plot or var_plot_png(index))
    plots = [filenames.VAR_PLOT_FILE]
    if geometry is not None:
        atomic_write_bytes(
            folder / filenames.GEOMETRY_PLOT_FILE, geometry_plot_png(geometry, index.display_name)
        )
        plots.append(filenames.GEOMETRY_PLOT_FILE)
    atomic_write_text(
        folder / filenames.CARD_FILE,
        render_card(
            index,
            options,
            files=files,
            mirror_files=mirror_files,
            feature_examples=feature_examples,
            geometry=geometry,
        ),
    )
    return [*plots, filenames.CARD_FILE]
