"""The private APIs of libraries that the local runtime uses, checked against the pinned versions."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

import pytest

from droptrain.local.engines import privates
from helpers import DEADLINE, ROOT


def test_the_installed_libraries_are_the_ones_the_private_code_was_read_in():
    privates.check()


def test_the_pins_and_the_tested_versions_move_together():
    pinned = dict(re.findall(r'"([a-z-]+)(?:\[[a-z,]+\])?==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()))
    assert {name: pinned.get(name) for name in privates.TESTED} == privates.TESTED


def test_another_version_fails_loudly_naming_it(monkeypatch):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "9.9.9" if name == "ray" else real(name))
    with pytest.raises(privates.PrivateApiError, match=r"ray 9\.9\.9 is installed; .* written for 2\.57\.0"):
        privates.check("ray")
    privates.check("sagemaker-training")  # the other one is as tested


def test_the_private_names_exist_in_the_pinned_versions():
    from ray.serve._private import api
    from sagemaker_training import process

    assert callable(api.serve_start) and hasattr(process, "subprocess")
    # What the toolkit calls on the module it is given: the warm interpreter's stand-in provides it.
    from droptrain.local.engines.warm_server import _Subprocess

    assert hasattr(_Subprocess, "Popen")


def test_a_forked_process_ends_as_the_interpreter_ends():
    """Non-daemon threads joined and exit functions run before the exit status is the one given."""
    code = (
        "import atexit, threading, time\n"
        "from droptrain.local.engines import privates\n"
        "atexit.register(lambda: print('exit functions ran', flush=True))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread finished', flush=True))).start()\n"
        "privates.exit_like_interpreter(7)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 7 and result.stdout.splitlines() == ["thread finished", "exit functions ran"]
