"""droptrain's Chalice app: thin handlers that parse the event and call one function in chalice_app.

``create_app(env, services)`` builds the app for a stage's environment: its EventBridge patterns name
the stage's bucket and endpoint, its routes ask for an API key where the stage does, and its handlers
close over the services they use. Chalice (deploy, package, Lambda) loads ``app.py``'s ``app``, built
from ``os.environ`` with AWS's adapters built at first use; the local runtime builds its own from its
own environment and passes its own services. It lives in the package, not in ``app.py``, so that an
installed droptrain has no top-level module named ``app``.
"""

from __future__ import annotations

from collections.abc import Mapping

from chalice import Chalice, Rate, Response

from chalice_app import config, console, http_errors, observability, openapi, patterns, pipeline, predict
from chalice_app.events import (
    EndpointStateChange,
    ModelPackageStateChange,
    ObjectCreated,
    ProcessingJobStateChange,
    TrainingJobStateChange,
    TransformJobStateChange,
    TuningJobStateChange,
)
from chalice_app.handlers import Handlers
from chalice_app.pipeline.idle import ScheduledTick
from chalice_app.pipeline.versions import EXPORTS


def _json(status: int, body: dict) -> Response:
    return Response(body=body, status_code=status, headers={"Content-Type": "application/json"})


def _asset(name: str, content_type: str) -> Response:
    return Response(
        body=console.asset(name), status_code=200, headers={"Content-Type": content_type, **console.HEADERS}
    )


def _file(result: tuple, content_type: str, headers: dict[str, str]) -> Response:
    """A file route's answer: its error, a redirect to a short-lived presigned S3 URL (AWS), or the bytes."""
    status, answer = result
    if status != 200:
        return _json(status, answer)
    kind, value = answer
    if kind == "redirect":
        return Response(body="", status_code=302, headers={"Location": value, "Cache-Control": "no-store"})
    return Response(body=value, status_code=200, headers={"Content-Type": content_type, **headers})


def create_app(env: Mapping[str, str], services: pipeline.Services | None = None) -> Chalice:
    """The app for ``env``; its handlers use ``services`` (None: AWS's, built from ``env`` at first use)."""
    app = Chalice(app_name="droptrain")
    app.api.binary_types.extend(["application/x-image", "application/octet-stream"])
    key_required = config.api_key_required(env)
    steps = Handlers(env, services)
    _middleware(app)
    _event_handlers(app, env, steps)
    _api_routes(app, key_required, steps)
    _review_routes(app, key_required, steps)
    _console_routes(app, key_required, steps)
    return app


def _middleware(app: Chalice) -> None:
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
        converted = http_errors.api_error(response.status_code, response.body)
        if converted is not None:
            response.body = converted
            response.headers["Content-Type"] = "application/json"
        return response


def _event_handlers(app: Chalice, env: Mapping[str, str], steps: Handlers) -> None:
    @app.on_cw_event(patterns.dataset_uploaded(env), name="on_dataset_uploaded")
    def on_dataset_uploaded(event):
        return steps.handle_event(pipeline.dataset_uploaded, ObjectCreated.parse, event.to_dict())

    @app.on_cw_event(patterns.processing_job_state_change(env), name="on_processing_job_state_change")
    def on_processing_job_state_change(event):
        return steps.handle_event(pipeline.audit_changed, ProcessingJobStateChange.parse, event.to_dict())

    @app.on_cw_event(patterns.tuning_job_state_change(env), name="on_tuning_job_state_change")
    def on_tuning_job_state_change(event):
        return steps.handle_event(pipeline.tuning_changed, TuningJobStateChange.parse, event.to_dict())

    @app.on_cw_event(patterns.training_job_state_change(env), name="on_training_job_state_change")
    def on_training_job_state_change(event):
        return steps.handle_event(pipeline.training_changed, TrainingJobStateChange.parse, event.to_dict())

    @app.on_cw_event(patterns.endpoint_state_change(env), name="on_endpoint_state_change")
    def on_endpoint_state_change(event):
        return steps.handle_event(pipeline.endpoint_changed, EndpointStateChange.parse, event.to_dict())

    @app.on_cw_event(patterns.model_package_state_change(env), name="on_model_package_state_change")
    def on_model_package_state_change(event):
        return steps.handle_event(pipeline.package_changed, ModelPackageStateChange.parse, event.to_dict())

    @app.on_cw_event(patterns.transform_job_state_change(env), name="on_transform_job_state_change")
    def on_transform_job_state_change(event):
        return steps.handle_event(pipeline.batch_changed, TransformJobStateChange.parse, event.to_dict())

    @app.on_cw_event(patterns.drift_check_state_change(env), name="on_drift_check_state_change")
    def on_drift_check_state_change(event):
        return steps.handle_event(pipeline.drift_changed, ProcessingJobStateChange.parse, event.to_dict())

    # Hourly, as the idle check: each serving project's captures since its last check, in a Processing job.
    @app.schedule(Rate(1, unit=Rate.HOURS), name="check_drift")
    def check_drift(event):
        return steps.handle_event(pipeline.scheduled_checks, ScheduledTick.parse, event.to_dict())

    # Hourly: endpoints nobody invoked for IDLE_STOP_HOURS are stopped (off when it is 0).
    @app.schedule(Rate(1, unit=Rate.HOURS), name="stop_idle_endpoints")
    def stop_idle_endpoints(event):
        return steps.handle_event(pipeline.stop_idle, ScheduledTick.parse, event.to_dict())


