"""The REST API described as OpenAPI 3.0, served at ``GET /openapi.json`` (the console reads its error
words from it). Tests check that it is a valid document, that it lists exactly the routes the app
defines, and that every error code the code can answer is in ``ERROR_CODES``."""

from __future__ import annotations

from typing import Any

# Every {"error": {"code"}} the API (the handlers, Chalice's own answers, API Gateway's gateway
# responses, the local server) can answer, with what it means for the caller.
ERROR_CODES = {
    "bad_request": "the request is malformed (a header, a parameter, a name)",
    "empty_body": "the request body is empty: send the image bytes",
    "invalid_image": "the body is not a JPEG or PNG image the model can decode",
    "invalid_top_k": "top_k must be an integer from 1 to 20",
    "invalid_min_confidence": "min_confidence must be a number from 0 to 1",
    "invalid_explain": "explain must be true or false",
    "explanation_unavailable": "the deployed model was trained before explanations: train it again",
    "unknown_format": "an export's format is onnx or torchscript",
    "export_unavailable": "the version has no export in that format (left out by its parity check, or older)",
    "image_too_large": "the image has too many pixels, or an extreme shape",
    "payload_too_large": "the body is over the limit (MAX_BODY_BYTES)",
    "unsupported_media_type": "send the Content-Type the route takes: image/jpeg or image/png to predict, "
    "application/json to deploy",
    "foreign_origin": "a page of another site (its Origin) cannot change versions",
    "bad_host": "the Host header does not name the local server (DNS rebinding is refused)",
    "uri_too_long": "the request line is over 64 KiB",
    "headers_too_large": "too many headers, or one over 64 KiB",
    "too_many_connections": "the local API is at its connection limit: retry",
    "length_required": "send the body with a Content-Length header",
    "project_required": "there are several projects: name one in the path",
    "unknown_project": "no project by that name",
    "unknown_version": "the project has no version from that run",
    "unknown_run": "no run by that id",
    "no_earlier_version": "no approved version before the serving one to roll back to",
    "no_model": "no model is deployed for the project yet",
    "model_sleeping": "the endpoint was stopped for idleness and is starting again: retry in a few minutes",
    "endpoint_busy": "the endpoint is busy or not ready: retry shortly",
    "endpoint_error": "the endpoint failed",
    "unavailable": "AWS could not be read: retry shortly",
    "misconfigured": "the stage's configuration is broken: see its logs",
    "unhealthy": "part of the local stack has stopped: see the message",
    "internal_error": "the server failed: see its logs",
    "forbidden": "a missing or wrong API key (x-api-key)",
    "missing_authentication_token": "no such route or method (API Gateway's words)",
    "method_not_allowed": "the route does not take this method",
    "throttled": "too many requests: retry later",
    "timeout": "the request took longer than API Gateway's 29 seconds",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": "#/components/responses/Error"} for s in statuses}


def _get(summary: str, schema: dict[str, Any], *errors: int, params: list | None = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params or [],
            "security": [{}, {"ApiKey": []}],
            "responses": {"200": _json(schema, "OK"), **_errors(*errors)},
        }
    }


def _text(kind: str, summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {kind: {"schema": {"type": "string"}}}}},
        }
    }


PROJECT = {
    "name": "project",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "a dataset name (its slug)",
}
RUN = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "a run id, <project>-<8 hex>",
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "droptrain",
            "version": "1",
            "description": "Predictions, projects and versions, runs, and the console.",
        },
        "paths": {**_predict_paths(), **_project_paths(), **_run_paths(), **_console_paths()},
        "components": _components(),
    }


