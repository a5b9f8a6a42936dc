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

Everything the toolkit does around the script (config files, ``SM_*`` variables, the source dir,
``output/success`` and ``output/failure``) is its own code, unchanged. Any other command it runs is
a real subprocess. Nothing is computed in this process before forking (forking after OpenMP or CUDA
started is unsafe): it only imports.

The runtime starts the server (``WarmInterpreter``) and asks it for a job over a Unix socket, passing
the write end of the job's output pipe; the server answers the job's pid, then its exit status. The
server ends when the runtime closes its stdin, or dies.
"""

from __future__ import annotations

import atexit
import importlib
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
from pathlib import Path
from typing import IO, Any, Mapping

log = logging.getLogger(__name__)

# What train.py and the toolkit import that costs time; imported, never run, before forking.
PRELOAD = ("torch", "torchvision", "torchvision.models", "torchvision.transforms", "torch.utils.data", "numpy",
           "PIL.Image", "matplotlib", "matplotlib.pyplot", "smdebug.pytorch", "sagemaker_training.cli.train")
# Modules that read the job's environment at import: imported again in each job.
PER_JOB = ("sagemaker_training",)
MESSAGE_BYTES = 1 << 20


class WarmInterpreterError(Exception):
    """The warm interpreter could not be started or asked for a job."""


# -- the server (its own process: python -m droptrain.local.warm SOCKET) --------------------------


def _preload() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    # smdebug's generated protobuf modules load only with the pure-Python backend, which must be
    # chosen before protobuf is first imported (training/trainlib/smdebug_support.py).
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a library that cannot import is imported by the job, which reports it
            print(f"warm interpreter: not preloading {name}: {exc}", file=sys.stderr, flush=True)
    for name in [m for m in sys.modules if m.split(".")[0] in PER_JOB]:
        del sys.modules[name]
    try:  # set up while argv and environ are still where the kernel put them (a job replaces environ)
        import setproctitle

        setproctitle.getproctitle()
    except ImportError:
        pass


def serve(path: str) -> None:
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    selector.register(sys.stdin, selectors.EVENT_READ, "parent")
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nobody reads this process's stdout after "ready"
    while True:
        for key, _ in selector.select():
            if key.data == "parent" and not sys.stdin.buffer.read1(1):
                return  # the runtime closed our stdin (or died): running jobs go on, as after a runtime's kill -9
            if key.data == "accept":
                connection, _ = listener.accept()
                _accept(connection, listener, children)
            elif key.data == "child":
                os.read(wake_read, 4096)
        _reap(children)


def _accept(connection: socket.socket, listener: socket.socket, children: dict[int, socket.socket]) -> None:
    try:
        message, fds, _, _ = socket.recv_fds(connection, MESSAGE_BYTES, 1)
        request = json.loads(message)
    except (OSError, ValueError) as exc:
        log.warning("warm interpreter: a bad request: %s", exc)
        connection.close()
        return
    if len(fds) != 1:
        connection.close()
        return
    # The pid goes back only once the job leads its own process group: a stop that came sooner
    # would find no group to end.
    in_session, session_ready = os.pipe()
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in children.values():
            other.close()
        connection.close()
        os.close(in_session)
        _job(request, fds[0], session_ready)  # never returns
    os.close(session_ready)
    os.read(in_session, 1)
    os.close(in_session)
    os.close(fds[0])
    children[pid] = connection
    connection.send(json.dumps({"pid": pid}).encode())


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is not None:
            try:
                connection.send(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode())
            except OSError:
                pass  # the runtime stopped waiting
            connection.close()


def _title(cmd: list[str]) -> None:
    """What ``ps`` shows for this fork: the command a cold start would have run."""
    try:
        import setproctitle

        setproctitle.setproctitle(" ".join(cmd))
    except ImportError:
        pass


def _exit(code: int) -> None:
    """End a forked process as the interpreter would: exit functions, non-daemon threads, buffers."""
    try:
        threading._shutdown()  # type: ignore[attr-defined] - what the interpreter does at exit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _job(request: Mapping[str, Any], output: int, session_ready: int) -> None:
    """The forked job process: a fresh session with the job's environment, running the toolkit."""
    code = 1
    try:
        os.setsid()
        os.write(session_ready, b"1")
        os.close(session_ready)
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        sys.path[0] = os.getcwd()  # as for ``python -m`` started in the job's folder
        _title([sys.executable, "-m", "sagemaker_training.cli.train"])
        from sagemaker_training import process

        process.subprocess = _Subprocess(process.python_executable())  # the toolkit's Popen of the entry point
        from sagemaker_training.cli import train

        train.main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, then the job's exit status
        import traceback

        traceback.print_exc()
    _exit(code)


