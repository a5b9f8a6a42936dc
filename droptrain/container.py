"""Running ``training/train.py`` locally under the SageMaker training-container contract.

What SageMaker's PyTorch container does for script mode, without Docker: a job folder laid out as
``/opt/ml`` (``model/``, ``output/data/``, ``output/failure``, ``checkpoints/``), the ``SM_*``
variables, hyperparameters as ``--name value`` pairs (the ``sagemaker_*`` ones withheld, as the
container withholds them), and ``model.tar.gz`` packed from the model folder afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

TRAINING_DIR = Path(os.environ.get("DROPTRAIN_TRAINING_DIR", Path(__file__).resolve().parent.parent / "training"))


class ContainerError(Exception):
    pass


@dataclass(frozen=True)
class JobPaths:
    root: Path

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


def hyperparameter_args(hyperparameters: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for name, value in hyperparameters.items():
        if name.startswith("sagemaker_"):
            continue
        args += [f"--{name}", str(value)]
    return args


def container_env(paths: JobPaths, channels: Mapping[str, Path], job_name: str, num_gpus: int = 0) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SM_MODEL_DIR": str(paths.model),
        "SM_OUTPUT_DIR": str(paths.output),
        "SM_OUTPUT_DATA_DIR": str(paths.output_data),
        "SM_NUM_GPUS": str(num_gpus),
        "SM_CHANNELS": ",".join(channels),
        "TRAINING_JOB_NAME": job_name,
        "PYTHONUNBUFFERED": "1",
    })
    for name, path in channels.items():
        env[f"SM_CHANNEL_{name.upper()}"] = str(path)
    return env


def training_command(entry_point: str, hyperparameters: Mapping[str, str], paths: JobPaths) -> list[str]:
    return [sys.executable, str(TRAINING_DIR / entry_point), *hyperparameter_args(hyperparameters),
            "--checkpoint-dir", str(paths.checkpoints)]


def run_training(
    paths: JobPaths,
    channels: Mapping[str, Path],
    hyperparameters: Mapping[str, str],
    job_name: str,
    on_line: Callable[[str], None] = lambda line: None,
    entry_point: str = "train.py",
) -> int:
    """Run the entry point to completion, feeding each output line to ``on_line``; the exit status."""
    # The job runs in the source dir (as in the container), so every path it is given is absolute.
    paths = JobPaths(paths.root.resolve())
    channels = {name: Path(path).resolve() for name, path in channels.items()}
    for folder in (paths.model, paths.output_data, paths.checkpoints):
        folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        training_command(entry_point, hyperparameters, paths),
        cwd=TRAINING_DIR,
        env=container_env(paths, channels, job_name),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:
            on_line(line.rstrip("\n"))
    return process.wait()


def failure_reason(paths: JobPaths, fallback: str) -> str:
    try:
        return paths.failure.read_text().strip() or fallback
    except OSError:
        return fallback


def package_model(model_dir: Path, archive: Path) -> Path:
    """``model.tar.gz`` with the model folder's content at its root, as SageMaker packs it."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    os.replace(tmp, archive)
    return archive