def _predict_paths() -> dict[str, Any]:
    predict = {
        "post": {
            "summary": "The top labels for one image",
            "security": [{}, {"ApiKey": []}],
            "parameters": [
                {
                    "name": "top_k",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
                },
                {
                    "name": "min_confidence",
                    "in": "query",
                    "description": "abstain below this probability of the best class (the model's own floor else)",
                    "schema": {"type": "number", "minimum": 0, "maximum": 1},
                },
                {
                    "name": "explain",
                    "in": "query",
                    "description": "add the top class's Grad-CAM explanation",
                    "schema": {"type": "boolean", "default": False},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/jpeg", "image/png")},
            },
            "responses": {"200": _json(_ref("Predictions"), "the model's answer"), **_errors(400, 413, 415, 502, 503)},
        }
    }
    return {
        "/predict": predict,
        "/predict/{project}": {"post": {**predict["post"], "parameters": [PROJECT, *predict["post"]["parameters"]]}},
    }


def _project_paths() -> dict[str, Any]:
    return {
        "/status": _get("Every project's endpoint and the model it serves", {"type": "object"}, 503),
        "/projects": _get(
            "Every project",
            {"type": "object", "properties": {"projects": {"type": "array", "items": _ref("Project")}}},
            503,
        ),
        "/projects/{project}": _get(
            "A project's versions, oldest first", _ref("ProjectVersions"), 404, 503, params=[PROJECT]
        ),
        "/projects/{project}/versions/{run_id}/export/{fmt}": {
            "get": {
                "summary": "The version's model as ONNX or TorchScript (a redirect to S3 on AWS)",
                "parameters": [
                    PROJECT,
                    RUN,
                    {"name": "fmt", "in": "path", "required": True, "schema": {"enum": ["onnx", "torchscript"]}},
                ],
                "security": [{}, {"ApiKey": []}],
                "responses": {
                    "200": {
                        "description": "the file (locally)",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "302": {"description": "a presigned S3 URL, valid for 5 minutes"},
                    **_errors(400, 404, 503),
                },
            }
        },
        "/projects/{project}/versions/{run_id}/deploy": {
            "post": {
                "summary": "Approve and deploy a version (run_id 'previous': roll back)",
                "parameters": [PROJECT, RUN],
                "security": [{}, {"ApiKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                    "description": "Content-Type application/json (any JSON object): what a page of another"
                    " site cannot send",
                },
                "responses": {
                    "202": _json(_ref("DeployAnswer"), "what was done"),
                    **_errors(403, 404, 409, 415, 503),
                },
            }
        },
    }


def _run_paths() -> dict[str, Any]:
    return {
        "/runs": _get(
            "Every run, newest first",
            {"type": "object", "properties": {"runs": {"type": "array", "items": _ref("Run")}}},
            503,
        ),
        "/runs/{run_id}": _get(
            "A run: timeline, trials, metrics, evaluation, verdicts", {"type": "object"}, 404, 503, params=[RUN]
        ),
        "/runs/{run_id}/report": {
            "get": {
                "summary": "The training report",
                "parameters": [RUN],
                "security": [{}, {"ApiKey": []}],
                "responses": {
                    "200": {
                        "description": "the report (locally)",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "302": {"description": "a presigned S3 URL of it, valid 5 minutes (on AWS)"},
                    **_errors(404, 503),
                },
            }
        },
    }


def _console_paths() -> dict[str, Any]:
    return {
        "/": _text("text/html", "The web console"),
        "/console.js": _text("text/javascript", "The console's script"),
        "/console.css": _text("text/css", "The console's style"),
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}
        },
    }


def _components() -> dict[str, Any]:
    return {
        "securitySchemes": {
            "ApiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "x-api-key",
                "description": "required where the stage sets API_KEY_REQUIRED",
            }
        },
        "responses": {"Error": _json(_ref("Error"), "an error, in the API's one shape")},
        "schemas": {**_answer_schemas(), **_resource_schemas()},
    }


def _answer_schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": sorted(ERROR_CODES)},
                        "message": {"type": "string"},
                    },
                }
            },
            "x-error-codes": ERROR_CODES,
        },
        "Predictions": {
            "type": "object",
            "required": ["predictions", "abstained", "model"],
            "properties": {
                "predictions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"label": {"type": "string"}, "probability": {"type": "number"}},
                    },
                },
                "abstained": {"type": "boolean", "description": "the best class is below its threshold: not sure"},
                "model": {"type": "string", "description": "the run id of the serving version"},
                "explanation": {
                    "type": "object",
                    "description": "with explain=true: where the evidence for the top class lies",
                    "properties": {
                        "method": {"type": "string", "enum": ["grad-cam"]},
                        "layer": {"type": "string"},
                        "size": {"type": "array", "items": {"type": "integer"}, "description": "[height, width]"},
                        "peak": {"type": "array", "items": {"type": "integer"}, "description": "[x, y] pixels"},
                        "heatmap_png": {"type": "string", "format": "byte", "description": "grey PNG, image size"},
                    },
                },
            },
        },
    }


def _resource_schemas() -> dict[str, Any]:
    return {
        "Project": {
            "type": "object",
            "properties": {
                k: {"type": "string", "nullable": True} for k in ("project", "endpoint", "endpoint_status", "serving")
            },
        },
        "Version": {
            "type": "object",
            "properties": {
                "version": {"type": "integer"},
                "run_id": {"type": "string"},
                "status": {"type": "string", "enum": ["Approved", "PendingManualApproval", "Rejected"]},
                "metrics": {"type": "object"},
                "created_at": {"type": "string", "nullable": True},
                "serving": {"type": "boolean"},
            },
        },
        "ProjectVersions": {
            "type": "object",
            "properties": {
                "project": {"type": "string"},
                "endpoint": {"type": "string"},
                "serving": {"type": "string", "nullable": True},
                "versions": {"type": "array", "items": _ref("Version")},
            },
        },
        "DeployAnswer": {
            "type": "object",
            "properties": {
                k: {"type": "string", "nullable": True} for k in ("project", "run_id", "previous", "action")
            },
        },
        "Run": {
            "type": "object",
            "properties": {
                "run_id": {"type": "string"},
                "project": {"type": "string"},
                "state": {"type": "string"},
                "started_at": {"type": "string", "nullable": True},
                "events": {"type": "array", "items": {"type": "string"}},
            },
        },
    }
