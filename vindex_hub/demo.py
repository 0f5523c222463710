"""``vindex-hub demo``: the whole loop on a small DeepSeek-V4-format model made on the spot.

Steps: write a small FP4 DeepSeek-V4-format checkpoint (``testing.synth``), build its vindex,
verify it, start the bundled Hub-protocol server (``LocalHub``, on a free 127.0.0.1 port, repos
stored in the work folder), push, and read it back three ways, each compared with the local
``gate_vectors.bin``: ``Vindex.open(repo_id)`` (lazy ranged reads: the server's byte counts show
what one layer costs), ``datasets.load_dataset(repo_id, "gate_vectors", split=...)`` and
``huggingface_hub.snapshot_download``. Nothing leaves the machine; no account is needed.

Why the Hub client steps run in a child process: ``huggingface_hub`` and ``datasets`` read
``HF_ENDPOINT`` and friends once, at import (``docs/hub-server.md``), and building or
verifying a vindex imports them already (the card). Patching their constants afterwards misses
copies made at import time, so the client steps run in ``python -m vindex_hub.demo`` with the
local server's ``client_environment`` in its environment: correct whether ``run_demo`` is called
from the CLI or from a Python session that imported the clients long ago. The child reports back
one JSON line; a failed check there fails the demo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import VindexError
from .format import filenames, mirror

DEMO_REPO_ID = "demo/tiny-deepseek-v4-vindex"
# The local server accepts any token; writes need one. Not a secret, and still never printed.
DEMO_TOKEN = "hf_local_demo_token"
# Small enough to run in seconds on 2 cores, big enough that every part of the format is exercised.
MODEL_DIMS: dict[str, Any] = dict(
    num_layers=4, num_experts=8, hidden_size=256, moe_intermediate_size=128
)
NUM_FEATS = 32
LAZY_LAYER = 1  # the layer read back through lazy ranged reads and load_dataset
CLIENT_TIMEOUT_S = 300


@dataclass
class DemoSummary:
    workdir: Path
    kept: bool
    hub_url: str
    repo_id: str
    layers: list[int]
    num_experts: int
    num_feats: int
    hidden_size: int
    checkpoint_bytes: int
    binary_bytes: int
    folder_bytes: int
    pushed_files: int
    pushed_bytes: int
    commit_url: str | None
    lazy_layer: int
    lazy_config: str  # the lazy layer's mirror config, read with load_dataset
    lazy_layer_bytes: int  # the layer's size in gate_vectors.bin
    lazy_bytes_fetched: int  # what the server sent for it (its byte counter)
    snapshot_files: int
    timings: dict[str, float] = field(default_factory=dict)
    pushed_xet_bytes: int = 0  # what hf_xet stored in the server's CAS for the push (Xet path)

    def to_json(self) -> dict:
        return {**self.__dict__, "workdir": str(self.workdir)}

    def render(self) -> str:
        from .format.layout import format_size

        t = self.timings
        ratio = self.lazy_bytes_fetched / self.lazy_layer_bytes
        where = f"dataset repo {self.repo_id} on the local Hub at {self.hub_url}"
        pushed = (
            f"{self.pushed_files} files, {format_size(self.pushed_bytes)} in one commit to {where}"
            f" (through Xet: {format_size(self.pushed_xet_bytes)} of chunks stored)"
            if self.pushed_files
            else f"nothing sent: {where} already holds this vindex"
        )
        cached = "" if self.lazy_bytes_fetched else ", cached by an earlier run"
        return "\n".join(
            [
                "vindex-hub demo: build -> verify -> push -> load, on a DeepSeek-V4-format model made on the spot",
                f"  checkpoint     {len(self.layers)} layers x {self.num_experts} FP4 experts, hidden {self.hidden_size}: "
                f"{format_size(self.checkpoint_bytes)}",
                f"  build          {len(self.layers)} layers x {self.num_experts} experts x {self.num_feats} feats x "
                f"{self.hidden_size} hidden: gate_vectors.bin {format_size(self.binary_bytes)}, folder "
                f"{format_size(self.folder_bytes)} ({t['build']:.1f} s)",
                f"  verify         binary, sidecar, mirror and card agree ({t['verify']:.1f} s)",
                f"  push           {pushed} ({t['push']:.1f} s)",
                f"  Vindex.open    lazy layer({self.lazy_layer}): equals gate_vectors.bin; fetched "
                f"{self.lazy_bytes_fetched:,} B for a {self.lazy_layer_bytes:,} B layer ({ratio:.2f}x{cached}) "
                f"({t['lazy']:.1f} s)",
                f'  load_dataset   (repo, "{self.lazy_config}", split="{mirror.SPLIT}"): equals '
                f"gate_vectors.bin layer {self.lazy_layer} ({t['load_dataset']:.1f} s)",
                f"  snapshot       snapshot_download: {self.snapshot_files} files, byte-identical to the folder "
                f"({t['snapshot']:.1f} s)",
                f"  files          {'kept in ' + str(self.workdir) if self.kept else 'removed (use --keep to keep them)'}",
            ]
        )


def run_demo(
    workdir: str | os.PathLike[str] | None = None, keep: bool = False, *, show: bool = True
) -> DemoSummary:
    """Run the demo, print its summary (unless ``show`` is false: the CLI renders it) and return it.

    Without ``workdir`` everything goes to a temporary folder, removed at the end unless ``keep``;
    a ``workdir`` you name is always kept (a second run there reuses the build and finds the
    repo up to date).
    """
    from .builder import build_vindex
    from .format.card_data import CardOptions, default_year
    from .hubserver import LocalHub
    from .testing.synth import make_deepseek_v4_checkpoint
    from .verify import verify_vindex

    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="vindex-hub-demo-") if workdir is None else workdir)
    work.mkdir(parents=True, exist_ok=True)
    kept = keep or not own
    timings: dict[str, float] = {}
    try:
        start = time.monotonic()
        checkpoint = make_deepseek_v4_checkpoint(work / "checkpoint", **MODEL_DIMS)
        build = build_vindex(
            checkpoint,
            work / "vindex",
            num_feats=NUM_FEATS,
            device="cpu",
            # 32 small experts: starting worker processes (each imports numpy, scipy, torch) costs
            # more than they save; a real build uses every core.
            workers=1,
            progress=False,
            card_options=CardOptions(
                repo_id=DEMO_REPO_ID, author="vindex-hub demo", year=default_year()
            ),
        )
        timings["build"] = time.monotonic() - start

        start = time.monotonic()
        verify_vindex(build.out).raise_if_failed()
        timings["verify"] = time.monotonic() - start

        with LocalHub(work / "hub") as hub:
            client = _run_client(hub.url, work, build.out)
        timings.update(client["timings"])
        index = build.index
        summary = DemoSummary(
            workdir=work,
            kept=kept,
            hub_url=client["hub_url"],
            repo_id=DEMO_REPO_ID,
            layers=index.layer_ids,
            num_experts=index.num_experts,
            num_feats=index.num_feats,
            hidden_size=index.hidden_size,
            checkpoint_bytes=_tree_bytes(checkpoint),
            binary_bytes=(build.out / filenames.GATE_VECTORS_BIN).stat().st_size,
            folder_bytes=_tree_bytes(build.out),
            pushed_files=client["pushed_files"],
            pushed_bytes=client["pushed_bytes"],
            commit_url=client["commit_url"],
            lazy_layer=LAZY_LAYER,
            lazy_config=mirror.layer_config(LAZY_LAYER, index.model_config.num_hidden_layers),
            lazy_layer_bytes=index.layer_nbytes,
            lazy_bytes_fetched=client["lazy_bytes_fetched"],
            snapshot_files=client["snapshot_files"],
            pushed_xet_bytes=client["pushed_xet_bytes"],
            timings=timings,
        )
    finally:
        if not kept:
            shutil.rmtree(work, ignore_errors=True)
    if show:
        print(summary.render())
    return summary


def _run_client(hub_url: str, work: Path, folder: Path) -> dict[str, Any]:
    """Run the Hub client steps in a child process pointed at ``hub_url`` (see the module doc)."""
    from .hubserver import client_environment

    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env.update(client_environment(hub_url, work / "hf-home", token=DEMO_TOKEN))
    cmd = [sys.executable, "-m", "vindex_hub.demo", str(folder), DEMO_REPO_ID, str(LAZY_LAYER)]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise VindexError(
            f"demo: the Hub client steps against {hub_url} took over {CLIENT_TIMEOUT_S} s"
        ) from None
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["(no message)"]
        raise VindexError(f"demo: the Hub client steps against {hub_url} failed: {tail[0]}")
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise VindexError(
            f"demo: the Hub client steps against {hub_url} printed no summary"
        ) from None
    result["hub_url"] = hub_url
    return result


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---- the child process: push and read back through the real clients ------------------------------
def client_steps(folder: Path, repo_id: str, layer: int) -> dict[str, Any]:
    """Push ``folder`` to ``repo_id`` and read it back three ways; raise if anything differs.

    Runs with ``HF_ENDPOINT`` pointing at a ``LocalHub`` (whose admin API gives the byte counts).
    """
    import datasets
    import numpy as np
    from huggingface_hub import constants, snapshot_download

    from .checksums import sha256_file
    from .errors import IntegrityError
    from .load import Vindex
    from .load.readers import gate_vectors_from_table
    from .push import publishable_files, push_vindex

    datasets.config.USE_PARQUET_EXPORT = (
        False  # else load_dataset asks datasets-server.<host> (off-machine)
    )
    with Vindex.open(folder) as local:
        index, want = local.index, local.layer(layer)  # a memory-mapped view: it outlives close()
    timings: dict[str, float] = {}

    start = time.monotonic()
    pushed = push_vindex(folder, repo_id, progress=False)
    timings["push"] = time.monotonic() - start
    xet_bytes = _admin(constants.ENDPOINT, "GET", "/_local_hub/stats")["xet_bytes_received"]

    _admin(constants.ENDPOINT, "POST", "/_local_hub/reset")
    start = time.monotonic()
    with Vindex.open(repo_id) as vx:
        got = vx.layer(layer)
        if not np.array_equal(got, want):
            raise IntegrityError(
                f"demo: Vindex.open({repo_id!r}).layer({layer}) differs from "
                f"{filenames.GATE_VECTORS_BIN}"
            )
    timings["lazy"] = time.monotonic() - start
    stats = _admin(constants.ENDPOINT, "GET", "/_local_hub/stats")
    fetched = sum(
        f["bytes_sent"]
        for f in stats["files"]
        if f["repo_id"] == repo_id and f["path"] == filenames.GATE_VECTORS_BIN
    )

    start = time.monotonic()
    config = mirror.layer_config(layer, index.model_config.num_hidden_layers)
    ds = datasets.load_dataset(repo_id, config, split=mirror.SPLIT)
    block = gate_vectors_from_table(
        ds.data.table, list(want.shape), where=f"{repo_id} config {config}"
    )
    if not np.array_equal(block, want):
        raise IntegrityError(
            f"demo: load_dataset({repo_id!r}, {config!r}) differs from {filenames.GATE_VECTORS_BIN}"
        )
    timings["load_dataset"] = time.monotonic() - start

    start = time.monotonic()
    snapshot = Path(snapshot_download(repo_id, repo_type="dataset"))
    files = publishable_files(folder)
    for f in files:
        if sha256_file(snapshot / f.path) != sha256_file(folder / f.path):
            raise IntegrityError(
                f"demo: {f.path} from snapshot_download differs from {folder / f.path}"
            )
    timings["snapshot"] = time.monotonic() - start

    return {
        "pushed_files": len(pushed.uploaded),
        "pushed_bytes": pushed.uploaded_bytes,
        "commit_url": pushed.commit_url,
        "lazy_bytes_fetched": fetched,
        "pushed_xet_bytes": xet_bytes,
        "snapshot_files": len(files),
        "timings": timings,
    }


def _admin(endpoint: str, method: str, path: str) -> dict[str, Any]:
    """Call the local Hub's admin API (stats, reset); see ``vindex_hub.hubserver``."""
    import urllib.request

    req = urllib.request.Request(
        endpoint + path, method=method, data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def _client_main(argv: list[str]) -> int:
    folder, repo_id, layer = argv
    try:
        result = client_steps(Path(folder), repo_id, int(layer))
    except VindexError as exc:
        print(f"vindex-hub demo: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_client_main(sys.argv[1:]))
