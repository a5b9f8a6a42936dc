"""Local endpoints: SageMaker's endpoint lifecycle over Ray Serve, answering InvokeEndpoint.

Each endpoint config's model archive is extracted under ``<home>/endpoints/<config>/`` and deployed
as its own Ray Serve application (``droptrain.local.engines.serving``), exactly as AWS's Ray Serve container
would start it. An update is blue/green, as SageMaker's: the new version is deployed beside the old
one, traffic moves to it once it serves, and the old one is deleted after (Ray Serve lets its
requests in flight finish). A version that fails to start is removed and the old one keeps serving,
with the reason on the endpoint (``FailureReason``), as SageMaker rolls back.

An update with a ``DeploymentConfig`` rolls out as SageMaker's guardrails do: a canary takes its
share of the traffic (a random 10% of requests here, 10% of the instances there) for the bake time,
then all traffic bakes on the new version; the alarms the config names are judged on what the new
version answered (``droptrain.local.aws.alarms``), and one in ALARM sends the traffic back to the old
version, which served throughout.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chalice_app.adapters.errors import AdapterError, ServiceError
from chalice_app.adapters.runtime import EndpointNotFoundError, EndpointNotReadyError, ModelError
from droptrain.local.aws.alarms import LocalAlarms, Measurements, breached
from droptrain.local.aws.bucket import LocalBucket
from droptrain.local.engines.applications import extract_archive
from droptrain.local.engines.serving import ApplicationGoneError, RayServe, ServingError
from droptrain.local.sagemaker.capture import LocalCapture
from droptrain.local.sagemaker.resources import arn, as_described, now, state_change_event
from droptrain.local.store import Store

log = logging.getLogger(__name__)
APP_PREFIX = "ep-"  # an endpoint config's Ray Serve application: ep-<config>


@dataclass(frozen=True)
class _Route:
    """Where an endpoint's traffic goes: ``app``, or ``canary`` for a ``share`` of the requests; what
    ``watch.app`` answers is measured for the rollout's alarms."""

    app: str
    canary: str | None = None
    share: float = 0.0
    watch: Measurements | None = None

    def pick(self, draw: float) -> str:
        return self.canary if self.canary is not None and draw < self.share else self.app


