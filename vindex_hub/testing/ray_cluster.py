"""A Ray cluster of several raylets on this machine, bound to 127.0.0.1, for tests and benchmarks.

The head is ``ray start --head --node-ip-address 127.0.0.1 --block``; each further node is what
``ray start --address HEAD --block`` runs (a ``ray._private.node.Node`` joined to the head's GCS),
started from a small launcher because Ray 2.60's CLI rewrites a loopback ``--address`` and
``--node-ip-address`` to the machine's external IP (its servers then listen on every interface).
Every process runs with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's own switch that keeps a node
on the loopback interface; a driver joining the cluster needs it too (``client_environment``).

Each node is one foreground process of ours: ``stop`` sends it SIGTERM (Ray drains the node and
ends the processes it started) and waits; nothing is found or stopped by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..compat import RAY_WORKER_NODE_SCRIPT

LOOPBACK = "127.0.0.1"
# Ray's switch: with it off, a node takes the loopback address as its own.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def client_environment() -> dict[str, str]:
    """The variables a driver (or a CLI run) needs to join a cluster on 127.0.0.1."""
    return dict(LOOPBACK_ENV)


class LocalRayCluster:
    """``nodes`` raylets with ``cpus_per_node`` CPUs each; ``address`` is the head's GCS."""

    def __init__(
        self,
        *,
        nodes: int = 2,
        cpus_per_node: int = 1,
        object_store_mb: int = 100,
        env: dict[str, str] | None = None,
    ):
        # Short: Ray's Unix socket paths live under it (at most 107 bytes).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vxray-", dir="/tmp"))
        self.port = _free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.nodes, self.cpus_per_node, self.object_store_mb = nodes, cpus_per_node, object_store_mb
        self.env = {**os.environ, **(env or {}), **LOOPBACK_ENV}
        self.processes: list[subprocess.Popen] = []

    def start(self, timeout: float = 120) -> LocalRayCluster:
        ray = str(Path(sys.executable).with_name("ray"))
        store = str(self.object_store_mb << 20)
        self._spawn(
            [
                ray,
                "start",
                "--head",
                "--block",
                "--node-ip-address",
                LOOPBACK,
                "--port",
                str(self.port),
                "--num-cpus",
                str(self.cpus_per_node),
                "--object-store-memory",
                store,
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
                "--temp-dir",
                str(self.temp_dir),
            ],
            "head",
        )
        self._wait_for_nodes(1, timeout)
        for n in range(1, self.nodes):
            self._spawn(
                [
                    sys.executable,
                    "-c",
                    RAY_WORKER_NODE_SCRIPT,
                    self.address,
                    LOOPBACK,
                    str(self.cpus_per_node),
                    store,
                    str(self.temp_dir),
                ],
                f"node{n}",
            )
        self._wait_for_nodes(self.nodes, timeout)
        return self

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = open(self.temp_dir / f"{name}.log", "wb")
        self.processes.append(
            subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        )
        log.close()

    def _wait_for_nodes(self, count: int, timeout: float) -> None:
        """Until ``count`` raylets are registered (asked of the GCS in a fresh process)."""
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                logs = "\n".join(p.read_text()[-2000:] for p in sorted(self.temp_dir.glob("*.log")))
                raise RuntimeError(f"a Ray node exited with {dead[0].returncode}:\n{logs}")
            out = subprocess.run(
                [sys.executable, "-c", probe, self.address],
                env=self.env,
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"{count} Ray nodes did not come up at {self.address} within {timeout} s"
        )

    def worker_pids(self, title_prefix: str) -> list[int]:
        """Pids of this cluster's processes (descendants of its nodes) whose title starts with
        ``title_prefix``: Ray titles a worker ``ray::<task name>`` while it runs that task (Linux /proc)."""
        parents: dict[int, int] = {}
        titles: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                titles[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])  # field 4: ppid
        ours = {p.pid for p in self.processes}
        found = []
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor and ancestor not in ours:
                ancestor = parents.get(ancestor)
            if ancestor and titles.get(pid, "").startswith(title_prefix):
                found.append(pid)
        return found

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to each node's own process (worker nodes first), wait for it, remove the temp dir."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
