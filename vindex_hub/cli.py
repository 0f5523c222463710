"""``vindex-hub``: a thin command line over the library.

Each subcommand parses its options and calls one library function, whose result comes back as an
``Outcome`` (text for people, a JSON-ready object for ``--json``) and is printed by ``main`` alone.
Every default and choice is the library's own constant. A ``VindexError`` becomes a single line on
stderr and exit status 1 (2 for bad usage, as argparse does); bad input never shows a traceback.
So does an OS error (a full disk, a read-only folder: ``exits``), with the hint that matters;
Ctrl-C ends a run within a second, and a closed stdout ends it quietly.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .compat import DefaultsHelpFormatter
from .errors import IntegrityError, UsageError, VindexError, VindexFormatError
from .format import sidecar, statistics
from .format.layout import format_size
from .numerics import routes


@dataclass
class Outcome:
    """What a command did: ``text`` for people, ``data`` for ``--json``, and the exit status."""

    text: str
    data: Any
    status: int = 0


def _card_options(args: argparse.Namespace):
    from .format.card_data import CardOptions, default_year

    options = CardOptions.from_file(args.card_config) if args.card_config else CardOptions()
    citation = None
    if args.citation:
        try:
            citation = Path(args.citation).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"--citation {args.citation}: cannot read it ({exc.strerror})"
            ) from None
    options = options.updated(
        license=args.license,
        author=args.author,
        author_kind=args.author_kind,
        year=args.year,
        repo_id=args.card_repo_id,
        citation=citation,
        extra_tags=args.tag or None,
    )
    # A citation needs a year; the library writes none it is not given (its output stays
    # deterministic), so the command line gives this one.
    return options if options.year else options.updated(year=default_year())


def _browse_options(args: argparse.Namespace):
    from .writers.browse import BrowseOptions

    return BrowseOptions(
        feature_tokens=args.feature_tokens,
        larql_browse=args.larql_browse,
        embeddings_dtype=args.embeddings_dtype,
    )


def cmd_build(args: argparse.Namespace) -> Outcome:
    from .builder.workers import start_for_build

    # Before the builder's imports: the workers' own start-up overlaps them (build_vindex adopts
    # them, and stops any it does not need).
    start_for_build(args.workers, args.device, args.engine)
    from .builder import build_vindex

    summary = build_vindex(
        args.source,
        args.out,
        num_feats=args.num_feats,
        layers=args.layers,
        revision=args.revision,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        batch_size=args.batch_size,
        prefetch_layers=args.prefetch_layers,
        card_options=_card_options(args),
        larql_router=args.larql_router,
        browse=_browse_options(args),
        progress=not args.quiet,
        engine=args.engine,
        ray_address=args.ray_address,
        geometry=args.geometry,
    )
    data = {
        "out": str(summary.out),
        "layers": summary.layers,
        "built_layers": summary.built_layers,
        "total_bytes": summary.index.total_bytes,
        "seconds": summary.seconds,
        "already_complete": summary.already_complete,
    }
    if summary.already_complete:
        return Outcome(f"{summary.out} already holds this vindex, complete; nothing to do", data)
    resumed = len(summary.layers) - len(summary.built_layers)
    note = f" ({resumed} resumed)" if resumed else ""
    return Outcome(
        f"built {summary.out}: {len(summary.layers)} layers{note}, "
        f"{format_size(summary.index.total_bytes)} of gate vectors in {summary.seconds:.1f} s",
        data,
    )


def cmd_convert(args: argparse.Namespace) -> Outcome:
    from .convert import convert_vindex

    written = convert_vindex(
        Path(args.folder),
        card_options=_card_options(args),
        source=args.source,
        revision=args.revision,
        browse=_browse_options(args),
        device=args.device,
    )
    return Outcome(
        f"converted {args.folder}: {len(written)} files written ({', '.join(sorted(written)[:3])}, ...)",
        {"folder": args.folder, "written": written},
    )


def cmd_geometry(args: argparse.Namespace) -> Outcome:
    from .geometry import add_geometry

    folder = add_geometry(
        args.path,
        args.out,
        revision=args.revision,
        repo_type=args.repo_type,
        card_options=_card_options(args) if _card_options_given(args) else None,
    )
    return Outcome(f"expert geometry added to {folder}", {"folder": str(folder)})


def _card_options_given(args: argparse.Namespace) -> bool:
    return any(
        getattr(args, name)
        for name in ("card_config", "license", "author", "card_repo_id", "citation", "tag")
    )


def cmd_compare(args: argparse.Namespace) -> Outcome:
    from .comparison import compare

    result = compare(
        args.a,
        args.b,
        out=args.out,
        layers=args.layers,
        revision_a=args.revision_a,
        revision_b=args.revision_b,
        repo_type=args.repo_type,
    )
    return Outcome(result.render(), result.document)


def cmd_list(args: argparse.Namespace) -> Outcome:
    from .listing import list_vindexes
    from .safetext import printable

    found = list_vindexes(author=args.author, model=args.model, limit=args.limit)
    lines = [f"{'repo':<48} {'base model':<36} {'layers':>6} {'K':>4} {'size':>10}"]
    for v in found:
        lines.append(
            f"{printable(v.repo_id):<48} {printable(v.base_model or '-'):<36} "
            f"{v.layers if v.layers is not None else '-':>6} "
            f"{v.num_feats if v.num_feats is not None else '-':>4} "
            f"{format_size(v.size) if v.size is not None else '-':>10}"
        )
    if not found:
        lines = ["no vindex found"]
    return Outcome("\n".join(lines), [v.__dict__ for v in found])


def cmd_verify(args: argparse.Namespace) -> Outcome:
    from .verify import verify_source

    report = verify_source(
        args.path,
        args.revision,
        repo_type=args.repo_type,
        # Before the report, on stdout (stderr holds an error's one line); not with --json,
        # whose stdout is the JSON alone.
        announce=None if args.json else lambda line: print(line, flush=True),
    )
    text = report.render()
    if not report.ok and report.folder != Path(args.path):  # the Hub cache's copy was checked
        from .hub.http import damaged_copy_hint

        named = " ".join(report.problems)
        text += "".join(
            "\nnote: " + damaged_copy_hint(path).removeprefix("; ")
            for path in sorted(report.folder.rglob("*"))
            if damaged_copy_hint(path)
            and re.search(
                rf"(?<![\w./-]){re.escape(path.relative_to(report.folder).as_posix())}\b", named
            )
        )
    return Outcome(text, report.to_json(), 0 if report.ok else 1)


def cmd_info(args: argparse.Namespace) -> Outcome:
    from .load import Vindex, remote_info

    if args.features:
        with Vindex.open(args.path, revision=args.revision, repo_type=args.repo_type) as vx:
            features = vx.feature_tokens(*args.features)
        return Outcome(
            _render_features(args.features, features),
            {"layer": args.features[0], "expert": args.features[1], "features": features},
        )
    if Path(args.path).is_dir():
        with Vindex.open(args.path) as vx:
            info = vx.info()
    else:
        info = remote_info(args.path, args.revision, repo_type=args.repo_type)
    return Outcome(_render_info(info), info)


def _describe_route(builder: dict) -> str:
    """The SVD route line of ``info``: route, BLAS threads and workers, where recorded."""
    if not builder.get("svd_route"):
        return "not recorded (built before routes were recorded)"
    extras = [
        f"{builder[key]} {label}"
        for key, label in (("blas_threads", "BLAS thread(s) each"), ("workers", "worker(s)"))
        if builder.get(key)
    ]
    return builder["svd_route"] + (f" ({', '.join(extras)})" if extras else "")


def _render_info(info: dict) -> str:
    k = info["num_feats"]
    source = info["source"]
    lines = [
        f"{info['location']}",  # a repo's location is repo@commit already
        f"  model      {source.get('repo_id') or source.get('name') or source.get('path')} ({info['model_type']})"
        + (
            f", a local copy of {source['model_id']}"
            if source.get("model_id") and not source.get("repo_id")
            else ""
        )
        + (f" @ {source['revision']}" if source.get("revision") else ""),
        f"  shape      {info['num_layers']} layers x {info['num_experts']} experts x {k} feats x "
        f"{info['hidden_size']} hidden, float32",
        f"  size       {format_size(info['total_bytes'])} ({format_size(info['layer_nbytes'])} a layer)",
        f"  builder    {info['builder']['name']} {info['builder']['version']}: {info['builder']['method']}",
        f"  svd route  {_describe_route(info['builder'])}",
        *(
            []
            if info.get(sidecar.ROUTER_MATRIX_KEY, True)
            else ["  router     not a matrix: no router figures"]
        ),
        f"  {'layer':>5}  {'offset':>14}  {statistics.median_var_key(k):>12}  {'q25..q75':>17}  sha256",
    ]
    for e in info["layers"]:
        lines.append(
            f"  {e['layer']:>5}  {e['file_offset']:>14}  {e[statistics.INFO_MEDIAN_VAR]:>12.4f}  "
            f"{e[statistics.INFO_Q25_VAR]:>8.4f}..{e[statistics.INFO_Q75_VAR]:<7.4f}  {e['sha256'][:16]}"
        )
    return "\n".join(lines)


def _render_token(text: str, token_id: int) -> str:
    """A feature-token label as published: already escaped once (``\\x07``, ``\\n``), so quoted
    as is, not through ``repr`` (which would escape the backslash again); an embedding row beyond
    the tokenizer's vocabulary (padding) has no token and shows as ``<id N>``, unquoted."""
    return text if text == f"<id {token_id}>" else f'"{text}"'


