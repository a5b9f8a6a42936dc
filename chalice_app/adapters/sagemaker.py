"""SageMaker: creating and describing the pipeline's jobs, models and endpoint.

``create_*`` return ``False`` when the resource already exists: an event delivered twice starts
nothing new, and that is success.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalice_app.adapters.errors import AlreadyExistsError, NotFoundError, ServiceError, translate


class SageMakerAdapter:
    def __init__(self, client: Any):
        self._client = client

    def _call(self, operation: str, action: str, **request: Any) -> dict[str, Any]:
        try:
            return getattr(self._client, operation)(**request)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, action) from exc

    def _create(self, operation: str, action: str, request: Mapping[str, Any]) -> bool:
        try:
            self._call(operation, action, **request)
        except AlreadyExistsError:
            return False
        return True

    def create_tuning_job(self, request: Mapping[str, Any]) -> bool:
        return self._create(
            "create_hyper_parameter_tuning_job",
            f"creating tuning job {request['HyperParameterTuningJobName']}",
            request,
        )

    def describe_tuning_job(self, name: str) -> dict[str, Any]:
        return self._call(
            "describe_hyper_parameter_tuning_job", f"describing tuning job {name}", HyperParameterTuningJobName=name
        )

    def stop_tuning_job(self, name: str) -> bool:
        """Stop the tuning job and its running trials; ``False`` when it had already ended."""
        try:
            self._call(
                "stop_hyper_parameter_tuning_job", f"stopping tuning job {name}", HyperParameterTuningJobName=name
            )
        except ServiceError as exc:
            # SageMaker refuses to stop a job that has ended (ValidationException): that is the outcome wanted.
            if exc.code == "ValidationException" and self.describe_tuning_job(name).get(
                "HyperParameterTuningJobStatus"
            ) not in ("InProgress", "Stopping"):
                return False
            raise
        return True

    def list_trials(self, tuning_job: str) -> list[dict[str, Any]]:
        """Every training job the tuning job launched (``HyperParameterTrainingJobSummary``), all pages."""
        trials: list[dict[str, Any]] = []
        request: dict[str, Any] = {"HyperParameterTuningJobName": tuning_job, "MaxResults": 100}
        while True:
            page = self._call(
                "list_training_jobs_for_hyper_parameter_tuning_job", f"listing the trials of {tuning_job}", **request
            )
            trials.extend(page.get("TrainingJobSummaries", []))
            if not page.get("NextToken"):
                return trials
            request["NextToken"] = page["NextToken"]

    def create_training_job(self, request: Mapping[str, Any]) -> bool:
        return self._create("create_training_job", f"creating training job {request['TrainingJobName']}", request)

    def create_processing_job(self, request: Mapping[str, Any]) -> bool:
        return self._create("create_processing_job", f"creating processing job {request['ProcessingJobName']}", request)

    def describe_processing_job(self, name: str) -> dict[str, Any]:
        return self._call("describe_processing_job", f"describing processing job {name}", ProcessingJobName=name)

    def describe_training_job(self, name: str) -> dict[str, Any]:
        return self._call("describe_training_job", f"describing training job {name}", TrainingJobName=name)

    def create_transform_job(self, request: Mapping[str, Any]) -> bool:
        return self._create("create_transform_job", f"creating transform job {request['TransformJobName']}", request)

    def describe_transform_job(self, name: str) -> dict[str, Any]:
        return self._call("describe_transform_job", f"describing transform job {name}", TransformJobName=name)

    def create_model(self, request: Mapping[str, Any]) -> bool:
        return self._create("create_model", f"creating model {request['ModelName']}", request)

    def create_endpoint_config(self, request: Mapping[str, Any]) -> bool:
        return self._create(
            "create_endpoint_config", f"creating endpoint config {request['EndpointConfigName']}", request
        )

    def describe_endpoint(self, name: str) -> dict[str, Any] | None:
        """The endpoint, or ``None`` when there is none by that name."""
        try:
            return self._call("describe_endpoint", f"describing endpoint {name}", EndpointName=name)
        except NotFoundError:
            return None

    def create_endpoint(self, request: Mapping[str, Any]) -> bool:
        return self._create("create_endpoint", f"creating endpoint {request['EndpointName']}", request)

    def delete_endpoint(self, name: str) -> None:
        """Delete the endpoint (its configs and models stay); one already gone is no error."""
        try:
            self._call("delete_endpoint", f"deleting endpoint {name}", EndpointName=name)
        except NotFoundError:
            pass

    def update_endpoint(self, request: Mapping[str, Any]) -> None:
        self._call("update_endpoint", f"updating endpoint {request['EndpointName']}", **request)

    def add_tags(self, arn: str, tags: list[dict[str, str]]) -> None:
        self._call("add_tags", f"tagging {arn}", ResourceArn=arn, Tags=tags)

    def delete_tags(self, arn: str, keys: list[str]) -> None:
        self._call("delete_tags", f"untagging {arn}", ResourceArn=arn, TagKeys=keys)

    def list_tags(self, arn: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        request: dict[str, Any] = {"ResourceArn": arn}
        while True:
            page = self._call("list_tags", f"listing tags of {arn}", **request)
            tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
            if not page.get("NextToken"):
                return tags
            request["NextToken"] = page["NextToken"]

    # -- the model registry --------------------------------------------------------------------

    def create_model_package_group(self, request: Mapping[str, Any]) -> bool:
        return self._create(
            "create_model_package_group", f"creating model package group {request['ModelPackageGroupName']}", request
        )

    def _pages(self, operation: str, action: str, key: str, **request: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._call(operation, action, **request)
            items.extend(page.get(key, []))
            if not page.get("NextToken"):
                return items
            request["NextToken"] = page["NextToken"]

    def list_model_package_groups(self, prefix: str) -> list[dict[str, Any]]:
        groups = self._pages(
            "list_model_package_groups",
            f"listing model package groups {prefix}*",
            "ModelPackageGroupSummaryList",
            NameContains=prefix,
            MaxResults=100,
        )
        return [g for g in groups if g["ModelPackageGroupName"].startswith(prefix)]

    def create_model_package(self, request: Mapping[str, Any]) -> str:
        return self._call(
            "create_model_package", f"registering a version in {request['ModelPackageGroupName']}", **request
        )["ModelPackageArn"]

    def list_model_packages(self, group: str) -> list[dict[str, Any]]:
        try:
            packages = self._pages(
                "list_model_packages",
                f"listing the versions of {group}",
                "ModelPackageSummaryList",
                ModelPackageGroupName=group,
                ModelPackageType="Versioned",
                MaxResults=100,
            )
        except NotFoundError:
            return []
        return sorted(packages, key=lambda p: p.get("ModelPackageVersion", 0))

    def describe_model_package(self, arn: str) -> dict[str, Any]:
        return self._call("describe_model_package", f"describing model package {arn}", ModelPackageName=arn)

    def update_model_package(self, request: Mapping[str, Any]) -> None:
        self._call("update_model_package", f"updating model package {request['ModelPackageArn']}", **request)