class LocalEndpoints:
    def __init__(
        self,
        store: Store,
        bucket: LocalBucket,
        root: Path,
        emit: Callable[[dict], None],
        serving: RayServe,
        alarms: LocalAlarms | None = None,
    ):
        self.store, self.bucket, self.root, self.emit = store, bucket, root, emit
        self.serving = serving
        self.alarms = alarms or LocalAlarms(store)
        self.capture = LocalCapture(store, bucket)  # what the endpoint configs' DataCaptureConfig asks for
        self._routes: dict[str, _Route] = {}  # endpoint -> where its traffic goes
        self._routes_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        # When each endpoint was invoked (the last 10,000 times): CloudWatch's Invocations, locally.
        self._invoked: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=10_000))

    # -- SageMaker's side -------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any] | None:
        record = self.store.get("endpoint", name)
        return None if record is None else as_described(record, hidden=("Tags", "Pending", "Deployment"))

    def create(self, name: str, config: str, tags: dict[str, str]) -> bool:
        record = {
            "EndpointName": name,
            "EndpointArn": arn("endpoint", name),
            "EndpointConfigName": config,
            "EndpointStatus": "Creating",
            "CreationTime": now(),
            "LastModifiedTime": now(),
            "Tags": tags,
            "Pending": config,
        }
        if not self.store.insert("endpoint", name, record, status="Creating"):
            return False
        self._deploy_async(name)
        return True

    def update(self, name: str, config: str, deployment: Mapping[str, Any] | None = None) -> None:
        record = self.store.get("endpoint", name)
        if record is None:
            raise ServiceError(f"Could not find endpoint '{name}'", "ValidationException")
        if not self.store.transition(
            "endpoint",
            name,
            ("InService", "Failed"),
            "Updating",
            EndpointStatus="Updating",
            Pending=config,
            Deployment=dict(deployment or {}),
            LastModifiedTime=now(),
        ):
            raise ServiceError(f"Cannot update in-progress endpoint '{name}'", "ValidationException")
        self._deploy_async(name)

    def delete(self, name: str) -> None:
        """DeleteEndpoint: gone at once here (SageMaker takes a while); its configs and models stay."""
        with self._routes_lock:
            route = self._routes.pop(name, None)
        for app in (route.app, route.canary) if route is not None else ():
            if app is not None:
                self.serving.delete(app)
        self.store.delete("endpoint", name)

    def start(self) -> None:
        """After a restart (a new Ray instance): serve again what was serving, finish what was deploying."""
        self._closing.clear()
        for name, status, record in self.store.records("endpoint"):
            if status in ("InService", "Updating"):
                try:
                    self._route(name, self._serve(record["EndpointConfigName"]))
                except Exception as exc:  # one endpoint's artifact never stops the stack from starting
                    log.error("endpoint %s could not serve %s again: %s", name, record["EndpointConfigName"], exc)
                    if status == "InService":  # nothing serves it now: say so, rather than InService and 503s
                        reason = f"after a restart, {record['EndpointConfigName']} could not be served again: {exc}"
                        self._settle(name, ("InService",), "Failed", FailureReason=reason)
            if status in ("Creating", "Updating"):
                self._deploy_async(name)

    def join(self, timeout: float = 60) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        """The runtime is stopping: rollouts stop baking (an update left Updating resumes on the next
        start) and the applications leave Ray Serve (which may be shared, in tests)."""
        self._closing.set()
        self.join(5)
        with self._routes_lock:
            routes, self._routes = list(self._routes.values()), {}
        for app in {a for route in routes for a in (route.app, route.canary) if a}:
            self.serving.delete(app)

    # -- deployments ------------------------------------------------------------------------------

    def _deploy_async(self, name: str) -> None:
        thread = threading.Thread(target=self._deploy, args=(name,), daemon=True, name=f"deploy:{name}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _app_name(self, config_name: str) -> str:
        return f"{APP_PREFIX}{config_name}"

    def _serve(self, config_name: str) -> str:
        """Extract the config's model archive and deploy it; returns the application's name."""
        config = self.store.get("endpoint-config", config_name)
        if config is None:
            raise ServingError(f"endpoint config {config_name} does not exist")
        model = self.store.get("model", config["ProductionVariants"][0]["ModelName"])
        if model is None:
            raise ServingError(f"model {config['ProductionVariants'][0]['ModelName']} does not exist")
        try:
            archive = self.bucket.path_of_uri(model["PrimaryContainer"]["ModelDataUrl"])
        except AdapterError as exc:  # another bucket, or a key the local bucket refuses
            raise ServingError(f"the model artifact cannot be read: {exc}") from None
        target = self.root / config_name
        extract_archive(archive, model["PrimaryContainer"]["ModelDataUrl"], target)
        app = self._app_name(config_name)
        self.serving.deploy(app, target)
        return app

    def _route(self, endpoint: str, app: str) -> str | None:
        """Send all the endpoint's traffic to ``app``; returns the application it took it from."""
        with self._routes_lock:
            previous, self._routes[endpoint] = self._routes.get(endpoint), _Route(app)
        return previous.app if previous is not None and previous.app != app else None

    def _serving_app(self, endpoint: str) -> str | None:
        with self._routes_lock:
            route = self._routes.get(endpoint)
        return route.app if route else None

    def _canary_share(self, config_name: str, routing: Mapping[str, Any]) -> float:
        """The canary's share of the requests: its instances of the variant's, or its percentage."""
        canary = routing.get("CanarySize", {})
        if canary.get("Type") == "INSTANCE_COUNT":
            config = self.store.get("endpoint-config", config_name) or {}
            instances = (config.get("ProductionVariants") or [{}])[0].get("InitialInstanceCount", 1)
            return min(1.0, canary["Value"] / instances)
        return canary["Value"] / 100

    def _rollout(self, name: str, old: str, new: str, new_config: str, deployment: Mapping[str, Any]) -> str | None:
        """Shift traffic from ``old`` to ``new`` as the deployment config says, baking under its alarms;
        returns why it rolled back, or ``None`` once ``new`` takes all traffic. ``old`` serves until then."""
        policy = deployment.get("BlueGreenUpdatePolicy", {})
        routing = policy.get("TrafficRoutingConfiguration", {})
        bake = float(routing.get("WaitIntervalInSeconds", 0))
        shares = [self._canary_share(new_config, routing)] if routing.get("Type") == "CANARY" else []
        alarms = [
            (a["AlarmName"], self.alarms.get(a["AlarmName"]))
            for a in deployment.get("AutoRollbackConfiguration", {}).get("Alarms", [])
        ]
        for share in [*shares, 1.0]:
            watch = Measurements(new)
            with self._routes_lock:
                self._routes[name] = _Route(old, new, share, watch) if share < 1 else _Route(new, watch=watch)
            if self._closing.wait(bake):
                return None  # stopping: the record stays Updating and the next start deploys again
            for alarm_name, alarm in alarms:
                why = breached(alarm, watch) if alarm else None
                if why:
                    with self._routes_lock:
                        self._routes[name] = _Route(old)
                    return (
                        f"Deployment rolled back: alarm {alarm_name} went into ALARM while "
                        f"{'the canary' if share < 1 else 'all traffic'} baked on the new version: {why}"
                    )
        with self._routes_lock:
            self._routes[name] = _Route(new)
        return None

    def _deploy(self, name: str) -> None:
        record = self.store.get("endpoint", name)
        config = record["Pending"]
        previous_status = record["EndpointStatus"]
        deployment = record.get("Deployment") or {}
        try:
            app = self._serve(config)
        except Exception as exc:  # whatever it is, the endpoint must leave Updating/Creating, saying why
            if not isinstance(exc, ServingError):
                log.exception("deploying %s to endpoint %s failed", config, name)
            reason = f"the model could not be deployed: {exc}"
            if previous_status == "Updating" and self._serving_app(name) is not None:
                self._settle(name, ("Updating",), "InService", FailureReason=reason)  # the old version serves on
            else:
                self._settle(name, ("Creating", "Updating"), "Failed", FailureReason=reason)
            return
        current = self._serving_app(name)
        if previous_status == "Updating" and deployment and current is not None and current != app:
            rolled_back = self._rollout(name, current, app, config, deployment)
            if self._closing.is_set():
                return
            if rolled_back:
                self.serving.delete(app)
                self._settle(name, ("Updating",), "InService", FailureReason=rolled_back)
                return
            self.serving.delete(current)  # baked without an alarm: the old version goes
        old = self._route(name, app)
        if old is not None:
            self.serving.delete(old)  # its requests in flight finish; new ones already go to `app`
        self._settle(name, ("Creating", "Updating"), "InService", EndpointConfigName=config, FailureReason=None)

    def _settle(self, name: str, expected: tuple[str, ...], status: str, **fields: Any) -> None:
        """Move the endpoint from one of ``expected`` to ``status``, and announce it if this moved it."""
        if self.store.transition(
            "endpoint", name, expected, status, EndpointStatus=status, LastModifiedTime=now(), **fields
        ):
            self._announce(name)

    def _announce(self, name: str) -> None:
        record = self.store.get("endpoint", name)
        detail = {
            "EndpointName": name,
            "EndpointArn": record["EndpointArn"],
            "EndpointConfigName": record["EndpointConfigName"],
            "EndpointStatus": {"InService": "IN_SERVICE", "Failed": "FAILED"}[record["EndpointStatus"]],
            "Tags": record.get("Tags", {}),
            # Epoch milliseconds, as SageMaker's event has it: which change this is (one per deployment).
            "LastModifiedTime": int(datetime.fromisoformat(record["LastModifiedTime"]).timestamp() * 1000),
        }
        if record.get("FailureReason"):
            detail["FailureReason"] = record["FailureReason"]
        self.emit(state_change_event("SageMaker Endpoint State Change", "endpoint", name, detail))

    def invocations(self, endpoint: str, start: datetime, end: datetime) -> float:
        """How many times ``endpoint`` was invoked between ``start`` and ``end`` (since this runtime started)."""
        return float(sum(start <= moment <= end for moment in list(self._invoked.get(endpoint, ()))))

    # -- sagemaker-runtime's side -----------------------------------------------------------------

    def invoke(self, endpoint: str, body: bytes, content_type: str, accept: str, attributes: str = "") -> bytes:
        """InvokeEndpoint: the container's answer, or ``ModelError`` with its status and body, as SageMaker
        reports a container's 4xx/5xx (the content type travels, but the application reads the bytes;
        ``attributes`` travel as SageMaker sends CustomAttributes, in their header)."""
        self._invoked[endpoint].append(datetime.now(timezone.utc))
        for _ in range(2):  # a swap can delete the application between routing and calling: route again
            with self._routes_lock:
                route = self._routes.get(endpoint)
            if route is None:
                if self.store.get("endpoint", endpoint) is None:
                    raise EndpointNotFoundError(f"Endpoint {endpoint} of account local not found.", "ValidationError")
                raise EndpointNotReadyError(f"Endpoint {endpoint} is not ready", "ModelNotReadyException")
            app = route.pick(random.random())
            watch = route.watch if route.watch is not None and route.watch.app == app else None
            started = time.monotonic()
            try:
                status, payload = self.serving.call(app, body, content_type, accept, attributes=attributes)
            except ApplicationGoneError:
                continue
            except ServingError as exc:
                if watch is not None:
                    watch.record(500, time.monotonic() - started)
                raise ModelError(f"the model container failed: {exc}", 500) from exc
            if watch is not None:
                watch.record(status, time.monotonic() - started)
            answer = json.dumps(payload)
            if status != 200:
                raise ModelError(answer, status)
            self.capture.after(endpoint, app.removeprefix(APP_PREFIX), body, content_type, answer.encode())
            return answer.encode()
        raise EndpointNotReadyError(f"Endpoint {endpoint} is changing versions", "ModelNotReadyException")


class LocalRuntimeClient:
    """What ``chalice_app`` calls InvokeEndpoint through (``RuntimeAdapter``'s interface)."""

    def __init__(self, endpoints: LocalEndpoints):
        self._endpoints = endpoints

    def invoke(self, endpoint: str, body: bytes, content_type: str, accept: str, attributes: str = "") -> bytes:
        return self._endpoints.invoke(endpoint, body, content_type, accept, attributes)
