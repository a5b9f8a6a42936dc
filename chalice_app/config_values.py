"""How one configuration variable is read: present, well-formed, in range, or a ``ConfigError`` naming it.

``chalice_app.config`` reads the stage's variables with these; each says what it expects in its error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import overload

ARN = re.compile(r"^arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d{12}:.+$")
# A family may carry a suffix after a hyphen, as SageMaker's newer types do (ml.p6-b200.48xlarge, ml.m7i-flex.large).
INSTANCE = re.compile(r"^ml\.[a-z0-9]+(-[a-z0-9]+)*\.[a-z0-9]+$")
# Kepler (P2) and Volta (P3) GPUs: the training image's PyTorch is built for CUDA 13 (cu130), which
# dropped sm_70 and older, as has the Ray Serve image's build; their first kernel fails.
OLD_GPUS = re.compile(r"^ml\.(p2|p3|p3dn)\.")
IMAGE = re.compile(r"^[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ConfigError(Exception):
    def __init__(self, variable: str, problem: str):
        self.variable = variable
        super().__init__(f"configuration variable {variable} {problem}")


def required(env: Mapping[str, str], name: str, pattern: re.Pattern | None = None, what: str = "") -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(name, "is not set")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(name, f"is malformed ({what}): {value!r}")
    return value


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ConfigError(name, f"must be true or false, got {value!r}")


def number(env: Mapping[str, str], name: str, default, low, high, parse=int, kind: str = "an integer"):
    """``name`` as a number from ``low`` to ``high`` (``parse``: int or float); ``default`` when unset."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = parse(value)
    except ValueError:
        raise ConfigError(name, f"must be {kind}, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(name, f"must be from {low} to {high}, got {number}")
    return number


def integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return number(env, name, default, low, high)


@overload
def real(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float: ...
@overload
def real(env: Mapping[str, str], name: str, default: None, low: float, high: float) -> float | None: ...
def real(env: Mapping[str, str], name: str, default: float | None, low: float, high: float) -> float | None:
    return number(env, name, default, low, high, float, "a number")


def instance(env: Mapping[str, str], name: str, default: str, serverless: bool = False) -> str:
    """An instance type the images can run on (``serverless`` too where ``serverless``)."""
    value = env.get(name, default).strip() or default
    if serverless and value == "serverless":
        return value
    if not INSTANCE.match(value):
        raise ConfigError(name, f"must be an instance type{' or serverless' if serverless else ''}: {value!r}")
    if OLD_GPUS.match(value):
        raise ConfigError(
            name,
            f"{value} has a Kepler or Volta GPU, which the images' CUDA 13 PyTorch cannot run (no sm_70 and older): "
            "choose ml.g4dn, ml.g5, ml.g6 or ml.p4d and newer",
        )
    return value


def choice(
    env: Mapping[str, str],
    name: str,
    default: str,
    pattern: re.Pattern | None = None,
    choices: tuple[str, ...] = (),
    what: str = "",
) -> str:
    value = env.get(name, default).strip() or default
    if choices and value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(name, f"is malformed ({what}): {value!r}")
    return value


def image(env: Mapping[str, str], name: str, needed_when: str = "") -> str:
    """An ECR image URI, optional unless ``needed_when`` names the setting that needs it."""
    image = env.get(name, "").strip()
    if (image or needed_when) and not IMAGE.match(image):
        when = f" when {needed_when}" if needed_when else ""
        raise ConfigError(name, f"must be an ECR image URI{when}: {image!r}")
    return image
