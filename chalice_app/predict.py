"""``POST /predict`` and ``GET /status`` (docs/rest-api.md).

The request is checked here (content type, size, JPEG/PNG magic bytes, ``top_k``, ``explain``,
``min_confidence``) so that bad input never reaches, or is billed by, the endpoint. Errors are
``PredictError`` subclasses with an HTTP status and a code; the route turns them into
``{"error": {"code", "message"}}`` and nothing else (no stack trace) reaches a client. The options
reach the serving application as InvokeEndpoint's ``CustomAttributes``, which applies them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from chalice_app import names
from chalice_app.adapters.errors import AdapterError, ThrottledError
from chalice_app.adapters.runtime import EndpointNotFoundError, EndpointNotReadyError, ModelError
from chalice_app.config import Config
from chalice_app.ports import EndpointRuntime, SageMaker

IMAGE_TYPES = {"image/jpeg": "image/jpeg", "image/jpg": "image/jpeg", "image/png": "image/png"}
# API Gateway gives up on an integration after 29 s. One InvokeEndpoint may take up to
# INVOKE_CONNECT_TIMEOUT + INVOKE_READ_TIMEOUT (botocore makes one attempt: the retries are ours), and a
# retry is started only if it could still finish within PREDICT_BUDGET_SECONDS of the request's start.
INVOKE_CONNECT_TIMEOUT, INVOKE_READ_TIMEOUT = 2, 20
PREDICT_BUDGET_SECONDS = 26
API_GATEWAY_TIMEOUT_SECONDS = 29
# The serving application's 400 codes (training/trainlib/predictor.py) that reach the client as they are.
MODEL_ERROR_CODES = ("invalid_image", "image_too_large", "invalid_min_confidence", "invalid_explain")
DEFAULT_TOP_K, MAX_TOP_K = 5, 20
RETRY_DELAYS = (0.2, 0.5, 1.2)  # throttling: three retries, under two seconds in all


class PredictError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": str(self)}}


class BadRequestError(PredictError):
    status, code = 400, "bad_request"


class PayloadTooLargeError(PredictError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaTypeError(PredictError):
    status, code = 415, "unsupported_media_type"


class UnavailableError(PredictError):
    status, code = 503, "unavailable"


class BadGatewayError(PredictError):
    status, code = 502, "endpoint_error"


def sniff(body: bytes) -> str | None:
    if body.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def parse_top_k(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_TOP_K
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw!r}", "invalid_top_k") from None
    if not 1 <= value <= MAX_TOP_K:
        raise BadRequestError(f"top_k must be from 1 to {MAX_TOP_K}, got {value}", "invalid_top_k")
    return value


def parse_min_confidence(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise BadRequestError(
            f"min_confidence must be a number from 0 to 1, got {raw[:40]!r}", "invalid_min_confidence"
        )
    return value + 0.0  # -0 is 0


def parse_explain(raw: str | None) -> bool:
    value = (raw or "false").strip().lower()
    if value not in ("true", "false"):
        raise BadRequestError(f"explain must be true or false, got {value[:40]!r}", "invalid_explain")
    return value == "true"


@dataclass(frozen=True)
class Request:
    """A checked ``POST /predict``: the image's real type and what the query asked."""

    media: str
    top_k: int
    explain: bool = False
    min_confidence: float | None = None

    @property
    def attributes(self) -> str:
        """InvokeEndpoint's ``CustomAttributes``: the options the serving application reads, as a query string
        (SageMaker hands them to the container as the ``X-Amzn-SageMaker-Custom-Attributes`` header)."""
        options = {"explain": "true"} if self.explain else {}
        if self.min_confidence is not None:
            options["min_confidence"] = repr(self.min_confidence)
        return urlencode(options)


