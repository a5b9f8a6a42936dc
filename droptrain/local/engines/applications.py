"""What a model archive's Ray Serve config must hold, and what the local runtime changes in it.

The archive's ``config.yaml`` is what AWS's Ray Serve container deploys on an instance of its own.
Here one Ray serves every project's model, two versions of one during an update: each replica
reserves a fraction of a CPU (``REPLICA_CPUS``) instead of Ray's whole one, so that more than
eight models fit on the local Ray's logical CPUs; ``serve_app`` sets its own thread count, so the
reservation decides where replicas go, not how fast they run.
"""

from __future__ import annotations

import copy
import shutil
import tarfile
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement

REPLICA_CPUS = 0.25


class ServingError(Exception):
    """Ray Serve could not do what was asked."""


class ModelNotServableError(ServingError):
    """This model archive cannot be served here; the message says why."""


class ApplicationGoneError(ServingError):
    """The application was deleted (an endpoint swapped versions) while a request was on its way."""


def read_app_config(model_dir: Path) -> dict[str, Any]:
    """The one application of the archive's ``config.yaml``, checked; raises ``ModelNotServableError``."""
    path = model_dir / "config.yaml"
    if not path.is_file():
        raise ModelNotServableError(
            "the model archive has no config.yaml (archives built for the retired TorchServe "
            "container cannot be served: train the model again)"
        )
    try:
        config = yaml.safe_load(path.read_text())
        apps = config["applications"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ModelNotServableError(f"config.yaml is not a Ray Serve applications config ({exc})") from None
    if not isinstance(apps, list) or len(apps) != 1 or not isinstance(apps[0], dict) or "import_path" not in apps[0]:
        raise ModelNotServableError("config.yaml must hold exactly one application with an import_path")
    return dict(apps[0])


def missing_requirements(model_dir: Path) -> list[str]:
    """The archive's ``code/requirements.txt`` lines this environment does not satisfy."""
    path = model_dir / "code" / "requirements.txt"
    missing = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            missing.append(f"{line} (not a requirement this check can read)")
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{line} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{line} (installed: {installed})")
    return missing


def for_this_machine(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with each deployment reserving ``REPLICA_CPUS`` where the archive chose no CPUs."""
    config = copy.deepcopy(config)
    for deployment in config.get("deployments") or []:
        if isinstance(deployment, dict):
            options = deployment.setdefault("ray_actor_options", {}) or {}
            options.setdefault("num_cpus", REPLICA_CPUS)
            deployment["ray_actor_options"] = options
    return config


def cpus_wanted(config: dict[str, Any]) -> float:
    """The CPUs the application's replicas reserve (one replica where the number is automatic)."""
    total = 0.0
    for deployment in config.get("deployments") or []:
        replicas = deployment.get("num_replicas", 1)
        replicas = replicas if isinstance(replicas, int) and replicas > 0 else 1
        total += float((deployment.get("ray_actor_options") or {}).get("num_cpus", 1)) * replicas
    return total


def extract_archive(archive: Path, url: str, target: Path) -> None:
    """The model's ``model.tar.gz`` (``url`` as the request named it) into ``target``, emptied first, as the
    container extracts it to ``/opt/ml/model``; ``ServingError`` naming it when it is missing or broken."""
    if not archive.is_file():
        raise ServingError(f"no model artifact at {url}")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:  # truncated: EOFError
        raise ServingError(f"the model artifact {url} could not be extracted: {exc or type(exc).__name__}") from exc
