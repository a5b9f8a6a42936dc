"""A warm interpreter for local training jobs: torch and the training code's libraries imported once,
then forked for each job, so that a small trial does not spend seconds importing them again.

Inside a PyTorch training container, ``sagemaker-training`` (the toolkit) starts a job and runs the
entry point as ``python -- train.py --name value ...`` in a fresh interpreter. Here both steps are
forks of one process that has already imported torch, torchvision, smdebug, matplotlib and the
toolkit's dependencies:

* the **job process** is forked per job, becomes its own session (``kill`` ends its group, as for a
  ``Popen`` with ``start_new_session``), takes the job's environment, folder and output pipe, imports
  the toolkit afresh (it reads ``SAGEMAKER_BASE_DIR`` at import) and runs the toolkit's own
  ``train`` entry point;
* where the toolkit would start ``[python, "--", script, *args]`` (or ``-m module``) with
  ``subprocess.Popen``, the **script process** is a fork of the job process running that command
  line with ``runpy``: same ``sys.argv``, environment, working directory and exit status.

A job may also be a script alone (``start(..., script=True)``): the job process runs it as the
script process above, without the toolkit (a script's own tests start it so, each a fresh fork).

Everything the toolkit does around the script (config files, ``SM_*`` variables, the source dir,
``output/success`` and ``output/failure``) is its own code, unchanged. Any other command it runs is
a real subprocess. Nothing is computed in this process before forking (forking after OpenMP or CUDA
started is unsafe): it only imports.

The runtime starts the server (``warm_server``, through ``WarmInterpreter``) and asks it for a job
over a Unix socket, passing the write end of the job's output pipe; the server answers the job's pid,
then its exit status. The server ends when the runtime closes its stdin, or dies.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from droptrain.local.engines.warm_server import MESSAGE_BYTES

log = logging.getLogger(__name__)


class WarmInterpreterError(Exception):
    """The warm interpreter could not be started or asked for a job."""


class WarmProcess:
    """A job forked by the warm interpreter, with the part of ``Popen`` the runner uses."""

    def __init__(self, pid: int, stdout: IO[str], connection: socket.socket):
        self.pid, self.stdout, self._connection = pid, stdout, connection
        self.returncode: int | None = None
        # The job's thread and a stop (kill_all) may wait at once, as on a Popen: one reads the status.
        self._waiting = threading.Lock()

    def wait(self, timeout: float | None = None) -> int:
        started = time.monotonic()
        if not self._waiting.acquire(timeout=-1 if timeout is None else timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout)
        try:
            if self.returncode is not None:
                return self.returncode
            self._connection.settimeout(None if timeout is None else max(0.0, timeout - (time.monotonic() - started)))
            try:
                message = self._connection.recv(MESSAGE_BYTES)
            except TimeoutError:
                raise subprocess.TimeoutExpired(str(self.pid), timeout) from None
            # No answer: the server went away; the job's own exit status is lost with it.
            self.returncode = json.loads(message)["status"] if message else -signal.SIGKILL
            self._connection.close()
            return self.returncode
        finally:
            self._waiting.release()


class WarmInterpreter:
    """The server process, started on first use, ended by ``close``. ``start`` forks a job."""

    def __init__(self, folder: Path, ready_seconds: float = 120):
        self.folder, self.ready_seconds = folder, ready_seconds
        self._server: subprocess.Popen | None = None
        self._ready = False
        self._path: str | None = None
        self._lock = threading.Lock()

    def start_server(self) -> str:
        """Start the server unless it runs; the path of its socket."""
        with self._lock:
            if self._server is not None and self._server.poll() is None:
                return self._path
            self.folder.mkdir(parents=True, exist_ok=True)
            # A short path: Unix socket paths are limited to about 100 bytes.
            self._path = os.path.join(tempfile.mkdtemp(prefix="droptrain-warm-"), "s")
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self._ready = False
            self._server = subprocess.Popen(
                self.command(self._path),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                start_new_session=True,
                text=True,
            )
            ready = _wait_ready(self._server.stdout, self.ready_seconds)
            if ready != "ready":
                self._end_server()
                raise WarmInterpreterError(f"the warm interpreter did not start (said {ready!r})")
            self._ready = True
            return self._path

    def command(self, path: str) -> list[str]:
        return [sys.executable, "-m", "droptrain.local.engines.warm_server", path]

    def start(self, argv: list[str], cwd: Path, env: Mapping[str, str], script: bool = False) -> WarmProcess:
        """Fork a job running ``argv``'s module (the toolkit's ``train``) in ``cwd`` with ``env``; with
        ``script``, ``argv`` is a script and its arguments, run as ``python -- script args`` would be."""
        path = self.start_server()
        read_end, write_end = os.pipe()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            connection.connect(path)
            request = {"argv": argv, "cwd": str(cwd), "env": {str(k): str(v) for k, v in env.items()}, "script": script}
            socket.send_fds(connection, [json.dumps(request).encode()], [write_end])
            os.close(write_end)
            write_end = -1
            answer = connection.recv(MESSAGE_BYTES)
            if not answer:
                raise WarmInterpreterError("the warm interpreter refused the job")
            pid = json.loads(answer)["pid"]
        except (OSError, ValueError) as exc:
            connection.close()
            os.close(read_end)
            raise WarmInterpreterError(f"the warm interpreter could not start the job: {exc}") from exc
        finally:
            if write_end >= 0:
                os.close(write_end)
        return WarmProcess(pid, os.fdopen(read_end, "r", buffering=1, errors="replace"), connection)

    def _end_server(self) -> None:
        if self._server is None:
            return
        try:
            self._server.stdin.close()
            self._server.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self._server.kill()
            self._server.wait()
        self._server = None
        if self._path:
            Path(self._path).unlink(missing_ok=True)
            Path(self._path).parent.rmdir()

    def close(self) -> None:
        # A server still importing is killed at once (start_server then sees it end): a stop right
        # after a start does not wait seconds for torch to load, nor spends them.
        starting = self._server
        if starting is not None and not self._ready:
            starting.kill()
        with self._lock:
            self._end_server()


def _wait_ready(stream: IO[str], seconds: float) -> str:
    """``ready`` once the server says so (libraries may print on import first), else the last line."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline, line = time.monotonic() + seconds, ""
    while time.monotonic() < deadline:
        if selector.select(max(0.0, deadline - time.monotonic())):
            said = stream.readline()
            if not said:
                return line  # the server ended
            line = said.strip()
            if line == "ready":
                return line
    return line
