"""S3: listing a dataset prefix, ranged reads, and write-once markers."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalice_app.adapters.errors import ThrottledError, translate

# S3 answers 409 ConditionalRequestConflict when another conditional write to the key is in flight:
# try again shortly (the other write usually settles it: 412, already there).
CONFLICT_RETRY_DELAYS = (0.1, 0.3, 0.9)


class S3Adapter:
    def __init__(self, client: Any, sleep: Callable[[float], None] = time.sleep):
        self._client = client
        self._sleep = sleep

    def list_objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        """``(key, size)`` for every object under ``prefix``, across pages."""
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], int(item["Size"])
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"listing s3://{bucket}/{prefix}") from exc

    def list_prefixes(self, bucket: str, prefix: str) -> list[str]:
        """Common prefixes one level under ``prefix`` (a delimited listing: objects below are not read)."""
        found: list[str] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, Delimiter="/"
            ):
                found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"listing s3://{bucket}/{prefix}") from exc
        return sorted(found)

    def presigned_url(self, bucket: str, key: str, seconds: int) -> str:
        """Signed locally (no call to S3): a missing object is the browser's 404, later."""
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
        )

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        try:
            response = self._client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"reading s3://{bucket}/{key}") from exc
        return {"size": int(response["ContentLength"]), "etag": response.get("ETag", "").strip('"')}

    def get(self, bucket: str, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"reading s3://{bucket}/{key}") from exc

    def read_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` inclusive."""
        try:
            response = self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
            return response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"reading s3://{bucket}/{key}") from exc

    def open_ranged(self, bucket: str, key: str, size: int) -> RangedReader:
        return RangedReader(self, bucket, key, size)

    def put_if_absent(self, bucket: str, key: str, body: bytes) -> bool:
        """Write ``key`` unless it exists (atomically, S3 conditional write); ``True`` if written."""
        for delay in (*CONFLICT_RETRY_DELAYS, None):
            try:
                self._client.put_object(
                    Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="application/json"
                )
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "PreconditionFailed":
                    return False
                if code == "ConditionalRequestConflict" and delay is not None:
                    self._sleep(delay)
                    continue
                if code == "ConditionalRequestConflict":
                    raise ThrottledError(
                        f"writing s3://{bucket}/{key}: conflicting conditional writes kept going; the event is retried",
                        code,
                    ) from exc
                raise translate(exc, f"writing s3://{bucket}/{key}") from exc
            except BotoCoreError as exc:
                raise translate(exc, f"writing s3://{bucket}/{key}") from exc
        return False  # not reached: the last attempt returns or raises

    def delete(self, bucket: str, key: str) -> None:
        try:
            self._client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"deleting s3://{bucket}/{key}") from exc


class RangedReader(io.RawIOBase):
    """A read-only, seekable file over ranged GETs: ``zipfile`` reads just the central directory."""

    def __init__(self, s3: S3Adapter, bucket: str, key: str, size: int):
        super().__init__()
        self._s3, self._bucket, self._key, self._size = s3, bucket, key, size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if self._pos >= self._size:
            return b""
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        data = self._s3.read_range(self._bucket, self._key, self._pos, end - 1)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
