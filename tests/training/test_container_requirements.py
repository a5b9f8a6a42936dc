"""training/requirements.txt installed as the PyTorch 2.10 training container installs it.

The training toolkit runs ``python -m pip install -r requirements.txt`` in the container with the
job's Environment, which carries PIP_NO_DEPS and PIP_COMPILE=0 (chalice_app/sagemaker_requests.py). Here the same
command runs in a fresh environment on the container's Python (3.13, where this machine has it)
holding the container's own versions of the packages smdebug's pins would fight over. It must leave
those versions alone, leave nothing missing, and give a working smdebug: tensors written and read
back, the in-job rules judging them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chalice_app import sagemaker_requests
from helpers import ROOT, TRAINING_DIR

# What the container image has before the job's requirements.txt is installed (the Dockerfile of
# pytorch/training/docker/2.10: numpy, pandas, boto3 unpinned at build time, setuptools 81.0.0,
# protobuf >= 6 through the SageMaker packages).
CONTAINER_PACKAGES = {
    "numpy": "2.4.6",
    "protobuf": "6.33.6",
    "pandas": "2.3.3",
    "setuptools": "81.0.0",
    "boto3": "1.44.5",
}

ROUND_TRIP = r"""
import json, pathlib, sys, tempfile
sys.path.insert(0, sys.argv[1])
from trainlib import smdebug_support
assert smdebug_support.available(), smdebug_support.problem()
import numpy as np
from smdebug.core.access_layer.utils import training_has_ended
from smdebug.core.collection_manager import CollectionManager
from smdebug.core.modes import ModeKeys
from smdebug.core.writer import FileWriter
from smdebug.trials import create_trial
from trainlib import rules
out = tempfile.mkdtemp()
manager = CollectionManager()
manager.add("gradients")
manager.get("gradients").include("^gradient")
manager.set_num_workers(1)
manager.export(out, "worker_0_collections.json")
for step in range(3):
    writer = FileWriter(trial_dir=out, step=step, worker="worker_0")
    writer.write_tensor(tdata=np.array([1.5 * step, 2.0], dtype=np.float32), tname="gradient/fc.weight",
                        mode=ModeKeys.TRAIN, mode_step=step)
    writer.close()
training_has_ended(out)
value = create_trial(out).tensor("gradient/fc.weight").value(2).tolist()
verdicts = [v.rule for v in rules.evaluate(pathlib.Path(out))]
print(json.dumps({"value": value, "rules": verdicts, "python": sys.version_info[:2]}))
"""


def _container_python() -> str:
    """Python 3.13, the container's, where this machine has one (pyenv); else the interpreter running the tests."""
    candidates = [
        shutil.which("python3.13"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13"))),
    ]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
            return candidate
    return sys.executable


def _freeze(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    ).stdout
    return {p["name"].lower(): p["version"] for p in json.loads(out)}


@pytest.fixture(scope="module")
def container(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("container") / "venv"
    subprocess.run([_container_python(), "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        # No byte-compiling of what the image holds already (botocore's thousands of modules): seconds of CPU.
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile"]
        + [f"{k}=={v}" for k, v in CONTAINER_PACKAGES.items()],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    before = _freeze(python)
    # Exactly what the training toolkit runs, with the environment the training jobs are created with.
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-r", "requirements.txt"],
        cwd=TRAINING_DIR,
        env={**os.environ, **sagemaker_requests.TRAINING_ENVIRONMENT},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return python, before


def test_the_containers_own_packages_keep_their_versions(container):
    python, before = container
    after = _freeze(python)
    for name, version in CONTAINER_PACKAGES.items():
        assert before[name] == after[name] == version, f"{name} changed from {before[name]} to {after.get(name)}"
    assert after["smdebug"] == "1.0.34"


def test_nothing_the_requirements_need_is_missing(container):
    python, _ = container
    result = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in result.stdout.splitlines() if line.strip()]
    # smdebug's stale pins are the ones knowingly not honoured; everything else must be satisfied.
    assert all(line.startswith("smdebug 1.0.34 has requirement") for line in problems), problems


def test_smdebug_writes_and_reads_on_the_containers_versions(container):
    python, _ = container
    result = subprocess.run(
        [str(python), "-c", ROUND_TRIP, str(TRAINING_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["value"] == [3.0, 2.0]
    assert len(report["rules"]) == 6


def test_the_training_and_serving_code_compiles_on_the_containers_python(container):
    """The training container and the Ray Serve container both run Python 3.13."""
    python, _ = container
    files = [str(p) for p in sorted(TRAINING_DIR.rglob("*.py"))]
    compile_all = (
        "import sys\nfor f in sys.argv[1:]:\n    compile(open(f).read(), f, 'exec')"  # nothing written to training/
    )
    result = subprocess.run([str(python), "-c", compile_all, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (ROOT / "training" / "serve_app.py").as_posix() in [Path(f).as_posix() for f in files]


def test_the_local_image_has_what_the_requirements_list():
    """Locally, .venv is the training image: the toolkit runs leave requirements.txt out (droptrain/sourcedir.py),
    so .venv must hold all of it (make setup installs it the container's way)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    for line in (TRAINING_DIR / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            installed = metadata.version(requirement.name)
            assert requirement.specifier.contains(installed, prereleases=True), f"{line}: .venv has {installed}"
