"""What ``app.py``'s thin handlers call: parse, take the app's services, run one step, apply the error policy.

* A malformed event is logged (one line naming the field) and dropped: retrying cannot fix it.
* Missing or malformed configuration is logged (one line naming the variable) and reported as
  ``pipeline.failed`` when the topic is known.
* An AWS failure is reported as ``pipeline.failed`` once per event; a retryable one is re-raised
  so that Lambda retries the delivery, a permanent one is not.

Each app owns one ``Handlers`` (``app.create_app(env, services)``): two apps in one process (two local
stacks, a test beside them) never see each other's services.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from chalice_app import bootstrap, capture, names, observability
from chalice_app import predict as predict_module
from chalice_app import runs as runs_module
from chalice_app.adapters.errors import AdapterError
from chalice_app.config import ConfigError
from chalice_app.events import EventError
from chalice_app.http_errors import cross_site_refusal, error_body
from chalice_app.names import InvalidNameError
from chalice_app.notifications import Notification
from chalice_app.pipeline import Services, idle, versions
from chalice_app.pipeline import batch as batch_module
from chalice_app.pipeline import drift as drift_module
from chalice_app.pipeline import retrain as retrain_module
from chalice_app.pipeline import review as review_module

E = TypeVar("E")


class Handlers:
    """The steps and routes of one app, over its services: given (the local runtime, tests), or built
    from ``env`` at first use (Lambda: boto3's clients cost nothing until an event needs them, and a
    configuration error is reported per event rather than failing the import)."""

    def __init__(self, env: Mapping[str, str], services: Services | None = None):
        self._env = env
        self._services = services
        self._lock = threading.Lock()

    def services(self) -> Services:
        with self._lock:
            if self._services is None:
                self._services = bootstrap.build(self._env)
            return self._services

    def handle_event(
        self, step: Callable[[Services, E], str], parse: Callable[[Mapping[str, Any]], E], raw: Mapping[str, Any]
    ) -> str:
        name = step.__name__
        log = observability.logger()
        try:
            event = parse(raw)
        except EventError as exc:
            log.error(f"malformed event dropped: {exc}", extra={"step": name, "event_id": raw.get("id")})
            observability.count("MalformedEvents")
            return f"malformed: {exc}"
        try:
            svc = self.services()
        except ConfigError as exc:
            _report_config_error(self._env, exc, name)
            observability.count("ConfigurationErrors")
            return f"configuration error: {exc}"
        try:
            outcome = step(svc, event)
        except (AdapterError, InvalidNameError) as exc:
            _report_step_failure(svc, name, exc, str(raw.get("id") or ""))
            if getattr(exc, "retryable", False):
                raise
            return f"failed: {exc}"
        log.info(f"{name}: {outcome}", extra={"step": name})
        return outcome

    def predict(
        self, project: str | None, body: bytes | None, content_type: str | None, query: Mapping[str, str] | None
    ) -> tuple[int, dict[str, Any]]:
        """``(status, JSON body)`` for ``POST /predict/{project}`` (``project`` None: ``POST /predict``)."""
        name = ""
        try:
            svc = self.services()
            # The request is checked before any AWS call: bad input costs nothing.
            predict_module.check_request(body, content_type, query, svc.config.max_body_bytes)
            name = versions.resolve_project(svc, project)
            result = predict_module.predict(
                svc.runtime, svc.config, svc.config.endpoint(name), body, content_type, query, svc.sleep
            )
        except ConfigError as exc:
            return _misconfigured(exc)
        except predict_module.PredictError as exc:
            observability.count(f"Predict{exc.status}")
            if exc.code == "no_model" and _woke(svc, name):
                return 503, error_body(
                    "model_sleeping",
                    f"project {name}'s endpoint was stopped for idleness and "
                    "is starting again: try again in a few minutes",
                )
            return exc.status, exc.body()
        except versions.VersionError as exc:
            observability.count(f"Predict{exc.status}")
            return exc.status, error_body(exc.code, str(exc))
        except AdapterError as exc:
            return _unavailable(exc)
        observability.count("Predictions")
        self._keep_doubtful(svc, name, body or b"", content_type or "", result)
        return 200, result

    def _keep_doubtful(
        self, svc: Services, project: str, body: bytes, content_type: str, result: dict[str, Any]
    ) -> None:
        try:  # best effort: the answer is the client's whether or not it could be kept
            if capture.keep_doubtful(svc.s3, svc.config, project, body, content_type, result):
                observability.count("DoubtfulKept")
        except AdapterError as exc:
            observability.logger().error(f"keeping a doubtful answer for review failed: {exc}")

    def projects(self) -> tuple[int, dict[str, Any]]:
        """``GET /projects``."""
        return self._versions_call(lambda svc: {"projects": versions.projects(svc)})

    def project(self, name: str) -> tuple[int, dict[str, Any]]:
        """``GET /projects/{project}``: its versions, oldest first, and which one serves."""

        def read(svc: Services) -> dict[str, Any]:
            slug = names.project_of(name)
            found = versions.project_versions(svc, slug)
            return {
                "project": slug,
                "endpoint": svc.config.endpoint(slug),
                "versions": found,
                "serving": next((v["run_id"] for v in found if v["serving"]), None),
            }

        return self._versions_call(read)

    def deploy_version(self, name: str, run: str | None, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """``POST /projects/{project}/versions/{run_id}/deploy`` (and ``droptrain rollback``)."""
        refused = cross_site_refusal(headers)
        if refused:
            return refused
        return self._versions_call(lambda svc: versions.deploy_version(svc, name, run), status=202)

    def batch(self, name: str, body: bytes | None, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """``POST /projects/{project}/batch``: 202 with the job, or the request's error."""
        refused = cross_site_refusal(headers)
        if refused:
            return refused
        try:
            request = json.loads(body or b"")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return 400, error_body("bad_request", 'send a JSON object: {"input_prefix": "batch/<name>/"}')
        return self._versions_call(lambda svc: batch_module.start(svc, name, request), status=202)

    def review_queue(self, name: str) -> tuple[int, dict[str, Any]]:
        """``GET /projects/{project}/review``: the doubtful answers not yet decided, newest first."""
        return self._versions_call(lambda svc: review_module.queue(svc, name))

    def review_image(self, name: str, item_id: str) -> tuple[int, Any]:
        """``GET /projects/{project}/review/{id}/image``: ``(200, the image's bytes)`` or an error."""
        return self._versions_call(lambda svc: review_module.image(svc, name, item_id))

    def review_decide(
        self, name: str, item_id: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """``POST /projects/{project}/review/{id}``: a label or a discard."""
        refused = cross_site_refusal(headers)
        if refused:
            return refused
        request = _json_object(body)
        return self._versions_call(lambda svc: review_module.decide(svc, name, item_id, request))

    def retrain(self, name: str, body: bytes | None, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """``POST /projects/{project}/retrain``: 202 with the warm-started run."""
        refused = cross_site_refusal(headers)
        if refused:
            return refused
        request = _json_object(body) if (body or b"").strip() else {}
        return self._versions_call(lambda svc: retrain_module.start(svc, name, request), status=202)

    def drift_check(self, name: str, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """``POST /projects/{project}/drift-check``: 202 with the job started (or why none was)."""
        refused = cross_site_refusal(headers)
        if refused:
            return refused
        return self._versions_call(lambda svc: drift_module.start_check(svc, name), status=202)

    def drift_history(self, name: str) -> tuple[int, dict[str, Any]]:
        """``GET /projects/{project}/drift``: the checks' verdicts, newest first."""
        return self._versions_call(lambda svc: {"checks": drift_module.history(svc, name)})

    def export(self, name: str, run: str, fmt: str) -> tuple[int, Any]:
        """``GET /projects/{project}/versions/{run_id}/export/{format}``: ``(200, ("redirect", url) |
        ("file", bytes))`` or an error."""
        if not _RUN_ID.match(run):
            return 404, error_body("unknown_version", f"there is no run {run[:80]!r}")
        return self._versions_call(lambda svc: versions.export_file(svc, name, run, fmt))

    def _versions_call(self, call: Callable[[Services], Any], status: int = 200) -> tuple[int, Any]:
        try:
            return status, call(self.services())
        except ConfigError as exc:
            return _misconfigured(exc)
        except versions.VersionError as exc:
            return exc.status, error_body(exc.code, str(exc))
        except InvalidNameError as exc:
            return 400, error_body("bad_request", str(exc))
        except AdapterError as exc:
            return _unavailable(exc)

    def status(self) -> tuple[int, dict[str, Any]]:
        try:
            svc = self.services()
            problems = svc.problems()
            if problems:
                return 503, error_body("unhealthy", "; ".join(problems))
            return 200, predict_module.status(svc.sagemaker, svc.config, versions.project_names(svc))
        except ConfigError as exc:
            return _misconfigured(exc)
        except AdapterError as exc:
            return _unavailable(exc)
        except predict_module.PredictError as exc:
            return exc.status, exc.body()

    def _run_call(self, call: Callable[[Services], Any], run: str | None = None) -> tuple[int, Any]:
        if run is not None and not _RUN_ID.match(run):
            return 404, error_body("unknown_run", f"there is no run {run[:80]!r}")
        try:
            return 200, call(self.services())
        except ConfigError as exc:
            return _misconfigured(exc)
        except runs_module.RunNotFoundError as exc:
            return 404, error_body(exc.code, str(exc))
        except AdapterError as exc:
            return _unavailable(exc)

    def runs(self) -> tuple[int, Any]:
        """``GET /runs``."""
        return self._run_call(lambda svc: {"runs": runs_module.list_runs(svc)})

    def run(self, run_id: str) -> tuple[int, Any]:
        """``GET /runs/{run_id}``."""
        return self._run_call(lambda svc: runs_module.as_json(runs_module.run_detail(svc, run_id)), run_id)

    def run_report(self, run_id: str) -> tuple[int, Any]:
        """``GET /runs/{run_id}/report``: ``(200, ("redirect", url) | ("html", bytes))`` or an error."""
        return self._run_call(lambda svc: runs_module.report(svc, run_id), run_id)


_RUN_ID = re.compile(r"^[a-z0-9](-?[a-z0-9]){0,40}$")


def _json_object(body: bytes | None) -> Any:
    """The body's JSON (the step refuses what is not an object), ``None`` when it is not JSON."""
    try:
        return json.loads(body or b"")
    except ValueError:
        return None


def _report_config_error(env: Mapping[str, str], exc: ConfigError, step: str) -> None:
    observability.logger().error(str(exc), extra={"variable": exc.variable, "step": step})
    notifier = bootstrap.config_error_notifier(env)
    if notifier is not None:
        notifier.send(
            Notification(
                "pipeline.failed",
                None,
                None,
                "ConfigurationError",
                f"{step}: {exc}",
                detail={"step": step, "variable": exc.variable, "reason": str(exc)},
            )
        )


def _report_step_failure(svc: Services, step: str, exc: Exception, event_id: str) -> None:
    retryable = getattr(exc, "retryable", False)
    observability.logger().error(f"{step} failed: {exc}", extra={"retryable": retryable, "event_id": event_id})
    observability.count("StepFailures")
    svc.notifier.send(
        Notification(
            "pipeline.failed",
            None,
            None,
            "Failed",
            f"{step}: {exc}",
            detail={"step": step, "reason": str(exc), "event_id": event_id, "retrying": retryable},
            dedupe=f"_events/{event_id}" if event_id else None,
        )
    )


def _misconfigured(exc: ConfigError) -> tuple[int, dict[str, Any]]:
    observability.logger().error(str(exc), extra={"variable": exc.variable})
    return 503, error_body("misconfigured", "the service is not configured; see its logs")


def _unavailable(exc: AdapterError) -> tuple[int, dict[str, Any]]:
    observability.logger().error(f"reading projects failed: {exc}")
    return 503, error_body("unavailable", f"could not read the projects ({exc.code or 'error'}); try again shortly")


def _woke(svc: Services, project: str) -> bool:
    """Whether the project's endpoint had been stopped for idleness, and is now starting again."""
    try:
        return idle.wake(svc, project)
    except AdapterError as exc:
        observability.logger().error(f"waking {project}'s endpoint failed: {exc}")
        return False
