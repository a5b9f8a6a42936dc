"""What ``app.py``'s thin handlers call: parse, get the services, run one step, apply the error policy.

* A malformed event is logged (one line naming the field) and dropped: retrying cannot fix it.
* Missing or malformed configuration is logged (one line naming the variable) and reported as
  ``pipeline.failed`` when the topic is known.
* An AWS failure is reported as ``pipeline.failed`` once per event; a retryable one is re-raised
  so that Lambda retries the delivery, a permanent one is not.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, TypeVar

from chalice_app import bootstrap, names, observability, predict as predict_module, runs as runs_module
from chalice_app.adapters.errors import AdapterError
from chalice_app.config import ConfigError
from chalice_app.events import EventError
from chalice_app.names import InvalidNameError
from chalice_app.notifications import Notification
from chalice_app.pipeline import Services, idle, versions

E = TypeVar("E")
_services: Services | None = None
# Services installed over the environment's, newest last (a local runtime's, a test's).
_installed: list[Services] = []


def services() -> Services:
    global _services
    if _installed:
        return _installed[-1]
    if _services is None:
        _services = bootstrap.build(os.environ)
    return _services


def use_services(svc: Services | None, replacing: Services | None = None) -> None:
    """Install the services to use (tests, the local runtime); ``None`` forgets every installed one
    and rebuilds from the environment. With ``replacing``, those are removed (a runtime that stops
    removes its own) and ``svc``, if any, installed: whatever was installed before them is back."""
    global _services
    if replacing is not None:
        _installed[:] = [installed for installed in _installed if installed is not replacing]
        if svc is not None:
            _installed.append(svc)
        return
    if svc is None:
        _installed.clear()
        _services = None
    else:
        _installed.append(svc)


def _report_config_error(exc: ConfigError, step: str) -> None:
    observability.logger().error(str(exc), extra={"variable": exc.variable, "step": step})
    notifier = bootstrap.config_error_notifier(os.environ)
    if notifier is not None:
        notifier.send(Notification(
            "pipeline.failed", None, None, "ConfigurationError", f"{step}: {exc}",
            detail={"step": step, "variable": exc.variable, "reason": str(exc)},
        ))


def handle_event(step: Callable[[Services, E], str], parse: Callable[[Mapping[str, Any]], E], raw: Mapping[str, Any]) -> str:
    name = step.__name__
    log = observability.logger()
    try:
        event = parse(raw)
    except EventError as exc:
        log.error(f"malformed event dropped: {exc}", extra={"step": name, "event_id": raw.get("id")})
        observability.count("MalformedEvents")
        return f"malformed: {exc}"
    try:
        svc = services()
    except ConfigError as exc:
        _report_config_error(exc, name)
        observability.count("ConfigurationErrors")
        return f"configuration error: {exc}"
    try:
        outcome = step(svc, event)
    except (AdapterError, InvalidNameError) as exc:
        retryable = getattr(exc, "retryable", False)
        log.error(f"{name} failed: {exc}", extra={"retryable": retryable, "event_id": raw.get("id")})
        observability.count("StepFailures")
        event_id = str(raw.get("id") or "")
        svc.notifier.send(Notification(
            "pipeline.failed", None, None, "Failed", f"{name}: {exc}",
            detail={"step": name, "reason": str(exc), "event_id": event_id, "retrying": retryable},
            dedupe=f"_events/{event_id}" if event_id else None,
        ))
        if retryable:
            raise
        return f"failed: {exc}"
    log.info(f"{name}: {outcome}", extra={"step": name})
    return outcome


def error_body(code: str, message: str) -> dict[str, Any]:
    """The REST API's one error shape."""
    return {"error": {"code": code, "message": message}}


def api_error(status: int, body: Any) -> dict[str, Any] | None:
    """Chalice's own error answers (``{"Code", "Message"}``: a method the route lacks, an unhandled
    exception) in the API's shape; ``None`` for anything that is already a handler's answer."""
    if status < 400 or not isinstance(body, dict) or set(body) != {"Code", "Message"}:
        return None
    code = re.sub(r"(?<!^)(?=[A-Z])", "_", str(body["Code"]).removesuffix("Error")).lower() or "error"
    message = "the server failed; see its logs" if status >= 500 else str(body["Message"])
    return error_body("internal_error" if status >= 500 else code, message)


def _misconfigured(exc: ConfigError) -> tuple[int, dict[str, Any]]:
    observability.logger().error(str(exc), extra={"variable": exc.variable})
    return 503, error_body("misconfigured", "the service is not configured; see its logs")


