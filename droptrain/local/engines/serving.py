"""Ray Serve for the local runtime: one Ray instance per process, each model started as AWS's container starts it.

AWS's Ray Serve inference container (``ray:serve-ml-sagemaker-cpu``/``-cuda``) starts a model so:
extract ``model.tar.gz`` to ``/opt/ml/model/``, install ``code/requirements.txt``, put the folder on
``PYTHONPATH``, start Ray and Serve, and ``serve run /opt/ml/model/config.yaml``. Here each
deployment is the same, with what one machine serving many models needs on top:

* the folder is the archive extracted under the local runtime's home, on the application's
  ``PYTHONPATH`` (its ``runtime_env``), so every model imports its own ``serve_app`` and ``trainlib``;
* the application keeps the archive's ``import_path`` and ``deployments``, under its own name and
  route (``/<name>``) instead of ``/``, so that many models (and two versions of one, during a
  blue/green update) serve side by side;
* ``code/requirements.txt`` is checked against this environment instead of installed into it: the
  project's ``.venv`` is the local image (``make setup`` built it).

Ray Serve takes one declarative config for all applications (``serve run`` does the same through
``ServeControllerClient.deploy_apps``): each change reads the config Serve runs now from its
controller, changes one application and deploys the whole again, so that every ``RayServe`` joined
to one Ray instance keeps the others' applications (none keeps a copy of them). A request reaches an
application as InvokeEndpoint reaches the container: its body POSTed to the application's route.

Ray starts in Ray Serve's high-throughput mode where it can, with the ports it reserved
(``ray_mode``).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from droptrain.local.engines import privates
from droptrain.local.engines.applications import (
    REPLICA_CPUS,
    ApplicationGoneError,
    ModelNotServableError,
    ServingError,
    cpus_wanted,
    for_this_machine,
    missing_requirements,
    read_app_config,
)
from droptrain.local.engines.ingress import Connections
from droptrain.local.engines.ray_mode import PortBlock, environment_while_starting, free_port, ray_environment

# Ray is imported where used, on purpose: a second to import, for code that may never start it.
log = logging.getLogger(__name__)

READY, FAILED = "RUNNING", ("DEPLOY_FAILED", "UNHEALTHY")


class RayServe:
    """Ray and Serve for this process; ``start`` joins a Ray instance already running in it (tests share one)."""

    # Serve's config is one per Ray instance, and this process's Ray connection is one: the
    # read-change-deploy of ``_apply`` by any ``RayServe`` of the process goes one at a time.
    _config_lock = threading.Lock()

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        num_cpus: int | None = None,
        ready_timeout: float = 300,
        sleep: Callable[[float], None] = time.sleep,
        haproxy_dir: Path | None = None,
    ):
        self.host = host
        self.haproxy_dir = haproxy_dir  # where the stack keeps HAProxy's wrapper and PIDs (engines/haproxy.py)
        self.port = port
        # Logical CPUs: every replica (several models, two versions in an update) must be schedulable.
        self.num_cpus = num_cpus or max(8, 4 * (os.cpu_count() or 1))
        self.ready_timeout = ready_timeout
        self.sleep = sleep
        # The routes of the applications this instance deployed: what ``call`` may reach.
        self._routes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._client = None
        self._owns_ray = False
        self._ports: PortBlock | None = None  # the replicas' ports, when this instance starts Ray
        self._own_dir: Path | None = None  # HAProxy's folder when no stack gave one: removed at stop

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> RayServe:
        privates.check("ray")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report home from a user's machine
        import ray

        added: dict[str, str] = {}
        if not ray.is_initialized():
            self._ports = PortBlock.reserve()
            ports = {key: value for key, value in self._ports.environment().items() if key not in os.environ}
            if self.haproxy_dir is None:
                self._own_dir = Path(tempfile.mkdtemp(prefix="droptrain-haproxy-"))
            added = {**ports, **ray_environment(os.environ, self.haproxy_dir or self._own_dir)}
        try:
            with environment_while_starting(added):
                if not ray.is_initialized():
                    ray.init(
                        num_cpus=self.num_cpus,
                        include_dashboard=False,
                        log_to_driver=False,
                        object_store_memory=128 * 1024 * 1024,
                        _node_ip_address=self.host,
                        namespace="serve",
                    )
                    self._owns_ray = True
                    self.port = self.port or free_port(self.host)
                # What `serve run` does: start Serve (or join it, keeping its proxy), then deploy_apps.
                self._client = privates.serve_start(
                    http_options={"host": self.host, "port": self.port or free_port(self.host)},
                    grpc_options={"port": self._ports.grpc_port} if self._ports is not None else None,
                )
        except BaseException:  # a start that failed holds nothing: the Ray it started, the ports it took
            if self._ports is not None:
                ray.shutdown()
                self._ports.release()
            self._ports, self._owns_ray = None, False
            self._remove_own_dir()
            raise
        proxy = self._client.http_config
        self.host, self.port = proxy.host, proxy.port
        self._http = Connections(self.host, self.port)
        return self

    def stop(self) -> None:
        """Take down what this instance deployed, and Ray itself if this instance started it."""
        import ray
        from ray import serve

        if self._client is None:
            return
        self._http.close()
        if self._owns_ray:
            serve.shutdown()
            ray.shutdown()
            if self._ports is not None:
                self._ports.release()
                self._ports = None
            self._remove_own_dir()
        else:
            for name in list(self._routes):
                self.delete(name)
        self._routes.clear()
        self._client = None

    def _remove_own_dir(self) -> None:
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- applications --------------------------------------------------------------------------

    def deploy(self, name: str, model_dir: Path, route_prefix: str | None = None) -> None:
        """Deploy the archive extracted in ``model_dir`` as application ``name`` and wait until it serves;
        raises ``ModelNotServableError`` (with the application removed again) when it cannot. Its HTTP
        route is ``/<name>`` unless ``route_prefix`` is given (``"/"``: the container's own)."""
        config = for_this_machine(read_app_config(model_dir))
        missing = missing_requirements(model_dir)
        if missing:
            raise ModelNotServableError(f"the model needs what this environment lacks: {'; '.join(missing)}")
        self._check_resources(config)
        runtime_env = dict(config.get("runtime_env") or {})
        env_vars = dict(runtime_env.get("env_vars") or {})
        env_vars["PYTHONPATH"] = str(model_dir.resolve())  # as the container's PYTHONPATH=/opt/ml/model
        runtime_env["env_vars"] = env_vars
        config.update(name=name, route_prefix=route_prefix or f"/{name}", runtime_env=runtime_env)
        self._wait_gone(name, config["route_prefix"])
        with self._lock:
            self._routes[name] = config["route_prefix"]
            self._apply(name, config)
        status, message = self._wait(name)
        if status == READY:
            status, message = self._wait_routed(config["route_prefix"])
        if status != READY:
            self.delete(name)
            raise ModelNotServableError(f"Ray Serve could not start the model: {message or status}")

    def delete(self, name: str) -> None:
        with self._lock:
            if self._routes.pop(name, None) is not None:
                self._apply(name, None)

    def names(self) -> list[str]:
        """The applications this instance deployed and has not deleted."""
        with self._lock:
            return list(self._routes)

    def call(
        self,
        name: str,
        body: bytes,
        content_type: str = "application/octet-stream",
        accept: str = "application/json",
        timeout: float = 60,
        attributes: str = "",
    ) -> tuple[int, dict[str, Any]]:
        """``(status, JSON body)`` from application ``name``: the body POSTed to its HTTP route, as SageMaker
        posts an InvokeEndpoint's body to the container's ``/invocations`` (its CustomAttributes in the
        ``X-Amzn-SageMaker-Custom-Attributes`` header)."""
        with self._lock:
            route = self._routes.get(name)
        if route is None:
            raise ApplicationGoneError(f"no application {name}")
        headers = {"Content-Type": content_type, "Accept": accept}
        if attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
        for fresh in (False, True):
            try:
                status, data = self._http.post(route, body, headers, timeout, fresh=fresh)
            except (OSError, http.client.HTTPException) as exc:
                raise ServingError(f"application {name} gave no answer: {exc}") from exc
            try:
                return status, json.loads(data)
            except ValueError:  # the application answers JSON, always: this is Ray's (no route, no replica)
                if name not in self.names():
                    raise ApplicationGoneError(f"application {name} was deleted") from None
            # Not the application's answer: HAProxy reloads at each change, and a kept connection stays
            # with the previous process and its old routes (a 404, or a 500/503 for an app redeployed).
            # Asked once more on a new connection.
        raise ServingError(f"application {name}'s route answered {status}: {data[:200]!r}")

    # -- internals -----------------------------------------------------------------------------

    def _apply(self, name: str, config: dict[str, Any] | None) -> None:
        """Deploy Serve's current config with application ``name`` set to ``config`` (``None``: removed)."""
        from ray.serve.schema import ServeDeploySchema

        with RayServe._config_lock:
            running = self._applications()
            # An application being deleted has no config any more: left out, its deletion goes on.
            apps = {
                app_name: details["deployed_app_config"]
                for app_name, details in running.items()
                if details.get("deployed_app_config") and app_name != name
            }
            if config is not None:
                apps[name] = config
            self._client.deploy_apps(ServeDeploySchema(applications=list(apps.values())))
        self._http.close()  # the idle connections belong to HAProxy's process before this change

    def _applications(self) -> dict[str, dict[str, Any]]:
        """Serve's applications, each with its ``status`` and ``message``, as the controller reports them:
        what ``serve.status()`` reads, without its parse into models, which pickles each deployment's
        request router again at every call (docs/performance.md)."""
        return self._client.get_serve_details().get("applications") or {}

    def _wait(self, name: str) -> tuple[str, str]:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            status = self._applications().get(name) or {}
            state = getattr(status.get("status"), "value", status.get("status"))  # an enum of str
            if state == READY or state in FAILED:
                return state, status.get("message") or ""
            if time.monotonic() > deadline:
                return "TIMEOUT", f"not running after {self.ready_timeout:.0f}s"
            self.sleep(0.2)

    def _wait_gone(self, name: str, route: str) -> None:
        """A name deployed again while Serve still deletes it would be READY at once (the old one) and
        then lose its route when the deletion reaches HAProxy: wait for the deletion to end first."""
        if name in self.names():
            return  # an update of an application this instance serves: not a deletion
        deadline = time.monotonic() + self.ready_timeout
        while name in self._applications() or route in self._routes_served():
            if time.monotonic() > deadline:
                raise ModelNotServableError(f"Ray Serve did not finish deleting {name} in {self.ready_timeout:.0f}s")
            self.sleep(0.1)

    def _wait_routed(self, route: str) -> tuple[str, str]:
        """Serve calls an application RUNNING once its replicas are, and HAProxy reloads with its route
        after that: on a busy machine a request in between was answered 404. The ingress's own
        ``/-/routes`` lists the routes it serves now (HAProxy and Ray's proxy alike)."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if route in self._routes_served():
                return READY, ""
            if time.monotonic() > deadline:
                return "TIMEOUT", f"the ingress did not route {route} after {self.ready_timeout:.0f}s"
            self.sleep(0.1)

    def _routes_served(self) -> dict[str, str]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("GET", "/-/routes")
            response = connection.getresponse()
            body = response.read()
            return json.loads(body) if response.status == 200 else {}
        except (OSError, http.client.HTTPException, ValueError):
            return {}
        finally:
            connection.close()

    def _check_resources(self, config: dict[str, Any]) -> None:
        import ray

        wanted = max(
            (float((d.get("ray_actor_options") or {}).get("num_gpus") or 0) for d in config.get("deployments") or []),
            default=0.0,
        )
        have = float(ray.cluster_resources().get("GPU", 0))
        if wanted > have:
            raise ModelNotServableError(
                f"the model's config.yaml asks for {wanted:g} GPU per replica; this machine has {have:g}"
            )
        cpus, free = cpus_wanted(config), float(ray.available_resources().get("CPU", 0))
        if cpus > free:  # refused now, rather than waiting for a replica Ray can never place
            total = float(ray.cluster_resources().get("CPU", 0))
            raise ModelNotServableError(
                f"the local Ray has {free:g} of its {total:g} CPUs free and this model asks for {cpus:g}: "
                f"about {int(total // REPLICA_CPUS)} models fit at once (each replica {REPLICA_CPUS:g} CPU, "
                "two versions of a project during an update); stop another project's endpoint first"
            )
