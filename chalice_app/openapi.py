"""The REST API described as OpenAPI 3.0, served at ``GET /openapi.json`` (the console reads its error
words from it). Tests check that it is a valid document, that it lists exactly the routes the app
defines, and that every error code the code can answer is in ``ERROR_CODES``."""

from __future__ import annotations

from typing import Any

from chalice_app.error_codes import ERROR_CODES
from chalice_app.openapi_jobs import job_paths, review_paths

__all__ = ["ERROR_CODES", "document"]


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
        "paths": {
            **_predict_paths(),
            **_project_paths(),
            **job_paths(),
            **review_paths(),
            **_run_paths(),
            **_console_paths(),
        },
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
        "BatchRequest": {
            "type": "object",
            "required": ["input_prefix"],
            "properties": {
                "input_prefix": {"type": "string", "description": "batch/<name>/ in the project's bucket"},
                "version": {"description": "a run id or version number (default: the serving version)"},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
            },
        },
        "BatchAnswer": {
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("job", "input", "output", "version")},
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
