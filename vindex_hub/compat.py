"""Every use of another library's private or unexported API, in one place.

Each shim names what it relies on and was checked against the versions in ``CHECKED``;
``tests/test_compat.py`` pins them: it checks that the installed versions are at least those, and
that each private API still exists and behaves as relied on. When a dependency changes one of
these, this module is the one place to adapt (and ``CHECKED`` the one place to record it).

Importing this module imports nothing beyond the standard library: each shim imports its library
when called.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from datasets import Features
    from huggingface_hub import CommitOperationAdd

# The versions the shims below were checked against (the lower bounds in pyproject.toml).
CHECKED = {"datasets": "5.2.0", "huggingface_hub": "2.4.0", "ray": "2.60.0"}


# ---- datasets ------------------------------------------------------------------------------------
def features_from_yaml_list(yaml_list: Sequence[Any]) -> Features:
    """A card's ``dataset_info.features`` (YAML list) as ``datasets.Features``, parsed as
    ``load_dataset`` parses it: ``Features._from_yaml_list`` (private; no public parser)."""
    from datasets import Features

    return Features._from_yaml_list(list(yaml_list))


def features_to_yaml_list(features: Features) -> list[Any]:
    """``Features`` in the YAML spelling of a card (``Features._to_yaml_list``, private)."""
    return list(features._to_yaml_list())


# ---- argparse -------------------------------------------------------------------------------------
class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless there is none or its help already says it.

    Overrides ``HelpFormatter._get_help_string``, the hook ``ArgumentDefaultsHelpFormatter``
    itself overrides (documented by name in argparse's docs, underscored in code)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name (argparse has no public accessor: its
    ``_SubParsersAction`` among ``parser._actions``)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


# ---- Ray --------------------------------------------------------------------------------------------
# What ``ray start --address ... --block`` runs, minus its rewriting of a loopback address to the
# machine's external IP: ``ray._private.node.Node`` with ``ray._private.parameter.RayParams``.
# A script for a fresh interpreter (argv: gcs address, node ip, cpus, object store bytes, temp dir).
RAY_WORKER_NODE_SCRIPT = """
import signal, sys, threading
import ray._private.node, ray._private.parameter
params = ray._private.parameter.RayParams(
    gcs_address=sys.argv[1], node_ip_address=sys.argv[2], num_cpus=int(sys.argv[3]),
    object_store_memory=int(sys.argv[4]), temp_dir=sys.argv[5], include_log_monitor=False,
    node_manager_port=0, min_worker_port=0, max_worker_port=0)
node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("node started", flush=True)
stop.wait()
node.kill_all_processes(check_alive=False, allow_graceful=True)
"""


def enable_ray_token_auth_if_token() -> bool:
    """Ray's own switch that ``ray start`` flips for a node when a token exists
    (``authentication_token_setup._enable_token_auth``), flipped for this driver when a token is
    at hand (``_raylet.AuthenticationTokenLoader``); True when it did. A Ray without token
    authentication has neither: nothing to do, False."""
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
        from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]
    except ImportError:
        return False
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        return False
    _enable_token_auth()
    return True


# ---- huggingface_hub ----------------------------------------------------------------------------------
def is_commit_sha(value: str) -> bool:
    """A full 40-hex commit sha, by the client's own pattern (``file_download.REGEX_COMMIT_HASH``,
    not exported at the top level)."""
    from huggingface_hub.file_download import REGEX_COMMIT_HASH

    return bool(REGEX_COMMIT_HASH.fullmatch(value))


def repo_cache_folder_name(repo_id: str, repo_type: str) -> str:
    """The client's cache folder name of a repo (``datasets--ns--name``):
    ``file_download.repo_folder_name``, not exported at the top level."""
    from huggingface_hub.file_download import repo_folder_name

    return str(repo_folder_name(repo_id=repo_id, repo_type=repo_type))


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data``, as the Hub lists a non-LFS file (``utils.sha.git_hash``)."""
    from huggingface_hub.utils.sha import git_hash

    return str(git_hash(data))


# The bar class counted uploads report to; None: huggingface_hub's own ``utils.tqdm`` (which the
# test environment disables). A test puts a recording bar here.
upload_progress_bar: Callable[..., Any] | None = None


@functools.cache
def _counted_add_class() -> type[CommitOperationAdd]:
    from huggingface_hub import CommitOperationAdd

    class CountedCommitOperationAdd(CommitOperationAdd):
        """Overrides ``CommitOperationAdd.as_file(with_tqdm=True)``, which the client calls to read
        an upload: its own bar counts every read, so a retried PUT (the client seeks back and reads
        again) took it past 100%. This bar counts each byte once."""

        @contextlib.contextmanager
        def as_file(self, with_tqdm: bool = False) -> Iterator[BinaryIO]:
            if not with_tqdm:
                with super().as_file() as f:
                    yield f
                return
            from huggingface_hub.utils import tqdm as hf_tqdm

            bar_class = upload_progress_bar or hf_tqdm

            path = Path(str(self.path_or_fileobj))
            with (
                open(path, "rb") as f,
                bar_class(
                    unit="B", unit_scale=True, total=path.stat().st_size, desc=path.name
                ) as bar,
            ):
                read, counted = f.read, [0]

                def read_counting_once(size: int | None = -1) -> bytes:
                    data = read(size)
                    if f.tell() > counted[0]:
                        bar.update(f.tell() - counted[0])
                        counted[0] = f.tell()
                    return data

                f.read = read_counting_once  # type: ignore[method-assign]
                yield f

    return CountedCommitOperationAdd


def counted_commit_operation_add(path_in_repo: str, path: str) -> CommitOperationAdd:
    """An upload of the file at ``path`` whose progress bar counts each byte once."""
    return _counted_add_class()(path_in_repo=path_in_repo, path_or_fileobj=path)