def check_request(
    body: bytes | None, content_type: str | None, query: Mapping[str, str] | None, max_bytes: int
) -> Request:
    """The image's real content type and the query's options; raises the error the request deserves."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in IMAGE_TYPES:
        raise UnsupportedMediaTypeError(
            f"send the image bytes as image/jpeg or image/png, not {media or 'no content type'!r}"
        )
    body = body or b""
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"the image is {len(body)} bytes; the limit is {max_bytes} bytes")
    if not body:
        raise BadRequestError("the request body is empty; send the image bytes", "empty_body")
    actual = sniff(body)
    if actual is None:
        raise BadRequestError("the body is not a JPEG or PNG image", "invalid_image")
    query = query or {}
    return Request(
        actual,
        parse_top_k(query.get("top_k")),
        parse_explain(query.get("explain")),
        parse_min_confidence(query.get("min_confidence")),
    )


def model_error(exc: ModelError) -> PredictError:
    """The serving application's own 4xx (``{"error": {"code", "message"}}``) passed on to the client;
    anything else it answered is the endpoint failing (502)."""
    if not 400 <= exc.status < 500:
        return BadGatewayError(f"the endpoint failed (status {exc.status})")
    try:
        error = json.loads(str(exc))["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "invalid_image", f"the model could not read the image: {str(exc)[:300]}"
    if exc.status == 413:
        return PayloadTooLargeError(message[:500])
    return BadRequestError(message[:500], code if code in MODEL_ERROR_CODES else "invalid_image")


def worst_case_seconds() -> float:
    """The longest ``predict`` can take: attempts are started only while one more fits the budget."""
    attempt = INVOKE_CONNECT_TIMEOUT + INVOKE_READ_TIMEOUT
    return PREDICT_BUDGET_SECONDS if attempt <= PREDICT_BUDGET_SECONDS else attempt


def predict(
    runtime: EndpointRuntime,
    config: Config,
    endpoint: str,
    body: bytes | None,
    content_type: str | None,
    query: Mapping[str, str] | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    request = check_request(body, content_type, query, config.max_body_bytes)
    image = body or b""  # check_request refused an empty or missing body
    accept = "application/json"  # the endpoint answers its 20 most probable labels; trimmed to top_k below
    started = clock()
    for delay in (*RETRY_DELAYS, None):
        try:
            raw = runtime.invoke(endpoint, image, request.media, accept, request.attributes)
            break
        except (ThrottledError, EndpointNotReadyError) as exc:
            attempt = INVOKE_CONNECT_TIMEOUT + INVOKE_READ_TIMEOUT
            if delay is None or clock() - started + delay + attempt > PREDICT_BUDGET_SECONDS:
                raise UnavailableError(
                    f"the endpoint is busy or not ready; try again shortly ({exc.code or 'throttled'})", "endpoint_busy"
                ) from exc
            sleep(delay)
        except EndpointNotFoundError as exc:
            raise UnavailableError(f"no model is deployed (endpoint {endpoint} does not exist)", "no_model") from exc
        except ModelError as exc:
            raise model_error(exc) from exc
        except AdapterError as exc:
            raise BadGatewayError(f"the endpoint could not be reached ({exc.code or 'error'})") from exc
    try:
        answer = json.loads(raw)
        predictions = answer["predictions"]
        assert isinstance(predictions, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise BadGatewayError("the endpoint answered something other than predictions") from None
    result = {
        "predictions": predictions[: request.top_k],
        "abstained": _abstained(answer, predictions, request.min_confidence),
        "model": answer.get("model", ""),
    }
    if request.explain:
        if not isinstance(answer.get("explanation"), dict):
            raise BadRequestError(
                f"the deployed model ({result['model'] or 'unknown run'}) was trained before explanations; "
                "train it again to get them",
                "explanation_unavailable",
            )
        result["explanation"] = answer["explanation"]
    return result


def _abstained(answer: dict[str, Any], predictions: list, min_confidence: float | None) -> bool:
    """The model's word; a model trained before abstention has none, and abstains only below a floor
    the request asked for."""
    if "abstained" in answer:
        return bool(answer["abstained"])
    try:
        return min_confidence is not None and float(predictions[0]["probability"]) < min_confidence
    except (IndexError, KeyError, TypeError, ValueError):
        return False


def status(sagemaker: SageMaker, config: Config, projects: list[str]) -> dict[str, Any]:
    """Per project: its endpoint's state and the model it serves."""
    return {"projects": {project: _endpoint_status(sagemaker, config.endpoint(project)) for project in projects}}


def _endpoint_status(sagemaker: SageMaker, name: str) -> dict[str, Any]:
    try:
        endpoint = sagemaker.describe_endpoint(name)
    except AdapterError as exc:
        raise UnavailableError(f"could not read the endpoint's state ({exc.code or 'error'})") from exc
    if endpoint is None:
        return {"endpoint": {"name": name, "status": "NotDeployed"}, "model": None}
    run = endpoint["EndpointConfigName"]  # DescribeEndpoint always has it
    model: dict[str, Any] = {"run_id": run, "test_accuracy": None, "deployed_at": None}
    if endpoint.get("EndpointStatus") == "InService" and endpoint.get("LastModifiedTime"):
        model["deployed_at"] = endpoint["LastModifiedTime"].isoformat()
    try:
        job = sagemaker.describe_training_job(names.final_job_name(run))
        metrics = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
        model["test_accuracy"] = metrics.get("test:accuracy")
    except AdapterError:
        pass  # the model was deployed by hand, or its job was deleted: the endpoint's state still stands
    return {
        "endpoint": {
            "name": name,
            "status": endpoint.get("EndpointStatus"),
            "failure_reason": endpoint.get("FailureReason"),
        },
        "model": model,
    }
