"""The loader: local, snapshot, lazy and arrow reads against the local Hub server, integrity,
the block cache, faults, offline reuse, ``pull`` and ``remote_info``.

Test vindexes are written with the real writers (binary, stats JSON, parquet mirror) from random
orthonormal gate vectors, and uploaded with the real ``HfApi``.
"""

from __future__ import annotations

import http.server
import itertools
import json
import mmap
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import CommitOperationAdd, HfApi

from vindex_hub.errors import (
    HubError,
    IntegrityError,
    OutputConflictError,
    RemoteNotFoundError,
    UsageError,
    VindexFormatError,
)
from vindex_hub.format import filenames, layout, mirror, sidecar, statistics
from vindex_hub.format.card_data import CardOptions, card_front_matter
from vindex_hub.hub.blockcache import BlockCache, default_cache_root
from vindex_hub.hub.http import fetch_range
from vindex_hub.hub.refs import parse_repo
from vindex_hub.load import Vindex, remote_info
from vindex_hub.pull import pull_vindex
from vindex_hub.results import LayerResult
from vindex_hub.verify import verify_vindex
from vindex_hub.writers.binary import GateVectorsWriter
from vindex_hub.writers.mirror import stats_tables, write_mirror
from vindex_hub.writers.phases import phase1_json, phase2_json

LAYERS = (0, 1, 2)
E, K, H = 4, 3, 64  # a layer is 3 KiB, an expert 768 B
MODEL_LAYERS = max(LAYERS) + 1  # the model's num_hidden_layers in write_vindex


def layer_parquet(layer: int) -> str:
    return mirror.gate_vectors_parquet(layer, MODEL_LAYERS)


_names = itertools.count()


# ---- a small vindex, written with the real writers ----------------------------------------------
def orthonormal_rows(rng: np.random.Generator, k: int, h: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((h, k)))
    return q.T.astype(np.float32)


def write_vindex(
    folder: Path, *, layers=LAYERS, num_experts=E, num_feats=K, hidden=H, seed=0
) -> dict[int, np.ndarray]:
    """A complete vindex folder (binary, sidecar, stats JSON, mirror, card); returns the layers."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    blocks = {
        layer: np.stack([orthonormal_rows(rng, num_feats, hidden) for _ in range(num_experts)])
        for layer in layers
    }
    writer = GateVectorsWriter(
        folder / "partial.bin",
        num_layers=len(layers),
        num_experts=num_experts,
        num_feats=num_feats,
        hidden_size=hidden,
    )
    index = sidecar.VindexIndex(
        num_feats=num_feats,
        model_config=sidecar.ModelConfig(
            "deepseek_v4", max(layers) + 1, sidecar.MoEConfig(num_experts, 1, 2, hidden, 2 * hidden)
        ),
        source=sidecar.SourceInfo(repo_id="tests/tiny-moe", revision="a" * 40),
        builder=sidecar.BuilderInfo(name="vindex-hub", version="test", method="test"),
    )
    results = []
    for slot, layer in enumerate(layers):
        sha = writer.write_layer(slot, blocks[layer])
        svals = np.sort(rng.uniform(1, 2, (num_experts, num_feats)).astype(np.float32), axis=1)[
            :, ::-1
        ]
        frob = np.sqrt((svals.astype(np.float64) ** 2).sum(1) / rng.uniform(0.2, 0.9, num_experts))
        router_s = np.sort(rng.uniform(0.5, 3, num_experts))[::-1]
        results.append(
            LayerResult(
                layer=layer,
                sha256=sha,
                singular_values=np.ascontiguousarray(svals),
                frobenius_norm=frob,
                router_singular_values=router_s,
                router_frobenius_norm=float(np.sqrt((router_s**2).sum())),
            )
        )
        var = (svals.astype(np.float64) ** 2).sum(1) / frob**2
        index.layers[layer] = sidecar.LayerEntry(
            file_offset=layout.layer_offset(slot, num_experts, num_feats, hidden),
            shape=[num_experts, num_feats, hidden],
            nbytes=index.layer_nbytes,
            sha256=sha,
            median_var=float(np.median(var)),
            q25_var=float(np.quantile(var, 0.25)),
            q75_var=float(np.quantile(var, 0.75)),
        )
    writer.finish(folder / filenames.GATE_VECTORS_BIN)
    (folder / filenames.SIDECAR_JSON).write_text(index.dumps())
    (folder / filenames.PHASE1_JSON).write_text(json.dumps(phase1_json(results, index)))
    (folder / filenames.PHASE2_JSON).write_text(json.dumps(phase2_json(results, index)))
    files = write_mirror(folder, index, stats_tables(index, results))
    front = card_front_matter(index, files, CardOptions()).to_yaml()
    (folder / filenames.CARD_FILE).write_text(f"---\n{front}\n---\n# a test vindex\n")
    return blocks


def upload(folder: Path, name: str | None = None) -> str:
    repo_id = f"tests/{name or 'vx'}-{next(_names)}"
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")
    return repo_id


def bin_stats(hub, repo_id: str):
    return hub.stats().file(repo_id, filenames.GATE_VECTORS_BIN)


@pytest.fixture(scope="module")
def vindex_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vindex") / "vx"
    return folder, write_vindex(folder)


@pytest.fixture
def repo(local_hub, vindex_folder):
    """A fresh repo holding the module's vindex (fresh, so byte counts start at zero)."""
    return upload(vindex_folder[0])


