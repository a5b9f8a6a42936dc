"""Run identity and SageMaker resource names (ARCHITECTURE.md, "Names, identity, idempotency").

botocore does not check SageMaker's length and pattern constraints, so every name is checked here
before it is sent.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

SLUG_MAX = 19
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
MAX_LENGTH = {"tuning job": 32, "training job": 63, "model": 63, "endpoint config": 63, "endpoint": 63}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
READY_MARKER = "_READY"

TAG_RUN_ID = "droptrain:run-id"
TAG_DATASET = "droptrain:dataset"
TAG_ROLE = "droptrain:role"


class InvalidNameError(ValueError):
    """A name SageMaker would refuse."""


@dataclass(frozen=True)
class DatasetRef:
    """A dataset in the bucket: a folder (started by its ``_READY`` marker) or one archive."""

    bucket: str
    key: str  # the object that started the run: the marker or the archive
    name: str
    kind: str  # "folder" | "archive"
    prefix: str  # the folder's prefix, or the archive's key

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_dataset_key(bucket: str, key: str, dataset_prefix: str) -> DatasetRef | None:
    """The dataset an object key starts, or ``None`` for any other key."""
    if not key.startswith(dataset_prefix):
        return None
    rest = key[len(dataset_prefix):]
    if "/" in rest:
        name, _, tail = rest.partition("/")
        if tail != READY_MARKER or not name:
            return None
        return DatasetRef(bucket, key, name, "folder", f"{dataset_prefix}{name}/")
    lower = rest.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(rest) > len(suffix):
            return DatasetRef(bucket, key, rest[: -len(suffix)], "archive", key)
    return None


def slug(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    text = text[:SLUG_MAX].rstrip("-")
    return text or "dataset"


def run_id(dataset: DatasetRef, etag: str) -> str:
    digest = hashlib.sha256(f"{dataset.bucket}/{dataset.key}/{etag.strip(chr(34))}".encode()).hexdigest()[:8]
    return check(f"{slug(dataset.name)}-{digest}", "tuning job")


def final_job_name(run: str) -> str:
    return check(f"{run}-final", "training job")


def run_of_final_job(job_name: str) -> str:
    return job_name.removesuffix("-final")


def check(name: str, kind: str) -> str:
    if len(name) > MAX_LENGTH[kind]:
        raise InvalidNameError(f"{kind} name {name!r} is longer than {MAX_LENGTH[kind]} characters")
    if not _NAME.match(name):
        raise InvalidNameError(f"{kind} name {name!r} does not match {_NAME.pattern}")
    return name


def tags(run: str, dataset_uri: str | None = None, role: str | None = None) -> list[dict[str, str]]:
    out = [{"Key": TAG_RUN_ID, "Value": run}]
    if dataset_uri:
        out.append({"Key": TAG_DATASET, "Value": dataset_uri})
    if role:
        out.append({"Key": TAG_ROLE, "Value": role})
    return out
