"""What a project's endpoint sees, kept: SageMaker's data capture, in the format SageMaker writes it
(docs/operations.md, "What the endpoint sees").

SageMaker's endpoint config (``DataCaptureConfig``) samples ``CAPTURE_PERCENT`` of the requests and writes
them, with their answers, as JSON Lines under ``<DestinationS3Uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/``:

    {"captureData": {"endpointInput": {"observedContentType": "image/jpeg", "mode": "INPUT",
     "data": "<base64>", "encoding": "BASE64"}, "endpointOutput": {"observedContentType": "application/json",
     "mode": "OUTPUT", "data": "{\"predictions\": ...}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceTime": "2026-12-06T15:00:00Z"}, "eventVersion": "0"}

(an image is binary, so its ``encoding`` is ``BASE64``; the answer is JSON because the config names
``application/json`` among its ``JsonContentTypes``; ``CSV`` data is kept as text). SageMaker cannot
choose by the answer, so a doubtful answer (abstained, or a best probability under ``REVIEW_BELOW``) is
written by the API's predict handler itself, in the same format, under the variant ``review``, whatever
the sample rate. The local runtime writes both exactly so (``droptrain/local/sagemaker/capture.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from chalice_app import alarm_requests
from chalice_app.config import Config
from chalice_app.ports import ObjectStore

CAPTURE_ROOT = "runs/capture"
REVIEW_VARIANT = "review"  # the doubtful answers the API keeps (SageMaker's own are under the variant's name)
JSON_TYPES = ["application/json"]
VARIANT = alarm_requests.VARIANT  # the production variant SageMaker names its sampled captures after


class CaptureFormatError(ValueError):
    """A line that is not a SageMaker capture record; the message says what is missing."""


def destination(config: Config, project: str) -> str:
    """``DestinationS3Uri`` of the project's endpoint: SageMaker adds ``<endpoint>/<variant>/yyyy/mm/dd/hh/``."""
    return f"s3://{config.data_bucket}/{project_prefix(project)}"


def data_capture_config(config: Config, project: str) -> dict[str, Any] | None:
    """The endpoint config's ``DataCaptureConfig``; ``None`` when capture is off or the endpoint is serverless
    (serverless endpoints do not capture)."""
    if config.capture_percent == 0 or config.serverless:
        return None
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": config.capture_percent,
        "DestinationS3Uri": destination(config, project),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": list(JSON_TYPES)},
    }


def record(
    body: bytes, content_type: str, answer: bytes, when: datetime, event_id: str | None = None
) -> dict[str, Any]:
    """One capture record, as SageMaker writes it for an image in and JSON out."""
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": content_type,
                "mode": "INPUT",
                "data": base64.b64encode(body).decode("ascii"),
                "encoding": "BASE64",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": answer.decode("utf-8", "replace"),
                "encoding": "JSON",
            },
        },
        "eventMetadata": {
            "eventId": event_id or str(uuid.uuid4()),
            "inferenceTime": when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "eventVersion": "0",
    }


def project_prefix(project: str) -> str:
    """The key prefix ``destination`` names."""
    return f"{CAPTURE_ROOT}/{project}"


def json_line(captured: Mapping[str, Any]) -> str:
    return json.dumps(captured, separators=(",", ":")) + "\n"


def key(prefix: str, endpoint: str, variant: str, when: datetime, event_id: str) -> str:
    """Where a record of one request lands under a destination's key ``prefix``: SageMaker's hourly
    folders, one file per record."""
    moment = when.astimezone(timezone.utc)
    folder = f"{prefix.rstrip('/')}/{endpoint}/{variant}/{moment:%Y/%m/%d/%H}"
    return f"{folder}/{moment:%Y-%m-%dT%H-%M-%S}-{event_id}.jsonl"


@dataclass(frozen=True)
class Captured:
    """A capture record read back: the request's bytes and the answer."""

    event_id: str
    time: str
    content_type: str
    body: bytes
    answer: Any  # the answer's JSON (None when only the input was captured)


def _data(part: Mapping[str, Any]) -> bytes:
    data, encoding = part.get("data", ""), str(part.get("encoding", "")).upper()
    if not isinstance(data, str):
        raise CaptureFormatError("the captured data is not a string")
    if encoding == "BASE64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CaptureFormatError(f"BASE64 data that does not decode: {exc}") from None
    return data.encode()  # JSON and CSV are kept as text


