"""The local stack's configuration: the same variables as a Chalice stage (docs/configuration.md), from
``droptrain.toml`` and ``--set NAME=VALUE``, checked as a whole before anything starts.

``droptrain.toml`` holds ``NAME = value`` lines; a table is JSON (``STATIC_HYPERPARAMETERS`` and
``TUNING_RANGES``, the first merged over the local defaults). What the local stack names itself (its
bucket, topic, role, images, source dir) cannot be set.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalice_app import config as config_module

# The local stack's own resources: set by it, never by a user.
OWNED = ("DATA_BUCKET", "NOTIFY_TOPIC_ARN", "SAGEMAKER_ROLE_ARN", "SOURCE_DIR_S3_URI", "TRAINING_IMAGE_URI",
         "INFERENCE_IMAGE_URI", "AWS_REGION")
DEFAULT_FILE = Path("droptrain.toml")


class SettingsError(Exception):
    """A setting that cannot be used; the message names it and where it came from."""


@dataclass
class Settings:
    env: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def _text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        if name == "STATIC_HYPERPARAMETERS" and isinstance(value, dict):
            from droptrain.local.runtime import LOCAL_HYPERPARAMETERS

            value = {**json.loads(LOCAL_HYPERPARAMETERS), **{k: str(v) for k, v in value.items()}}
        return json.dumps(value)
    return str(value)


def _put(settings: Settings, name: str, value: Any, source: str) -> None:
    if name not in config_module.VARIABLES:
        raise SettingsError(f"{source}: unknown variable {name} (see docs/configuration.md)")
    if name in OWNED:
        raise SettingsError(f"{source}: {name} is set by the local stack itself")
    settings.env[name] = _text(name, value)
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
    from droptrain.local.runtime import local_environment

    try:
        config_module.load(local_environment(settings.env))
    except config_module.ConfigError as exc:
        raise SettingsError(f"{settings.sources.get(exc.variable, 'the local stack')}: {exc}") from None
    return settings


def describe(settings: Settings) -> list[str]:
    """Every variable: its value in force, and where it came from."""
    from droptrain.local.runtime import local_environment

    base, env = local_environment(), local_environment(settings.env)
    lines = []
    for name in config_module.VARIABLES:
        if name in settings.sources:
            source = settings.sources[name]
        elif name in base:
            source = "the local stack"
        else:
            source = "default"
        value = env.get(name, "")
        lines.append(f"{name} = {value if value else '(default)'}    # {source}")
    return lines