@pytest.fixture
def cache(tmp_path):
    """A Hub cache of this test's own; the block cache sits beside it."""
    return tmp_path / "hub"


# ---- reading: the four modes agree with the written bytes ----------------------------------------
@pytest.mark.parametrize("mode", ["lazy", "snapshot", "arrow"])
@pytest.mark.slow
def test_remote_modes_equal_local_binary(local_hub, vindex_folder, repo, cache, mode):
    folder, blocks = vindex_folder
    with Vindex.open(folder) as local, Vindex.open(repo, mode=mode, cache_dir=cache) as vx:
        assert (vx.mode, local.mode) == (mode, "local")
        assert (vx.num_layers, vx.layers, vx.num_experts, vx.num_feats, vx.hidden_size) == (
            3,
            [0, 1, 2],
            E,
            K,
            H,
        )
        assert vx.commit and len(vx.commit) == 40
        local_hub.reset_stats()
        np.testing.assert_array_equal(vx.layer(1), blocks[1])
        fetched = {
            k[2] for k, v in local_hub.stats().files.items() if k[1] == repo and v.bytes_sent
        }
        if mode == "arrow":  # that layer's parquet file only, not the whole config
            # hf_xet (the default client) reads Xet-backed files from the CAS, past the server's
            # counters: the Hub cache (load_dataset's, the session's) shows what was fetched.
            hub_cache = Path(os.environ["HF_HUB_CACHE"]) / f"datasets--{repo.replace('/', '--')}"
            in_cache = {
                p.relative_to(p.parents[len(Path(layer_parquet(1)).parts) - 1]).as_posix()
                for p in hub_cache.glob("snapshots/*/data/**/*.parquet")
            }
            assert {p for p in in_cache | fetched if p.endswith(".parquet")} == {layer_parquet(1)}
        else:  # snapshot: everything came at open
            assert fetched == ({filenames.GATE_VECTORS_BIN} if mode == "lazy" else set())
        for layer in LAYERS:
            got = vx.layer(layer)
            assert got.dtype == np.float32 and got.shape == (E, K, H)
            np.testing.assert_array_equal(got, blocks[layer])
            np.testing.assert_array_equal(got, local.layer(layer))
        np.testing.assert_array_equal(vx.expert(2, 3), blocks[2][3])
        t = vx.layer_torch(1, dtype=__import__("torch").float64)
        assert t.dtype.is_floating_point and tuple(t.shape) == (E, K, H)
        np.testing.assert_array_equal(t.numpy(), blocks[1].astype(np.float64))


def test_local_views_are_zero_copy_and_read_only(vindex_folder):
    folder, blocks = vindex_folder
    with Vindex.open(folder) as vx:
        a = vx.layer(1)
        base = a
        while base is not None and not isinstance(base, mmap.mmap):
            base = base.base
        assert isinstance(base, mmap.mmap)  # a view of the mapped file, no copy
        assert not a.flags.writeable
        np.testing.assert_array_equal(vx.expert(1, 2), blocks[1][2])
        with pytest.raises(UsageError, match="expert 4 out of range"):
            vx.expert(1, 4)
        with pytest.raises(
            UsageError, match=r"layer 7 is not in this vindex: it holds 3 layer\(s\), 0-2$"
        ):
            vx.layer(7)
    with pytest.raises(UsageError, match="closed"):
        vx.layer(0)


