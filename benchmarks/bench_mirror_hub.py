"""``load_dataset`` of one layer from the (local) Hub: the config-per-layer mirror vs the old layout.

    python benchmarks/bench_mirror_hub.py [--layers 4] [--experts 256] [--feats 64] [--hidden 4096]

The defaults make real DeepSeek-V4-Flash layers (256 experts x 64 x 4096 float32 = 256 MiB each;
``--hidden 7168 --experts 384`` for Kimi-K2 / V4-Pro). A synthetic vindex (``bench_mirror``'s
unit-norm rows) is written with the real writers and pushed twice to the bundled Hub server,
whose byte counters give, side by side in one run:

- ``load_dataset(repo, "layer_01", split="train")``: parquet bytes served / that layer's file
  (target <= 1.05);
- the old layout, ``load_dataset(repo, "gate_vectors", split="layer_01")``: parquet bytes served
  (every layer's file: the figure a config per layer removes);
- ``load_dataset(repo, "gate_vectors", split="train", streaming=True).take(10)``: bytes served.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from vindex_hub.hubserver import LocalHub, client_environment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--feats", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=4096)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-hub-"))
    hub = LocalHub(work / "server").start()
    os.environ.update(client_environment(hub.url, work / "hf", token="hf_bench_dummy"))
    try:
        run(args, work, hub)
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, hub: LocalHub) -> None:
    # The clients read the environment at import time: import them only now.
    import datasets
    import yaml
    from bench_mirror import make_vindex
    from huggingface_hub import HfApi

    from vindex_hub.format import filenames, mirror
    from vindex_hub.writers.derived import rewrite_card
    from vindex_hub.writers.mirror import write_mirror

    datasets.config.USE_PARQUET_EXPORT = False  # no parquet-export host to ask
    datasets.disable_progress_bars()
    folder = work / "vindex"
    folder.mkdir()
    index = make_vindex(folder, args.layers, args.experts, args.feats, args.hidden)
    write_mirror(folder, index)
    rewrite_card(folder, index)
    n = index.model_config.num_hidden_layers
    layer = 1 if args.layers > 1 else 0
    layer_file = (folder / mirror.gate_vectors_parquet(layer, n)).stat().st_size
    all_files = sum(
        (folder / mirror.gate_vectors_parquet(i, n)).stat().st_size for i in index.layer_ids
    )

    api = HfApi()

    def push(name: str, path: Path) -> str:
        repo = f"bench/{name}"
        api.create_repo(repo, repo_type="dataset")
        api.upload_folder(folder_path=path, repo_id=repo, repo_type="dataset")
        return repo

    new_repo = push("config-per-layer", folder)
    card = folder / filenames.CARD_FILE
    front = yaml.safe_load(card.read_text().split("---\n")[1])
    front["configs"] = mirror.split_per_layer_configs(
        {i: mirror.gate_vectors_parquet(i, n) for i in index.layer_ids}, {}
    )
    front.pop("dataset_info")
    card.write_text("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n# old layout\n")
    old_repo = push("split-per-layer", folder)

    def served(repo: str, load) -> tuple[int, float]:
        hub.reset_stats()
        t = time.perf_counter()
        load()
        seconds = time.perf_counter() - t
        return sum(
            f.bytes_sent
            for (_, r, p), f in hub.stats().files.items()
            if r == repo and p.endswith(".parquet")
        ), seconds

    cache = str(work / "datasets")
    config = mirror.layer_config(layer, n)
    rows = [
        (
            f'load_dataset(repo, "{config}", split="train")',
            *served(
                new_repo,
                lambda: datasets.load_dataset(new_repo, config, split="train", cache_dir=cache),
            ),
        ),
        (
            f'old layout: load_dataset(repo, "gate_vectors", split="{mirror.old_layout_split(layer)}")',
            *served(
                old_repo,
                lambda: datasets.load_dataset(
                    old_repo,
                    mirror.CONFIG_GATE_VECTORS,
                    split=mirror.old_layout_split(layer),
                    cache_dir=cache,
                ),
            ),
        ),
        (
            'load_dataset(repo, "gate_vectors", split="train", streaming=True).take(10)',
            *served(
                new_repo,
                lambda: list(
                    datasets.load_dataset(
                        new_repo, mirror.CONFIG_GATE_VECTORS, split="train", streaming=True
                    ).take(10)
                ),
            ),
        ),
    ]
    mib = float(1 << 20)
    print(
        f"synthetic vindex: {args.layers} layers x {args.experts} experts x {args.feats} feats x {args.hidden} "
        f"hidden; layer {layer}'s parquet {layer_file / mib:.1f} MiB, all layers {all_files / mib:.1f} MiB\n"
    )
    print("| read | parquet MiB served | / that layer's file | wall s |")
    print("| --- | --- | --- | --- |")
    for what, nbytes, seconds in rows:
        print(f"| `{what}` | {nbytes / mib:.1f} | {nbytes / layer_file:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
