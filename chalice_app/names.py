"""Run identity and SageMaker resource names (docs/architecture.md, "Names, identity, idempotency").

botocore does not check SageMaker's length and pattern constraints, so every name is checked here
before it is sent.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

SLUG_MAX = 19
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
MAX_LENGTH = {
    "tuning job": 32,
    "training job": 63,
    "model": 63,
    "endpoint config": 63,
    "endpoint": 63,
    "model package group": 63,
    "processing job": 63,
    "transform job": 63,
}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
READY_MARKER = "_READY"

TAG_RUN_ID = "droptrain:run-id"
TAG_DATASET = "droptrain:dataset"
TAG_ROLE = "droptrain:role"
TAG_PROJECT = "droptrain:project"
# On the audit job: the dataset's size as the upload's listing found it (the tuning job's input mode).
TAG_DATASET_BYTES = "droptrain:dataset-bytes"


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


def dataset_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a dataset, or ``None``. The one rule for every way in: the bucket's
    events (``pipeline.dataset_uploaded``) and ``droptrain upload``."""
    if not name or name.strip(".") == "":
        return f"{name!r} is not a dataset name: give the dataset a name"
    if name.startswith("."):
        return f"{name!r} is a hidden name: dataset names do not start with '.'"
    if "/" in name or "\\" in name:
        return f"{name!r} is not a dataset name: it cannot contain '/' or '\\'"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return f"{name!r} is not a dataset name: it contains control characters"
    return None


def check_dataset_name(name: str, bucket: str, dataset_prefix: str = "datasets/") -> str:
    """``name`` if a dataset can be called so in ``bucket`` (tags included); raises ``InvalidNameError``."""
    problem = dataset_name_problem(name)
    if problem:
        raise InvalidNameError(problem)
    tag_value(f"s3://{bucket}/{dataset_prefix}{name}/")
    return name


def parse_dataset_key(bucket: str, key: str, dataset_prefix: str) -> DatasetRef | None:
    """The dataset an object key starts, or ``None`` for any other key."""
    if not key.startswith(dataset_prefix):
        return None
    rest = key[len(dataset_prefix) :]
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


# -- projects (docs/architecture.md, "Projects and versions") ------------------------------------------
# A project is a dataset name, as its slug: "Dog Breeds" and "dog-breeds" are one project. Its
# endpoint and model package group are both "<ENDPOINT_PREFIX>-<project>".


def project_of(dataset_name: str) -> str:
    return slug(dataset_name)


def project_of_run(run: str) -> str:
    """Run ids are ``<project>-<8 hex digits>``."""
    return run.rsplit("-", 1)[0]


def project_resource(prefix: str, project: str) -> str:
    return check(f"{prefix}-{project}", "endpoint")


def project_of_resource(prefix: str, name: str) -> str | None:
    """The project an endpoint or model package group of this prefix belongs to, else ``None``."""
    head = f"{prefix}-".lower()
    return name[len(head) :].lower() if name.lower().startswith(head) and len(name) > len(head) else None


def run_id(dataset: DatasetRef, etag: str) -> str:
    digest = hashlib.sha256(f"{dataset.bucket}/{dataset.key}/{etag.strip(chr(34))}".encode()).hexdigest()[:8]
    return check(f"{slug(dataset.name)}-{digest}", "tuning job")


FINAL_JOB_SUFFIX = "-final"


def final_job_name(run: str) -> str:
    return check(f"{run}{FINAL_JOB_SUFFIX}", "training job")


AUDIT_JOB_SUFFIX = "-audit"


def audit_job_name(run: str) -> str:
    return check(f"{run}{AUDIT_JOB_SUFFIX}", "processing job")


# A dataset scanned by several instances first (ShardedByS3Key), then audited by <run-id>-audit.
AUDIT_SHARDS_SUFFIX = "-shards" + AUDIT_JOB_SUFFIX


def audit_shards_job_name(run: str) -> str:
    return check(f"{run}{AUDIT_SHARDS_SUFFIX}", "processing job")


BATCH_JOB_INFIX = "-batch-"