def _render_features(where: Sequence[int], features: list) -> str:
    lines = [
        f"layer {where[0]}, expert {where[1]}: top tokens by |cosine| with the input embedding "
        "(<id N>: an embedding row past the tokenizer's vocabulary)"
    ]
    for feature, tokens in enumerate(features):
        lines.append(
            f"  {feature:>4}  "
            + "  ".join(
                f"{_render_token(text, token_id)} {score:+.3f}" for text, token_id, score in tokens
            )
        )
    return "\n".join(lines)


def cmd_pull(args: argparse.Namespace) -> Outcome:
    from .pull import pull_vindex

    path = pull_vindex(
        args.repo_id,
        args.out,
        layers=args.layers,
        format=args.format,
        revision=args.revision,
        repo_type=args.repo_type,
    )
    from .format.pull_marker import COMMIT, read_pull_marker

    commit = read_pull_marker(path).get(COMMIT)
    size = sum(
        f.stat().st_size
        for f in path.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
    )
    return Outcome(
        f"pulled {args.repo_id}"
        + (f" at commit {commit}" if commit else "")
        + f" into {path}: {format_size(size)}",
        {"folder": str(path), "commit": commit, "bytes": size},
    )


def cmd_push(args: argparse.Namespace) -> Outcome:
    from .push import push_vindex

    result = push_vindex(
        args.folder,
        args.repo_id,
        repo_type=args.repo_type,
        revision=args.revision,
        create_pr=args.create_pr,
        private=args.private,
        commit_message=args.message,
        dry_run=args.dry_run,
        create_branch=args.create_branch,
        include=args.include or (),
    )
    return Outcome(result.render(), result.to_json())


