"""The routes beside a project's endpoint in the OpenAPI document (``chalice_app.openapi`` serves it): batch
predictions, drift checks, the review queue and retrain."""

from __future__ import annotations

from typing import Any

PARAMS = [
    {"name": "project", "in": "path", "required": True, "schema": {"type": "string"}, "description": "a project"},
]
ITEM = {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "an item id"}
SECURITY: list[dict[str, list[str]]] = [{}, {"ApiKey": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": "#/components/responses/Error"} for s in statuses}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


PREDICTION = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "probability": {"type": "number"}, "index": {"type": "integer"}},
}
QUEUE = {
    "type": "object",
    "required": ["project", "classes", "items"],
    "properties": {
        "project": {"type": "string"},
        "classes": {"type": "array", "items": {"type": "string"}, "description": "what a label may name"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "image_url", "predictions", "captured_at"],
                "properties": {
                    "id": {"type": "string"},
                    "image_url": {
                        "type": "string",
                        "description": "the image's route, relative to the API's base URL (send the API key)",
                    },
                    "predictions": {"type": "array", "items": PREDICTION},
                    "captured_at": {"type": "string", "format": "date-time"},
                    "abstained": {"type": "boolean"},
                    "model": {"type": "string", "nullable": True},
                },
            },
        },
    },
}
DECISION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "label": {"type": "string", "description": "a class the project knows (or a new one with new_class)"},
        "new_class": {"type": "boolean"},
        "discard": {"type": "boolean", "enum": [True]},
    },
}


def job_paths() -> dict[str, Any]:
    """What a project's model does beside its endpoint: batch predictions, drift checks."""
    return {
        "/projects/{project}/batch": {
            "post": {
                "summary": "Predict every image under a prefix of the bucket as one Batch Transform job",
                "parameters": PARAMS,
                "security": SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BatchRequest")}},
                },
                "responses": {
                    "202": _json(_ref("BatchAnswer"), "the job started"),
                    **_errors(400, 404, 409, 415, 503),
                },
            }
        },
        "/projects/{project}/drift-check": {
            "post": {
                "summary": "Check the project's captures since its last check for drift (a Processing job)",
                "parameters": PARAMS,
                "security": SECURITY,
                "responses": {
                    "202": _json({"type": "object"}, "the job started, or why none"),
                    **_errors(403, 404, 415, 503),
                },
            }
        },
        "/projects/{project}/drift": {
            "get": {
                "summary": "The project's drift checks, newest first",
                "parameters": PARAMS,
                "security": SECURITY,
                "responses": {"200": _json({"type": "object"}, "OK"), **_errors(404, 503)},
            }
        },
    }


def review_paths() -> dict[str, Any]:
    return {
        "/projects/{project}/review": {
            "get": {
                "summary": "The doubtful answers not yet reviewed, newest first (at most 50)",
                "parameters": PARAMS,
                "security": SECURITY,
                "responses": {"200": _json(QUEUE, "the queue"), **_errors(404, 503)},
            }
        },
        "/projects/{project}/review/{item_id}": {
            "post": {
                "summary": "Label a reviewed image (it joins the next retrain) or discard it",
                "parameters": [*PARAMS, ITEM],
                "security": SECURITY,
                "requestBody": {"required": True, "content": {"application/json": {"schema": DECISION}}},
                "responses": {
                    "200": _json({"type": "object"}, "the decision, and where a labelled image went"),
                    **_errors(400, 403, 404, 409, 415, 503),
                },
            }
        },
        "/projects/{project}/review/{item_id}/image": {
            "get": {
                "summary": "A review item's image, as the endpoint received it (Accept image/jpeg, image/png)",
                "parameters": [*PARAMS, ITEM],
                "security": SECURITY,
                "responses": {
                    "200": {"description": "the image", "content": {"image/jpeg": {}, "image/png": {}}},
                    **_errors(404, 503),
                },
            }
        },
        "/projects/{project}/retrain": {
            "post": {
                "summary": "Retrain from the serving version's weights on the dataset and the reviewed images",
                "parameters": PARAMS,
                "security": SECURITY,
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}}},
                "responses": {
                    "202": _json({"type": "object"}, "the run started: run_id, job, warm_start_from, reviewed_images"),
                    **_errors(400, 403, 404, 409, 415, 503),
                },
            }
        },
    }
