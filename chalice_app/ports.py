"""The ports the pipeline talks through: what it needs of S3, SageMaker, SageMaker Runtime, CloudWatch and SNS.

``chalice_app.adapters`` implements them over boto3 for Lambda; the local runtime implements them on
one machine. Both families raise only ``chalice_app.adapters.errors`` types (``NotFoundError``,
``AlreadyExistsError``, ``ThrottledError``, ``ServiceError``; the runtime's own
``EndpointNotFoundError``, ``EndpointNotReadyError``, ``ModelError``), so the handlers' error
policy holds whichever is installed; one contract suite (``tests/contract``) runs against both.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol


class ObjectStore(Protocol):
    def list_objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object under ``prefix``, in key order."""

    def list_prefixes(self, bucket: str, prefix: str) -> list[str]:
        """The "folders" directly under ``prefix`` (``runs/dogs-1a2b3c4d/``…), in key order."""

    def presigned_url(self, bucket: str, key: str, seconds: int) -> str | None:
        """A URL a browser can GET the object from for ``seconds``; ``None`` where there is no such
        thing (the local bucket: the API serves the object itself)."""

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        """``{"size", "etag"}``; ``NotFoundError`` when there is no such object."""

    def get(self, bucket: str, key: str) -> bytes: ...

    def read_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` inclusive."""

    def open_ranged(self, bucket: str, key: str, size: int) -> io.RawIOBase:
        """A seekable, read-only file over ranged reads."""

    def put_if_absent(self, bucket: str, key: str, body: bytes) -> bool:
        """Write unless the object exists, atomically; ``True`` if this call wrote it."""

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; one already gone is no error."""


class SageMaker(Protocol):
    """``create_*`` return ``False`` when the resource exists (an event delivered twice is success)."""

    def create_tuning_job(self, request: Mapping[str, Any]) -> bool: ...

    def describe_tuning_job(self, name: str) -> dict[str, Any]: ...

    def stop_tuning_job(self, name: str) -> bool:
        """Stop it and its running trials; ``False`` when it had already ended."""

    def list_trials(self, tuning_job: str) -> list[dict[str, Any]]:
        """The training jobs it launched, as ``HyperParameterTrainingJobSummary`` (name, status,
        ``FailureReason`` where one failed)."""

    def create_training_job(self, request: Mapping[str, Any]) -> bool: ...

    def create_processing_job(self, request: Mapping[str, Any]) -> bool: ...

    def describe_processing_job(self, name: str) -> dict[str, Any]: ...

    def describe_training_job(self, name: str) -> dict[str, Any]: ...

    def create_transform_job(self, request: Mapping[str, Any]) -> bool:
        """A batch prediction job (Batch Transform); its end sends "SageMaker Transform Job State Change"."""

    def describe_transform_job(self, name: str) -> dict[str, Any]: ...

    def create_model(self, request: Mapping[str, Any]) -> bool: ...

    def create_endpoint_config(self, request: Mapping[str, Any]) -> bool: ...

    def describe_endpoint(self, name: str) -> dict[str, Any] | None:
        """The endpoint, or ``None`` when there is none by that name."""

    def create_endpoint(self, request: Mapping[str, Any]) -> bool: ...

    def update_endpoint(self, request: Mapping[str, Any]) -> None: ...

    def delete_endpoint(self, name: str) -> None:
        """One already gone is no error."""

    def add_tags(self, arn: str, tags: list[dict[str, str]]) -> None: ...

    def delete_tags(self, arn: str, keys: list[str]) -> None: ...

    def list_tags(self, arn: str) -> dict[str, str]: ...

    # -- the model registry --

    def create_model_package_group(self, request: Mapping[str, Any]) -> bool: ...

    def list_model_package_groups(self, prefix: str) -> list[dict[str, Any]]:
        """Every group whose name starts with ``prefix`` (``ModelPackageGroupSummary``), all pages."""

    def create_model_package(self, request: Mapping[str, Any]) -> str:
        """The new version's ARN (the same one again for a repeated ``ClientToken``)."""

    def list_model_packages(self, group: str) -> list[dict[str, Any]]:
        """The group's versions (``ModelPackageSummary``), oldest first, all pages; ``[]`` for no such group."""

    def describe_model_package(self, arn: str) -> dict[str, Any]: ...

    def update_model_package(self, request: Mapping[str, Any]) -> None:
        """A change of ``ModelApprovalStatus`` sends "SageMaker Model Package State Change"."""


class EndpointRuntime(Protocol):
    def invoke(self, endpoint: str, body: bytes, content_type: str, accept: str, attributes: str = "") -> bytes:
        """The endpoint's answer; ``EndpointNotFoundError``, ``EndpointNotReadyError``, or ``ModelError``
        with the container's status and body. ``attributes``: InvokeEndpoint's ``CustomAttributes``, which
        reach the container as the ``X-Amzn-SageMaker-Custom-Attributes`` header (none when empty)."""


class Prices(Protocol):
    def hourly(self, instance_type: str, component: str) -> Any:
        """``chalice_app.cost.Price`` of an hour of ``instance_type`` for ``component`` (``Training`` or
        ``Hosting``), or ``None`` when no price is known."""


class Alarms(Protocol):
    """CloudWatch: the alarms that watch endpoints, and the metrics that say whether one is used."""

    def put_alarm(self, request: Mapping[str, Any]) -> None:
        """Create or replace a CloudWatch alarm (``PutMetricAlarm``)."""

    def invocations(self, endpoint: str, start: datetime, end: datetime) -> float:
        """How many times the endpoint was invoked between ``start`` and ``end`` (0 when no data)."""


class Publisher(Protocol):
    def publish(self, topic_arn: str, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        """The message id; ``NotFoundError`` for a topic that does not exist."""
