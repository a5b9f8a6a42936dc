"""The local stack's configuration: the same variables as a Chalice stage (docs/configuration.md), from
``droptrain.toml`` and ``--set NAME=VALUE``, checked as a whole before anything starts.

``droptrain.toml`` holds ``NAME = value`` lines; a table is JSON (``STATIC_HYPERPARAMETERS`` and
``TUNING_RANGES``, the first merged over the local defaults). What the local stack names itself (its
bucket, topic, role, images, source dir) cannot be set.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as the package it came from
    import tomli as tomllib

from chalice_app import config as config_module
from droptrain.local import defaults
from droptrain.local.stage import local_environment

# The local stack's own resources: set by it, never by a user.
OWNED = (
    "DATA_BUCKET",
    "NOTIFY_TOPIC_ARN",
    "SAGEMAKER_ROLE_ARN",
    "SOURCE_DIR_S3_URI",
    "TRAINING_IMAGE_URI",
    "INFERENCE_IMAGE_URI",
    "AWS_REGION",
)
DEFAULT_FILE = Path("droptrain.toml")
# What droptrain up decides by the machine when the user leaves it open (droptrain.local.defaults).
MACHINE = ("STATIC_HYPERPARAMETERS", "TUNING_RANGES", "MAX_PARALLEL_JOBS")


class SettingsError(Exception):
    """A setting that cannot be used; the message names it and where it came from."""


@dataclass
class Settings:
    env: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # The hyperparameters the user named (over the local defaults, which the machine decides).
    static: dict[str, str] = field(default_factory=dict)

    def use(self, situation: defaults.Situation) -> None:
        """The machine's defaults (``defaults.choose``) under what the user set."""
        self.env["STATIC_HYPERPARAMETERS"] = json.dumps({**situation.hyperparameters, **self.static})
        if situation.ranges is not None and "TUNING_RANGES" not in self.sources:
            self.env["TUNING_RANGES"] = json.dumps(situation.ranges)
        if "MAX_PARALLEL_JOBS" not in self.sources:  # never more at once than the tuning job has trials
            trials = int(local_environment(self.env)["MAX_TUNING_JOBS"])
            self.env["MAX_PARALLEL_JOBS"] = str(max(1, min(situation.parallel, trials)))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _static(value: Any, source: str) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise SettingsError(f"{source}: STATIC_HYPERPARAMETERS is not JSON") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{source}: STATIC_HYPERPARAMETERS must be a table of hyperparameters")
    return {str(k): _text(v) for k, v in value.items()}


def _put(settings: Settings, name: str, value: Any, source: str) -> None:
    if name not in config_module.VARIABLES:
        raise SettingsError(f"{source}: unknown variable {name} (see docs/configuration.md)")
    if name in OWNED:
        raise SettingsError(f"{source}: {name} is set by the local stack itself")
    if name == "STATIC_HYPERPARAMETERS":  # merged over the local defaults, not instead of them
        settings.static.update(_static(value, source))
        value = {**defaults.SCRATCH, **settings.static}
    settings.env[name] = _text(value)
    settings.sources[name] = source


def read(path: Path | None = None, sets: list[str] = ()) -> Settings:
    """``droptrain.toml`` (``path``, or the one in this folder if any), then ``--set`` items; raises
    ``SettingsError`` naming the first unknown name or bad value."""
    settings = Settings()
    file = path if path is not None else (DEFAULT_FILE if DEFAULT_FILE.is_file() else None)
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except OSError as exc:
            raise SettingsError(f"{file}: cannot be read ({exc.strerror or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file}: not TOML ({exc})") from None
        for name, value in data.items():
            _put(settings, name, value, str(file))
    for item in sets:
        name, equals, value = item.partition("=")
        if not equals:
            raise SettingsError(f"--set {item!r}: write NAME=VALUE")
        _put(settings, name.strip(), value.strip(), "--set")

    try:
        config_module.load(local_environment(settings.env))
    except config_module.ConfigError as exc:
        raise SettingsError(f"{settings.sources.get(exc.variable, 'the local stack')}: {exc}") from None
    return settings


def for_this_machine(
    settings: Settings, say: Callable[[str], None], fetch: Callable = defaults.download, gpus: int | None = None
) -> defaults.Situation:
    """Settle what the user left open by what this machine has (``defaults.choose``), and say it once."""
    situation = defaults.choose(settings.static, "TUNING_RANGES" in settings.sources, fetch=fetch, gpus=gpus)
    settings.use(situation)
    parallel = int(settings.env.get("MAX_PARALLEL_JOBS", "1"))
    at_once = (
        [
            f"tuning trials run {parallel} at a time"
            + (
                ""
                if situation.notes
                else f", each on {max(1, (os.cpu_count() or 1) // parallel)} of the {os.cpu_count()} CPU cores"
            )
        ]
        if parallel > 1
        else []
    )
    for line in [situation.message, *situation.notes, *at_once]:
        say(line)
    return situation


def describe(settings: Settings) -> list[str]:
    """Every variable: its value in force, and where it came from."""
    base, env = local_environment(), local_environment(settings.env)
    lines = []
    for name in config_module.VARIABLES:
        if name in settings.sources:
            source = settings.sources[name]
        elif name in MACHINE:
            source = "the local stack; droptrain up settles it by this machine's weights, GPUs and cores"
        elif name in base:
            source = "the local stack"
        else:
            source = "default"
        value = env.get(name, "")
        lines.append(f"{name} = {value if value else '(default)'}    # {source}")
    return lines
