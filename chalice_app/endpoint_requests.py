"""Pure builders for a project's model, endpoint configuration and endpoint: configuration + run in,
boto3 SageMaker request dicts out (validated against botocore in ``tests/orchestrator/test_requests.py``).
"""

from __future__ import annotations

from typing import Any

from chalice_app import alarm_requests, names
from chalice_app import capture as capture_module
from chalice_app.config import Config
from chalice_app.scaling import gpu_instance

# GPU hosts need an NVIDIA driver as new as the Ray Serve image's CUDA (CUDA-compat mounting is off on
# these AMIs). The Amazon Linux 2023 one: driver 580, CUDA 13.0 (ProductionVariant.InferenceAmiVersion in
# SageMaker's API reference); the AL2 ones (driver 550, CUDA 12.4 at most) are past Amazon Linux 2's end
# of support (2026-06-30).
GPU_INFERENCE_AMI = "al2023-ami-sagemaker-inference-gpu-4-1"


def model_request(config: Config, run: str, model_data_url: str, dataset_uri: str | None) -> dict[str, Any]:
    """The Ray Serve inference container with the final job's ``model.tar.gz``: it reads the archive's own
    ``config.yaml``, so the model needs no environment of its own."""
    return {
        "ModelName": names.check(run, "model"),
        "ExecutionRoleArn": config.sagemaker_role_arn,
        "PrimaryContainer": {"Image": config.inference_image_uri, "ModelDataUrl": model_data_url},
        "Tags": names.tags(run, dataset_uri),
    }


def endpoint_config_request(config: Config, run: str, dataset_uri: str | None) -> dict[str, Any]:
    variant: dict[str, Any] = {"VariantName": alarm_requests.VARIANT, "ModelName": run}
    if config.serverless:
        variant["ServerlessConfig"] = {"MemorySizeInMB": 6144, "MaxConcurrency": 10}
    else:
        variant.update(
            {
                "InstanceType": config.inference_instance_type,
                "InitialInstanceCount": config.inference_instance_count,
                "InitialVariantWeight": 1.0,
            }
        )
        if gpu_instance(config.inference_instance_type):
            variant["InferenceAmiVersion"] = GPU_INFERENCE_AMI
    request = {
        "EndpointConfigName": names.check(run, "endpoint config"),
        "ProductionVariants": [variant],
        "Tags": names.tags(run, dataset_uri),
    }
    capture = capture_module.data_capture_config(config, names.project_of_run(run))
    return {**request, "DataCaptureConfig": capture} if capture else request


def create_endpoint_request(config: Config, project: str, run: str, dataset_uri: str | None) -> dict[str, Any]:
    return {
        "EndpointName": config.endpoint(project),
        "EndpointConfigName": run,
        "Tags": [*names.tags(run, dataset_uri), {"Key": names.TAG_PROJECT, "Value": project}],
    }


# The canary is one instance: SageMaker's canary must be at most half the variant's instances
# (API_TrafficRoutingConfig, "CanarySize"), and a percentage of a small fleet is rounded in ways AWS
# does not document; one instance of two or more is always valid and gets 1/N of the traffic.
CANARY = {"Type": "INSTANCE_COUNT", "Value": 1}


def update_endpoint_request(config: Config, project: str, run: str) -> dict[str, Any]:
    """Blue/green with guardrails on instances: a one-instance canary then all when there are two
    instances or more, else all at once; both bake ``ROLLOUT_BAKE_SECONDS`` watched by the project's
    alarms, which roll back. Serverless endpoints take no deployment config: they update in place."""
    request: dict[str, Any] = {"EndpointName": config.endpoint(project), "EndpointConfigName": run}
    if config.serverless:
        return request
    routing: dict[str, Any] = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": config.rollout_bake_seconds}
    if config.canary:
        routing = {
            "Type": "CANARY",
            "CanarySize": dict(CANARY),
            "WaitIntervalInSeconds": config.rollout_bake_seconds,
        }
    request["DeploymentConfig"] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": 120,
            "MaximumExecutionTimeoutInSeconds": max(600, 2 * config.rollout_bake_seconds + 1800),
        },
        "AutoRollbackConfiguration": {
            "Alarms": [{"AlarmName": a} for a in alarm_requests.rollback_alarm_names(config, project)]
        },
    }
    return request
