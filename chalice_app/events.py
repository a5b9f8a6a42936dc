"""EventBridge events as typed objects; a malformed event raises ``EventError`` naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class EventError(ValueError):
    pass


def _get(data: Mapping[str, Any], *path: str, kind: type = str, required: bool = True):
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            if required:
                raise EventError(f"event has no {'.'.join(path)}")
            return None
        node = node[part]
    if node is not None and not isinstance(node, kind):
        raise EventError(f"event field {'.'.join(path)} should be {kind.__name__}, got {type(node).__name__}")
    return node


def _tags(detail: Mapping[str, Any]) -> dict[str, str]:
    tags = detail.get("Tags") or {}
    if isinstance(tags, list):  # the API's list form, in case a caller passes a describe response
        tags = {t.get("Key"): t.get("Value") for t in tags if isinstance(t, Mapping)}
    if not isinstance(tags, Mapping):
        raise EventError("event field detail.Tags should be an object")
    return {str(k): str(v) for k, v in tags.items()}


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str
    size: int
    etag: str

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> ObjectCreated:
        size = _get(event, "detail", "object", "size", kind=int, required=False)
        return cls(
            bucket=_get(event, "detail", "bucket", "name"),
            key=_get(event, "detail", "object", "key"),
            size=size or 0,
            etag=_get(event, "detail", "object", "etag", required=False) or "",
        )


@dataclass(frozen=True)
class TuningJobStateChange:
    name: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> TuningJobStateChange:
        detail = _get(event, "detail", kind=Mapping)
        return cls(
            name=_get(event, "detail", "HyperParameterTuningJobName"),
            status=_get(event, "detail", "HyperParameterTuningJobStatus"),
            tags=_tags(detail),
        )


@dataclass(frozen=True)
class TrainingJobStateChange:
    name: str
    status: str
    tuning_job_arn: str | None
    tags: dict[str, str] = field(default_factory=dict)
    failure_reason: str | None = None

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> TrainingJobStateChange:
        detail = _get(event, "detail", kind=Mapping)
        return cls(
            name=_get(event, "detail", "TrainingJobName"),
            status=_get(event, "detail", "TrainingJobStatus"),
            tuning_job_arn=_get(event, "detail", "TuningJobArn", required=False),
            tags=_tags(detail),
            failure_reason=_get(event, "detail", "FailureReason", required=False),
        )


@dataclass(frozen=True)
class EndpointStateChange:
    name: str
    status: str
    config_name: str | None
    tags: dict[str, str] = field(default_factory=dict)
    # Which change this is (epoch milliseconds, as EventBridge writes it): one per deployment.
    last_modified: str | None = None

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> EndpointStateChange:
        detail = _get(event, "detail", kind=Mapping)
        modified = detail.get("LastModifiedTime")
        return cls(
            last_modified=str(modified)
            if isinstance(modified, (int, float, str)) and str(modified).isalnum()
            else None,
            name=_get(event, "detail", "EndpointName"),
            # EventBridge says IN_SERVICE; the API says InService. Both mean the same.
            status=_get(event, "detail", "EndpointStatus").upper().replace("INSERVICE", "IN_SERVICE"),
            config_name=_get(event, "detail", "EndpointConfigName", required=False),
            tags=_tags(detail),
        )


@dataclass(frozen=True)
class ModelPackageStateChange:
    """A version in a model package group changed (its approval, usually)."""

    group: str
    version: int
    arn: str
    approval: str
    model_data: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    event_id: str = ""  # EventBridge keeps it across redeliveries: one approval, one notification

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> ModelPackageStateChange:
        detail = _get(event, "detail", kind=Mapping)
        containers = _get(event, "detail", "InferenceSpecification", "Containers", kind=list, required=False) or []
        model_data = containers[0].get("ModelDataUrl") if containers and isinstance(containers[0], Mapping) else None
        metadata = detail.get("CustomerMetadataProperties") or {}
        if not isinstance(metadata, Mapping):
            raise EventError("event field detail.CustomerMetadataProperties should be an object")
        return cls(
            group=_get(event, "detail", "ModelPackageGroupName"),
            version=_get(event, "detail", "ModelPackageVersion", kind=int),
            arn=_get(event, "detail", "ModelPackageArn"),
            approval=_get(event, "detail", "ModelApprovalStatus"),
            model_data=model_data if isinstance(model_data, str) else None,
            metadata={str(k): str(v) for k, v in metadata.items()},
            event_id=str(event.get("id") or ""),
        )


@dataclass(frozen=True)
class ProcessingJobStateChange:
    name: str
    status: str
    failure_reason: str | None = None

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> ProcessingJobStateChange:
        _get(event, "detail", kind=Mapping)
        return cls(
            name=_get(event, "detail", "ProcessingJobName"),
            status=_get(event, "detail", "ProcessingJobStatus"),
            failure_reason=_get(event, "detail", "FailureReason", required=False),
        )


@dataclass(frozen=True)
class TransformJobStateChange:
    """A batch prediction job (Batch Transform) ended."""

    name: str
    status: str
    failure_reason: str | None = None

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> TransformJobStateChange:
        _get(event, "detail", kind=Mapping)
        return cls(
            name=_get(event, "detail", "TransformJobName"),
            status=_get(event, "detail", "TransformJobStatus"),
            failure_reason=_get(event, "detail", "FailureReason", required=False),
        )
