"""Every place the local runtime reaches into a library's private API, each behind a check.

Private APIs change without notice. Each one here was read in, and is tested against, the version in
``TESTED``; ``check`` (run when Ray starts and when the warm interpreter starts) fails loudly, naming
the installed version, where that differs, rather than letting a job or a deployment break later in
a way nobody can trace. Moving a pin means reading the private code again, then moving ``TESTED``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from importlib import metadata
from typing import Any

# The distributions whose private code is used here, at the versions that code was read in
# (pyproject.toml pins the same; tests/local/test_privates.py keeps the two in step).
TESTED = {"ray": "2.57.0", "sagemaker-training": "5.1.4"}


class PrivateApiError(RuntimeError):
    """A library's private API that droptrain uses is not what it was written against."""


def check(*distributions: str) -> None:
    """Raise ``PrivateApiError`` naming each of ``distributions`` (default: all) installed at another
    version than ``TESTED``, and the interpreter if it lacks the exit hooks ``exit_like_interpreter`` calls."""
    problems = []
    for name in distributions or tuple(TESTED):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # not installed: whatever needs it fails on import, naming it
        if installed != TESTED[name]:
            problems.append(
                f"{name} {installed} is installed; droptrain's use of its private API was written "
                f"for {TESTED[name]} (droptrain/local/engines/privates.py)"
            )
    if not (hasattr(threading, "_shutdown") and hasattr(atexit, "_run_exitfuncs")):
        problems.append(f"Python {sys.version.split()[0]} lacks threading._shutdown or atexit._run_exitfuncs")
    if problems:
        raise PrivateApiError("; ".join(problems))


def serve_start(http_options: dict[str, Any], grpc_options: dict[str, Any] | None = None) -> Any:
    """Start Serve (or join the Serve running in this Ray) and return its controller client: what
    ``serve run`` does before ``deploy_apps``; Ray has no public call that returns the client."""
    from ray.serve._private.api import serve_start as start  # private: imported once check() has passed

    return start(http_options=http_options, grpc_options=grpc_options)


def use_toolkit_popen(replacement: Any) -> None:
    """Give AWS's training toolkit ``replacement`` as the ``subprocess`` module its ``process`` module
    starts the entry point with (the warm interpreter forks instead of starting a new Python)."""
    from sagemaker_training import process  # private, as above

    process.subprocess = replacement


def exit_like_interpreter(code: int) -> None:
    """End a forked process as the interpreter ends itself: non-daemon threads joined, exit functions
    run, buffers flushed; ``os._exit`` then skips what belongs to the parent (its atexit, its buffers)."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
