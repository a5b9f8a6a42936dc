"""One SageMaker training job on this machine, run by AWS's own training toolkit.

The PyTorch training containers start every job with ``sagemaker-training``: it reads
``/opt/ml/input/config/*.json``, downloads and extracts the source dir (``sagemaker_submit_directory``),
installs its ``requirements.txt``, sets the ``SM_*`` variables and runs ``sagemaker_program`` with
the hyperparameters as ``--name value`` arguments, then writes ``output/success`` or
``output/failure``. Here the very same toolkit runs in a subprocess, relocated from ``/opt/ml`` to
the job's folder with ``SAGEMAKER_BASE_DIR`` (its documented switch), after this module has laid the
folder out as SageMaker does before a container starts:

* ``input/config/hyperparameters.json``, ``inputdataconfig.json``, ``resourceconfig.json`` (and
  ``checkpointconfig.json`` with a ``CheckpointConfig``), written as SageMaker writes them;
* ``input/data/<channel>/``: the channel's objects, hard-linked from the local bucket (SageMaker
  downloads them);
* ``sagemaker_submit_directory`` as the local bucket's file for that ``s3://`` URI, since there is no
  S3 for the toolkit to download from; and ``SM_STUDIO_LOCAL_MODE=true``, the toolkit's switch for
  hosts that are not named ``algo-N`` on a cluster network.

Afterwards ``package_dir`` packs ``model.tar.gz`` and ``output.tar.gz`` as SageMaker does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

HOST = "algo-1"


class JobSetupError(Exception):
    """The job's inputs could not be laid out (SageMaker's ``ClientError``)."""


@dataclass(frozen=True)
class JobPaths:
    """``/opt/ml`` of one job, relocated to ``root``."""

    root: Path

    @property
    def input_config(self) -> Path:
        return self.root / "input" / "config"

    @property
    def input_data(self) -> Path:
        return self.root / "input" / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def output_data(self) -> Path:
        return self.root / "output" / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def failure(self) -> Path:
        return self.root / "output" / "failure"

    @property
    def scratch(self) -> Path:
        """The job's temporary folder (``TMPDIR``): an extracted dataset archive lives here."""
        return self.root / "tmp"

    @property
    def log(self) -> Path:
        """Everything the job printed, across the attempts a restart made (CloudWatch's log stream)."""
        return self.root / "job.log"


def resource_config(instance_type: str, hosts: list[str] | None = None, current: str | None = None) -> dict[str, Any]:
    """``resourceconfig.json`` of one host of the job (``hosts``: all of them, the first the master)."""
    hosts = hosts or [HOST]
    return {
        "current_host": current or hosts[0],
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "network_interface_name": "eth0",
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": hosts}
        ],
    }


def input_data_config(channels: list[Mapping[str, Any]]) -> dict[str, Any]:
    out = {}
    for channel in channels:
        source = channel["DataSource"]["S3DataSource"]
        entry = {
            "TrainingInputMode": channel.get("InputMode", "File"),
            "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
        }
        if channel.get("ContentType"):
            entry["ContentType"] = channel["ContentType"]
        out[channel["ChannelName"]] = entry
    return out


