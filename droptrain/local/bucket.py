"""The local bucket: a folder whose files are the objects, with S3's semantics where they matter.

It implements what ``chalice_app`` asks of S3 (listing, head, ranged reads, write-once markers,
delete) and what the local SageMaker executor needs (paths for ``s3://`` URIs).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

from chalice_app.adapters.errors import NotFoundError
from chalice_app.adapters.s3 import RangedReader

# Files being written are hidden from listings and from the watcher until they are renamed.
PARTIAL_SUFFIX = ".partial"


class LocalBucketError(Exception):
    pass


class LocalBucket:
    def __init__(self, root: Path, name: str):
        self.root = root
        self.name = name
        root.mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if not str(target).startswith(str(self.root.resolve())):
            raise LocalBucketError(f"key {key!r} escapes the bucket")
        return target

    def key_of(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def path_of_uri(self, uri: str) -> Path:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if bucket != self.name:
            raise LocalBucketError(f"{uri} is not in the local bucket {self.name}")
        return self.path(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def _check(self, bucket: str) -> None:
        if bucket != self.name:
            raise NotFoundError(f"no local bucket {bucket} (the local bucket is {self.name})", "NoSuchBucket")

    # -- the S3 adapter's interface ------------------------------------------------------------

    def list_objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        self._check(bucket)
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.endswith(PARTIAL_SUFFIX):
                    continue
                path = Path(dirpath) / filename
                key = self.key_of(path)
                if key.startswith(prefix):
                    yield key, path.stat().st_size

    def head(self, bucket: str, key: str) -> dict:
        self._check(bucket)
        path = self.path(key)
        if not path.is_file():
            raise NotFoundError(f"s3://{bucket}/{key} does not exist", "NoSuchKey")
        return {"size": path.stat().st_size, "etag": etag(path)}

    def get(self, bucket: str, key: str) -> bytes:
        self._check(bucket)
        path = self.path(key)
        if not path.is_file():
            raise NotFoundError(f"s3://{bucket}/{key} does not exist", "NoSuchKey")
        return path.read_bytes()

    def read_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        self._check(bucket)
        with self.path(key).open("rb") as handle:
            handle.seek(start)
            return handle.read(end - start + 1)

    def open_ranged(self, bucket: str, key: str, size: int) -> RangedReader:
        return RangedReader(self, bucket, key, size)

    def put_if_absent(self, bucket: str, key: str, body: bytes) -> bool:
        self._check(bucket)
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # atomic, as S3's If-None-Match
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        return True

    def delete(self, bucket: str, key: str) -> None:
        self._check(bucket)
        self.path(key).unlink(missing_ok=True)

    # -- writing objects ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        """Write an object whole (readers never see half of it); returns its ETag."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        partial.write_bytes(data)
        os.replace(partial, path)
        return hashlib.md5(data).hexdigest()

    def put_file(self, key: str, source: Path) -> str:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        with source.open("rb") as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(partial, path)
        return etag(path)


def etag(path: Path) -> str:
    """S3's ETag of a single-part upload: the MD5 of the content."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
