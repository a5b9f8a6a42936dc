"""The stage's SAM template: ``chalice package`` with a merge template that adds what Chalice does not
make (the bucket with EventBridge on, the topic, the failed-events queue, the SageMaker execution
role, the dependency layer, python3.12 on every function, the API key where the stage wants one).
Offline: ``make package`` and the tests build it without an AWS account.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from droptrain import project
from droptrain.policies import arn_parts, failed_events_queue, lambda_policy, sagemaker_role_policy

# The checkout's stages (a wheel's commands use project.chalice_dir(): see droptrain/project.py).
CHALICE_DIR = project.CHECKOUT / ".chalice"
LAMBDA_RUNTIME = "python3.12"
HANDLER_FUNCTIONS = (
    "OnDatasetUploaded",
    "OnProcessingJobStateChange",
    "OnTuningJobStateChange",
    "OnTrainingJobStateChange",
    "OnEndpointStateChange",
    "OnModelPackageStateChange",
    "OnTransformJobStateChange",
    "OnDriftCheckStateChange",
    "CheckDrift",
    "StopIdleEndpoints",
    "APIHandler",
)
EVENT_FUNCTIONS = HANDLER_FUNCTIONS[:-1]
# Events the event handlers still fail on after Lambda's retries are kept here (14 days).
FAILED_EVENTS_RETENTION_SECONDS = 14 * 24 * 3600


class TemplateError(Exception):
    pass


def read_config(chalice_dir: Path | None = None) -> dict[str, Any]:
    return json.loads(((chalice_dir or project.chalice_dir()) / "config.json").read_text())


def stage_env(config: Mapping[str, Any], stage: str) -> dict[str, str]:
    if stage not in config.get("stages", {}):
        raise TemplateError(
            f"stage {stage!r} is not in .chalice/config.json (stages: {', '.join(config.get('stages', {}))})"
        )
    return {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}


def merge_template(env: Mapping[str, str], stage: str, layer_uri: str = "./layer.zip") -> dict[str, Any]:
    """What ``chalice package --merge-template`` adds: the stage's resources, the layer, the runtime,
    and an on-failure destination for events the handlers could not process after Lambda's retries."""
    function = {"Properties": {"Runtime": LAMBDA_RUNTIME, "Layers": [{"Ref": "DependenciesLayer"}]}}
    event_function = {
        "Properties": {
            **function["Properties"],
            "EventInvokeConfig": {
                "MaximumRetryAttempts": 2,
                "DestinationConfig": {
                    "OnFailure": {"Type": "SQS", "Destination": {"Fn::GetAtt": ["FailedEventsQueue", "Arn"]}}
                },
            },
        }
    }
    template = {
        "Resources": {
            **_stage_resources(env, stage, layer_uri),
            **{name: (event_function if name in EVENT_FUNCTIONS else function) for name in HANDLER_FUNCTIONS},
            # In the API's own property, which SAM writes into the API's definition: separate
            # AWS::ApiGateway::GatewayResponse resources are dropped by SAM's next redeployment.
            "RestAPI": {"Properties": {"GatewayResponses": gateway_responses()}},
        },
        "Outputs": {
            "DataBucketName": {"Value": {"Ref": "DataBucket"}},
            "NotifyTopicArn": {"Value": {"Ref": "NotifyTopic"}},
            "FailedEventsQueueUrl": {"Value": {"Ref": "FailedEventsQueue"}},
        },
    }
    if env.get("API_KEY_REQUIRED", "false").lower() == "true":
        # Chalice marks the routes as needing a key but creates none: without a key in a usage
        # plan, every request would be refused.
        template["Resources"].update(_api_key_resources(stage))
        template["Outputs"]["ApiKeyId"] = {
            "Value": {"Ref": "ApiKey"},
            "Description": "aws apigateway get-api-key --include-value --api-key <id>",
        }
    return template


def _stage_resources(env: Mapping[str, str], stage: str, layer_uri: str) -> dict[str, Any]:
    bucket_properties = {
        "BucketName": env["DATA_BUCKET"],
        # Uploads reach the app through EventBridge, not bucket notifications (docs/architecture.md).
        "NotificationConfiguration": {"EventBridgeConfiguration": {"EventBridgeEnabled": True}},
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        },
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
    }
    assume = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    return {
        "DataBucket": {
            "Type": "AWS::S3::Bucket",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": bucket_properties,
        },
        "NotifyTopic": {
            "Type": "AWS::SNS::Topic",
            "Properties": {"TopicName": env["NOTIFY_TOPIC_ARN"].rsplit(":", 1)[1]},
        },
        "FailedEventsQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": failed_events_queue(env),
                "MessageRetentionPeriod": FAILED_EVENTS_RETENTION_SECONDS,
                "SqsManagedSseEnabled": True,
            },
        },
        "SageMakerExecutionRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "RoleName": env["SAGEMAKER_ROLE_ARN"].rsplit("/", 1)[1],
                "AssumeRolePolicyDocument": assume,
                "Policies": [{"PolicyName": "droptrain-sagemaker", "PolicyDocument": sagemaker_role_policy(env)}],
            },
        },
        "DependenciesLayer": {
            "Type": "AWS::Serverless::LayerVersion",
            "Properties": {
                "LayerName": f"droptrain-{stage}-dependencies",
                "ContentUri": layer_uri,
                "CompatibleRuntimes": [LAMBDA_RUNTIME],
                "CompatibleArchitectures": ["x86_64"],
            },
        },
    }


