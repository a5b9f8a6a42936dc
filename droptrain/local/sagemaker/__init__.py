"""A local SageMaker: the orchestrator's own request dicts in, SageMaker's describe shapes and
EventBridge state-change events out (``chalice_app.ports.SageMaker``).

Its parts: ``training`` (jobs run by AWS's training toolkit), ``tuner`` (Optuna), ``processing`` and
``transform`` (batch predictions on Ray Serve), ``resources``
(models, endpoint configs, tags), ``registry`` (model packages) and ``endpoint`` (endpoints on Ray
Serve). This class holds them together and runs the jobs' threads: every job ends with a status,
and a stopping runtime leaves the unfinished ones InProgress for the next start to resume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from droptrain.local import defaults
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.engines.warm import WarmInterpreter, WarmInterpreterError
from droptrain.local.sagemaker.processing import ProcessingJobs
from droptrain.local.sagemaker.registry import LocalRegistry
from droptrain.local.sagemaker.resources import StoredResources, request_tags
from droptrain.local.sagemaker.training import Emit, OnLine, TrainingJobs
from droptrain.local.sagemaker.transform import TransformJobs
from droptrain.local.sagemaker.tuner import Tuner
from droptrain.local.store import Store

log = logging.getLogger(__name__)


class LocalSageMaker:
    def __init__(
        self,
        store: Store,
        bucket: LocalBucket,
        jobs_root: Path,
        emit: Emit,
        endpoints: Any,
        on_line: OnLine = lambda job, line: None,
        feature_cache: Path | None = None,
        warm_jobs: bool = True,
        gpus: int | None = None,
        warm: WarmInterpreter | None = None,
    ):
        self.store = store
        self.endpoints = endpoints
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        # Shared by every job on this machine: head-mode trials of one tuning job compute the
        # frozen backbone's features once (train.py --feature-cache).
        job_env = {"DROPTRAIN_FEATURE_CACHE": str(feature_cache)} if feature_cache else {}
        # Training jobs fork from one interpreter that has imported torch once (droptrain.local.engines.warm).
        # One passed in is shared with other executors (a test module's), and theirs to close.
        self._owns_warm = warm is None
        self.warm = warm or (WarmInterpreter(jobs_root.parent / "cache") if warm_jobs else None)
        self.training = TrainingJobs(
            store,
            bucket,
            jobs_root,
            emit,
            on_line,
            job_env,
            self._stopping,
            warm=self.warm,
            gpus=defaults.gpu_count() if gpus is None else gpus,
        )
        self.tuner = Tuner(store, self.training, emit, self._spawn, self._stopping)
        self.resources = StoredResources(store)
        self.registry = LocalRegistry(store, emit)
        self.processing = ProcessingJobs(store, bucket, jobs_root, emit, self._stopping)
        self.transform = TransformJobs(store, bucket, jobs_root, emit, lambda: self.endpoints.serving, self._stopping)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Resume what a previous runtime left in progress."""
        self._stopping.clear()
        if self.warm is not None:  # ready before the first job wants it
            self._spawn(self._warm_up, "warm-interpreter")
        self.training.clean_ended()
        for name in self.store.names("tuning-job", "InProgress"):
            self._spawn(self.tuner.run, name)
        for name, status, record in self.store.records("training-job"):
            if status == "InProgress" and not record.get("TuningJobName"):
                self._spawn(self.training.run, name)
        for name in self.store.names("processing-job", "InProgress"):
            self._spawn(self.processing.run, name)
        for name in self.store.names("transform-job", "InProgress"):
            self._spawn(self.transform.run, name)

    def stop(self, timeout: float = 30) -> None:
        """End running jobs (their process groups) and wait for the threads; the store keeps them
        in progress, so the next start resumes them."""
        self._stopping.set()
        self.training.kill_all()
        self.processing.kill_all()
        if self.warm is not None and self._owns_warm:
            self.warm.close()  # first: a server still importing ends, and so does the thread waiting for it
        deadline = time.time() + timeout
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.1, deadline - time.time()))
        if self.warm is not None and self._owns_warm:
            self.warm.close()  # and one a job's thread started meanwhile

    def _warm_up(self, _: str) -> None:
        try:
            self.warm.start_server()
        except WarmInterpreterError as exc:
            if not self._stopping.is_set():  # a stop ends a server still starting: nothing to tell
                log.warning("jobs will start cold: %s", exc)

    def _spawn(self, target: Callable, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"{target.__name__}:{args[0]}")
        # Listed once started: a stop that came in between joined a thread not started yet, and failed.
        thread.start()
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return thread

    # -- chalice_app.ports.SageMaker ------------------------------------------------------------

    def create_training_job(self, request: Mapping[str, Any]) -> bool:
        if not self.training.create(request):
            return False
        self._spawn(self.training.run, request["TrainingJobName"])
        return True

    def describe_training_job(self, name: str) -> dict[str, Any]:
        return self.training.describe(name)

    def create_processing_job(self, request: Mapping[str, Any]) -> bool:
        if not self.processing.create(request):
            return False
        self._spawn(self.processing.run, request["ProcessingJobName"])
        return True

    def describe_processing_job(self, name: str) -> dict[str, Any]:
        return self.processing.describe(name)

    def create_transform_job(self, request: Mapping[str, Any]) -> bool:
        if not self.transform.create(request):
            return False
        self._spawn(self.transform.run, request["TransformJobName"])
        return True

    def describe_transform_job(self, name: str) -> dict[str, Any]:
        return self.transform.describe(name)

    def create_tuning_job(self, request: Mapping[str, Any]) -> bool:
        if not self.tuner.create(request):
            return False
        self._spawn(self.tuner.run, request["HyperParameterTuningJobName"])
        return True

    def describe_tuning_job(self, name: str) -> dict[str, Any]:
        return self.tuner.describe(name)

    def stop_tuning_job(self, name: str) -> bool:
        return self.tuner.stop(name)

    def list_trials(self, tuning_job: str) -> list[dict[str, Any]]:
        return self.tuner.trials(tuning_job)

    def create_model(self, request: Mapping[str, Any]) -> bool:
        return self.resources.create_model(request)

    def create_endpoint_config(self, request: Mapping[str, Any]) -> bool:
        return self.resources.create_endpoint_config(request)

    def describe_endpoint(self, name: str) -> dict[str, Any] | None:
        return self.endpoints.describe(name)

    def create_endpoint(self, request: Mapping[str, Any]) -> bool:
        return self.endpoints.create(request["EndpointName"], request["EndpointConfigName"], request_tags(request))

    def update_endpoint(self, request: Mapping[str, Any]) -> None:
        self.endpoints.update(request["EndpointName"], request["EndpointConfigName"], request.get("DeploymentConfig"))

    def delete_endpoint(self, name: str) -> None:
        self.endpoints.delete(name)

    def add_tags(self, resource_arn: str, tags: list[dict[str, str]]) -> None:
        self.resources.add_tags(resource_arn, tags)

    def delete_tags(self, resource_arn: str, keys: list[str]) -> None:
        self.resources.delete_tags(resource_arn, keys)

    def list_tags(self, resource_arn: str) -> dict[str, str]:
        return self.resources.list_tags(resource_arn)

    # -- the model registry --

    def create_model_package_group(self, request: Mapping[str, Any]) -> bool:
        return self.registry.create_group(request)

    def list_model_package_groups(self, prefix: str) -> list[dict[str, Any]]:
        return self.registry.list_groups(prefix)

    def create_model_package(self, request: Mapping[str, Any]) -> str:
        return self.registry.create_package(request)

    def list_model_packages(self, group: str) -> list[dict[str, Any]]:
        return self.registry.list_packages(group)

    def describe_model_package(self, arn: str) -> dict[str, Any]:
        return self.registry.describe(arn)

    def update_model_package(self, request: Mapping[str, Any]) -> None:
        self.registry.update(request)