def write_config(
    paths: JobPaths,
    hyperparameters: Mapping[str, str],
    channels: list[Mapping[str, Any]],
    instance_type: str,
    checkpoint: Mapping[str, str] | None = None,
    hosts: list[str] | None = None,
    current: str | None = None,
) -> None:
    """The files SageMaker writes to ``/opt/ml/input/config`` before the container starts."""
    paths.input_config.mkdir(parents=True, exist_ok=True)
    files = {
        "hyperparameters.json": {str(k): str(v) for k, v in hyperparameters.items()},
        "inputdataconfig.json": input_data_config(channels),
        "resourceconfig.json": resource_config(instance_type, hosts, current),
    }
    if checkpoint:
        files["checkpointconfig.json"] = {
            "LocalPath": checkpoint.get("LocalPath", "/opt/ml/checkpoints"),
            "S3Path": checkpoint["S3Uri"],
        }
    for name, content in files.items():
        (paths.input_config / name).write_text(json.dumps(content))
    for folder in (paths.model, paths.output_data, paths.checkpoints, paths.scratch):
        folder.mkdir(parents=True, exist_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def stage_channel(paths: JobPaths, name: str, source: Path) -> Path:
    """``input/data/<name>/`` with the channel's files (one archive, or a folder's tree)."""
    target = paths.input_data / name
    if source.is_file():
        link_or_copy(source, target / source.name)
    elif source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and not path.is_symlink():
                link_or_copy(path, target / path.relative_to(source))
    else:
        raise JobSetupError(f"no data at {source}")
    target.mkdir(parents=True, exist_ok=True)
    return target


def record_runner(paths: JobPaths, process: subprocess.Popen) -> None:
    """Which process group runs the job (the toolkit leads it), for ``end_leftovers`` after a crash."""
    (paths.root / "runner.pid").write_text(str(process.pid))


def end_leftovers(paths: JobPaths) -> int:
    """End what a killed runtime left running in this job's folder (its ``kill -9`` does not reach
    the job's own process group): every process of the recorded group that works in the folder.
    Returns how many were ended."""
    try:
        group = int((paths.root / "runner.pid").read_text())
    except (OSError, ValueError):
        return 0
    ended = 0
    for process in psutil.process_iter(["pid", "cwd"]):
        try:
            cwd = process.info["cwd"]
            if os.getpgid(process.pid) != group or not cwd or not Path(cwd).is_relative_to(paths.root):
                continue
            process.kill()
            ended += 1
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return ended


def fresh_scratch(paths: JobPaths) -> None:
    """An empty scratch folder for an attempt (an interrupted one may have left an extraction)."""
    shutil.rmtree(paths.scratch, ignore_errors=True)
    paths.scratch.mkdir(parents=True, exist_ok=True)


def host_folders(paths: JobPaths) -> list[JobPaths]:
    """The ``/opt/ml`` of a job's hosts after the first (``droptrain.local.sagemaker.hosts``)."""
    hosts = paths.root / "hosts"
    return [JobPaths(folder) for folder in sorted(hosts.iterdir())] if hosts.is_dir() else []


def clean_up(paths: JobPaths) -> None:
    """What an ended job no longer needs: its scratch space, its checkpoints (nothing resumes it),
    its staged inputs and its model folder (packed into the bucket), and its other hosts' folders
    (their lines are in the job's log). Its log, config and output files stay. Best effort: a folder
    that cannot be removed is left, never an error."""
    for folder in (paths.scratch, paths.checkpoints, paths.input_data, paths.model, paths.root / "hosts"):
        shutil.rmtree(folder, ignore_errors=True)


def open_log(paths: JobPaths):
    paths.root.mkdir(parents=True, exist_ok=True)
    return paths.log.open("a", buffering=1)


def read_log(paths: JobPaths) -> list[str]:
    try:
        return paths.log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def toolkit_env(
    paths: JobPaths, job_name: str, job_arn: str, environment: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The container's environment: the job's ``Environment``, the toolkit relocated to the job's folder."""
    env = dict(os.environ)
    for inherited in ("SM_TRAINING_ENV", "SM_CHANNEL_TRAINING", "SAGEMAKER_PROGRAM", "PIP_NO_DEPS"):
        env.pop(inherited, None)
    env.update({str(k): str(v) for k, v in environment.items()})
    env.update(
        {
            "SAGEMAKER_BASE_DIR": str(paths.root),
            "SM_STUDIO_LOCAL_MODE": "true",
            "TRAINING_JOB_NAME": job_name,
            "TRAINING_JOB_ARN": job_arn,
            "PYTHONUNBUFFERED": "1",
            # Temporary files (an extracted dataset) in the job's own scratch folder, removed with it.
            "TMPDIR": str(paths.scratch),
            # Not on SageMaker: train.py leaves uploads to whoever runs it (the local executor).
            "DROPTRAIN_LOCAL": "1",
        }
    )
    env.update(extra or {})
    return env


def start(paths: JobPaths, env: Mapping[str, str]) -> subprocess.Popen:
    """The toolkit (``train``, the training containers' entry point) in its own process group, so a
    stop ends it and the script it runs; stdout and stderr as one text stream."""
    return subprocess.Popen(
        [sys.executable, "-m", "sagemaker_training.cli.train"],
        cwd=paths.root,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def run(paths: JobPaths, env: Mapping[str, str], on_line: Callable[[str], None] = lambda line: None) -> int:
    """Run the job to completion, feeding each output line to ``on_line``; the exit status."""
    process = start(paths, env)
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:
            on_line(line.rstrip("\n"))
    return process.wait()


def failure_reason(paths: JobPaths, status_code: int, tail: list[str]) -> str:
    """What SageMaker shows as ``FailureReason``: the failure file (the script's own line first, else
    the toolkit's report), else the way the process ended."""
    try:
        written = paths.failure.read_text().strip()
    except OSError:
        written = ""
    if written:
        return f"AlgorithmError: {written}"[:1024]
    if status_code < 0:
        return f"AlgorithmError: the training process was killed by signal {-status_code}"
    last = next((line for line in reversed(tail) if line.strip()), "")
    return f"AlgorithmError: exit status {status_code}: {last[-400:]}"


def package_dir(folder: Path, archive: Path, compresslevel: int = 0) -> Path:
    """A folder's content at the root of a tar.gz, as SageMaker packs ``model.tar.gz`` and ``output.tar.gz``.
    ``compresslevel=0`` still writes gzip, in stored blocks: float weights barely deflate (4% for a
    ResNet, 10% for a final job's output with its debugger tensors and exports) and deflating them
    takes a second per 25 MB, at level 1 as at 9 (a final job's output: 8 to 10 s, stored: under 1)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=compresslevel) as tar:
        for path in sorted(folder.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    os.replace(tmp, archive)
    return archive
