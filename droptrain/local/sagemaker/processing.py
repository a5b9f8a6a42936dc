"""Local SageMaker Processing jobs: the request's container entrypoint and arguments run as they are,
with ``/opt/ml/processing`` laid out in the job's folder (inputs staged from the local bucket as
SageMaker downloads them, outputs uploaded where the request says at the end), and the "SageMaker
Processing Job State Change" event on the bus.

``.venv`` is the local image, as for training jobs: its ``python3`` comes first on the job's PATH.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from chalice_app.adapters.errors import NotFoundError
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.sagemaker import jobs
from droptrain.local.sagemaker.lifecycle import JobKind, Jobs, kill
from droptrain.local.sagemaker.resources import request_tags
from droptrain.local.store import Store

log = logging.getLogger(__name__)
CONTAINER_ROOT = "/opt/ml/processing"


PROCESSING = JobKind(
    store_kind="processing-job",
    arn_kind="processing-job",
    prefix="ProcessingJob",
    end_field="ProcessingEndTime",
    detail_type="SageMaker Processing Job State Change",
    hidden=("Tags",),
    missing="Could not find processing job {name}",
    missing_code="ValidationException",
)


class ProcessingJobs(Jobs):
    kind = PROCESSING

    def __init__(
        self, store: Store, bucket: LocalBucket, root: Path, emit: Callable[[dict], None], stopping: threading.Event
    ):
        super().__init__(store, emit)
        self.bucket, self.root, self.stopping = bucket, root, stopping

    def create(self, request: Mapping[str, Any]) -> bool:
        record = {k: v for k, v in request.items() if k != "Tags"}
        return self.insert(request["ProcessingJobName"], {**record, "Tags": request_tags(request)})

    def run(self, name: str) -> str:
        record = self.store.get("processing-job", name)
        folder = self.root / name
        try:
            status, reason = self._run(name, record, folder)
        except (OSError, ValueError, KeyError, NotFoundError, jobs.JobSetupError) as exc:
            status, reason = "Failed", f"ClientError: {type(exc).__name__}: {exc}"[:1024]
        if status is None:
            return "InProgress"  # the runtime is stopping: the next start runs it again
        self.finish(name, status, **({"FailureReason": reason} if reason else {}))
        return status

    def _local(self, value: str, folder: Path) -> str:
        return value.replace(CONTAINER_ROOT, str(folder / CONTAINER_ROOT.lstrip("/")))

    def _run(self, name: str, record: Mapping[str, Any], folder: Path) -> tuple[str | None, str | None]:
        count = int(record.get("ProcessingResources", {}).get("ClusterConfig", {}).get("InstanceCount") or 1)
        # The first instance works in the job's folder, the others beside it, each with its own inputs.
        folders = [folder] + [folder / "instances" / f"algo-{n}" for n in range(2, count + 1)]
        outputs = [self._stage(record, where, index, count) for index, where in enumerate(folders)]
        spec = record["AppSpecification"]
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **record.get("Environment", {}),
        }
        codes = self._start_all(name, folders, spec, env, record.get("StoppingCondition", {}))
        if codes is None:
            return "Failed", "the job ran past its MaxRuntimeInSeconds"
        if self.stop_requested(name):
            return "Stopped", None
        if self.stopping.is_set():
            return None, None
        for where, code in zip(folders, codes):
            if code != 0:
                lines = (where / "job.log").read_text(errors="replace").strip().splitlines()
                return "Failed", f"AlgorithmError: {lines[-1] if lines else f'exit status {code}'}"[:1024]
        for instance_outputs in outputs:  # every instance's, into the same prefixes, as SageMaker uploads them
            for path, uri in instance_outputs:
                prefix = uri.rstrip("/")
                for file in sorted(p for p in path.rglob("*") if p.is_file()):
                    key = self.bucket.key_of(self.bucket.path_of_uri(f"{prefix}/{file.relative_to(path).as_posix()}"))
                    self.bucket.put_file(key, file)
        return "Completed", None

    def _stage(self, record: Mapping[str, Any], folder: Path, index: int, count: int) -> list[tuple[Path, str]]:
        """One instance's inputs, as SageMaker downloads them (hard links where it can): one object, or a
        prefix's tree; with ``ShardedByS3Key`` every ``count``-th object of the prefix, by key. Returns
        its outputs' folders and where each goes."""
        for item in record.get("ProcessingInputs", []):
            source, files = self._input_files(item["S3Input"])
            target = Path(self._local(item["S3Input"]["LocalPath"], folder))
            if item["S3Input"].get("S3DataDistributionType") == "ShardedByS3Key":
                files = files[index::count]
            for file in files:
                destination = target / (file.name if source.is_file() else file.relative_to(source))
                if not destination.exists():
                    jobs.link_or_copy(file, destination)
            target.mkdir(parents=True, exist_ok=True)
        outputs = [
            (Path(self._local(o["S3Output"]["LocalPath"], folder)), o["S3Output"]["S3Uri"])
            for o in record.get("ProcessingOutputConfig", {}).get("Outputs", [])
        ]
        for path, _ in outputs:
            path.mkdir(parents=True, exist_ok=True)
        return outputs

    def _input_files(self, source: Mapping[str, Any]) -> tuple[Path, list[Path]]:
        """``(the prefix's or object's path, its files)``: one object, a prefix's tree, or (``ManifestFile``)
        the objects a manifest lists under its prefix, each where it lies relative to that prefix."""
        uri = source["S3Uri"]
        path = self.bucket.path_of_uri(uri)
        if not path.exists():
            raise jobs.JobSetupError(f"no input at {uri}")
        if source.get("S3DataType") == "ManifestFile":
            manifest = json.loads(path.read_bytes())
            root = self.bucket.path_of_uri(manifest[0]["prefix"])
            listed = [root / key for key in manifest[1:] if isinstance(key, str)]
            missing = [str(p) for p in listed if not p.is_file()]
            if missing:
                raise jobs.JobSetupError(f"the manifest {uri} lists {len(missing)} missing objects: {missing[0]}")
            return root, listed
        if path.is_file():
            return path, [path]
        return path, sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())

    def _start_all(
        self, name: str, folders: list[Path], spec: Mapping[str, Any], env: Mapping[str, str], limits: Mapping
    ) -> list[int] | None:
        """Every instance's container at once, to their ends; ``None`` when they ran past the job's limit."""
        processes = []
        for where in folders:
            command = [
                self._local(part, where)
                for part in [*spec.get("ContainerEntrypoint", []), *spec.get("ContainerArguments", [])]
            ]
            with open(where / "job.log", "w") as log_file:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=where,
                        env=dict(env),
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + limits.get("MaxRuntimeInSeconds", 3600)
        # The first instance is the job's process (a stop ends it); the others end with it when it did
        # not succeed, or are waited for.
        with self.running(name, processes[0]):
            try:
                first = processes[0].wait(timeout=max(0.0, deadline - time.monotonic()))
                if first != 0 or self.stop_requested(name) or self.stopping.is_set():
                    for process in processes[1:]:
                        kill(process)
                return [first] + [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p in processes[1:]]
            except subprocess.TimeoutExpired:
                return None
            finally:
                for process in processes:
                    if process.poll() is None:
                        kill(process)
