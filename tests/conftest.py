"""Shared fixtures: a small synthetic dataset and one model trained on it under the SageMaker contract."""

from __future__ import annotations

import os

# Before anything imports protobuf (Ray does): smdebug's generated modules load only with the
# pure-Python backend (training/trainlib/smdebug_support.py), and the rule tests run in this process.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import fcntl
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from droptrain.local.sagemaker.jobs import JobPaths, package_dir
from droptrain.synthetic import make_dataset
from helpers import FAST_HYPERPARAMETERS, SLOWEST_FIRST, TINY, run_training_job


def pytest_configure(config):
    """Under pytest-xdist, each worker, and what it starts (training jobs, Ray), runs on its own share of
    the cores. Two workers' training jobs on the same cores had their OpenMP threads spin-wait on each
    other: test_demo took 556 s beside another worker's job, 137 s on its own core. The local runtime gives its
    own parallel jobs a share of the cores for the same reason (``hosts.Machine.part``)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and count > 1 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= count:
            os.sched_setaffinity(0, cpus[int(worker.removeprefix("gw")) % count :: count])


def _one_botocore_loader() -> None:
    """Every boto3 session the tests build parses botocore's data files again (moto resets boto3's default
    session for each test's stage, and the app's bootstrap makes a session of its own): a second of JSON
    per test. One loader for them all, as one session shares its loader across its clients, parses each
    file once per process; what is loaded is botocore's cached model either way."""
    import botocore.session
    from botocore import loaders

    shared: dict = {}

    def create_loader(search_path_string=None):
        if search_path_string not in shared:
            shared[search_path_string] = loaders.create_loader(search_path_string)
        return shared[search_path_string]

    botocore.session.create_loader = create_loader


_one_botocore_loader()


def pytest_collection_modifyitems(config, items):
    rank = {name: place for place, name in enumerate(SLOWEST_FIRST)}
    # A stable sort: each file's tests keep their order, and the other files theirs.
    items.sort(key=lambda item: rank.get(item.path.relative_to(config.rootpath).as_posix(), len(rank)))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "dataset"
    make_dataset(root, **TINY)
    return root


@pytest.fixture(scope="session")
def tiny_zip(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset as one zip with a top-level folder, as people usually zip a folder."""
    archive = tmp_path_factory.mktemp("channel") / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tiny_dataset.rglob("*.jpg")):
            zf.write(path, "pets/" + str(path.relative_to(tiny_dataset)))
    return archive


def _run_dir(tmp_path_factory, worker_id: str) -> Path:
    """A folder every worker of this test run shares (pytest-xdist gives each its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def trained_job(tiny_zip, tmp_path_factory, worker_id):
    """One training job run exactly as SageMaker runs it: AWS's training toolkit, the archive channel,
    hyperparameters as a tuning job passes them. Trained once per test run: the first worker that
    needs it trains it under a lock, the others wait for the lock and read what it wrote."""
    shared = _run_dir(tmp_path_factory, worker_id) / "trained-job"
    finished = shared / "lines.json"
    with open(f"{shared}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not finished.exists():
            shutil.rmtree(shared, ignore_errors=True)  # what a failed attempt left
            shared.mkdir()
            lines: list[str] = []
            hyperparameters = {
                **FAST_HYPERPARAMETERS,
                # As a tuning job passes them: JSON-quoted strings from the SDK, and its own objective.
                "optimizer": '"adamw"',
                "_tuning_objective_metric": "valid:accuracy",
                "target-precision": "0.9",  # per-class thresholds, so that serving has some to apply
                "export": "on",  # as the final job's hyperparameters say
            }
            paths, status = run_training_job(
                shared, tiny_zip, hyperparameters, "pets-1a2b3c4d-final", on_line=lines.append
            )
            assert status == 0, "\n".join(lines[-30:])
            package_dir(paths.model, paths.output / "model.tar.gz")
            finished.write_text(json.dumps(lines))
    paths = JobPaths(shared / "opt-ml")
    return {"paths": paths, "lines": json.loads(finished.read_text()), "archive": paths.output / "model.tar.gz"}


@pytest.fixture(scope="session")
def shared_warm(tmp_path_factory):
    """One warm interpreter for the tests' executors: each of their own imported torch again (about 10 s)."""
    from droptrain.local.engines.warm import WarmInterpreter

    folder = tmp_path_factory.mktemp("warm")
    interpreter = WarmInterpreter(folder)
    yield interpreter
    interpreter.close()


@pytest.fixture(scope="session")
def ray_serve():
    """One Ray instance (with Serve) for the whole session, shut down by this process, which started it."""
    from droptrain.local.engines.serving import RayServe

    engine = RayServe().start()
    yield engine
    engine.stop()
