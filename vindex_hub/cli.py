"""``vindex-hub``: a thin command line over the library.

Each subcommand parses its options and calls one library function; a ``VindexError`` becomes a
single line on stderr and exit status 1 (2 for bad usage, as argparse does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .format import statistics
from .errors import UsageError, VindexError


def _card_options(args: argparse.Namespace):
    from .writers.card import CardOptions

    options = CardOptions.from_file(args.card_config) if args.card_config else CardOptions()
    citation = None
    if args.citation:
        try:
            citation = Path(args.citation).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--citation {args.citation}: cannot read it ({exc.strerror})") from None
    return options.updated(license=args.license, author=args.author, repo_id=args.card_repo_id,
                           citation=citation, extra_tags=args.tag or None)


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build_vindex

    summary = build_vindex(
        args.source, args.out, num_feats=args.num_feats, layers=args.layers, revision=args.revision,
        device=args.device, batch_size=args.batch_size, prefetch_layers=args.prefetch_layers,
        card_options=_card_options(args),
        larql_router=args.larql_router, progress=not args.quiet,
    )
    if summary.already_complete:
        print(f"{summary.out} already holds this vindex, complete; nothing to do")
        return 0
    resumed = len(summary.layers) - len(summary.built_layers)
    note = f" ({resumed} resumed)" if resumed else ""
    print(f"built {summary.out}: {len(summary.layers)} layers{note}, "
          f"{summary.index.total_bytes / 1e9:.2f} GB of gate vectors in {summary.seconds:.1f} s")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .writers.mirror import convert_vindex

    convert_vindex(Path(args.folder), card_options=_card_options(args))
    print(f"converted {args.folder}: Arrow mirror, LarQL index and card written")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .load import local_folder
    from .verify import verify_vindex

    folder = local_folder(args.path, revision=args.revision, repo_type=args.repo_type)
    report = verify_vindex(folder)
    print(report.render())
    return 0 if report.ok else 1


def cmd_info(args: argparse.Namespace) -> int:
    from .load import Vindex, remote_info

    if Path(args.path).is_dir():
        with Vindex.open(args.path) as vx:
            info = vx.info()
    else:
        info = remote_info(args.path, args.revision, repo_type=args.repo_type)
    print(json.dumps(info, indent=2) if args.json else _render_info(info))
    return 0


def _render_info(info: dict) -> str:
    k = info["num_feats"]
    source = info["source"]
    lines = [
        f"{info['location']}" + (f" @ {info['commit']}" if info.get("commit") else ""),
        f"  model      {source.get('repo_id') or source.get('path')} ({info['model_type']})"
        + (f" @ {source['revision']}" if source.get("revision") else ""),
        f"  shape      {info['num_layers']} layers x {info['num_experts']} experts x {k} feats x "
        f"{info['hidden_size']} hidden, float32",
        f"  size       {info['total_bytes'] / 1e9:.2f} GB ({info['layer_nbytes'] / 1e6:.1f} MB a layer)",
        f"  builder    {info['builder']['name']} {info['builder']['version']}: {info['builder']['method']}",
        f"  {'layer':>5}  {'offset':>14}  {statistics.median_var_key(k):>12}  {'q25..q75':>17}  sha256",
    ]
    for e in info["layers"]:
        lines.append(
            f"  {e['layer']:>5}  {e['file_offset']:>14}  {e[statistics.median_var_key(k)]:>12.4f}  "
            f"{e[statistics.q25_var_key(k)]:>8.4f}..{e[statistics.q75_var_key(k)]:<7.4f}  {e['sha256'][:16]}"
        )
    return "\n".join(lines)


def cmd_pull(args: argparse.Namespace) -> int:
    from .pull import pull

    path = pull(args.repo_id, args.out, layers=args.layers, format=args.format,
                revision=args.revision, repo_type=args.repo_type)
    print(path)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .push import push_vindex

    result = push_vindex(args.folder, args.repo_id, repo_type=args.repo_type, revision=args.revision,
                         create_pr=args.create_pr, private=args.private, commit_message=args.message,
                         dry_run=args.dry_run, create_branch=args.create_branch)
    print(result.render())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(workdir=args.workdir, keep=args.keep)
    return 0


def cmd_local_hub(args: argparse.Namespace) -> int:
    from .hubserver import serve

    serve(args.root, host=args.host, port=args.port)
    return 0


def _add_revision(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--revision", default=None, help=f"{what} branch, tag or commit sha")


def _add_card_options(p: argparse.ArgumentParser) -> None:
    card = p.add_argument_group("dataset card")
    card.add_argument("--card-config", help="YAML file of card fields (license, author, repo_id, citation, "
                                            "extra_tags, pretty_name, year)")
    card.add_argument("--license", help="card license (default mit)")
    card.add_argument("--author", help="author or organisation named in the card")
    card.add_argument("--card-repo-id", help="the Hub repo the vindex will live in (for links)")
    card.add_argument("--citation", help="file holding a BibTeX entry for the card")
    card.add_argument("--tag", action="append", help="extra card tag (repeatable)")


def _add_repo_type(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo-type", choices=["dataset", "model"], default="dataset")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vindex-hub",
        description="Build, publish and load vindexes (per-expert gate-vector SVDs) of mixture-of-experts models.",
    )
    ap.add_argument("--version", action="version", version=f"vindex-hub {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = command("build", cmd_build, "build a vindex from a checkpoint folder or a Hub model repo")
    p.add_argument("source", help="local checkpoint folder, or Hub model repo id (namespace/name)")
    p.add_argument("-o", "--out", required=True, help="output folder (an unfinished build there resumes)")
    p.add_argument("--num-feats", type=int, default=64, help="top-K right singular vectors per expert")
    p.add_argument("--layers", default=None, help="layer selection, e.g. 0-42 or 3,5,7-9 (default: all)")
    _add_revision(p, "source model")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="experts dequantized and decomposed at once")
    p.add_argument("--prefetch-layers", type=int, default=1,
                   help="layers read ahead while one is computed (each holds its raw tensors in memory)")
    p.add_argument("--larql-router", action="store_true", help="also write LarQL's router_weights.bin")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_card_options(p)

    p = command("convert", cmd_convert, "write the Arrow mirror, LarQL index and card of an existing vindex")
    p.add_argument("folder")
    _add_card_options(p)

    p = command("verify", cmd_verify, "check binary, index, mirror and card against each other")
    p.add_argument("path", help="vindex folder or Hub repo id")
    _add_revision(p, "repo")
    _add_repo_type(p)

    p = command("info", cmd_info, "describe a vindex (folder or Hub repo) without downloading the binary")
    p.add_argument("path", help="vindex folder or Hub repo id")
    _add_revision(p, "repo")
    _add_repo_type(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("pull", cmd_pull, "download a vindex, or just some of its layers")
    p.add_argument("repo_id")
    p.add_argument("-o", "--out", default=None, help="folder (default: ./<repo name>)")
    p.add_argument("--layers", default=None, help="layer selection, e.g. 1 or 0-3")
    p.add_argument("--format", choices=["binary", "arrow"], default="binary")
    _add_revision(p, "repo")
    _add_repo_type(p)

    p = command("push", cmd_push, "upload a vindex folder to the Hub in one commit")
    p.add_argument("folder")
    p.add_argument("repo_id")
    _add_repo_type(p)
    p.add_argument("--revision", default=None, help="branch to commit to (default main)")
    p.add_argument("--create-branch", action="store_true", help="create --revision if it does not exist")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded and stop")

    p = command("demo", cmd_demo, "the whole loop on a small DeepSeek-V4-format model made on the spot")
    p.add_argument("--workdir", default=None, help="where to put the demo's files (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the demo's files")

    p = command("local-hub", cmd_local_hub, "run the bundled Hub-protocol server (for tests and the demo)")
    p.add_argument("--root", required=True, help="folder holding the server's repos")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as exc:
        print(f"vindex-hub {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except VindexError as exc:
        print(f"vindex-hub {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vindex-hub {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