def cmd_demo(args: argparse.Namespace) -> Outcome:
    from .demo import run_demo

    summary = run_demo(workdir=args.workdir, keep=args.keep, show=False)
    return Outcome(summary.render(), summary.to_json())


def cmd_families(args: argparse.Namespace) -> Outcome:
    from .arch import refused_architectures, supported_architectures
    from .arch.catalog import FORMATS, describe_families

    listed = describe_families(supported_architectures(), refused_architectures())
    lines = [f"{len(listed['supported'])} supported MoE model types, with the formats they read:"]
    lines += [f"  ({tag}: {name})" for tag, name in FORMATS.items()]
    lines += [
        f"  {f['model_type']:<24} {f['family']:<34} {f['adapter']:<10} {f['formats']:<18} "
        f"{f['note']}".rstrip()
        for f in listed["supported"]
    ]
    lines.append(f"refused MoE model types (no gated experts), with why: {len(listed['refused'])}")
    lines += [f"  {f['model_type']:<24} {f['reason']}" for f in listed["refused"]]
    return Outcome("\n".join(lines), listed)


def cmd_local_hub(args: argparse.Namespace) -> Outcome:
    import errno

    from .hubserver import serve

    try:
        serve(args.root, host=args.host, port=args.port, transfer=args.transfer)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise UsageError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror}; "
                "pick another port with --port (0 picks a free one)"
            ) from None
        raise
    return Outcome("local Hub stopped", {"root": args.root})


def _add_revision(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--revision",
        default=None,
        help=f"{what} branch, tag or commit sha (default: the main branch)",
    )


