"""The warm interpreter's server: ``python -m droptrain.local.engines.warm_server SOCKET`` (see ``warm``).

It imports, never computes, then forks: a job process per request (its own session, the job's
environment and folder, AWS's toolkit run unchanged), and within it a script process where the
toolkit would start a fresh ``python -- train.py ...``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Mapping
from typing import Any

from droptrain.local.engines import privates

log = logging.getLogger(__name__)

# What train.py and the toolkit import that costs time; imported, never run, before forking.
PRELOAD = (
    "torch",
    "torchvision",
    "torchvision.models",
    "torchvision.transforms",
    "torch.utils.data",
    "numpy",
    "PIL.Image",
    "matplotlib",
    "matplotlib.pyplot",
    "smdebug.pytorch",
    "sagemaker_training.cli.train",
)
# Modules that read the job's environment at import: imported again in each job.
PER_JOB = ("sagemaker_training",)
MESSAGE_BYTES = 1 << 20


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
        import setproctitle  # optional: ps then shows the warm server's own command line

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
        import setproctitle  # optional, as above

        setproctitle.setproctitle(" ".join(cmd))
    except ImportError:
        pass


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
        if request.get("script"):  # ``python -- script args`` itself, without the toolkit around it
            _script([sys.executable, "--", *request["argv"]], None, None)  # never returns
        sys.argv = list(request["argv"])
        sys.path[0] = os.getcwd()  # as for ``python -m`` started in the job's folder
        _title([sys.executable, "-m", "sagemaker_training.cli.train"])
        # Imported afresh in each job (dropped from sys.modules before forking): it reads the job's environment.
        from sagemaker_training import process

        privates.use_toolkit_popen(_Subprocess(process.python_executable()))  # the toolkit's Popen of the entry point
        from sagemaker_training.cli import train

        train.main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, then the job's exit status
        traceback.print_exc()
    privates.exit_like_interpreter(code)


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

    def __init__(
        self, cmd: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None, stderr: Any = None, **_: Any
    ):
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
        traceback.print_exc()
    privates.exit_like_interpreter(code)


if __name__ == "__main__":
    serve(sys.argv[1])
