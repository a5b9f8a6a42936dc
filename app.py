"""droptrain's Chalice app: thin handlers that parse the event and call one function in chalice_app.

``create_app(env)`` builds the app for a stage's environment: its EventBridge patterns name the
stage's bucket and endpoint, and its routes ask for an API key where the stage does. Chalice (deploy,
package, Lambda) loads the module-level ``app``, built from ``os.environ``; the local runtime builds
its own from its own environment.
"""

from __future__ import annotations

import os
from typing import Mapping

from chalice import Chalice, Response

from chalice_app import config, handlers, observability, patterns, pipeline
from chalice_app.events import EndpointStateChange, ObjectCreated, TrainingJobStateChange, TuningJobStateChange


def _json(status: int, body: dict) -> Response:
    return Response(body=body, status_code=status, headers={"Content-Type": "application/json"})


def create_app(env: Mapping[str, str]) -> Chalice:
    app = Chalice(app_name="droptrain")
    app.api.binary_types.extend(["application/x-image"])
    key_required = config.api_key_required(env)

    @app.middleware("all")
    def _observe(event, get_response):
        log = observability.logger()
        request_context = getattr(event, "context", None)
        correlation = (request_context or {}).get("requestId") if isinstance(request_context, dict) else None
        log.set_correlation_id(correlation or getattr(event, "event_id", None))
        try:
            with observability.tracer().provider.in_subsegment("## droptrain handler"):
                return get_response(event)
        finally:
            observability.flush()

    @app.middleware("http")
    def _one_error_shape(event, get_response):
        response = get_response(event)
        converted = handlers.api_error(response.status_code, response.body)
        if converted is not None:
            response.body = converted
            response.headers["Content-Type"] = "application/json"
        return response

    @app.on_cw_event(patterns.dataset_uploaded(env), name="on_dataset_uploaded")
    def on_dataset_uploaded(event):
        return handlers.handle_event(pipeline.dataset_uploaded, ObjectCreated.parse, event.to_dict())

    @app.on_cw_event(patterns.tuning_job_state_change(env), name="on_tuning_job_state_change")
    def on_tuning_job_state_change(event):
        return handlers.handle_event(pipeline.tuning_changed, TuningJobStateChange.parse, event.to_dict())

    @app.on_cw_event(patterns.training_job_state_change(env), name="on_training_job_state_change")
    def on_training_job_state_change(event):
        return handlers.handle_event(pipeline.training_changed, TrainingJobStateChange.parse, event.to_dict())

    @app.on_cw_event(patterns.endpoint_state_change(env), name="on_endpoint_state_change")
    def on_endpoint_state_change(event):
        return handlers.handle_event(pipeline.endpoint_changed, EndpointStateChange.parse, event.to_dict())

    @app.route("/predict", methods=["POST"], content_types=["*/*"], api_key_required=key_required)
    def predict():
        request = app.current_request
        return _json(*handlers.predict(request.raw_body, request.headers.get("content-type"),
                                       (request.query_params or {}).get("top_k")))

    @app.route("/status", methods=["GET"], api_key_required=key_required)
    def status():
        return _json(*handlers.status())

    return app


app = create_app(os.environ)
