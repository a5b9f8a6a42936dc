"""Local SageMaker Processing jobs: the request's container entrypoint and arguments run as they are,
with ``/opt/ml/processing`` laid out in the job's folder (inputs staged from the local bucket as
SageMaker downloads them, outputs uploaded where the request says at the end), and the "SageMaker
Processing Job State Change" event on the bus.

``.venv`` is the local image, as for training jobs: its ``python3`` comes first on the job's PATH.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
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
        for item in record.get("ProcessingInputs", []):
            source = self.bucket.path_of_uri(item["S3Input"]["S3Uri"])
            target = Path(self._local(item["S3Input"]["LocalPath"], folder))
            if not source.exists():
                raise jobs.JobSetupError(f"no input at {item['S3Input']['S3Uri']}")
            # As SageMaker downloads it (hard links where it can): one object, or a prefix's tree.
            files = (
                [source]
                if source.is_file()
                else sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink())
            )
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
        spec = record["AppSpecification"]
        command = [
            self._local(part, folder)
            for part in [*spec.get("ContainerEntrypoint", []), *spec.get("ContainerArguments", [])]
        ]
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **record.get("Environment", {}),
        }
        with open(folder / "job.log", "w") as log_file:
            process = subprocess.Popen(
                command, cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
            with self.running(name, process):
                try:
                    code = process.wait(timeout=record.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 3600))
                except subprocess.TimeoutExpired:
                    kill(process)
                    return "Failed", "the job ran past its MaxRuntimeInSeconds"
        if self.stop_requested(name):
            return "Stopped", None
        if self.stopping.is_set():
            return None, None
        if code != 0:
            lines = (folder / "job.log").read_text(errors="replace").strip().splitlines()
            return "Failed", f"AlgorithmError: {lines[-1] if lines else f'exit status {code}'}"[:1024]
        for path, uri in outputs:
            prefix = uri.rstrip("/")
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                self.bucket.put_file(
                    self.bucket.key_of(self.bucket.path_of_uri(f"{prefix}/{file.relative_to(path).as_posix()}")), file
                )
        return "Completed", None
