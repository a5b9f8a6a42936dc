"""``droptrain upload PATH --to s3://BUCKET``: a dataset into a deployed stage's bucket, marker last."""

from __future__ import annotations

import time
from pathlib import Path

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class S3UploadError(Exception):
    pass


def upload_to_s3(source: Path, name: str, target: str, client=None, prefix: str = "datasets/") -> str:
    """Upload a folder (every file, then a fresh ``_READY``) or one archive; returns the key that starts the run."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = target.removeprefix("s3://").split("/")[0]
    if client is None:
        import boto3

        client = boto3.client("s3")
    if not source.exists():
        raise S3UploadError(f"{source} does not exist")
    try:
        if source.is_file():
            suffix = next((s for s in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True) if source.name.lower().endswith(s)), None)
            if suffix is None:
                raise S3UploadError(f"{source.name} is not a .zip, .tar, .tar.gz or .tgz archive")
            key = f"{prefix}{name}{suffix}"
            client.upload_file(str(source), bucket, key)
            return key
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.name != "_READY":
                client.upload_file(str(path), bucket, f"{prefix}{name}/{path.relative_to(source).as_posix()}")
        key = f"{prefix}{name}/_READY"
        client.put_object(Bucket=bucket, Key=key, Body=f"{time.time_ns()}\n".encode())
        return key
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        raise S3UploadError(f"uploading to s3://{bucket} failed: {exc}") from exc