def _add_card_options(p: argparse.ArgumentParser) -> None:
    from .format.card_data import AUTHOR_KINDS, UNKNOWN_LICENSE

    card = p.add_argument_group("dataset card")
    card.add_argument(
        "--card-config",
        help="YAML file of card fields (license, author, author_kind, repo_id, citation, "
        "extra_tags, pretty_name, year)",
    )
    card.add_argument(
        "--license",
        help="card license, a Hub license id (default: the source model's license, read from "
        f"its card; '{UNKNOWN_LICENSE}' when it names none)",
    )
    card.add_argument(
        "--author",
        help="author named in the card: a person ('Jane Doe'), a Hub username or an organisation",
    )
    card.add_argument(
        "--author-kind",
        choices=AUTHOR_KINDS,
        default=None,
        help="org: 'by the [ORG](hub link) team'; user: a link to the Hub user; name: plain "
        "text (default: a link when --author is a Hub name, else plain text)",
    )
    card.add_argument(
        "--year",
        default=None,
        help="the citation's year (default: this year, or SOURCE_DATE_EPOCH's)",
    )
    card.add_argument("--card-repo-id", help="the Hub repo the vindex will live in (for links)")
    card.add_argument("--citation", help="file holding a BibTeX entry for the card")
    card.add_argument("--tag", action="append", help="extra card tag (repeatable)")


def _add_browse_options(p: argparse.ArgumentParser) -> None:
    from .format.larql import DEFAULT_EMBEDDING_DTYPE, EMBEDDING_DTYPES

    g = p.add_argument_group(
        "feature tokens and LarQL's browse tier (need the checkpoint's embedding and tokenizer)"
    )
    g.add_argument(
        "--feature-tokens",
        type=int,
        default=0,
        metavar="K",
        help="label every gate vector with the K tokens of largest |cosine| (config "
        "feature_tokens); 0 (the default) writes no labels",
    )
    g.add_argument(
        "--larql-browse",
        action="store_true",
        help="write LarQL's embeddings.bin and tokenizer.json (implied by --feature-tokens)",
    )
    g.add_argument(
        "--embeddings-dtype",
        choices=list(EMBEDDING_DTYPES),
        default=DEFAULT_EMBEDDING_DTYPE,
        help="element type of LarQL's embeddings.bin (f16 is half the size; f32 keeps the "
        "checkpoint's values exactly when it stores more than 16 bits)",
    )


def _add_repo_type(p: argparse.ArgumentParser) -> None:
    from .hub.refs import DEFAULT_REPO_TYPE, REPO_TYPES

    p.add_argument(
        "--repo-type", choices=REPO_TYPES, default=DEFAULT_REPO_TYPE, help="kind of Hub repo"
    )


def _layer_help(default: str) -> str:
    return f"layer selection, e.g. 0-42 or 3,5,7-9 (checked against the model's layer count; default: {default})"