def test_stats_card_and_info(local_hub, vindex_folder, repo, cache):
    folder, _ = vindex_folder
    with Vindex.open(repo, cache_dir=cache) as vx, Vindex.open(folder) as local:
        for v in (vx, local):
            assert set(v.phase1["layers"]) == {"0", "1", "2"}
            assert set(v.phase2["layers"]) == {"0", "1", "2"}
            st = v.expert_stats()
            assert st[statistics.SINGULAR_VALUES].shape == (len(LAYERS) * E, K)
            assert sorted(set(st[mirror.COL_LAYER].tolist())) == list(LAYERS)
            assert "vindex" in v.card_data.to_dict()["tags"]
        info = vx.info()
        assert info["file_size"] == 3 * E * K * H * 4 and [r["layer"] for r in info["layers"]] == [
            0,
            1,
            2,
        ]
        assert info["layers"][1]["sha256"] == local.index.layer(1).sha256
        # The statistic keys do not change with K; K is its own field.
        assert info[statistics.INFO_VAR_K] == K
        row, entry = info["layers"][1], local.index.layer(1)
        assert (row["median_var"], row["q25_var"], row["q75_var"]) == (
            entry.median_var,
            entry.q25_var,
            entry.q75_var,
        )
        assert not any(key.endswith(f"var{K}") for key in row)


# ---- lazy mode: exact bytes, persistent cache -----------------------------------------------------
def test_lazy_fetches_only_the_layer_then_nothing(local_hub, repo, cache):
    nbytes = E * K * H * 4
    local_hub.reset_stats()
    with Vindex.open(repo, cache_dir=cache) as vx:
        assert bin_stats(local_hub, repo).bytes_sent == 0  # open reads only the sidecar
        vx.layer(1)
    s = local_hub.stats()
    assert s.file(repo, filenames.GATE_VECTORS_BIN).bytes_sent == nbytes
    assert (
        s.file(repo, filenames.PHASE1_JSON).bytes_sent == 0
        and s.file(repo, filenames.CARD_FILE).bytes_sent == 0
    )
    assert s.bytes_sent == nbytes + s.file(repo, filenames.SIDECAR_JSON).bytes_sent

    local_hub.reset_stats()
    with Vindex.open(repo, cache_dir=cache) as vx:  # a new object on the same cache
        vx.layer(1)
        vx.expert(1, 2)  # served from the cached layer
    assert bin_stats(local_hub, repo).bytes_sent == 0
    assert bin_stats(local_hub, repo).requests == 0


def test_lazy_expert_fetches_only_that_expert(local_hub, vindex_folder, repo, cache):
    _, blocks = vindex_folder
    local_hub.reset_stats()
    with Vindex.open(repo, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.expert(2, 1), blocks[2][1])
    assert bin_stats(local_hub, repo).bytes_sent == K * H * 4
    with Vindex.open(repo, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.expert(2, 1), blocks[2][1])
    assert bin_stats(local_hub, repo).bytes_sent == K * H * 4  # the second read came from the cache
    local_hub.reset_stats()
    with Vindex.open(
        repo, cache_dir=cache, verify="strict"
    ) as vx:  # strict: hash-check the whole layer
        np.testing.assert_array_equal(vx.expert(2, 1), blocks[2][1])
    assert bin_stats(local_hub, repo).bytes_sent == E * K * H * 4


def test_revision_by_uri_and_commit(local_hub, vindex_folder, repo, cache):
    _, blocks = vindex_folder
    commit = HfApi().dataset_info(repo).sha
    for spec, rev in (
        (f"hf://datasets/{repo}@main", None),
        (repo, commit),
        (f"hf://datasets/{repo}", commit),
    ):
        with Vindex.open(spec, revision=rev, cache_dir=cache) as vx:
            assert vx.commit == commit
            np.testing.assert_array_equal(vx.layer(0), blocks[0])
    # a RepoRef opens as is (pull passes one), its revision and kind its own
    with Vindex.open(parse_repo(repo, revision=commit, repo_type="dataset"), cache_dir=cache) as vx:
        assert (
            vx.commit == commit and vx.remote is not None and vx.remote.size == vx.index.total_bytes
        )
        assert vx.files.path(filenames.SIDECAR_JSON).is_file()
        np.testing.assert_array_equal(vx.layer(0), blocks[0])
    with pytest.raises(UsageError, match="carries its revision"):
        Vindex.open(parse_repo(repo), revision=commit)
    assert parse_repo("hf://ns/name@refs%2Fpr%2F1").revision == "refs/pr/1"
    assert parse_repo("hf://ns/name").repo_type == "model"
    with pytest.raises(UsageError, match="conflicts"):
        parse_repo(f"hf://datasets/{repo}@main", revision=commit)


