"""``vindex-hub``: a thin command line over the library.

Each subcommand parses its options and calls one library function, whose result comes back as an
``Outcome`` (text for people, a JSON-ready object for ``--json``) and is printed by ``main`` alone.
Every default and choice is the library's own constant. A ``VindexError`` becomes a single line on
stderr and exit status 1 (2 for bad usage, as argparse does); bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UsageError, VindexError
from .format import statistics
from .format.layout import format_size
from .numerics import routes


@dataclass
class Outcome:
    """What a command did: ``text`` for people, ``data`` for ``--json``, and the exit status."""

    text: str
    data: Any
    status: int = 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless there is none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _card_options(args: argparse.Namespace):
    from .format.card_data import CardOptions

    options = CardOptions.from_file(args.card_config) if args.card_config else CardOptions()
    citation = None
    if args.citation:
        try:
            citation = Path(args.citation).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"--citation {args.citation}: cannot read it ({exc.strerror})"
            ) from None
    return options.updated(
        license=args.license,
        author=args.author,
        repo_id=args.card_repo_id,
        citation=citation,
        extra_tags=args.tag or None,
    )


def _browse_options(args: argparse.Namespace):
    from .writers.browse import BrowseOptions

    return BrowseOptions(
        feature_tokens=args.feature_tokens,
        larql_browse=args.larql_browse,
        embeddings_dtype=args.embeddings_dtype,
    )


def cmd_build(args: argparse.Namespace) -> Outcome:
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


def cmd_verify(args: argparse.Namespace) -> Outcome:
    from .load import local_folder
    from .verify import verify_vindex

    report = verify_vindex(
        local_folder(args.path, revision=args.revision, repo_type=args.repo_type)
    )
    return Outcome(report.render(), report.to_json(), 0 if report.ok else 1)


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
        + (f" @ {source['revision']}" if source.get("revision") else ""),
        f"  shape      {info['num_layers']} layers x {info['num_experts']} experts x {k} feats x "
        f"{info['hidden_size']} hidden, float32",
        f"  size       {format_size(info['total_bytes'])} ({format_size(info['layer_nbytes'])} a layer)",
        f"  builder    {info['builder']['name']} {info['builder']['version']}: {info['builder']['method']}",
        f"  svd route  {_describe_route(info['builder'])}",
        f"  {'layer':>5}  {'offset':>14}  {statistics.median_var_key(k):>12}  {'q25..q75':>17}  sha256",
    ]
    for e in info["layers"]:
        lines.append(
            f"  {e['layer']:>5}  {e['file_offset']:>14}  {e[statistics.median_var_key(k)]:>12.4f}  "
            f"{e[statistics.q25_var_key(k)]:>8.4f}..{e[statistics.q75_var_key(k)]:<7.4f}  {e['sha256'][:16]}"
        )
    return "\n".join(lines)


def _render_features(where: Sequence[int], features: list) -> str:
    lines = [
        f"layer {where[0]}, expert {where[1]}: top tokens by |cosine| with the input embedding"
    ]
    for feature, tokens in enumerate(features):
        lines.append(
            f"  {feature:>4}  " + "  ".join(f"{text!r} {score:+.3f}" for text, _, score in tokens)
        )
    return "\n".join(lines)


def cmd_pull(args: argparse.Namespace) -> Outcome:
    from .pull import pull

    path = pull(
        args.repo_id,
        args.out,
        layers=args.layers,
        format=args.format,
        revision=args.revision,
        repo_type=args.repo_type,
    )
    return Outcome(str(path), {"folder": str(path)})


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
    )
    return Outcome(result.render(), result.to_json())


def cmd_demo(args: argparse.Namespace) -> Outcome:
    from .demo import run_demo

    summary = run_demo(workdir=args.workdir, keep=args.keep, show=False)
    return Outcome(summary.render(), summary.to_json())


def cmd_local_hub(args: argparse.Namespace) -> Outcome:
    from .hubserver import serve

    serve(args.root, host=args.host, port=args.port, transfer=args.transfer)
    return Outcome("local Hub stopped", {"root": args.root})


def _add_revision(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--revision",
        default=None,
        help=f"{what} branch, tag or commit sha (default: the main branch)",
    )


def _add_card_options(p: argparse.ArgumentParser) -> None:
    from .format.card_data import CardOptions

    card = p.add_argument_group("dataset card")
    card.add_argument(
        "--card-config",
        help="YAML file of card fields (license, author, repo_id, citation, "
        "extra_tags, pretty_name, year)",
    )
    card.add_argument("--license", help=f"card license (default: {CardOptions().license})")
    card.add_argument("--author", help="author or organisation named in the card")
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
        help="label every gate vector with the K tokens of largest |cosine| (config feature_tokens)",
    )
    g.add_argument(
        "--larql-browse",
        action="store_true",
        help="write LarQL's embeddings.bin and tokenizer.json (implied by --feature-tokens)",
    )
    g.add_argument(
        "--embeddings-dtype", choices=list(EMBEDDING_DTYPES), default=DEFAULT_EMBEDDING_DTYPE
    )


def _add_repo_type(p: argparse.ArgumentParser) -> None:
    from .hub.refs import DEFAULT_REPO_TYPE, REPO_TYPES

    p.add_argument(
        "--repo-type", choices=REPO_TYPES, default=DEFAULT_REPO_TYPE, help="kind of Hub repo"
    )


def _layer_help(default: str) -> str:
    return f"layer selection, e.g. 0-42 or 3,5,7-9 (checked against the model's layer count; default: {default})"


def parser() -> argparse.ArgumentParser:
    from .builder import DEFAULT_BATCH, DEFAULT_NUM_FEATS, DEFAULT_PREFETCH_LAYERS
    from .numerics.routes import DEFAULT_DEVICE, DEVICES
    from .pull import DEFAULT_FORMAT, FORMATS

    ap = argparse.ArgumentParser(
        prog="vindex-hub",
        description="Build, publish and load vindexes (per-expert gate-vector SVDs) of mixture-of-experts models.",
    )
    ap.add_argument("--version", action="version", version=f"vindex-hub {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, fn: Callable[[argparse.Namespace], Outcome], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
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
    # Checked by build_vindex (importing the builder here would slow every command).
    p.add_argument(
        "--engine",
        default=None,
        help="where layers are decomposed: local (default) or ray (pip install 'vindex-hub[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join with --engine ray (default: $RAY_ADDRESS, else start a local one)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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

    p = command(
        "demo", cmd_demo, "the whole loop on a small DeepSeek-V4-format model made on the spot"
    )
    p.add_argument(
        "--workdir", default=None, help="where to put the demo's files (default: a temp folder)"
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's files")

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


def render(outcome: Outcome, *, as_json: bool) -> str:
    """The one way a command's result is shown."""
    return json.dumps(outcome.data, indent=2, default=str) if as_json else outcome.text


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        outcome = args.fn(args)
    except UsageError as exc:
        print(f"vindex-hub {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except VindexError as exc:
        print(f"vindex-hub {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vindex-hub {args.command}: interrupted", file=sys.stderr)
        return 130
    print(render(outcome, as_json=args.json))
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
