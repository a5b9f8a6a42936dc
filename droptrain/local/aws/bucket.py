"""The local bucket: a folder whose files are the objects, with S3's semantics where they matter.

It implements ``chalice_app.ports.ObjectStore`` (listing in key order, head, ranged reads, write-once
markers, delete; ``NotFoundError`` for what is not there) and what the local SageMaker needs (paths
for ``s3://`` URIs). A key is a path under the folder and can never name anything outside it: keys
with ``..``, ``.`` or empty segments, absolute keys and backslashes are refused (S3 would take them
as plain characters; a folder cannot), and links are neither followed nor listed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from chalice_app.adapters.errors import NotFoundError, ServiceError
from chalice_app.adapters.s3 import RangedReader

log = logging.getLogger(__name__)

# Files being written are hidden from listings and from the watcher until they are renamed.
PARTIAL_SUFFIX = ".partial"


class InvalidKeyError(ServiceError):
    """A key the local bucket cannot hold: it would name something outside the bucket's folder."""

    def __init__(self, key: str, why: str):
        super().__init__(f"the key {key!r} cannot be stored in the local bucket: {why}", "InvalidKey")


def check_key(key: str) -> str:
    """``key`` if it names a path inside a folder; raises ``InvalidKeyError``."""
    if not key or key.startswith("/") or "\\" in key or "\0" in key:
        raise InvalidKeyError(key, "keys are relative, with '/' between names")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts[:-1]) or parts[-1] in (".", ".."):
        raise InvalidKeyError(key, "no '..', '.' or empty names between the slashes")
    return key


class LocalBucket:
    def __init__(self, root: Path, name: str, on_skip: Callable[[str, str], None] | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.name = name
        # Told (file, why) once for each file the listing leaves out for a reason its owner should hear.
        self.on_skip = on_skip or (lambda shown, why: log.warning("skipping %s in the local bucket: %s", shown, why))
        self._not_keys: set[str] = set()  # names already reported as no key can have them

    # -- paths ---------------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        """The file of ``key``: inside the bucket's folder, through no link, or ``InvalidKeyError``."""
        target = self.root.joinpath(*PurePosixPath(check_key(key)).parts)
        node = self.root
        for part in target.relative_to(self.root).parts:
            node = node / part
            if node.is_symlink():
                raise InvalidKeyError(key, f"{node} is a link, and links are not followed")
        if not target.resolve().is_relative_to(self.root):
            raise InvalidKeyError(key, "it would be outside the bucket")
        return target

    def key_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def path_of_uri(self, uri: str) -> Path:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self._check(bucket)
        return self.path(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def _check(self, bucket: str) -> None:
        if bucket != self.name:
            raise NotFoundError(f"no local bucket {bucket} (the local bucket is {self.name})", "NoSuchBucket")

    def _existing(self, bucket: str, key: str) -> Path:
        self._check(bucket)
        path = self.path(key)
        if not path.is_file():
            raise NotFoundError(f"s3://{bucket}/{key} does not exist", "NoSuchKey")
        return path

    # -- chalice_app.ports.ObjectStore -------------------------------------------------------------

    def list_objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        """Regular files only (links and half-written files are not objects), sorted by key as S3 lists."""
        self._check(bucket)
        # Only the prefix's folder is walked: the watcher lists datasets/ twice a second, and the
        # rest of the bucket (job outputs, debugger tensors, captures) grows with every run.
        folder = prefix.rpartition("/")[0]
        try:
            top = self.path(folder) if folder else self.root
        except InvalidKeyError:
            return  # no key can start with it (or it runs through a link): nothing is listed
        found = []
        for dirpath, _dirnames, filenames in os.walk(top):  # os.walk does not descend into links
            for filename in filenames:
                path = Path(dirpath) / filename
                if filename.endswith(PARTIAL_SUFFIX) or path.is_symlink() or not path.is_file():
                    continue
                key = self.key_of(path)
                if not _is_utf8(key):
                    self._report_not_a_key(path)
                elif key.startswith(prefix):
                    found.append((key, path.stat().st_size))
        yield from sorted(found)

    def _report_not_a_key(self, path: Path) -> None:
        """Once per file: S3 keys are UTF-8, so a file whose name is not cannot be an object."""
        shown = os.fsencode(path.relative_to(self.root)).decode("utf-8", "backslashreplace")
        if shown not in self._not_keys:
            self._not_keys.add(shown)
            self.on_skip(shown, "its name is not UTF-8, as S3 keys are; rename it")

    def list_prefixes(self, bucket: str, prefix: str) -> list[str]:
        self._check(bucket)
        folder, _, start = prefix.rpartition("/")
        try:
            base = self.path(folder) if folder else self.root
        except InvalidKeyError:
            return []
        if not base.is_dir() or base.is_symlink():
            return []
        return sorted(
            f"{self.key_of(child)}/"
            for child in base.iterdir()
            if child.is_dir() and not child.is_symlink() and child.name.startswith(start) and _is_utf8(child.name)
        )

    def presigned_url(self, bucket: str, key: str, seconds: int) -> None:
        """The local bucket has no URLs of its own: the API serves what the console links to."""
        self._check(bucket)
        return None

    def head(self, bucket: str, key: str) -> dict:
        path = self._existing(bucket, key)
        return {"size": path.stat().st_size, "etag": etag(path)}

    def get(self, bucket: str, key: str) -> bytes:
        return self._existing(bucket, key).read_bytes()

    def read_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        with self._existing(bucket, key).open("rb") as handle:
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
        with _no_partial_left(partial):
            partial.write_bytes(data)
            os.replace(partial, path)
        return hashlib.md5(data).hexdigest()

    def put_file(self, key: str, source: Path) -> str:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        with _no_partial_left(partial):
            with source.open("rb") as src, partial.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(partial, path)
        return etag(path)


@contextlib.contextmanager
def _no_partial_left(partial: Path) -> Iterator[None]:
    """A write that fails (a full disk, most often) takes its half-written file with it."""
    try:
        yield
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _is_utf8(name: str) -> bool:
    """False for a file name that was not UTF-8 on disk (Python keeps its bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def etag(path: Path) -> str:
    """S3's ETag of a single-part upload: the MD5 of the content."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