def _api_routes(app: Chalice, key_required: bool, steps: Handlers) -> None:
    def _predict(project):
        request = app.current_request
        return _json(
            *steps.predict(
                project,
                request.raw_body,
                request.headers.get("content-type"),
                request.query_params or {},
            )
        )

    @app.route("/predict", methods=["POST"], content_types=["*/*"], api_key_required=key_required)
    def predict():
        return _predict(None)

    @app.route("/predict/{project}", methods=["POST"], content_types=["*/*"], api_key_required=key_required)
    def predict_project(project):
        return _predict(project)

    @app.route("/projects", methods=["GET"], api_key_required=key_required)
    def projects():
        return _json(*steps.projects())

    @app.route("/projects/{project}", methods=["GET"], api_key_required=key_required)
    def project(project):
        return _json(*steps.project(project))

    # Approving a version and deploying it changes what every client gets: always behind the API key
    # where the stage has one, even if predictions are open.
    @app.route("/projects/{project}/versions/{run_id}/deploy", methods=["POST"], api_key_required=key_required)
    def deploy_version(project, run_id):
        run = None if run_id == "previous" else run_id
        return _json(*steps.deploy_version(project, run, app.current_request.headers))

    @app.route("/projects/{project}/batch", methods=["POST"], api_key_required=key_required)
    def batch(project):
        request = app.current_request
        return _json(*steps.batch(project, request.raw_body, request.headers))

    @app.route("/projects/{project}/drift-check", methods=["POST"], api_key_required=key_required)
    def drift_check(project):
        return _json(*steps.drift_check(project, app.current_request.headers))

    @app.route("/projects/{project}/drift", methods=["GET"], api_key_required=key_required)
    def drift_history(project):
        return _json(*steps.drift_history(project))

    @app.route("/status", methods=["GET"], api_key_required=key_required)
    def status():
        return _json(*steps.status())


def _review_routes(app: Chalice, key_required: bool, steps: Handlers) -> None:
    """The review queue, and retrain: what a person does after deployment (docs/operations.md)."""

    @app.route("/projects/{project}/review", methods=["GET"], api_key_required=key_required)
    def review_queue(project):
        return _json(*steps.review_queue(project))

    @app.route("/projects/{project}/review/{item_id}", methods=["POST"], api_key_required=key_required)
    def review_decide(project, item_id):
        request = app.current_request
        return _json(*steps.review_decide(project, item_id, request.raw_body, request.headers))

    @app.route("/projects/{project}/retrain", methods=["POST"], api_key_required=key_required)
    def retrain(project):
        request = app.current_request
        return _json(*steps.retrain(project, request.raw_body, request.headers))


def _console_routes(app: Chalice, key_required: bool, steps: Handlers) -> None:
    # The console: a page and its two files, served by the app itself (no secrets in them: the API
    # key, where the stage needs one, is typed by the user), and the JSON routes it reads.
    @app.route("/", methods=["GET"])
    def console_page():
        return _asset("index.html", "text/html; charset=utf-8")

    @app.route("/console.js", methods=["GET"])
    def console_script():
        return _asset("console.js", "text/javascript; charset=utf-8")

    @app.route("/console.css", methods=["GET"])
    def console_style():
        return _asset("console.css", "text/css; charset=utf-8")

    @app.route("/openapi.json", methods=["GET"])
    def openapi_document():
        return Response(
            body=openapi.document(), status_code=200, headers={"Content-Type": "application/json", **console.HEADERS}
        )

    @app.route("/projects/{project}/versions/{run_id}/export/{fmt}", methods=["GET"], api_key_required=key_required)
    def version_export(project, run_id, fmt):
        attachment = {"Content-Disposition": f'attachment; filename="{EXPORTS.get(fmt, "model")}"'}
        return _file(steps.export(project, run_id, fmt), "application/octet-stream", attachment)

    @app.route("/projects/{project}/review/{item_id}/image", methods=["GET"], api_key_required=key_required)
    def review_image(project, item_id):
        # The bytes themselves (JPEG and PNG are binary types: API Gateway hands them out to an Accept that
        # names them), so that the console shows them from its own origin.
        status, answer = steps.review_image(project, item_id)
        if status != 200:
            return _json(status, answer)
        kind = predict.sniff(answer) or "application/octet-stream"
        return Response(body=answer, status_code=200, headers={"Content-Type": kind, "Cache-Control": "private"})

    @app.route("/runs", methods=["GET"], api_key_required=key_required)
    def runs():
        return _json(*steps.runs())

    @app.route("/runs/{run_id}", methods=["GET"], api_key_required=key_required)
    def run(run_id):
        return _json(*steps.run(run_id))

    @app.route("/runs/{run_id}/report", methods=["GET"], api_key_required=key_required)
    def run_report(run_id):
        status, answer = steps.run_report(run_id)
        if status != 200:
            return _json(status, answer)
        kind, value = answer
        if kind == "redirect":  # a short-lived presigned URL of the report in S3
            return Response(body="", status_code=302, headers={"Location": value, "Cache-Control": "no-store"})
        return Response(
            body=value.decode("utf-8", "replace"),
            status_code=200,
            headers={"Content-Type": "text/html; charset=utf-8", **console.REPORT_HEADERS},
        )