@pytest.mark.slow
def test_new_revision_never_serves_stale_blocks(local_hub, tmp_path, cache):
    old = write_vindex(tmp_path / "a", seed=1)
    new = write_vindex(tmp_path / "b", seed=2)
    repo_id = upload(tmp_path / "a")
    first = HfApi().dataset_info(repo_id).sha
    with Vindex.open(repo_id, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(0), old[0])
    HfApi().upload_folder(folder_path=tmp_path / "b", repo_id=repo_id, repo_type="dataset")
    with Vindex.open(repo_id, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(0), new[0])
    with Vindex.open(repo_id, revision=first, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(0), old[0])


def test_offline_reuse(local_hub, vindex_folder, repo, cache, monkeypatch):
    from huggingface_hub import constants

    _, blocks = vindex_folder
    with Vindex.open(repo, cache_dir=cache) as vx:
        vx.layer(0)
        vx.expert(2, 3)
    with Vindex.open(repo, mode="snapshot", cache_dir=cache) as vx:
        vx.layer(1)
    local_hub.reset_stats()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with Vindex.open(repo, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(0), blocks[0])
        np.testing.assert_array_equal(vx.expert(2, 3), blocks[2][3])
        with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
            vx.layer(1)  # never fetched as a block
    with Vindex.open(repo, mode="snapshot", cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(2), blocks[2])
    assert local_hub.stats().requests == 0
    with pytest.raises(HubError, match="not in the local cache"):
        Vindex.open(repo, cache_dir=cache.parent / "other-cache")


# ---- integrity --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_corrupted_binary_on_the_server(local_hub, vindex_folder, tmp_path, cache):
    folder, _ = vindex_folder
    repo_id = upload(folder)
    bad = bytearray((folder / filenames.GATE_VECTORS_BIN).read_bytes())
    bad[E * K * H * 4 + 100] ^= 0x01  # one bit of layer 1 (slot 1)
    HfApi().create_commit(
        repo_id,
        [CommitOperationAdd(filenames.GATE_VECTORS_BIN, bytes(bad))],
        commit_message="corrupt",
        repo_type="dataset",
    )  # the sidecar stays the old one
    for mode in ("lazy", "snapshot"):
        with Vindex.open(repo_id, mode=mode, cache_dir=cache) as vx:
            vx.layer(0)
            with pytest.raises(IntegrityError, match="layer 1 has sha256"):
                vx.layer(1)
    e = Vindex.open(repo_id, cache_dir=cache).index.layer(1)
    etag = __import__("hashlib").sha256(bytes(bad)).hexdigest()
    assert (
        BlockCache(default_cache_root(cache)).get(etag, e.file_offset, e.file_offset + e.nbytes)
        is None
    )
    with Vindex.open(repo_id, cache_dir=cache, verify=False) as vx:  # the escape hatch
        assert vx.layer(1).shape == (E, K, H)


def test_corrupted_and_truncated_cache_blocks_are_refetched(
    local_hub, vindex_folder, repo, cache, monkeypatch
):
    from huggingface_hub import constants

    _, blocks = vindex_folder
    with Vindex.open(repo, cache_dir=cache) as vx:
        vx.layer(1)
        block = BlockCache(default_cache_root(cache)).get(
            vx.remote.etag, E * K * H * 4, 2 * E * K * H * 4
        )
    assert block is not None
    data = bytearray(block.read_bytes())
    data[7] ^= 0x40
    block.write_bytes(bytes(data))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with Vindex.open(repo, cache_dir=cache) as vx:  # offline: nothing to heal from
        with pytest.raises(IntegrityError, match="layer 1"):
            vx.layer(1)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    local_hub.reset_stats()
    with Vindex.open(repo, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(1), blocks[1])
    assert bin_stats(local_hub, repo).bytes_sent == E * K * H * 4
    block.write_bytes(block.read_bytes()[:100])  # truncated
    local_hub.reset_stats()
    with Vindex.open(repo, cache_dir=cache, verify=False) as vx:
        np.testing.assert_array_equal(vx.layer(1), blocks[1])
    assert bin_stats(local_hub, repo).bytes_sent == E * K * H * 4


