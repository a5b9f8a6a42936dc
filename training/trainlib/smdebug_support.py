"""smdebug 1.0.34, the last release, on today's training containers (numpy 2, protobuf 5+, Python 3.13).

It is installed without its dependency pins (``PIP_NO_DEPS``, see ``training/requirements.txt``):
its metadata asks for protobuf <= 3.20.3, which would downgrade the container's own protobuf.
Two things then stand between it and the container's versions, and both are mended here, before
anything imports it:

* its generated ``*_pb2`` modules predate protobuf 4 and load only with the pure-Python protobuf
  backend (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``), which must be chosen before
  protobuf is first imported;
* its tensor writer calls ``ndarray.tostring()``, which numpy 2.3 removed (``tobytes`` is the
  same bytes).

Everything else it uses works unchanged (tests/training run the hook and the rules on these
versions). One default is changed: a trial that has seen the training's end waits a second before it
lists its folder again (``SMDEBUG_TRAINING_END_DELAY_REFRESH``), once or twice per trial, for files an
S3 listing shows late; the rules here read the local folder the job's own hook wrote and closed, where nothing
arrives late, and that wait was dead time in every job (``0`` unless the environment sets it).
``available()`` says whether smdebug can be used in this process, and why not.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

PROTOBUF_BACKEND = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
END_DELAY = "SMDEBUG_TRAINING_END_DELAY_REFRESH"  # read by each trial as it is created
_state: dict[str, object] = {}


def _protobuf_backend_problem() -> str | None:
    if "google.protobuf" not in sys.modules:
        os.environ.setdefault(PROTOBUF_BACKEND, "python")
        return None
    from google.protobuf.internal import api_implementation

    backend = api_implementation.Type()
    if backend != "python":
        return (
            f"protobuf was already imported with its {backend!r} backend; smdebug needs "
            f"{PROTOBUF_BACKEND}=python set before protobuf is first imported"
        )
    return None


def _patch_tensor_writer() -> None:
    import numpy as np

    if hasattr(np.ndarray, "tostring"):
        return
    import smdebug.core.writer as writer

    if getattr(writer.make_tensor_proto, "droptrain_patched", False):
        return

    class _WithToString(np.ndarray):
        def tostring(self, order: str = "C") -> bytes:  # what smdebug calls; numpy 2.3 removed it
            return self.tobytes(order)

    original = writer.make_tensor_proto

    def make_tensor_proto(nparray_data, tag):
        return original(np.asarray(nparray_data).view(_WithToString), tag)

    make_tensor_proto.droptrain_patched = True  # type: ignore[attr-defined]
    writer.make_tensor_proto = make_tensor_proto


def available() -> bool:
    """Whether smdebug is importable and usable here; the reason it is not is logged once."""
    if "ok" not in _state:
        os.environ.setdefault(END_DELAY, "0")
        problem = _protobuf_backend_problem()
        if problem is None:
            try:
                import smdebug.core.writer  # noqa: F401 - loads the protobuf modules that can fail

                _patch_tensor_writer()
            except ImportError as exc:
                problem = f"smdebug is not installed ({exc})"
            except TypeError as exc:  # protobuf refusing the old generated modules
                problem = f"smdebug cannot load its protobuf modules ({exc})".splitlines()[0]
        _state["ok"] = problem is None
        _state["problem"] = problem
        if problem:
            log.warning("training without the debugger hook: %s", problem)
    return bool(_state["ok"])


def problem() -> str | None:
    available()
    return _state.get("problem")  # type: ignore[return-value]
