"""droptrain's Chalice app: thin handlers that parse the event and call one function in chalice_app."""

import os

from chalice import Chalice, Response

from chalice_app import handlers, observability, patterns, pipeline
from chalice_app.events import EndpointStateChange, ObjectCreated, TrainingJobStateChange, TuningJobStateChange

app = Chalice(app_name="droptrain")
app.api.binary_types.extend(["application/x-image"])
# Patterns are computed when Chalice loads the app (deploy and package load it with the stage's
# environment), so they can name the stage's bucket and endpoint.
_env = dict(os.environ)


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


@app.on_cw_event(patterns.dataset_uploaded(_env), name="on_dataset_uploaded")
def on_dataset_uploaded(event):
    return handlers.handle_event(pipeline.dataset_uploaded, ObjectCreated.parse, event.to_dict())


@app.on_cw_event(patterns.tuning_job_state_change(_env), name="on_tuning_job_state_change")
def on_tuning_job_state_change(event):
    return handlers.handle_event(pipeline.tuning_changed, TuningJobStateChange.parse, event.to_dict())


@app.on_cw_event(patterns.training_job_state_change(_env), name="on_training_job_state_change")
def on_training_job_state_change(event):
    return handlers.handle_event(pipeline.training_changed, TrainingJobStateChange.parse, event.to_dict())


@app.on_cw_event(patterns.endpoint_state_change(_env), name="on_endpoint_state_change")
def on_endpoint_state_change(event):
    return handlers.handle_event(pipeline.endpoint_changed, EndpointStateChange.parse, event.to_dict())


@app.route("/predict", methods=["POST"], content_types=["*/*"],
           api_key_required=_env.get("API_KEY_REQUIRED", "false").lower() == "true")
def predict():
    request = app.current_request
    status, body = handlers.predict(request.raw_body, request.headers.get("content-type"),
                                    (request.query_params or {}).get("top_k"))
    return Response(body=body, status_code=status, headers={"Content-Type": "application/json"})


@app.route("/status", methods=["GET"], api_key_required=_env.get("API_KEY_REQUIRED", "false").lower() == "true")
def status():
    code, body = handlers.status()
    return Response(body=body, status_code=code, headers={"Content-Type": "application/json"})