def test_cached_expert_blocks_are_rechecked(local_hub, vindex_folder, repo, cache):
    _, blocks = vindex_folder
    with Vindex.open(repo, cache_dir=cache, verify=False) as vx:  # cached unchecked
        vx.expert(2, 1)
        e = vx.index.layer(2)
        start = e.file_offset + layout.expert_nbytes(K, H)
        block = BlockCache(default_cache_root(cache)).get(vx.remote.etag, start, start + K * H * 4)
    assert block is not None
    block.write_bytes(
        (np.fromfile(block, dtype=np.float32) * 2).tobytes()
    )  # rotted: rows no longer unit-norm
    local_hub.reset_stats()
    with Vindex.open(repo, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.expert(2, 1), blocks[2][1])  # dropped and fetched again
        assert bin_stats(local_hub, repo).bytes_sent == K * H * 4
        vx.expert(2, 1)  # checked once per object
    assert bin_stats(local_hub, repo).bytes_sent == K * H * 4
    with Vindex.open(repo, cache_dir=cache, verify=False) as vx:
        np.testing.assert_array_equal(vx.expert(2, 1), blocks[2][1])


def test_block_cached_by_another_process_meanwhile_is_hashed(
    local_hub, vindex_folder, tmp_path, cache, monkeypatch
):
    """The race: a verify=False reader caches a bad layer between this reader's look-up and its lock."""
    folder, blocks = vindex_folder
    repo_id = upload(folder)
    good = (folder / filenames.GATE_VECTORS_BIN).read_bytes()
    with Vindex.open(repo_id, cache_dir=cache) as vx:
        e, etag = vx.index.layer(1), vx.remote.etag
    bad = bytearray(good[e.file_offset : e.file_offset + e.nbytes])
    bad[10] ^= 0x01
    real_get, raced = BlockCache.get, []

    def get_then_other_process_fills(self, key, start, end):
        if (key, start) == (etag, e.file_offset) and not raced:
            raced.append(1)
            path = self.block_path(key, start, end)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(bad))  # what the other process caches, unchecked
            return None  # ...just after this process looked
        return real_get(self, key, start, end)

    monkeypatch.setattr(BlockCache, "get", get_then_other_process_fills)
    with Vindex.open(repo_id, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(1), blocks[1])
    assert raced
    assert (
        BlockCache(default_cache_root(cache))
        .block_path(etag, e.file_offset, e.file_offset + e.nbytes)
        .read_bytes()
        == good[e.file_offset : e.file_offset + e.nbytes]
    )


def test_block_cache_refuses_unsafe_names_and_short_writes(tmp_path):
    blocks = BlockCache(tmp_path / "c")
    for etag in ("..", "../../etc", "a/b", ".hidden", ""):
        with pytest.raises(HubError, match="cannot name a cache file"):
            blocks.obtain(etag, 0, 4, lambda f: f.write(b"abcd"))
    with pytest.raises(HubError, match="commit '../x'"):
        blocks.remember(
            "datasets--a--b", "../x", filenames.GATE_VECTORS_BIN, {"etag": "e", "size": 4}
        )
    with pytest.raises(HubError, match=r"http://h/f: bytes 0-3 came as 3 bytes"):
        blocks.obtain("e" * 64, 0, 4, lambda f: f.write(b"abc"), source="http://h/f")
    assert blocks.get("e" * 64, 0, 4) is None
    path, wrote = blocks.obtain("e" * 64, 0, 4, lambda f: f.write(b"abcd"))
    assert wrote and path.read_bytes() == b"abcd"
    assert blocks.obtain("e" * 64, 0, 4, lambda f: f.write(b"zzzz")) == (path, False)


class _CraftedHead(http.server.BaseHTTPRequestHandler):
    commit = "../../outside"

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.commit)
        self.send_header("ETag", '"' + "e" * 64 + '"')
        self.send_header("Content-Length", "12")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_server_commit_must_be_a_sha(monkeypatch):
    from huggingface_hub import constants

    from vindex_hub.hub.http import file_metadata

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CraftedHead)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            f"http://127.0.0.1:{server.server_address[1]}/{{repo_id}}/resolve/{{revision}}/{{filename}}",
        )
        with pytest.raises(HubError, match="commit '../../outside', not a 40-hex sha"):
            file_metadata(parse_repo("ns/name"), filenames.GATE_VECTORS_BIN)
        monkeypatch.setattr(_CraftedHead, "commit", "c" * 40)
        assert file_metadata(parse_repo("ns/name"), filenames.GATE_VECTORS_BIN).commit == "c" * 40
    finally:
        server.shutdown()
        server.server_close()


