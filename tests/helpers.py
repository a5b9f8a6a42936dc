"""Helpers the tests share (the fixtures are in conftest.py)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING_DIR = ROOT / "training"
# Every wait in the suite is for a condition (an event, a state, a process's end) with this deadline:
# far past what the slowest wait, a whole local pipeline, takes on a two-core machine whose cores
# another process keeps busy. Only a test that is failing ever waits this long.
DEADLINE = 900.0

# Small enough to train in seconds on two CPU cores, large enough to be far above chance.
TINY = {"classes": 4, "per_class": 30, "size": 48, "seed": 3}
FAST_HYPERPARAMETERS = {
    "arch": "resnet18",
    "weights": "none",
    "train-mode": "full",
    "image-size": "48",
    "epochs": "4",
    "batch-size": "16",
    "lr": "0.002",
    "optimizer": "adamw",
    "weight-decay": "0.0001",
}


def browser() -> tuple[str, str]:
    """Debian's Chromium and its chromedriver, which ``make test`` installs; without them the test
    fails with one line saying how to get them (never a skip: a green suite has run every test)."""
    import shutil

    import pytest

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail(
            "no Chromium here: `make browser` installs Debian's chromium and chromium-driver "
            "(or: apt-get install chromium chromium-driver); make test does it first",
            pytrace=False,
        )
    return chromium, driver


def hyperparameter_args(hyperparameters: dict[str, str]) -> list[str]:
    """The arguments AWS's training toolkit gives train.py for these hyperparameters, by the toolkit's
    own code: ``hyperparameters.json`` read as the container reads it (each value through
    ``json.loads``: ``"true"`` becomes ``True``), then turned into ``--name value`` pairs."""
    import json
    import tempfile
    from unittest import mock

    from sagemaker_training import environment, mapping

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "hyperparameters.json"
        config.write_text(json.dumps({str(name): str(value) for name, value in hyperparameters.items()}))
        # The toolkit reads the file at a path fixed when it is imported (/opt/ml or SAGEMAKER_BASE_DIR).
        with mock.patch.object(environment, "hyperparameters_file_dir", str(config)):
            return mapping.to_cmd_args(environment.read_hyperparameters())


def run_training_job(
    root: Path,
    data: Path,
    hyperparameters: dict[str, str],
    job_name: str,
    on_line=lambda line: None,
    environment: dict[str, str] | None = None,
):
    """One training job as SageMaker runs it: the source dir as a tarball, the channel, the config
    files, and AWS's training toolkit relocated to ``root`` (what the local SageMaker does)."""
    from droptrain import sourcedir
    from droptrain.local.sagemaker import jobs

    code, _ = sourcedir.build(include_requirements=False)
    (root / "sourcedir.tar.gz").write_bytes(code)
    paths = jobs.JobPaths(root / "opt-ml")
    channel = [
        {
            "ChannelName": "training",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": "s3://bucket/datasets/pets/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
    ]
    jobs.write_config(
        paths,
        {
            **hyperparameters,
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": str(root / "sourcedir.tar.gz"),
        },
        channel,
        "ml.m5.large",
    )
    jobs.stage_channel(paths, "training", data)
    status = jobs.run(
        paths,
        jobs.toolkit_env(
            paths, job_name, f"arn:aws:sagemaker:local:000000000000:training-job/{job_name}", environment or {}
        ),
        on_line,
    )
    return paths, status


def run_train(
    args: list[str], warm, env: dict[str, str] | None = None, timeout: float = DEADLINE
) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in the source dir, as the container runs it, in a fork of ``warm`` (the
    session's warm interpreter, as local jobs run), which has imported torch already; its stdout and
    stderr are one stream, given as both."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = warm.start(["train.py", *args], TRAINING_DIR, environ, script=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()), daemon=True)
    reader.start()
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    reader.join(timeout)
    process.stdout.close()
    return subprocess.CompletedProcess(["train.py", *args], code, "".join(output), "".join(output))


def png_bytes(image, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_kwargs)
    return buffer.getvalue()


def extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose pixel data is a few bytes: what an
    attacker sends to make a server allocate the whole image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def deploy_archive(runtime, archive: Path, config: str, deployment: dict | None = None) -> str:
    """A project's endpoint on the local stack created with (or updated to) a model archive, as the
    pipeline does it (the project is the run's: ``pets`` for ``pets-1a2b3c4d``); returns the endpoint's
    name once it serves the archive, or has rolled back from it."""
    key = f"runs/{config}/final/model.tar.gz"
    runtime.bucket.put_file(key, archive)
    runtime.sagemaker.create_model({"ModelName": config, "PrimaryContainer": {"ModelDataUrl": runtime.bucket.uri(key)}})
    runtime.sagemaker.create_endpoint_config(
        {"EndpointConfigName": config, "ProductionVariants": [{"ModelName": config}]}
    )
    endpoint = f"{runtime.env['ENDPOINT_PREFIX']}-{config.rsplit('-', 1)[0]}"
    # The project exists once it has a model package group: /predict finds it.
    runtime.sagemaker.create_model_package_group({"ModelPackageGroupName": endpoint})
    if runtime.endpoints.describe(endpoint) is None:
        runtime.sagemaker.create_endpoint({"EndpointName": endpoint, "EndpointConfigName": config, "Tags": []})
    else:
        request = {"EndpointName": endpoint, "EndpointConfigName": config}
        if deployment:
            request["DeploymentConfig"] = deployment
        runtime.sagemaker.update_endpoint(request)
    runtime.endpoints.join(DEADLINE)
    described = runtime.endpoints.describe(endpoint)
    if deployment and described["EndpointStatus"] == "InService" and described.get("FailureReason"):
        return endpoint
    if (described["EndpointStatus"], described["EndpointConfigName"]) != ("InService", config):
        raise RuntimeError(f"the endpoint did not come up: {described}")
    return endpoint


# The slowest test files, slowest first (docs/development.md, "Tests"). make test's two workers take
# whole files in collection order (--dist loadfile --no-loadscope-reorder; xdist's default order
# is by test count, which sends a one-test file of a minute last): these start first, and the many
# quick files fill in at the end, so that the workers finish together.
SLOWEST_FIRST = (
    "tests/test_demo.py",
    "tests/local/test_local_endpoint.py",
    "tests/local/test_local_runtime.py",
    "tests/faults/test_stack_faults.py",
    "tests/training/test_train_contract.py",
    "tests/training/test_distributed.py",
    "tests/training/test_audit.py",
    "tests/training/test_duplicates.py",
    "tests/orchestrator/test_pipeline.py",
    "tests/local/test_local_hosts.py",
    "tests/faults/test_hostile_requests.py",
    "tests/faults/test_disk_full.py",
    "tests/training/test_debugging_profiling.py",
    "tests/orchestrator/test_package_and_deploy.py",
)