def parser() -> argparse.ArgumentParser:
    # Light modules only (a test checks it): the builder's defaults, not the builder.
    from .builder.defaults import (
        DEFAULT_BATCH,
        DEFAULT_ENGINE,
        DEFAULT_NUM_FEATS,
        DEFAULT_PREFETCH_LAYERS,
        ENGINES,
    )
    from .format.pull_marker import DEFAULT_FORMAT, FORMATS
    from .numerics.routes import DEFAULT_DEVICE, DEVICES

    ap = argparse.ArgumentParser(
        prog="vindex-hub",
        description="Build, publish and load vindexes (per-expert gate-vector SVDs) of mixture-of-experts models.",
    )
    ap.add_argument("--version", action="version", version=f"vindex-hub {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, fn: Callable[[argparse.Namespace], Outcome], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=DefaultsHelpFormatter)
        p.add_argument(
            "--json", action="store_true", help="print the result as JSON instead of text"
        )
        p.set_defaults(fn=fn)
        return p

    p = command("build", cmd_build, "build a vindex from a checkpoint folder or a Hub model repo")
    p.add_argument("source", help="local checkpoint folder, or Hub model repo id (namespace/name)")
    p.add_argument(
        "-o", "--out", required=True, help="output folder (an unfinished build there resumes)"
    )
    p.add_argument(
        "--num-feats",
        type=int,
        default=DEFAULT_NUM_FEATS,
        help="top-K right singular vectors per expert",
    )
    p.add_argument("--layers", default=None, help=_layer_help("all"))
    _add_revision(p, "source model")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULT_DEVICE,
        help="where the decomposition runs (auto: CUDA when torch sees a GPU, else CPU)",
    )
    p.add_argument(
        "--precision",
        choices=routes.PRECISIONS,
        default=routes.DEFAULT_PRECISION,
        help="CPU SVD route: mixed (float32 subspace + float64 Rayleigh-Ritz, exact, the "
        "fast one) or f64 (float64 throughout)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes decomposing experts, one BLAS thread each; any count gives the same "
        "bits (default: the cores this process may use)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help="experts dequantized and decomposed at once",
    )
    p.add_argument(
        "--prefetch-layers",
        type=int,
        default=DEFAULT_PREFETCH_LAYERS,
        help="layers read ahead while one is computed (each holds its raw tensors in memory)",
    )
    p.add_argument(
        "--larql-router", action="store_true", help="also write LarQL's router_weights.bin"
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="where layers are decomposed: this machine, or Ray tasks on a cluster (ray needs "
        "the ray extra: pip install -e '.[ray]' from a clone)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join with --engine ray (default: $RAY_ADDRESS, else start a local one)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--geometry",
        action="store_true",
        help="also compute the expert geometry: overlaps of every pair of experts of a layer "
        "(config expert_overlap), router alignment, summaries in the phase documents and the card",
    )
    _add_browse_options(p)
    _add_card_options(p)

    p = command(
        "convert", cmd_convert, "write the Arrow mirror, LarQL index and card of an existing vindex"
    )
    p.add_argument(
        "folder",
        help="vindex folder holding gate_vectors.bin and its sidecar (seed-style sidecars "
        "are upgraded)",
    )
    p.add_argument(
        "--source",
        default=None,
        help="the checkpoint the vindex was built from (folder or Hub repo)",
    )
    _add_revision(p, "source model")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULT_DEVICE,
        help="where the feature-token products run",
    )
    _add_browse_options(p)
    _add_card_options(p)

    p = command(
        "geometry",
        cmd_geometry,
        "add the expert geometry (overlaps, router alignment) to an existing vindex",
    )
    p.add_argument(
        "path", help="vindex folder (changed in place unless -o) or Hub repo id (pulled)"
    )
    p.add_argument(
        "-o", "--out", default=None, help="folder for the result (a repo: default ./<repo name>)"
    )
    _add_revision(p, "repo")
    _add_repo_type(p)
    _add_card_options(p)

    p = command(
        "compare", cmd_compare, "compare the expert subspaces of two vindexes of one hidden size"
    )
    p.add_argument("a", help="vindex folder or Hub repo id (A)")
    p.add_argument("b", help="vindex folder or Hub repo id (B)")
    p.add_argument(
        "-o", "--out", default=None, help="write the comparison as a dataset folder (push-able)"
    )
    p.add_argument("--layers", default=None, help=_layer_help("the layers both hold"))
    p.add_argument("--revision-a", default=None, help="A's branch, tag or commit")
    p.add_argument("--revision-b", default=None, help="B's branch, tag or commit")
    _add_repo_type(p)

    p = command("list", cmd_list, "list the vindexes on the Hub (datasets tagged vindex)")
    p.add_argument("--author", default=None, help="only this user or organisation")
    p.add_argument("--model", default=None, help="only vindexes of this base model (repo id)")
    p.add_argument("--limit", type=int, default=100, help="at most this many")

    p = command("verify", cmd_verify, "check binary, index, mirror and card against each other")
    p.add_argument("path", help="vindex folder or Hub repo id")
    _add_revision(p, "repo")
    _add_repo_type(p)

    p = command(
        "info", cmd_info, "describe a vindex (folder or Hub repo) without downloading the binary"
    )
    p.add_argument("path", help="vindex folder or Hub repo id")
    _add_revision(p, "repo")
    _add_repo_type(p)
    p.add_argument(
        "--features",
        type=int,
        nargs=2,
        metavar=("L", "E"),
        default=None,
        help="print the feature tokens of layer L, expert E",
    )

    p = command("pull", cmd_pull, "download a vindex, or just some of its layers")
    p.add_argument("repo_id", help="Hub repo id (namespace/name)")
    p.add_argument("-o", "--out", default=None, help="folder (default: ./<repo name>)")
    p.add_argument("--layers", default=None, help=_layer_help("all"))
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=DEFAULT_FORMAT,
        help="binary: a complete vindex folder; arrow: the parquet mirror only (data, no binary)",
    )
    _add_revision(p, "repo")
    _add_repo_type(p)

    p = command("push", cmd_push, "upload a vindex folder to the Hub in one commit")
    p.add_argument("folder", help="a built vindex folder (verified before anything is sent)")
    p.add_argument("repo_id", help="Hub repo id (namespace/name); created when missing")
    _add_repo_type(p)
    p.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    p.add_argument(
        "--create-branch", action="store_true", help="create --revision if it does not exist"
    )
    p.add_argument(
        "--create-pr", action="store_true", help="open a pull request instead of committing"
    )
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument(
        "--message", default=None, help="commit message (default: source model, revision, builder)"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded and stop")
    p.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="also publish the folder's files matching this fnmatch pattern (e.g. LICENSE); "
        "repeatable. Without it only the files a vindex owns are published",
    )

    p = command(
        "demo", cmd_demo, "the whole loop on a small DeepSeek-V4-format model made on the spot"
    )
    p.add_argument(
        "--workdir", default=None, help="where to put the demo's files (default: a temp folder)"
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's files: a small checkpoint to build from, its vindex and the local "
        "Hub's repos (without it they are deleted at the end)",
    )

    command(
        "families",
        cmd_families,
        "list the MoE model types a build reads (and those it refuses, with why)",
    )

    p = command(
        "local-hub", cmd_local_hub, "run the bundled Hub-protocol server (for tests and the demo)"
    )
    p.add_argument("--root", required=True, help="folder holding the server's repos")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (keep it local)")
    p.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    p.add_argument(
        "--transfer",
        choices=("xet", "lfs"),
        default="xet",
        help="how clients upload LFS files: xet (the Hub's default) or lfs (clients then need"
        " HF_HUB_DISABLE_XET=1)",
    )
    return ap