# API Gateway answers some requests itself (no such route or method, a missing or wrong API key,
# throttling, a body over its limit, its own failures). These gateway responses give those answers
# the API's error shape; their templates allow variable substitution only (no VTL), so each response
# type names its code.
GATEWAY_ERROR_CODES = {
    "MISSING_AUTHENTICATION_TOKEN": "missing_authentication_token",
    "INVALID_API_KEY": "forbidden",
    "REQUEST_TOO_LARGE": "payload_too_large",
    "THROTTLED": "throttled",
    "QUOTA_EXCEEDED": "throttled",
    "INTEGRATION_TIMEOUT": "timeout",
    "DEFAULT_4XX": "bad_request",
    "DEFAULT_5XX": "internal_error",
}


def gateway_responses() -> dict[str, Any]:
    """``AWS::Serverless::Api``'s ``GatewayResponses``, keyed by response type."""
    return {
        kind: {
            "ResponseTemplates": {
                "application/json": f'{{"error": {{"code": "{code}", "message": $context.error.messageString}}}}'
            }
        }
        for kind, code in GATEWAY_ERROR_CODES.items()
    }


def _api_key_resources(stage: str) -> dict[str, Any]:
    return {
        "ApiKey": {
            "Type": "AWS::ApiGateway::ApiKey",
            "DependsOn": ["RestAPI"],
            "Properties": {"Name": f"droptrain-{stage}", "Enabled": True},
        },
        "UsagePlan": {
            "Type": "AWS::ApiGateway::UsagePlan",
            "Properties": {
                "UsagePlanName": f"droptrain-{stage}",
                "ApiStages": [{"ApiId": {"Ref": "RestAPI"}, "Stage": {"Ref": "RestAPI.Stage"}}],
                "Throttle": {"RateLimit": 50, "BurstLimit": 100},
            },
        },
        "UsagePlanKey": {
            "Type": "AWS::ApiGateway::UsagePlanKey",
            "Properties": {"KeyId": {"Ref": "ApiKey"}, "KeyType": "API_KEY", "UsagePlanId": {"Ref": "UsagePlan"}},
        },
    }


def _last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return next((line.strip() for line in reversed((text or "").splitlines()) if line.strip()), "")


def package(
    stage: str,
    out: Path,
    layer_zip: Path,
    chalice_dir: Path | None = None,
    run: Callable[..., Any] = subprocess.run,
) -> Path:
    """``chalice package`` with the merge template; returns the SAM template's path."""
    chalice_dir = chalice_dir or project.chalice_dir()
    env = stage_env(read_config(chalice_dir), stage)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    merge = out.parent / f"merge-{stage}.json"
    merge.write_text(json.dumps(merge_template(env, stage), indent=2))
    # The functions' role is the code's current policy for this stage, never a stale copy.
    policy = chalice_dir / f"policy-{stage}.json"
    current = json.dumps(lambda_policy(env), indent=2) + "\n"
    if not policy.exists() or policy.read_text() != current:
        policy.write_text(current)
    chalice = Path(sys.executable).with_name("chalice")
    try:
        run(
            [
                str(chalice if chalice.exists() else "chalice"),
                "package",
                "--stage",
                stage,
                "--merge-template",
                str(merge),
                str(out),
            ],
            cwd=chalice_dir.parent,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "AWS_DEFAULT_REGION": arn_parts(env)[1]},
        )
    except subprocess.CalledProcessError as exc:
        raise TemplateError(
            f"chalice package failed: {_last_line(exc.stderr) or _last_line(exc.stdout) or exc}"
        ) from None
    except OSError as exc:
        raise TemplateError(f"chalice package could not run: {exc}") from None
    shutil.copy(layer_zip, out / "layer.zip")
    return out / "sam.json"


def build_layer(out: Path) -> Path:
    """``layers/build.py`` (a script beside the app, not an installed module)."""
    spec = importlib.util.spec_from_file_location("droptrain_layer_build", project.LAYER_BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.build(out)
    except subprocess.CalledProcessError as exc:
        raise TemplateError(f"building the Lambda layer failed: {_last_line(exc.stderr) or exc}") from None
