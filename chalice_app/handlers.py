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

from chalice_app import bootstrap, observability, predict as predict_module
from chalice_app.adapters.errors import AdapterError
from chalice_app.config import ConfigError
from chalice_app.events import EventError
from chalice_app.names import InvalidNameError
from chalice_app.notifications import Notification
from chalice_app.pipeline import Services

E = TypeVar("E")
_services: Services | None = None


def services() -> Services:
    global _services
    if _services is None:
        _services = bootstrap.build(os.environ)
    return _services


def use_services(svc: Services | None, replacing: Services | None = None) -> None:
    """Install the services to use (tests, the local runtime); ``None`` rebuilds from the environment.
    With ``replacing``, only if those are the ones installed (a runtime that stops removes its own)."""
    global _services
    if replacing is None or _services is replacing:
        _services = svc


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


def predict(body: bytes | None, content_type: str | None, top_k: str | None) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` for ``POST /predict``."""
    try:
        svc = services()
        result = predict_module.predict(svc.runtime, svc.config, body, content_type, top_k, svc.sleep)
    except ConfigError as exc:
        observability.logger().error(str(exc), extra={"variable": exc.variable})
        return 503, error_body("misconfigured", "the service is not configured; see its logs")
    except predict_module.PredictError as exc:
        observability.count(f"Predict{exc.status}")
        return exc.status, exc.body()
    observability.count("Predictions")
    return 200, result


def status() -> tuple[int, dict[str, Any]]:
    try:
        svc = services()
        problems = svc.problems()
        if problems:
            return 503, error_body("unhealthy", "; ".join(problems))
        return 200, predict_module.status(svc.sagemaker, svc.config)
    except ConfigError as exc:
        observability.logger().error(str(exc), extra={"variable": exc.variable})
        return 503, error_body("misconfigured", "the service is not configured; see its logs")
    except predict_module.PredictError as exc:
        return exc.status, exc.body()
