"""The HAProxy that Ray Serve's high-throughput mode starts: on loopback only, and never outliving its stack.

Ray Serve's HAProxy template binds its stats page and Prometheus exporter to every interface
(``bind *:port``), with no setting to choose the address. A local stack listens on loopback only, so
Ray is given this wrapper as its HAProxy binary (``RAY_SERVE_HAPROXY_BINARY_PATH``): it narrows the
config's wildcard binds to 127.0.0.1, notes its PID in the stack's folder, and ``exec``s the real
binary, so that Ray's process handle, its reloads (``-sf <pid>``) and its signals reach HAProxy itself.

A stack killed with SIGKILL (or stopped before Ray was up) leaves its HAProxy running: Ray's own
processes end with their driver, HAProxy is a grandchild that nobody signals. The next start on the
same home ends those PIDs, once it holds the home's lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

PIDS = "haproxy.pids"
WRAPPER = "haproxy"

_SCRIPT = """#!/bin/sh
# Written by droptrain (droptrain/local/engines/haproxy.py): Ray Serve's HAProxy on loopback only.
real={real}
echo $$ >> {pids}
for arg do
  if [ "$config" = next ]; then
    sed -E 's/^([[:space:]]*bind[[:space:]]+)(\\*|0\\.0\\.0\\.0)?:([0-9]+)/\\1127.0.0.1:\\3/' \\
      "$arg" > "$arg.loopback" || exit 1
    arg="$arg.loopback"
    config=done
  elif [ "$arg" = -f ]; then
    config=next
  fi
  set -- "$@" "$arg"
  shift
done
exec "$real" "$@"
"""


def loopback_wrapper(real: str, folder: Path) -> Path:
    """Write the wrapper for the HAProxy binary ``real`` into ``folder``; its path, for Ray."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WRAPPER
    path.write_text(_SCRIPT.format(real=shlex.quote(real), pids=shlex.quote(str(folder / PIDS))))
    path.chmod(0o755)
    return path


def end_leftovers(folder: Path, timeout: float = 10, quiet: float = 3) -> list[int]:
    """End each HAProxy an earlier stack on this home recorded in ``folder`` and left running; the PIDs
    ended. A recorded PID now used by another program is left alone.

    A killed stack's Ray outlives it for a moment, and its HAProxy manager may start HAProxy again once
    the recorded one ends (a CI run caught a new PID recorded after the first were ended): the folder
    is watched until no new one has been recorded for ``quiet`` seconds, each ended in turn."""
    ended: list[int] = []
    while (folder / PIDS).exists():
        now = _end_recorded(folder / PIDS, timeout)
        if not now:  # none was running: none for a manager to start again
            break
        ended += now
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline and not (folder / PIDS).exists():
            time.sleep(0.1)
    return ended


def _end_recorded(pids_file: Path, timeout: float) -> list[int]:
    # The record is taken before anything is ended: a PID the manager records meanwhile starts a new
    # file for the next round, rather than being deleted unseen with the ones ended here.
    taken = pids_file.with_suffix(".ending")
    try:
        os.replace(pids_file, taken)
    except FileNotFoundError:
        return []
    recorded = {int(line) for line in taken.read_text().split() if line.isdigit()}
    leftovers = []
    for pid in sorted(recorded):
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE and os.path.basename(process.exe()) == "haproxy":
                leftovers.append(process)
        except psutil.Error:
            continue
    for process in leftovers:
        log.warning("ending HAProxy (PID %d) left running by a stack that did not stop cleanly", process.pid)
        # Ending a master ends its workers: one of them may be gone before its own turn.
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(leftovers, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=0.5)
    taken.unlink()
    return [process.pid for process in leftovers]