# Library errors name Python parameters; the command line speaks in its flags. The one table:
# ``name=value`` becomes ``--flag value`` (``name=True`` and a bare ``name=`` just ``--flag``),
# and a name that is no ordinary word (``num_feats``, ``workers``) becomes ``--flag`` anywhere.
PARAMETER_FLAGS = {
    "num_feats": "--num-feats",
    "batch_size": "--batch-size",
    "prefetch_layers": "--prefetch-layers",
    "workers": "--workers",
    "device": "--device",
    "precision": "--precision",
    "engine": "--engine",
    "ray_address": "--ray-address",
    "revision": "--revision",
    "source": "--source",
    "feature_tokens": "--feature-tokens",
    "larql_browse": "--larql-browse",
    "embeddings_dtype": "--embeddings-dtype",
    "larql_router": "--larql-router",
    "create_branch": "--create-branch",
    "create_pr": "--create-pr",
}
_BARE_NAMES = {name for name in PARAMETER_FLAGS if "_" in name} | {"workers"}


def in_flags(message: str) -> str:
    """A library message with its Python parameter names spelled as this command line's flags."""
    for name, flag in PARAMETER_FLAGS.items():
        message = re.sub(rf"\b{name}=(?:True\b|(?=[\s,;:)]|$))", flag, message)
        message = re.sub(rf"\b{name}=", f"{flag} ", message)
        if name in _BARE_NAMES:
            message = re.sub(rf"(?<![-\w]){name}\b", flag, message)
    return message


def render(outcome: Outcome, *, as_json: bool) -> str:
    """The one way a command's result is shown."""
    return json.dumps(outcome.data, indent=2, default=str) if as_json else outcome.text


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings (a cached copy read because the Hub refused, ...) as one stderr line."""
    from .safetext import printable

    text = printable(" ".join(str(message).split()))  # server text in it: one line, escaped
    print(f"vindex-hub: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from . import exits

    with exits.quiet_hub_client():
        args = parser().parse_args(argv)
        warnings.showwarning = _warning_line
        with exits.interrupt_watchdog(args.command):
            return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command, its result printed; its failure one line on stderr. Everything printed passes
    through ``printable``: text from a sidecar, a card or a server never reaches the terminal
    with a raw control character."""
    from . import exits
    from .safetext import printable

    try:
        outcome = args.fn(args)
    except UsageError as exc:
        print(exits.error_line(args.command, in_flags(str(exc))), file=sys.stderr)
        return 2
    except (VindexFormatError, IntegrityError) as exc:  # about files, whose keys are not flags
        print(exits.error_line(args.command, exc), file=sys.stderr)
        return 1
    except VindexError as exc:
        message = exits.with_disk_full_hint(in_flags(str(exc)), exc)
        print(exits.error_line(args.command, message), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        exits.report_interrupt(args.command)
        return exits.INTERRUPTED_STATUS
    except Exception as exc:  # OS errors (disk full, read-only, ...) as one line; else a bug
        line = exits.describe_os_error(exc)
        if line is None:
            raise
        print(exits.error_line(args.command, line), file=sys.stderr)
        return 1
    try:
        print(printable(render(outcome, as_json=args.json), multiline=True), flush=True)
    except BrokenPipeError:
        exits.quiet_broken_pipe()
        return exits.BROKEN_PIPE_STATUS
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
