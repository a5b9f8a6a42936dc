"""What the local SageMaker's parts share: ARNs, describe shapes, state-change events, and the
resources that only need storing (models, endpoint configs, tags).

Records live in the store (``droptrain.local.store``) as SageMaker describes them; ``as_described``
gives them back in boto3's shape. Every lookup of something that is not there raises
``NotFoundError``, as the AWS adapters do (``chalice_app.ports``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from chalice_app.adapters.errors import NotFoundError
from droptrain.local.store import Store

ACCOUNT, REGION = "000000000000", "local"
# Stored kinds by the resource type in an ARN.
_KINDS = {
    "hyper-parameter-tuning-job": "tuning-job",
    "training-job": "training-job",
    "model": "model",
    "endpoint-config": "endpoint-config",
    "endpoint": "endpoint",
    "model-package": "model-package",
    "model-package-group": "model-package-group",
    "processing-job": "processing-job",
    "transform-job": "transform-job",
}


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{name}"


def parse_arn(resource_arn: str) -> tuple[str, str]:
    """``(stored kind, name)`` of a local SageMaker ARN; ``NotFoundError`` for anything else."""
    prefix = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:"
    kind, _, name = resource_arn.removeprefix(prefix).partition("/")
    if not resource_arn.startswith(prefix) or kind not in _KINDS or not name:
        raise NotFoundError(f"no resource {resource_arn!r} in the local SageMaker", "ValidationException")
    return _KINDS[kind], name


def request_tags(request: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in request.get("Tags", [])}


def as_described(record: Mapping[str, Any], hidden: tuple[str, ...] = ()) -> dict[str, Any]:
    """A stored record in boto3's shape: ``*Time`` fields as datetimes, internal fields left out."""
    out = {}
    for key, value in record.items():
        if key in hidden:
            continue
        if key.endswith("Time") and isinstance(value, str):
            value = datetime.fromisoformat(value)
        elif isinstance(value, dict):
            value = as_described(value)
        out[key] = value
    return out


def state_change_event(detail_type: str, kind: str, name: str, detail: dict[str, Any]) -> dict[str, Any]:
    """An EventBridge event as SageMaker sends it for a state change."""
    return {
        "version": "0",
        "id": hashlib.sha256(f"{kind}/{name}/{detail}/{time.time_ns()}".encode()).hexdigest()[:32],
        "detail-type": detail_type,
        "source": "aws.sagemaker",
        "account": ACCOUNT,
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [arn(kind, name)],
        "detail": detail,
    }


class StoredResources:
    """Models, endpoint configs and every resource's tags."""

    def __init__(self, store: Store):
        self.store = store

    def create_model(self, request: Mapping[str, Any]) -> bool:
        name = request["ModelName"]
        return self.store.insert(
            "model",
            name,
            {**request, "ModelArn": arn("model", name), "CreationTime": now(), "Tags": request_tags(request)},
        )

    def create_endpoint_config(self, request: Mapping[str, Any]) -> bool:
        name = request["EndpointConfigName"]
        return self.store.insert(
            "endpoint-config",
            name,
            {
                **request,
                "EndpointConfigArn": arn("endpoint-config", name),
                "CreationTime": now(),
                "Tags": request_tags(request),
            },
        )

    def _record(self, resource_arn: str) -> tuple[str, str, dict[str, Any]]:
        kind, name = parse_arn(resource_arn)
        record = self.store.get(kind, name)
        if record is None:
            raise NotFoundError(f"Could not find {kind} {name}", "ValidationException")
        return kind, name, record

    def add_tags(self, resource_arn: str, tags: list[dict[str, str]]) -> None:
        kind, name, record = self._record(resource_arn)
        self.store.update(kind, name, Tags={**record.get("Tags", {}), **{t["Key"]: t["Value"] for t in tags}})

    def delete_tags(self, resource_arn: str, keys: list[str]) -> None:
        kind, name, record = self._record(resource_arn)
        self.store.update(kind, name, Tags={k: v for k, v in record.get("Tags", {}).items() if k not in keys})

    def list_tags(self, resource_arn: str) -> dict[str, str]:
        return dict(self._record(resource_arn)[2].get("Tags", {}))
