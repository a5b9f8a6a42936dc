"""Running ``training/train.py`` locally under the SageMaker training-container contract.

What SageMaker's PyTorch container does for script mode, without Docker: a job folder laid out as
``/opt/ml`` (``model/``, ``output/data/``, ``output/failure``, ``checkpoints/``), the ``SM_*``
variables, hyperparameters as ``--name value`` pairs (the ``sagemaker_*`` ones withheld, as the
container withholds them), and ``model.tar.gz`` packed from the model folder afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
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


def container_path(value: str, paths: JobPaths | None) -> str:
    """``/opt/ml/...`` in a hyperparameter means the job's own folder, as it does in the container."""
    if paths is None or not value.startswith("/opt/ml/"):
        return value
    for prefix, local in (("/opt/ml/output/data", paths.output_data), ("/opt/ml/output", paths.output),
                          ("/opt/ml/model", paths.model), ("/opt/ml/checkpoints", paths.checkpoints)):
        if value == prefix or value.startswith(prefix + "/"):
            return str(local) + value[len(prefix):]
    return str(paths.root) + value[len("/opt/ml"):]


def hyperparameter_args(hyperparameters: Mapping[str, str], paths: JobPaths | None = None) -> list[str]:
    args: list[str] = []
    for name, value in hyperparameters.items():
        if name.startswith("sagemaker_"):
            continue
        args += [f"--{name}", container_path(str(value), paths)]
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
        # Not on SageMaker: the job leaves uploads to whoever runs it (the local executor).
        "DROPTRAIN_LOCAL": "1",
    })
    for name, path in channels.items():
        env[f"SM_CHANNEL_{name.upper()}"] = str(path)
    return env


def start_training(
    paths: JobPaths,
    channels: Mapping[str, Path],
    hyperparameters: Mapping[str, str],
    job_name: str,
    entry_point: str = "train.py",
    source_dir: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start the entry point in its own process group (so a stop can end it and its workers);
    its stdout and stderr are one text stream."""
    # The job runs in the source dir (as in the container), so every path it is given is absolute.
    paths = JobPaths(paths.root.resolve())
    channels = {name: Path(path).resolve() for name, path in channels.items()}
    for folder in (paths.model, paths.output_data, paths.checkpoints):
        folder.mkdir(parents=True, exist_ok=True)
    source = (source_dir or TRAINING_DIR).resolve()
    return subprocess.Popen(
        [sys.executable, str(source / entry_point), *hyperparameter_args(hyperparameters, paths),
         "--checkpoint-dir", str(paths.checkpoints)],
        cwd=source,
        env={**container_env(paths, channels, job_name), **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def run_training(
    paths: JobPaths,
    channels: Mapping[str, Path],
    hyperparameters: Mapping[str, str],
    job_name: str,
    on_line: Callable[[str], None] = lambda line: None,
    entry_point: str = "train.py",
) -> int:
    """Run the entry point to completion, feeding each output line to ``on_line``; the exit status."""
    process = start_training(paths, channels, hyperparameters, job_name, entry_point)
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


def package_dir(folder: Path, archive: Path) -> Path:
    """A folder's content at the root of a tar.gz, as SageMaker packs ``model.tar.gz`` and ``output.tar.gz``."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    os.replace(tmp, archive)
    return archive


def load_inference_module(code_dir: Path) -> ModuleType:
    """Import ``inference.py`` from an unpacked model's ``code/``, as the inference container does.

    The model's own ``trainlib`` is what it imports; the caller's import state is restored after,
    so loading a model never swaps modules under the rest of the process.
    """
    def ours(name: str) -> bool:
        return name == "trainlib" or name.startswith("trainlib.")

    saved = {name: sys.modules.pop(name) for name in [m for m in sys.modules if ours(m)]}
    sys.path.insert(0, str(code_dir))
    try:
        spec = importlib.util.spec_from_file_location(f"droptrain_model_{id(code_dir):x}", code_dir / "inference.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(code_dir))
        for name in [m for m in sys.modules if ours(m)]:
            del sys.modules[name]
        sys.modules.update(saved)
