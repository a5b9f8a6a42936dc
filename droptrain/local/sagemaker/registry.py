"""A local SageMaker Model Registry: model package groups and versioned packages in the state
database, and the "SageMaker Model Package State Change" event SageMaker sends when a version's
approval changes, on the local bus.

Requests and answers have the API's shapes (``CreateModelPackage``, ``DescribeModelPackage``…);
what AWS refuses is refused here with the same kind of error: a version for a group that does not
exist, an unknown approval status, an ARN that names nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chalice_app.adapters.errors import AlreadyExistsError, NotFoundError, ServiceError
from droptrain.local.sagemaker.resources import arn, as_described, now, parse_arn, request_tags, state_change_event
from droptrain.local.store import Store

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")


class LocalRegistry:
    def __init__(self, store: Store, emit: Callable[[dict], None]):
        self.store, self.emit = store, emit

    def create_group(self, request: Mapping[str, Any]) -> bool:
        name = request["ModelPackageGroupName"]
        record = {
            "ModelPackageGroupName": name,
            "ModelPackageGroupArn": arn("model-package-group", name),
            "ModelPackageGroupDescription": request.get("ModelPackageGroupDescription", ""),
            "CreationTime": now(),
            "ModelPackageGroupStatus": "Completed",
            "Tags": request_tags(request),
        }
        return self.store.insert("model-package-group", name, record)

    def list_groups(self, prefix: str) -> list[dict[str, Any]]:
        return [
            as_described(record, hidden=("Tags",))
            for name, _, record in self.store.records("model-package-group")
            if name.startswith(prefix)
        ]

    def create_package(self, request: Mapping[str, Any]) -> str:
        group = request["ModelPackageGroupName"]
        if self.store.get("model-package-group", group) is None:
            raise NotFoundError(f"Model Package Group {group} does not exist", "ValidationException")
        status = request.get("ModelApprovalStatus", "PendingManualApproval")
        if status not in APPROVAL_STATUSES:
            raise ServiceError(f"invalid ModelApprovalStatus {status!r}", "ValidationException")
        versions = self._versions(group)
        token = request.get("ClientToken")
        for record in versions:
            if token and record.get("ClientToken") == token:
                return record["ModelPackageArn"]  # the same request again: the same version
        for _ in range(5):  # another thread may take the same number: take the next
            version = len(versions) + 1
            package_arn = arn("model-package", f"{group}/{version}")
            record = {
                **{k: v for k, v in request.items() if k != "Tags"},
                "ModelPackageVersion": version,
                "ModelPackageArn": package_arn,
                "ModelPackageStatus": "Completed",
                "ModelApprovalStatus": status,
                "CreationTime": now(),
                "LastModifiedTime": now(),
            }
            if self.store.insert("model-package", f"{group}/{version}", record, status=status):
                return package_arn
            versions = self._versions(group)
        raise AlreadyExistsError(f"could not number a new version of {group}", "ConflictException")

    def _versions(self, group: str) -> list[dict[str, Any]]:
        records = [r for name, _, r in self.store.records("model-package") if name.rsplit("/", 1)[0] == group]
        return sorted(records, key=lambda r: r["ModelPackageVersion"])

    def list_packages(self, group: str) -> list[dict[str, Any]]:
        keys = (
            "ModelPackageGroupName",
            "ModelPackageVersion",
            "ModelPackageArn",
            "CreationTime",
            "ModelPackageStatus",
            "ModelApprovalStatus",
            "ModelPackageDescription",
        )
        return [as_described({k: r[k] for k in keys if k in r}) for r in self._versions(group)]

    def _get(self, package_arn: str) -> tuple[str, dict[str, Any]]:
        kind, name = parse_arn(package_arn)
        record = self.store.get("model-package", name) if kind == "model-package" else None
        if record is None:
            raise NotFoundError(f"Could not find model package {package_arn}", "ValidationException")
        return name, record

    def describe(self, package_arn: str) -> dict[str, Any]:
        return as_described(self._get(package_arn)[1], hidden=("ClientToken",))

    def update(self, request: Mapping[str, Any]) -> None:
        name, record = self._get(request["ModelPackageArn"])
        status = request.get("ModelApprovalStatus", record["ModelApprovalStatus"])
        if status not in APPROVAL_STATUSES:
            raise ServiceError(f"invalid ModelApprovalStatus {status!r}", "ValidationException")
        changes = {"ModelApprovalStatus": status, "LastModifiedTime": now()}
        if "ApprovalDescription" in request:
            changes["ApprovalDescription"] = request["ApprovalDescription"]
        previous = record["ModelApprovalStatus"]
        moved = self.store.transition("model-package", name, (previous,), status, **changes)
        if moved and status != previous:
            # As SageMaker does: an approval change is an event (what deploys an approved version).
            detail = self.describe(request["ModelPackageArn"])
            detail = {k: v for k, v in detail.items() if k not in ("ClientToken",)}
            self.emit(
                state_change_event(
                    "SageMaker Model Package State Change",
                    "model-package",
                    name,
                    {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in detail.items()},
                )
            )