def batch_job_name(project_resource_name: str, token: str) -> str:
    """A batch prediction job: ``<ENDPOINT_PREFIX>-<project>-batch-<token>`` (the stage's prefix, which IAM
    scopes the functions' transform jobs to)."""
    return check(f"{project_resource_name}{BATCH_JOB_INFIX}{token}", "transform job")


DRIFT_JOB_INFIX = "-drift-"


def drift_job_name(project_resource_name: str, token: str) -> str:
    """A drift check: ``<ENDPOINT_PREFIX>-<project>-drift-<token>`` (a processing job)."""
    return check(f"{project_resource_name}{DRIFT_JOB_INFIX}{token}", "processing job")


def run_of_final_job(job_name: str) -> str:
    return job_name.removesuffix(FINAL_JOB_SUFFIX)


def is_final_job(job_name: str) -> bool:
    return job_name.endswith(FINAL_JOB_SUFFIX)


def check(name: str, kind: str) -> str:
    if len(name) > MAX_LENGTH[kind]:
        raise InvalidNameError(f"{kind} name {name!r} is longer than {MAX_LENGTH[kind]} characters")
    if not _NAME.match(name):
        raise InvalidNameError(f"{kind} name {name!r} does not match {_NAME.pattern}")
    return name


# SageMaker's tag values: [\p{L}\p{Z}\p{N}_.:/=+\-@]*, at most 256 characters. Anything else in a
# dataset URI (a name with "(", "&", "#", "'"...) is written as "+XX" per UTF-8 byte; "+" itself is
# escaped too, so the encoding is reversible (dataset_of_tag).
TAG_VALUE_MAX = 256
_TAG_SAFE_PUNCTUATION = set("_.:/=-@")


def _tag_safe(char: str) -> bool:
    return char in _TAG_SAFE_PUNCTUATION or unicodedata.category(char)[0] in "LZN"


def tag_value(text: str, truncate: bool = False) -> str:
    """``text`` as a valid SageMaker tag value; raises ``InvalidNameError`` when even encoded it is too
    long, unless ``truncate`` (then it is cut, never inside an escape)."""
    value = "".join(c if _tag_safe(c) else "".join(f"+{b:02X}" for b in c.encode()) for c in text)
    if truncate:
        return re.sub(r"\+[0-9A-F]?$", "", value[:TAG_VALUE_MAX])
    if len(value) > TAG_VALUE_MAX:
        raise InvalidNameError(
            f"{text!r} is too long to tag SageMaker resources with "
            f"({len(value)} characters encoded, the limit is {TAG_VALUE_MAX}): use a shorter dataset name"
        )
    return value


def untag_value(value: str) -> str:
    """The text ``tag_value`` encoded."""
    return re.sub(
        r"(?:\+[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group(0).replace("+", "")).decode("utf-8", "replace"), value
    )


def dataset_of_tags(tags: dict[str, str]) -> str | None:
    value = tags.get(TAG_DATASET)
    return untag_value(value) if value else None


def tags(run: str, dataset_uri: str | None = None, role: str | None = None) -> list[dict[str, str]]:
    out = [{"Key": TAG_RUN_ID, "Value": run}]
    if dataset_uri:
        out.append({"Key": TAG_DATASET, "Value": tag_value(dataset_uri)})
    if role:
        out.append({"Key": TAG_ROLE, "Value": role})
    return out


# train.py writes a job's failure as "<kind>: <message>" (SageMaker shows it after "AlgorithmError: ").
# These kinds (training/trainlib/errors.py) fail every trial of a tuning job alike: the dataset or
# the weights, not the hyperparameters. The tuning job is stopped at the first such trial.
REPEATING_FAILURES = ("DatasetError", "ArchiveError", "WeightsUnavailableError")
_REPEATING = re.compile(r"(?:^|: )(?:" + "|".join(REPEATING_FAILURES) + r"): ")


def repeats_in_every_trial(failure_reason: str | None) -> bool:
    return bool(failure_reason and _REPEATING.search(failure_reason))
