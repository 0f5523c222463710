"""The private APIs ``vindex_hub.compat`` relies on, pinned: the versions it was checked against
are the declared lower bounds, the installed ones are at least those, and each private API still
exists and behaves as relied on. A failure here names the shim to adapt."""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from vindex_hub import compat

from vindex_fixtures import REPO_ROOT


def _declared() -> dict[str, Requirement]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = [
        *project["dependencies"],
        *(r for e in project["optional-dependencies"].values() for r in e),
    ]
    return {Requirement(r).name.replace("-", "_").lower(): Requirement(r) for r in reqs}


def test_checked_versions_are_the_declared_lower_bounds_and_installed() -> None:
    declared = _declared()
    for name, checked in compat.CHECKED.items():
        req = declared[name]
        bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
        assert bounds and min(bounds) <= Version(checked), (name, str(req))
        assert Version(checked) in req.specifier, (name, str(req))
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional extra not installed here (ray)
        assert Version(installed) >= Version(checked), (name, installed, checked)


def test_datasets_features_yaml_round_trip() -> None:
    import pyarrow as pa
    from datasets import Features

    schema = pa.schema([("layer", pa.int16()), ("vector", pa.list_(pa.float32(), 8))])
    features = Features.from_arrow_schema(schema)
    spelled = compat.features_to_yaml_list(features)
    assert spelled == [
        {"name": "layer", "dtype": "int16"},
        {"name": "vector", "list": "float32", "length": 8},
    ]
    assert compat.features_from_yaml_list(spelled) == features
    assert compat.features_from_yaml_list(spelled[:1]) != features


def test_help_formatter_shows_defaults_only_where_useful() -> None:
    ap = argparse.ArgumentParser(prog="x", formatter_class=compat.DefaultsHelpFormatter)
    ap.add_argument("--num", type=int, default=7, help="a number")
    ap.add_argument("--flag", action="store_true", help="a flag")
    ap.add_argument("--said", default="a", help="said already (default: a)")
    text = " ".join(ap.format_help().split())
    assert "a number (default: 7)" in text
    assert "a flag (default" not in text
    assert text.count("(default: a)") == 1


def test_subcommands_of_a_parser() -> None:
    ap = argparse.ArgumentParser(prog="x")
    sub = ap.add_subparsers(dest="command")
    one = sub.add_parser("one")
    sub.add_parser("two")
    assert compat.subcommands(ap) == {"one": one, "two": compat.subcommands(ap)["two"]}
    assert list(compat.subcommands(ap)) == ["one", "two"]
    assert compat.subcommands(argparse.ArgumentParser()) == {}


def test_huggingface_hub_internals() -> None:
    from huggingface_hub import constants

    assert compat.is_commit_sha("0123456789abcdef0123456789abcdef01234567")
    assert not compat.is_commit_sha("main")
    assert not compat.is_commit_sha("0123456789ABCDEF0123456789ABCDEF01234567")
    assert compat.repo_cache_folder_name("ns/name", "dataset") == "datasets--ns--name"
    assert constants.REPO_TYPE_DATASET == "dataset"
    # git's blob id: sha1 of "blob <size>\0" + data (git hash-object)
    assert compat.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_counted_upload_counts_each_byte_once(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.lfs
    import huggingface_hub.utils
    from huggingface_hub import CommitOperationAdd

    # the client reads an upload through this hook, with its bar
    assert "operation.as_file(with_tqdm=True)" in inspect.getsource(huggingface_hub.lfs)
    counted: list[int] = []
    monkeypatch.setattr(
        huggingface_hub.utils.tqdm, "update", lambda self, n=1: counted.append(n) or True
    )
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 1000)
    op = compat.counted_commit_operation_add("blob.bin", str(path))
    assert isinstance(op, CommitOperationAdd)
    with op.as_file(with_tqdm=True) as f:
        assert f.read(600) == b"x" * 600
        f.seek(0)  # a retried PUT reads again from the start
        assert len(f.read()) == 1000
    assert sum(counted) == 1000  # not 1600: the re-read is not counted again
    with op.as_file() as f:
        assert f.read() == b"x" * 1000
    assert sum(counted) == 1000  # no bar without with_tqdm


def test_ray_private_node_api() -> None:
    pytest.importorskip("ray")
    import ray._private.node
    import ray._private.parameter

    used = re.findall(r"(\w+)=", compat.RAY_WORKER_NODE_SCRIPT.split("RayParams(")[1].split(")")[0])
    params = inspect.signature(ray._private.parameter.RayParams).parameters
    assert set(used) <= set(params), set(used) - set(params)
    node_params = inspect.signature(ray._private.node.Node).parameters
    assert {"ray_params", "head", "shutdown_at_exit", "spawn_reaper"} <= set(node_params)
    assert callable(ray._private.node.Node.kill_all_processes)
    kill = inspect.signature(ray._private.node.Node.kill_all_processes).parameters
    assert {"check_alive", "allow_graceful"} <= set(kill)


def test_compat_imports_only_the_standard_library() -> None:
    import subprocess

    code = (
        "import sys; before = set(sys.modules); import vindex_hub.compat; "
        "print(sorted(m.split('.')[0] for m in set(sys.modules) - before))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    loaded = set(eval(done.stdout))  # a list literal we printed
    assert not loaded & {"datasets", "huggingface_hub", "ray", "pyarrow", "numpy"}, loaded


def test_ray_token_auth_switch() -> None:
    pytest.importorskip("ray")
    from ray._private.authentication import authentication_token_setup
    from ray._raylet import AuthenticationTokenLoader

    assert callable(authentication_token_setup._enable_token_auth)
    has_token = inspect.signature(AuthenticationTokenLoader.instance().has_token).parameters
    assert "ignore_auth_mode" in has_token
