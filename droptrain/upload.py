"""Putting a dataset where the pipeline looks for it: the local bucket or a deployed stage's S3 bucket.

A folder is uploaded file by file and its ``_READY`` marker last, with fresh content (a new ETag is
a new run, docs/architecture.md); an archive is one object whose key ends in its suffix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from chalice_app.names import ARCHIVE_SUFFIXES


class UploadError(Exception):
    pass


def upload_dataset(
    source: Path,
    name: str,
    put_file: Callable[[str, Path], object],
    put_bytes: Callable[[str, bytes], object],
    prefix: str = "datasets/",
) -> str:
    """Upload through ``put_file(key, path)`` / ``put_bytes(key, data)``; returns the key that starts the run."""
    if not source.exists():
        raise UploadError(f"{source} does not exist")
    if source.is_file():
        suffix = next(
            (s for s in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True) if source.name.lower().endswith(s)), None
        )
        if suffix is None:
            raise UploadError(f"{source.name} is not a .zip, .tar, .tar.gz or .tgz archive")
        key = f"{prefix}{name}{suffix}"
        put_file(key, source)
        return key
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name != "_READY":
            put_file(f"{prefix}{name}/{path.relative_to(source).as_posix()}", path)
    key = f"{prefix}{name}/_READY"
    put_bytes(key, f"{time.time_ns()}\n".encode())
    return key


def upload_to_s3(source: Path, name: str, target: str, client=None, prefix: str = "datasets/") -> str:

    bucket = target.removeprefix("s3://").split("/")[0]
    if client is None:
        client = boto3.client("s3")
    try:
        return upload_dataset(
            source,
            name,
            lambda key, path: client.upload_file(str(path), bucket, key),
            lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
            prefix,
        )
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        raise UploadError(f"uploading to s3://{bucket} failed: {exc}") from exc
