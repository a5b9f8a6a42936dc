"""Local SageMaker Batch Transform jobs: the model's archive served by Ray Serve as its container serves
it, each object of the input sent as one record (``SplitType: None``) with the job's ContentType and
Accept, up to ``MaxConcurrentTransforms`` at once (the application batches them), each answer written
to ``<S3OutputPath>/<key relative to the input's prefix>.out``; then the "SageMaker Transform Job State
Change" event. As on SageMaker, a record the container refuses (not 200) fails the job.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chalice_app.adapters.errors import AdapterError, NotFoundError
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.engines.applications import ServingError, extract_archive
from droptrain.local.engines.serving import RayServe
from droptrain.local.sagemaker.lifecycle import JobKind, Jobs
from droptrain.local.sagemaker.resources import request_tags
from droptrain.local.store import Store

TRANSFORM = JobKind(
    store_kind="transform-job",
    arn_kind="transform-job",
    prefix="TransformJob",
    end_field="TransformEndTime",
    detail_type="SageMaker Transform Job State Change",
    hidden=("Tags",),
    missing="Could not find transform job {name}",
    missing_code="ValidationException",
)


class _Stopped(Exception):
    """The job was asked to stop, or the runtime is stopping, between records."""


class TransformJobs(Jobs):
    kind = TRANSFORM

    def __init__(
        self,
        store: Store,
        bucket: LocalBucket,
        root: Path,
        emit: Callable[[dict], None],
        serving: Callable[[], RayServe],
        stopping: threading.Event,
    ):
        super().__init__(store, emit)
        self.bucket, self.root, self.serving, self.stopping = bucket, root, serving, stopping

    def create(self, request: Mapping[str, Any]) -> bool:
        record = {k: v for k, v in request.items() if k != "Tags"}
        return self.insert(request["TransformJobName"], {**record, "Tags": request_tags(request)})

    def run(self, name: str) -> str:
        record = self.store.get(TRANSFORM.store_kind, name)
        try:
            status, reason = self._run(name, record)
        except _Stopped:
            if self.stopping.is_set() and not self.stop_requested(name):
                return "InProgress"  # the next start runs it again
            status, reason = "Stopped", None
        except (OSError, ValueError, KeyError, AdapterError, ServingError) as exc:
            status, reason = "Failed", f"ClientError: {type(exc).__name__}: {exc}"[:1024]
        self.finish(name, status, **({"FailureReason": reason} if reason else {}))
        return status

    def _run(self, name: str, record: Mapping[str, Any]) -> tuple[str, str | None]:
        model = self.store.get("model", record["ModelName"])
        if model is None:
            raise NotFoundError(f"Could not find model {record['ModelName']}", "ValidationException")
        url = model["PrimaryContainer"]["ModelDataUrl"]
        target = self.root / name / "model"
        extract_archive(self.bucket.path_of_uri(url), url, target)
        prefix, keys = self._inputs(record["TransformInput"]["DataSource"]["S3DataSource"])
        app, serving = f"tj-{name}", self.serving()
        serving.deploy(app, target)
        try:
            return self._records(name, record, app, serving, prefix, keys)
        finally:
            serving.delete(app)

    def _inputs(self, source: Mapping[str, Any]) -> tuple[str, list[str]]:
        """The input's prefix (a key prefix of the local bucket) and its objects, relative to it."""
        if source["S3DataType"] == "ManifestFile":
            manifest = json.loads(self.bucket.path_of_uri(source["S3Uri"]).read_bytes())
            prefix = self._key(manifest[0]["prefix"])
            return prefix, [key for key in manifest[1:] if isinstance(key, str)]
        prefix = self._key(source["S3Uri"])
        return prefix, [key[len(prefix) :] for key, _ in self.bucket.list_objects(self.bucket.name, prefix)]

    def _check_stop(self, name: str) -> None:
        if self.stop_requested(name) or self.stopping.is_set():
            raise _Stopped()

    def _key(self, uri: str) -> str:
        """The key prefix an ``s3://`` URI of the local bucket names, ending in ``/``."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if bucket != self.bucket.name:
            raise NotFoundError(f"no local bucket {bucket} (the local bucket is {self.bucket.name})", "NoSuchBucket")
        return key.rstrip("/") + "/"

    def _records(
        self, name: str, record: Mapping[str, Any], app: str, serving: RayServe, prefix: str, keys: list[str]
    ) -> tuple[str, str | None]:
        content_type = record["TransformInput"].get("ContentType") or "application/octet-stream"
        output = record["TransformOutput"]
        accept = output.get("Accept") or "application/json"
        out = self._key(output["S3OutputPath"])

        def one(key: str) -> str | None:
            self._check_stop(name)
            status, answer = serving.call(app, self.bucket.get(self.bucket.name, prefix + key), content_type, accept)
            if status != 200:
                return f"ClientError: the model answered {status} for {prefix}{key}: {json.dumps(answer)[:300]}"
            self.bucket.put(f"{out}{key}.out", json.dumps(answer).encode())
            return None

        workers = int(record.get("MaxConcurrentTransforms") or 1)
        with ThreadPoolExecutor(workers) as pool:
            failures = [failure for failure in pool.map(one, keys) if failure]
        self._check_stop(name)  # asked while the last records were answered: stopped all the same
        return ("Failed", failures[0][:1024]) if failures else ("Completed", None)
