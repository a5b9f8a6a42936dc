"""Local endpoints: ``model.tar.gz`` loaded through its own ``inference.py``, answering InvokeEndpoint.

A deployment loads the new model completely, then swaps one reference: requests in flight finish
on the old model, new ones get the new one, none is dropped. A deployment that fails to load
leaves the old model serving (as SageMaker's rollback does) and records the reason.

Decoding and answering happen in each request's thread; the forward passes go through one
``DynamicBatcher`` per model, so concurrent requests share batches (``predict_batch_fn`` when the
model's ``inference.py`` has it, else ``predict_fn`` one image at a time) and never fight over
the CPU's cores.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from chalice_app.adapters.errors import ServiceError
from chalice_app.adapters.runtime import EndpointNotFoundError, EndpointNotReadyError, ModelError
from droptrain.container import load_inference_module
from droptrain.local.batching import DynamicBatcher
from droptrain.local.bucket import LocalBucket
from droptrain.local.store import Store

log = logging.getLogger(__name__)


MAX_BATCH = 16


@dataclass
class Serving:
    config: str
    module: Any
    model: Any
    batcher: DynamicBatcher

    @classmethod
    def of(cls, config: str, module: Any, model: Any) -> "Serving":
        batch_fn = getattr(module, "predict_batch_fn", None)
        if batch_fn is not None:
            def run_batch(items):
                return batch_fn(list(items), model)
        else:
            def run_batch(items):
                return [module.predict_fn(item, model) for item in items]
        return cls(config, module, model, DynamicBatcher(run_batch, max_batch=MAX_BATCH, name=f"batcher:{config}"))


class LocalEndpoints:
    def __init__(self, store: Store, bucket: LocalBucket, root: Path, emit: Callable[[dict], None],
                 arn: Callable[[str, str], str], event: Callable[..., dict], now: Callable[[], str]):
        self.store, self.bucket, self.root, self.emit = store, bucket, root, emit
        self._arn, self._event, self._now = arn, event, now
        self._serving: dict[str, Serving] = {}
        self._threads: list[threading.Thread] = []

    # -- SageMaker's side -------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any] | None:
        record = self.store.get("endpoint", name)
        if record is None:
            return None
        from droptrain.local.sagemaker import as_described

        return as_described(record, hidden=("Tags", "Pending"))

    def create(self, name: str, config: str, tags: dict[str, str]) -> bool:
        record = {"EndpointName": name, "EndpointArn": self._arn("endpoint", name), "EndpointConfigName": config,
                  "EndpointStatus": "Creating", "CreationTime": self._now(), "LastModifiedTime": self._now(),
                  "Tags": tags, "Pending": config}
        if not self.store.insert("endpoint", name, record, status="Creating"):
            return False
        self._deploy_async(name)
        return True

    def update(self, name: str, config: str) -> None:
        record = self.store.get("endpoint", name)
        if record is None:
            raise ServiceError(f"Could not find endpoint '{name}'", "ValidationException")
        if not self.store.transition("endpoint", name, ("InService", "Failed"), "Updating", EndpointStatus="Updating",
                                     Pending=config, LastModifiedTime=self._now()):
            raise ServiceError(f"Cannot update in-progress endpoint '{name}'", "ValidationException")
        self._deploy_async(name)

    def start(self) -> None:
        """After a restart: load what was serving, finish what was being deployed."""
        for name, status, record in self.store.records("endpoint"):
            if status in ("InService", "Updating"):
                try:
                    self._serving[name] = self._load(record["EndpointConfigName"])
                except Exception as exc:  # noqa: BLE001 - recorded on the endpoint, as SageMaker shows it
                    log.error("endpoint %s could not reload %s: %s", name, record["EndpointConfigName"], exc)
            if status in ("Creating", "Updating"):
                self._deploy_async(name)

    def join(self, timeout: float = 60) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        """Stop serving (the runtime is stopping): queued requests are answered first."""
        serving, self._serving = self._serving, {}
        for item in serving.values():
            item.batcher.close(5)

    def _deploy_async(self, name: str) -> None:
        thread = threading.Thread(target=self._deploy, args=(name,), daemon=True, name=f"deploy:{name}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _load(self, config_name: str) -> Serving:
        config = self.store.get("endpoint-config", config_name)
        if config is None:
            raise ServiceError(f"endpoint config {config_name} does not exist")
        model = self.store.get("model", config["ProductionVariants"][0]["ModelName"])
        if model is None:
            raise ServiceError(f"model {config['ProductionVariants'][0]['ModelName']} does not exist")
        archive = self.bucket.path_of_uri(model["PrimaryContainer"]["ModelDataUrl"])
        target = self.root / config_name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        module = load_inference_module(target / "code")
        return Serving.of(config_name, module, module.model_fn(str(target)))

    def _deploy(self, name: str) -> None:
        record = self.store.get("endpoint", name)
        config = record["Pending"]
        previous = record["EndpointStatus"]
        try:
            serving = self._load(config)
        except Exception as exc:  # noqa: BLE001 - any load failure is the deployment's FailureReason
            reason = f"the model could not be loaded: {exc}"
            if previous == "Updating":  # roll back: the old model keeps serving
                moved = self.store.transition("endpoint", name, ("Updating",), "InService", EndpointStatus="InService",
                                              FailureReason=reason, LastModifiedTime=self._now())
            else:
                moved = self.store.transition("endpoint", name, ("Creating",), "Failed", EndpointStatus="Failed",
                                              FailureReason=reason, LastModifiedTime=self._now())
            if moved:
                self._announce(name)
            return
        old = self._serving.get(name)
        self._serving[name] = serving  # the swap: one reference, requests in flight keep the old model
        if old is not None:
            old.batcher.close()  # after what is queued on it; a late request runs on it directly
        if self.store.transition("endpoint", name, ("Creating", "Updating"), "InService", EndpointStatus="InService",
                                 EndpointConfigName=config, FailureReason=None, LastModifiedTime=self._now()):
            self._announce(name)

    def _announce(self, name: str) -> None:
        record = self.store.get("endpoint", name)
        detail = {"EndpointName": name, "EndpointArn": record["EndpointArn"], "EndpointConfigName": record["EndpointConfigName"],
                  "EndpointStatus": {"InService": "IN_SERVICE", "Failed": "FAILED"}[record["EndpointStatus"]],
                  "Tags": record.get("Tags", {})}
        if record.get("FailureReason"):
            detail["FailureReason"] = record["FailureReason"]
        self.emit(self._event("SageMaker Endpoint State Change", "endpoint", name, detail))

    # -- sagemaker-runtime's side -----------------------------------------------------------------

    def invoke(self, endpoint: str, body: bytes, content_type: str, accept: str) -> bytes:
        serving = self._serving.get(endpoint)
        if serving is None:
            if self.store.get("endpoint", endpoint) is None:
                raise EndpointNotFoundError(f"Endpoint {endpoint} of account local not found.", "ValidationError")
            raise EndpointNotReadyError(f"Endpoint {endpoint} is not ready", "ModelNotReadyException")
        module = serving.module
        try:
            data = module.input_fn(body, content_type)
            answer, _ = module.output_fn(serving.batcher.submit(data), accept)
        except module.InferenceError as exc:
            raise ModelError(str(exc), exc.status) from exc
        return answer.encode()


class LocalRuntimeClient:
    """What ``chalice_app`` calls InvokeEndpoint through (``RuntimeAdapter``'s interface)."""

    def __init__(self, endpoints: LocalEndpoints):
        self._endpoints = endpoints

    def invoke(self, endpoint: str, body: bytes, content_type: str, accept: str) -> bytes:
        return self._endpoints.invoke(endpoint, body, content_type, accept)
