"""The builder's defaults, in a module that imports nothing heavy: the CLI's ``--help`` shows
them without loading the builder (numpy, scipy, safetensors)."""

from __future__ import annotations

DEFAULT_NUM_FEATS = 64
DEFAULT_PREFETCH_LAYERS = 1
# Experts decomposed per batch: bounds the float32 working set (8 x 32 MiB at real size).
DEFAULT_BATCH = 8

# Where a build's layers are decomposed: this machine, or a Ray cluster (``ray_engine``).
# "local": this machine, in one process (SerialEngine) or worker processes (ProcessEngine), as
# make_engine picks; "ray": a Ray cluster (ray_engine.RayEngine).
ENGINES = ("local", "ray")
DEFAULT_ENGINE = ENGINES[0]
