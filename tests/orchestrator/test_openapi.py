"""The OpenAPI description cannot drift from the app: valid, exactly the app's routes, every error code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from openapi_spec_validator import validate

import app
from chalice_app import openapi
from droptrain.template import GATEWAY_ERROR_CODES

ROOT = Path(__file__).resolve().parents[2]


def test_the_document_is_valid_openapi():
    validate(openapi.document())


def test_it_lists_exactly_the_routes_the_app_defines():
    defined = {(path, method.lower()) for path, methods in app.app.routes.items() for method in methods}
    described = {(path, method) for path, item in openapi.document()["paths"].items() for method in item}
    assert described == defined


def _codes_in(path: Path) -> set[str]:
    """Error codes a module can answer: ``code = "…"`` attributes, ``error_body("…")`` calls, and the
    code argument of ``…Error(message, "code")`` / ``RequestRejected(status, "code", …)`` calls."""
    codes = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Tuple)
            and "code" in [getattr(e, "id", "") for e in t.elts]
            or getattr(t, "id", "") == "code"
            for t in node.targets
        ):
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            codes |= {v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if name == "error_body" and strings:
                codes.add(strings[0])
            elif (name.endswith("Error") or name == "RequestRejected") and len(node.args) >= 2 and strings:
                codes.add(strings[-1] if name != "RequestRejected" else strings[0])
    return {c for c in codes if re.fullmatch(r"[a-z]+(_[a-z]+)*", c)}


def test_every_error_code_the_api_can_answer_is_described():
    sources = [*sorted((ROOT / "chalice_app").rglob("*.py")), ROOT / "droptrain" / "local" / "aws" / "api.py"]
    found = set().union(*(_codes_in(p) for p in sources)) | set(GATEWAY_ERROR_CODES.values())
    found |= {"method_not_allowed"}  # Chalice's own 405, put in the API's shape by http_errors.api_error
    assert found - set(openapi.ERROR_CODES) == set(), "answered but not described"
    assert len(found) > 15, "the scan finds the codes at all"


def test_it_is_served_and_open(stage, client):
    response = client.http.get("/openapi.json")
    assert response.status_code == 200 and response.json_body == openapi.document()