class _Subprocess:
    """``subprocess`` as the toolkit's process module sees it: ``Popen`` of the Python entry point
    is a fork of this warm process; everything else is the real module."""

    def __init__(self, python: str):
        self._python = python

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, cmd, *args, **kwargs):  # noqa: N802 - subprocess's name
        if isinstance(cmd, list) and len(cmd) >= 3 and cmd[0] == self._python and cmd[1] in ("--", "-m") and not args:
            return _ForkedScript(cmd, **kwargs)
        return subprocess.Popen(cmd, *args, **kwargs)


class _ForkedScript:
    """``python -- script args`` or ``python -m module args`` in a fork, with Popen's ``wait``."""

    def __init__(self, cmd: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
                 stderr: Any = None, **_: Any):
        self.args, self.returncode = cmd, None
        env = dict(env) if env is not None else None  # the toolkit passes os.environ itself
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            _script(cmd, env, cwd)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _script(cmd: list[str], env: Mapping[str, str] | None, cwd: str | None) -> None:
    import runpy

    code = 1
    try:
        _title(cmd)
        if cwd:
            os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            import torch  # its thread pool starts with the first operation: after this fork

            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        # As a fresh interpreter starts it: no logging configured, sys.path[0] the script's folder.
        logging.root.handlers.clear()
        logging.root.setLevel(logging.WARNING)
        if cmd[1] == "-m":
            sys.argv = [cmd[2], *cmd[3:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(cmd[2], run_name="__main__", alter_sys=True)
        else:
            script = cmd[2]
            sys.argv = [script, *cmd[3:]]
            sys.path[0] = os.path.dirname(os.path.abspath(script))
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, then exit status 1
        import traceback

        traceback.print_exc()
    _exit(code)


# -- the client (in the runtime) --------------------------------------------------------------


class WarmProcess:
    """A job forked by the warm interpreter, with the part of ``Popen`` the runner uses."""

    def __init__(self, pid: int, stdout: IO[str], connection: socket.socket):
        self.pid, self.stdout, self._connection = pid, stdout, connection
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        self._connection.settimeout(timeout)
        try:
            message = self._connection.recv(MESSAGE_BYTES)
        except TimeoutError:
            raise subprocess.TimeoutExpired(str(self.pid), timeout) from None
        # No answer: the server went away; the job's own exit status is lost with it.
        self.returncode = json.loads(message)["status"] if message else -signal.SIGKILL
        self._connection.close()
        return self.returncode


class WarmInterpreter:
    """The server process, started on first use, ended by ``close``. ``start`` forks a job."""

    def __init__(self, folder: Path, pycache: Path | None = None, ready_seconds: float = 120):
        self.folder, self.pycache, self.ready_seconds = folder, pycache, ready_seconds
        self._server: subprocess.Popen | None = None
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
            if self.pycache is not None:  # each job extracts the code afresh: its bytecode is compiled once
                env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
            self._server = subprocess.Popen([sys.executable, "-m", "droptrain.local.warm", self._path],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                            start_new_session=True, text=True)
            ready = _wait_ready(self._server.stdout, self.ready_seconds)
            if ready != "ready":
                self._end_server()
                raise WarmInterpreterError(f"the warm interpreter did not start (said {ready!r})")
            return self._path

    def start(self, argv: list[str], cwd: Path, env: Mapping[str, str]) -> WarmProcess:
        """Fork a job running ``argv``'s module (the toolkit's ``train``) in ``cwd`` with ``env``."""
        path = self.start_server()
        read_end, write_end = os.pipe()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            connection.connect(path)
            request = {"argv": argv, "cwd": str(cwd), "env": {str(k): str(v) for k, v in env.items()}}
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


if __name__ == "__main__":
    serve(sys.argv[1])