def test_corrupted_local_binary(vindex_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(vindex_folder[0], folder)
    with open(folder / filenames.GATE_VECTORS_BIN, "r+b") as f:
        f.seek(2 * E * K * H * 4 + 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    with Vindex.open(folder) as vx:
        vx.layer(1)
        with pytest.raises(IntegrityError, match=r"gate_vectors.bin: layer 2 has sha256"):
            vx.layer(2)


def test_offsets_that_do_not_fit_the_file(local_hub, vindex_folder, tmp_path, cache):
    folder, _ = vindex_folder
    big = tmp_path / "big"
    write_vindex(big, layers=(0, 1, 2, 3))
    repo_id = upload(folder)
    HfApi().upload_file(
        path_or_fileobj=big / filenames.SIDECAR_JSON,
        path_in_repo=filenames.SIDECAR_JSON,
        repo_id=repo_id,
        repo_type="dataset",
    )
    with pytest.raises(VindexFormatError, match="layer 3 spans bytes"):
        Vindex.open(repo_id, cache_dir=cache)


# ---- errors naming what is missing ----------------------------------------------------------------
def test_missing_repo_revision_file(local_hub, vindex_folder, tmp_path, cache):
    with pytest.raises(RemoteNotFoundError, match="tests/no-such-repo not found"):
        Vindex.open("tests/no-such-repo", cache_dir=cache)
    repo_id = upload(vindex_folder[0])
    with pytest.raises(RemoteNotFoundError, match="revision 'nope' not found"):
        Vindex.open(repo_id, revision="nope", cache_dir=cache)
    only_sidecar = tmp_path / "sidecar-only"
    only_sidecar.mkdir()
    (only_sidecar / filenames.SIDECAR_JSON).write_bytes(
        (vindex_folder[0] / filenames.SIDECAR_JSON).read_bytes()
    )
    repo2 = upload(only_sidecar)
    with pytest.raises(
        RemoteNotFoundError, match=f"gate_vectors.bin in dataset repo {repo2}.*no such file"
    ):
        Vindex.open(repo2, cache_dir=cache)
    with pytest.raises(UsageError, match="folder: no such folder"):
        Vindex.open(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(UsageError, match=r"^\./no-such-vindex: no such folder"):
        Vindex.open("./no-such-vindex")  # one slash, yet a path: not read as repo "."


# ---- faults: retries, resume, servers that ignore Range -------------------------------------------
@pytest.mark.slow
def test_dropped_connection_is_resumed(local_hub, vindex_folder, repo, cache):
    _, blocks = vindex_folder
    nbytes = E * K * H * 4
    local_hub.reset_stats()
    local_hub.inject_fault(
        "drop", method="GET", path=f"*/{filenames.GATE_VECTORS_BIN}", after_bytes=1000, times=2
    )
    with Vindex.open(repo, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(2), blocks[2])
    s = bin_stats(local_hub, repo)
    assert s.requests == 3  # cut twice, each retry asked only for the rest
    assert s.bytes_sent == nbytes


@pytest.mark.slow
def test_server_errors_are_retried_then_reported(local_hub, vindex_folder, repo, cache):
    _, blocks = vindex_folder
    local_hub.inject_fault(
        "error", status=503, method="GET", path=f"*/{filenames.GATE_VECTORS_BIN}", times=2
    )
    with Vindex.open(repo, cache_dir=cache) as vx:
        np.testing.assert_array_equal(vx.layer(0), blocks[0])
    local_hub.inject_fault(
        "error", status=500, method="GET", path=f"*/{filenames.GATE_VECTORS_BIN}", times=None
    )
    with Vindex.open(repo, cache_dir=cache) as vx:
        with pytest.raises(
            HubError, match=r"gate_vectors.bin: bytes .* giving up after 5 retries \(HTTP 500\)"
        ):
            vx.layer(1)
    local_hub.clear_faults()
    e = Vindex.open(repo, cache_dir=cache).index.layer(1)
    assert not list((default_cache_root(cache) / "blocks").glob(f"*/{e.file_offset}-*"))


class _IgnoresRange(http.server.BaseHTTPRequestHandler):
    body = bytes(range(256)) * 8

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_server_ignoring_range_is_detected():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _IgnoresRange)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/file.bin"
        with pytest.raises(HubError, match="answered 200 instead of 206"):
            fetch_range(url, 100, 200)
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_range_exact_bytes(local_hub, vindex_folder, repo):
    folder, _ = vindex_folder
    raw = (folder / filenames.GATE_VECTORS_BIN).read_bytes()
    url = parse_repo(repo).url(filenames.GATE_VECTORS_BIN)
    local_hub.reset_stats()
    assert fetch_range(url, 10, 1234, expected_total=len(raw)) == raw[10:1234]
    assert bin_stats(local_hub, repo).bytes_sent == 1224
    with pytest.raises(HubError, match="file holds"):
        fetch_range(url, 0, 10, expected_total=len(raw) + 1)


# ---- a shared cache across processes ----------------------------------------------------------------
@pytest.mark.slow
def test_concurrent_processes_share_one_cache(local_hub, vindex_folder, repo, cache):
    _, blocks = vindex_folder
    local_hub.inject_fault(
        "slow",
        method="GET",
        path=f"*/{filenames.GATE_VECTORS_BIN}",
        delay_s=0.05,
        chunk_size=512,
        times=None,
    )
    script = textwrap.dedent(f"""
        import hashlib
        from vindex_hub.load import Vindex
        with Vindex.open({repo!r}, cache_dir={str(cache)!r}) as vx:
            print(hashlib.sha256(vx.layer(1).tobytes()).hexdigest())
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert (
        outs
        == [
            sidecar.VindexIndex.loads((vindex_folder[0] / filenames.SIDECAR_JSON).read_text())
            .layer(1)
            .sha256
        ]
        * 3
    )
    assert bin_stats(local_hub, repo).bytes_sent == E * K * H * 4  # fetched once, under the lock


# ---- pull and info -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pull_binary_subset_is_a_valid_smaller_vindex(
    local_hub, vindex_folder, repo, tmp_path, cache
):
    _, blocks = vindex_folder
    local_hub.reset_stats()
    out = pull_vindex(repo, tmp_path / "sub", layers="1-2", cache_dir=cache)
    assert bin_stats(local_hub, repo).bytes_sent == 2 * E * K * H * 4
    assert (out / filenames.GATE_VECTORS_BIN).stat().st_size == 2 * E * K * H * 4
    report = verify_vindex(out)
    assert report.ok, report.render()
    assert (out / filenames.LARQL_INDEX_JSON).exists() and not (out / layer_parquet(0)).exists()
    with Vindex.open(out) as vx:
        assert vx.layers == [1, 2]
        assert vx.index.layer(1).file_offset == 0 and vx.index.layer(2).file_offset == E * K * H * 4
        np.testing.assert_array_equal(vx.layer(1), blocks[1])
        np.testing.assert_array_equal(vx.layer(2), blocks[2])
        assert set(vx.phase1["layers"]) == {"1", "2"}
        assert [c["config_name"] for c in vx.card_data.to_dict()["configs"]] == [  # only its layers
            mirror.CONFIG_EXPERT_STATS,
            mirror.CONFIG_ROUTER_SVD,
            "layer_01",
            "layer_02",
            mirror.CONFIG_GATE_VECTORS,
        ]
        stats = vx.expert_stats()  # the source's spectra, kept for the pulled layers only
        assert sorted(set(stats[mirror.COL_LAYER].tolist())) == [1, 2]
        assert len(stats[mirror.COL_LAYER]) == 2 * E
    assert not (out / filenames.BUILD_STATE_DIR).exists()
    one = pull_vindex(repo, tmp_path / "one", layers="1", cache_dir=cache)
    assert verify_vindex(one).ok, verify_vindex(one).render()
    with Vindex.open(one, mode="arrow") as vx:  # the regenerated mirror reads back through datasets
        np.testing.assert_array_equal(vx.layer(1), blocks[1])
    with pytest.raises(UsageError, match="out of range"):
        pull_vindex(repo, tmp_path / "sub2", layers="7", cache_dir=cache)


@pytest.mark.slow
def test_pull_replaces_only_an_earlier_pull_of_the_same_repo(
    local_hub, vindex_folder, repo, tmp_path, cache
):
    folder, blocks = vindex_folder
    out = pull_vindex(repo, tmp_path / "p", cache_dir=cache)
    (out / "notes.txt").write_text("mine")
    assert pull_vindex(repo, out, layers="1", cache_dir=cache) == out  # an earlier pull: replaced
    assert verify_vindex(out).ok, verify_vindex(out).render()
    assert not (out / layer_parquet(0)).exists()  # no stale layer files left behind
    assert (out / "notes.txt").read_text() == "mine"
    with Vindex.open(out) as vx:
        assert vx.layers == [1]
        np.testing.assert_array_equal(vx.layer(1), blocks[1])
        assert set(vx.expert_stats()[mirror.COL_LAYER].tolist()) == {
            1
        }  # the stats were replaced too
    other = upload(folder)
    with pytest.raises(OutputConflictError, match=f"not an earlier pull of dataset repo {other}"):
        pull_vindex(other, out, cache_dir=cache)
    mine = tmp_path / "built"
    shutil.copytree(folder, mine)  # a vindex the user built: never overwritten
    with pytest.raises(OutputConflictError, match="not empty and not an earlier pull"):
        pull_vindex(repo, mine, layers="1", cache_dir=cache)
    assert Vindex.open(mine).layers == list(LAYERS)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflictError, match="not empty"):
        pull_vindex(repo, tmp_path / "busy", cache_dir=cache)


@pytest.mark.slow
def test_pull_full_is_verified_and_arrow_is_data_only(
    local_hub, vindex_folder, repo, tmp_path, cache
):
    folder, blocks = vindex_folder
    full = pull_vindex(repo, tmp_path / "full", cache_dir=cache)
    assert (full / filenames.GATE_VECTORS_BIN).read_bytes() == (
        folder / filenames.GATE_VECTORS_BIN
    ).read_bytes()
    assert (full / layer_parquet(2)).exists()
    assert verify_vindex(full).ok
    arrow = pull_vindex(repo, tmp_path / "arrow", layers=[0], format="arrow", cache_dir=cache)
    assert (arrow / layer_parquet(0)).exists() and (arrow / filenames.CARD_FILE).exists()
    assert (
        not (arrow / layer_parquet(1)).exists()
        and not (arrow / filenames.GATE_VECTORS_BIN).exists()
    )
    with pytest.raises(VindexFormatError, match="data-only pull .*mode='arrow'"):
        Vindex.open(arrow)
    with Vindex.open(arrow, mode="arrow") as vx:
        np.testing.assert_array_equal(vx.layer(0), blocks[0])
        with pytest.raises(VindexFormatError, match=r"layer_01.parquet .*layer 1 cannot be read"):
            vx.layer(1)


@pytest.mark.slow
def test_pull_of_a_corrupted_repo_leaves_no_sidecar(local_hub, vindex_folder, tmp_path, cache):
    folder, _ = vindex_folder
    repo_id = upload(folder)
    bad = bytearray((folder / filenames.GATE_VECTORS_BIN).read_bytes())
    bad[E * K * H * 4 + 100] ^= 0x01  # layer 1; the sidecar and mirror stay the old ones
    HfApi().create_commit(
        repo_id,
        [CommitOperationAdd(filenames.GATE_VECTORS_BIN, bytes(bad))],
        commit_message="corrupt",
        repo_type="dataset",
    )
    with pytest.raises(IntegrityError, match="layer 1"):
        pull_vindex(repo_id, tmp_path / "full", cache_dir=cache)
    assert (tmp_path / "full" / filenames.GATE_VECTORS_BIN).exists()
    assert not (
        tmp_path / "full" / filenames.SIDECAR_JSON
    ).exists()  # never a complete-looking wrong vindex
    with pytest.raises(IntegrityError, match="layer 1 has sha256"):
        pull_vindex(
            repo_id, tmp_path / "full", layers="1", cache_dir=cache
        )  # re-pull into the same folder
    assert not (tmp_path / "full" / filenames.SIDECAR_JSON).exists()


def test_arrow_mode_needs_a_dataset_repo(local_hub, repo, cache):
    with pytest.raises(UsageError, match="dataset repos only"):
        Vindex.open(repo, repo_type="model", mode="arrow", cache_dir=cache)


def test_remote_info_reads_no_binary(local_hub, vindex_folder, repo, cache):
    folder, _ = vindex_folder
    local_hub.reset_stats()
    info = remote_info(repo, cache_dir=cache)
    assert bin_stats(local_hub, repo).bytes_sent == 0
    assert (info["num_layers"], info["num_experts"], info["num_feats"], info["hidden_size"]) == (
        3,
        E,
        K,
        H,
    )
    assert info["file_size"] == (folder / filenames.GATE_VECTORS_BIN).stat().st_size
    assert info["phase2"]["layers"].keys() == {"0", "1", "2"}
    assert info["commit"] == HfApi().dataset_info(repo).sha