def parse(line: str | bytes) -> Captured:
    """One line of a capture file, as SageMaker (or this project) wrote it."""
    try:
        data = json.loads(line)
        captured = data["captureData"]
        metadata = data.get("eventMetadata") or {}
    except (ValueError, KeyError, TypeError) as exc:
        raise CaptureFormatError(f"not a capture record: {exc}") from None
    if not isinstance(captured, Mapping) or not isinstance(captured.get("endpointInput"), Mapping):
        raise CaptureFormatError("a capture record without endpointInput")
    given = captured["endpointInput"]
    output = captured.get("endpointOutput")
    answer = None
    if isinstance(output, Mapping):
        text = _data(output)
        try:
            answer = json.loads(text)
        except ValueError:
            answer = text.decode("utf-8", "replace")
    return Captured(
        str(metadata.get("eventId", "")),
        str(metadata.get("inferenceTime", "")),
        str(given.get("observedContentType", "")),
        _data(given),
        answer,
    )


def doubtful(answer: Mapping[str, Any], review_below: float) -> bool:
    """An answer a person should look at: the model abstained, or its best label is under ``review_below``."""
    predictions = answer.get("predictions") or []
    best = predictions[0].get("probability", 0.0) if predictions and isinstance(predictions[0], Mapping) else 0.0
    return bool(answer.get("abstained")) or float(best) < review_below


def keep_doubtful(
    store: ObjectStore, config: Config, project: str, body: bytes, content_type: str, answer: Mapping[str, Any]
) -> str | None:
    """The predict handler's: a doubtful answer, with its image, kept for review whatever the sample rate
    (where capture is on): the capture record, and the review queue's item (``review_item``); the record's
    key, or ``None``."""
    if config.capture_percent == 0 or not doubtful(answer, config.review_below):
        return None
    when, event_id = datetime.now(timezone.utc), str(uuid.uuid4())
    line = json_line(record(body, content_type, json.dumps(answer).encode(), when, event_id))
    written = key(project_prefix(project), config.endpoint(project), REVIEW_VARIANT, when, event_id)
    store.put_if_absent(config.data_bucket, written, line.encode())
    item, image = review_keys(project, when, event_id, IMAGE_SUFFIXES.get(content_type, "jpg"))
    # The image on its own (what the review page shows: a presigned URL on AWS), then the item, so that
    # an item listed always has its image.
    store.put_if_absent(config.data_bucket, image, body)
    queued = review_item(event_id, when, answer, image, written)
    store.put_if_absent(config.data_bucket, item, json.dumps(queued).encode())
    return written


# The review queue (docs/operations.md, "Review and retrain"), under runs/ where the API may write:
#   runs/review/<project>/pending/<time>-<id>.json   an item: the answer, where its image and record are
#   runs/review/<project>/pending/<time>-<id>.<ext>  its image
#   runs/review/<project>/decided/<id>.json          a person's decision (a label, or discard)
#   runs/review/<project>/labelled/{train,test}/<class>/<id>.<ext>   the labelled images a retrain adds
REVIEW_ROOT = "runs/review"
IMAGE_SUFFIXES = {"image/jpeg": "jpg", "image/png": "png"}


def review_prefix(project: str, part: str = "") -> str:
    return f"{REVIEW_ROOT}/{project}/{part}"


def review_keys(project: str, when: datetime, event_id: str, suffix: str) -> tuple[str, str]:
    """``(item, image)``: named by time first (to the microsecond), so that a listing is oldest first."""
    stem = review_prefix(project, "pending/") + f"{when.astimezone(timezone.utc):%Y-%m-%dT%H-%M-%S-%f}-{event_id}"
    return f"{stem}.json", f"{stem}.{suffix}"


def review_item(event_id: str, when: datetime, answer: Mapping[str, Any], image: str, record_key: str) -> dict:
    return {
        "id": event_id,
        "captured_at": when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "predictions": list(answer.get("predictions") or []),
        "abstained": bool(answer.get("abstained")),
        "model": answer.get("model"),
        "image": image,
        "capture": record_key,
    }
