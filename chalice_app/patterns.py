"""EventBridge patterns for the handlers, computed from the stage's environment when Chalice loads
the app. They narrow what reaches the Lambda; the handlers still check bucket, key and tags."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from chalice_app.config import ConfigError, dataset_prefix, endpoint_prefix
from chalice_app.names import ARCHIVE_SUFFIXES


def _casings(suffix: str) -> list[str]:
    """Every way ``suffix`` can be written in upper and lower case (.zip, .Zip, ..., .ZIP)."""
    letters = [(c.lower(), c.upper()) if c.isalpha() else (c,) for c in suffix]
    return sorted({"".join(spelling) for spelling in itertools.product(*letters)})


def dataset_uploaded(env: Mapping[str, str]) -> dict[str, Any]:
    prefix = dataset_prefix(env)  # no * or \ in it (config): a literal in the wildcards below
    # Archives under the dataset prefix only, in any case (Dogs.Zip is dogs.zip). EventBridge's
    # case-insensitive suffix cannot be combined with a prefix on one field, and a suffix alone let
    # every model.tar.gz and code tarball in the bucket start the 3 GB upload function: so one
    # (case-sensitive) wildcard per spelling, 56 in all.
    archives = [{"wildcard": f"{prefix}*{spelling}"} for suffix in ARCHIVE_SUFFIXES for spelling in _casings(suffix)]
    keys = [{"wildcard": f"{prefix}*/_READY"}, *archives]
    detail: dict[str, Any] = {"object": {"key": keys}}
    if env.get("DATA_BUCKET"):
        detail["bucket"] = {"name": [env["DATA_BUCKET"]]}
    return {"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": detail}


def processing_job_state_change(env: Mapping[str, str]) -> dict[str, Any]:
    # The dataset audits' ends (<run-id>-audit); the handler checks the job's tags.
    return {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Processing Job State Change"],
        "detail": {
            "ProcessingJobStatus": ["Completed", "Failed", "Stopped"],
            "ProcessingJobName": [{"suffix": "-audit"}],
        },
    }


def tuning_job_state_change(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker HyperParameter Tuning Job State Change"],
        "detail": {"HyperParameterTuningJobStatus": ["Completed", "Failed", "Stopped"]},
    }


def training_job_state_change(env: Mapping[str, str]) -> dict[str, Any]:
    # The final job's end (tagged role=final), and any tuning trial's failure: one that failed on
    # the dataset stops its tuning job (pipeline.trial_changed). Trials' events carry no tags to
    # match on; the handler reads the tuning job's.
    return {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Training Job State Change"],
        "detail": {
            "$or": [
                {"TrainingJobStatus": ["Completed", "Failed", "Stopped"], "Tags": {"droptrain:role": ["final"]}},
                {"TrainingJobStatus": ["Failed"], "TuningJobArn": [{"exists": True}]},
            ]
        },
    }


def _project_names(env: Mapping[str, str]) -> list[Any] | None:
    """The stage's project resources, ``<ENDPOINT_PREFIX>-*``; ``None`` when the prefix is unset or bad
    (the handler then reports the configuration error)."""
    try:
        prefix = endpoint_prefix(env)
    except ConfigError:
        return None
    return [{"prefix": f"{prefix}-"}]


def endpoint_state_change(env: Mapping[str, str]) -> dict[str, Any]:
    # DELETING too: an endpoint deleted for having failed is created again once it is gone.
    statuses = ["IN_SERVICE", "FAILED", "DELETING", "InService", "Failed", "Deleting"]
    detail: dict[str, Any] = {"EndpointStatus": statuses}
    if (project_names := _project_names(env)) is not None:
        detail["EndpointName"] = project_names
    return {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Endpoint State Change"], "detail": detail}


def model_package_state_change(env: Mapping[str, str]) -> dict[str, Any]:
    # Approval deploys; the other changes (pending, rejected) reach no function.
    detail: dict[str, Any] = {"ModelApprovalStatus": ["Approved"]}
    if (project_names := _project_names(env)) is not None:
        detail["ModelPackageGroupName"] = project_names
    return {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"], "detail": detail}


def transform_job_state_change(env: Mapping[str, str]) -> dict[str, Any]:
    # The stage's batch prediction jobs' ends (<prefix>-<project>-batch-<token>).
    detail: dict[str, Any] = {"TransformJobStatus": ["Completed", "Failed", "Stopped"]}
    if (project_names := _project_names(env)) is not None:
        detail["TransformJobName"] = project_names
    return {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Transform Job State Change"], "detail": detail}


def drift_check_state_change(env: Mapping[str, str]) -> dict[str, Any]:
    # The stage's drift checks' ends (<prefix>-<project>-drift-<token>, processing jobs).
    detail: dict[str, Any] = {"ProcessingJobStatus": ["Completed", "Failed", "Stopped"]}
    try:
        detail["ProcessingJobName"] = [{"wildcard": f"{endpoint_prefix(env)}-*-drift-*"}]
    except ConfigError:
        detail["ProcessingJobName"] = [{"wildcard": "*-drift-*"}]
    return {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Processing Job State Change"], "detail": detail}
