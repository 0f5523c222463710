"""Start-up cost of the command line: wall time of ``vindex-hub --help`` and of ``info`` and
``verify`` of a local folder, each a fresh process, and the heavy modules each one loaded.

The CLI imports torch, scipy, pyarrow and datasets only inside the commands that need them, so
``--help`` and ``info`` cost the interpreter plus numpy, PyYAML and huggingface_hub's client.
``verify`` reads the parquet mirror, so it loads pyarrow and datasets (tests/test_lazy_imports.py
pins what each loads).

    python benchmarks/bench_cli.py [--repeat 10] [--workdir DIR]

It builds a small vindex first (a few seconds), then reports the median and the fastest of
``--repeat`` runs of each command (the fastest is the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("scipy", "torch", "pyarrow", "datasets", "huggingface_hub", "numpy")

# The command run in-process after start-up, then the heavy modules loaded (one JSON line).
_PROBE = """
import contextlib, io, json, sys
from vindex_hub.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in HEAVY if m in sys.modules)))
""".replace("HEAVY", repr(HEAVY))


def _small_vindex(workdir: Path) -> Path:
    from vindex_hub.builder import build_vindex
    from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

    folder = workdir / "vindex"
    if not (folder / "gate_vectors_index.json").exists():
        checkpoint = make_deepseek_v4_checkpoint(
            workdir / "checkpoint",
            num_layers=2,
            num_experts=4,
            hidden_size=64,
            moe_intermediate_size=32,
        )
        build_vindex(checkpoint, folder, num_feats=4, device="cpu", workers=1, progress=False)
    return folder


def _time(argv: list[str], repeat: int) -> tuple[list[float], list[str]]:
    """Wall times of ``python -m vindex_hub *argv`` (the real entry point), and one probe's modules."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "vindex_hub", *argv], capture_output=True, check=False
        )
        times.append(time.perf_counter() - start)
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True
    )
    return times, json.loads(probe.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--workdir", default=None, help="where the small vindex goes (default: temp)")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cli-"))
    folder = _small_vindex(workdir)
    baseline, _ = _time(["--version"], args.repeat)  # argparse exits before any command
    rows = [("python -c pass", None)]
    print(f"{'command':<28} {'median s':>9} {'fastest s':>10}  heavy modules loaded")
    bare = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
    print(f"{rows[0][0]:<28} {statistics.median(bare):>9.3f} {min(bare):>10.3f}  (the interpreter)")
    for label, argv in (
        ("vindex-hub --version", ["--version"]),
        ("vindex-hub --help", ["--help"]),
        ("vindex-hub info FOLDER", ["info", str(folder)]),
        ("vindex-hub verify FOLDER", ["verify", str(folder)]),
    ):
        times, heavy = (
            (baseline, _time(argv, 1)[1]) if argv == ["--version"] else _time(argv, args.repeat)
        )
        print(
            f"{label:<28} {statistics.median(times):>9.3f} {min(times):>10.3f}  {', '.join(heavy) or '-'}"
        )


if __name__ == "__main__":
    main()