def _unavailable(exc: AdapterError) -> tuple[int, dict[str, Any]]:
    observability.logger().error(f"reading projects failed: {exc}")
    return 503, error_body("unavailable", f"could not read the projects ({exc.code or 'error'}); try again shortly")


def predict(project: str | None, body: bytes | None, content_type: str | None, top_k: str | None) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` for ``POST /predict/{project}`` (``project`` None: ``POST /predict``)."""
    name = ""
    try:
        svc = services()
        # The request is checked before any AWS call: bad input costs nothing.
        predict_module.check_request(body, content_type, top_k, svc.config.max_body_bytes)
        name = versions.resolve_project(svc, project)
        result = predict_module.predict(svc.runtime, svc.config, svc.config.endpoint(name), body, content_type, top_k, svc.sleep)
    except ConfigError as exc:
        return _misconfigured(exc)
    except predict_module.PredictError as exc:
        observability.count(f"Predict{exc.status}")
        if exc.code == "no_model" and _woke(svc, name):
            return 503, error_body("model_sleeping", f"project {name}'s endpoint was stopped for idleness and is starting "
                                                     "again: try again in a few minutes")
        return exc.status, exc.body()
    except versions.VersionError as exc:
        observability.count(f"Predict{exc.status}")
        return exc.status, error_body(exc.code, str(exc))
    except AdapterError as exc:
        return _unavailable(exc)
    observability.count("Predictions")
    return 200, result


def _woke(svc: Services, project: str) -> bool:
    """Whether the project's endpoint had been stopped for idleness, and is now starting again."""
    try:
        return idle.wake(svc, project)
    except AdapterError as exc:
        observability.logger().error(f"waking {project}'s endpoint failed: {exc}")
        return False


def projects() -> tuple[int, dict[str, Any]]:
    """``GET /projects``."""
    return _versions_call(lambda svc: {"projects": versions.projects(svc)})


def project(name: str) -> tuple[int, dict[str, Any]]:
    """``GET /projects/{project}``: its versions, oldest first, and which one serves."""
    def read(svc: Services) -> dict[str, Any]:
        slug = names.project_of(name)
        found = versions.project_versions(svc, slug)
        return {"project": slug, "endpoint": svc.config.endpoint(slug), "versions": found,
                "serving": next((v["run_id"] for v in found if v["serving"]), None)}
    return _versions_call(read)


def deploy_version(name: str, run: str | None) -> tuple[int, dict[str, Any]]:
    """``POST /projects/{project}/versions/{run_id}/deploy`` (and ``droptrain rollback``)."""
    return _versions_call(lambda svc: versions.deploy_version(svc, name, run), status=202)


def _versions_call(call: Callable[[Services], dict[str, Any]], status: int = 200) -> tuple[int, dict[str, Any]]:
    try:
        return status, call(services())
    except ConfigError as exc:
        return _misconfigured(exc)
    except versions.VersionError as exc:
        return exc.status, error_body(exc.code, str(exc))
    except InvalidNameError as exc:
        return 400, error_body("bad_request", str(exc))
    except AdapterError as exc:
        return _unavailable(exc)


def status() -> tuple[int, dict[str, Any]]:
    try:
        svc = services()
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


_RUN_ID = re.compile(r"^[a-z0-9](-?[a-z0-9]){0,40}$")


def _run_call(call: Callable[[Services], Any], run: str | None = None) -> tuple[int, Any]:
    if run is not None and not _RUN_ID.match(run):
        return 404, error_body("unknown_run", f"there is no run {run[:80]!r}")
    try:
        return 200, call(services())
    except ConfigError as exc:
        return _misconfigured(exc)
    except runs_module.RunNotFoundError as exc:
        return 404, error_body(exc.code, str(exc))
    except AdapterError as exc:
        return _unavailable(exc)


def runs() -> tuple[int, Any]:
    """``GET /runs``."""
    return _run_call(lambda svc: {"runs": runs_module.list_runs(svc)})


def run(run_id: str) -> tuple[int, Any]:
    """``GET /runs/{run_id}``."""
    return _run_call(lambda svc: runs_module.as_json(runs_module.run_detail(svc, run_id)), run_id)


def run_report(run_id: str) -> tuple[int, Any]:
    """``GET /runs/{run_id}/report``: ``(200, ("redirect", url) | ("html", bytes))`` or an error."""
    return _run_call(lambda svc: runs_module.report(svc, run_id), run_id)
