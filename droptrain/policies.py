"""Least privilege for the stage, in the region's partition: the functions' policy and the SageMaker
execution role's.

The functions create SageMaker resources only with a ``droptrain:run-id`` request tag, touch one
project's endpoint, model package group and alarms (``<ENDPOINT_PREFIX>-<project>``, lower-cased in
the ARN as SageMaker writes it), pass one role, publish to one
topic, send to one queue, read the bucket and write only under ``runs/`` (a write under
``datasets/`` would start a run). The execution role reads ``datasets/``, ``code/`` and ``runs/``,
writes only ``runs/``, pulls its images from the accounts their URIs name (that account differs by
region), and reads the rollback alarms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import botocore.session

_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<repo>[^:@]+)"
)


class PolicyError(Exception):
    pass


def partition_of(region: str) -> str:
    """``aws``, ``aws-cn``, ``aws-us-gov``...: ARNs are never written with a hard-coded partition."""
    return botocore.session.get_session().get_partition_for_region(region)


def image_repository_arn(image_uri: str, partition: str) -> str | None:
    """The ECR repository an image is pulled from, as an IAM resource (the account differs by region)."""
    match = _ECR_IMAGE.match(image_uri)
    if match is None:
        return None
    return f"arn:{partition}:ecr:{match['region']}:{match['account']}:repository/{match['repo']}"


def arn_parts(env: Mapping[str, str]) -> tuple[str, str, str]:
    """``(partition, region, account)`` of the stage, read from its topic's ARN."""
    _, partition, _, region, account, _ = env["NOTIFY_TOPIC_ARN"].split(":", 5)
    return partition, region, account


def stage_of(env: Mapping[str, str]) -> str:
    return env["NOTIFY_TOPIC_ARN"].rsplit(":", 1)[1].removeprefix("droptrain-")


def failed_events_queue(env: Mapping[str, str]) -> str:
    return f"droptrain-{stage_of(env)}-failed-events"


def project_prefix(env: Mapping[str, str]) -> str:
    """``<ENDPOINT_PREFIX>-``: every project's endpoint, model package group and alarms start so."""
    return f"{env.get('ENDPOINT_PREFIX') or env['ENDPOINT_NAME']}-"


def own_alarm_arns(env: Mapping[str, str]) -> list[str]:
    """The alarms the functions create for the projects' endpoints (``<prefix>-<project>-…``)."""
    partition, region, account = arn_parts(env)
    return [f"arn:{partition}:cloudwatch:{region}:{account}:alarm:{project_prefix(env)}*"]


def alarm_arns(env: Mapping[str, str]) -> list[str]:
    """The rollback alarms a deployment may name: the projects' own and any ROLLBACK_ALARMS."""
    partition, region, account = arn_parts(env)
    prefix = f"arn:{partition}:cloudwatch:{region}:{account}:alarm:"
    named = [a.strip() for a in env.get("ROLLBACK_ALARMS", "").split(",") if a.strip()]
    return [*own_alarm_arns(env), *(prefix + name for name in named)]


def _project_statements(env: Mapping[str, str], sm: str) -> list[dict[str, Any]]:
    """The projects' endpoints, model registry and alarms (all ``<prefix>-*``), and the reads that
    take no resource ARN: the projects' listing, prices and invocations."""
    # SageMaker lower-cases resource names in ARNs.
    projects = project_prefix(env).lower()
    endpoints = f"{sm}:endpoint/{projects}*"
    return [
        {
            "Sid": "ProjectEndpoints",
            "Effect": "Allow",
            "Action": [
                "sagemaker:CreateEndpoint",
                "sagemaker:UpdateEndpoint",
                "sagemaker:DeleteEndpoint",
                "sagemaker:DescribeEndpoint",
                "sagemaker:InvokeEndpoint",
                "sagemaker:AddTags",
                "sagemaker:DeleteTags",
                "sagemaker:ListTags",
            ],
            "Resource": [endpoints, f"{sm}:endpoint-config/*"],
        },
        {
            "Sid": "ProjectModelRegistry",
            "Effect": "Allow",
            "Action": [
                "sagemaker:CreateModelPackageGroup",
                "sagemaker:CreateModelPackage",
                "sagemaker:ListModelPackages",
                "sagemaker:DescribeModelPackage",
                "sagemaker:UpdateModelPackage",
                "sagemaker:AddTags",
                "sagemaker:ListTags",
                "sagemaker:DeleteTags",
            ],
            "Resource": [f"{sm}:model-package-group/{projects}*", f"{sm}:model-package/{projects}*/*"],
        },
        # List operations take no resource: the functions filter to <prefix>-* themselves.
        {"Sid": "ListProjects", "Effect": "Allow", "Action": "sagemaker:ListModelPackageGroups", "Resource": "*"},
        # The Price List API takes no resource ARN either (the run's cost forecast).
        {"Sid": "Prices", "Effect": "Allow", "Action": "pricing:GetProducts", "Resource": "*"},
        # Metric reads take no resource ARN either (whether an endpoint was invoked: IDLE_STOP_HOURS).
        {"Sid": "EndpointInvocations", "Effect": "Allow", "Action": "cloudwatch:GetMetricStatistics", "Resource": "*"},
        {
            "Sid": "ProjectAlarms",
            "Effect": "Allow",
            "Action": ["cloudwatch:PutMetricAlarm", "cloudwatch:TagResource"],
            "Resource": own_alarm_arns(env),
        },
    ]


def _allow(sid: str, action: str | list[str], resource: str | list[str], condition: dict | None = None) -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    return {**statement, "Condition": condition} if condition else statement


def lambda_policy(env: Mapping[str, str]) -> dict[str, Any]:
    """What the functions may do: SageMaker on resources tagged as droptrain's, one endpoint, one
    role to pass, one topic, one queue, the bucket (writing only under ``runs/``), their own logs
    and traces."""
    partition, region, account = arn_parts(env)
    sm = f"arn:{partition}:sagemaker:{region}:{account}"
    bucket = f"arn:{partition}:s3:::{env['DATA_BUCKET']}"
    runs = [f"{sm}:hyper-parameter-tuning-job/*", f"{sm}:training-job/*", f"{sm}:processing-job/*"]
    creates = ["HyperParameterTuningJob", "TrainingJob", "ProcessingJob", "Model", "EndpointConfig"]
    reads = ["DescribeHyperParameterTuningJob", "DescribeTrainingJob", "ListTags"]
    reads += ["ListTrainingJobsForHyperParameterTuningJob", "DescribeProcessingJob"]
    statements = [
        _allow(
            "CreateRunResourcesTagged",
            [*(f"sagemaker:Create{c}" for c in creates), "sagemaker:AddTags"],
            [*runs, f"{sm}:model/*", f"{sm}:endpoint-config/*"],
            {"StringLike": {"aws:RequestTag/droptrain:run-id": "?*"}},
        ),
        _allow("ReadRuns", [f"sagemaker:{r}" for r in reads], runs),
        _allow(
            "StopRunsThatCannotSucceed",
            "sagemaker:StopHyperParameterTuningJob",
            f"{sm}:hyper-parameter-tuning-job/*",
            {"StringLike": {"aws:ResourceTag/droptrain:run-id": "?*"}},
        ),
        *_project_statements(env, sm),
        # Batch predictions: the stage's own job names (<prefix>-<project>-batch-<token>), tagged with their run.
        _allow(
            "BatchJobs",
            ["sagemaker:CreateTransformJob", "sagemaker:AddTags"],
            f"{sm}:transform-job/{project_prefix(env).lower()}*",
            {"StringLike": {"aws:RequestTag/droptrain:run-id": "?*"}},
        ),
        _allow("ReadBatchJobs", "sagemaker:DescribeTransformJob", f"{sm}:transform-job/{project_prefix(env).lower()}*"),
        _allow("RollbackAlarms", "cloudwatch:DescribeAlarms", alarm_arns(env)),
        _allow(
            "PassTheSageMakerRole",
            "iam:PassRole",
            env["SAGEMAKER_ROLE_ARN"],
            {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        ),
        _allow("Notify", "sns:Publish", env["NOTIFY_TOPIC_ARN"]),
        _allow(
            "KeepFailedEvents", "sqs:SendMessage", f"arn:{partition}:sqs:{region}:{account}:{failed_events_queue(env)}"
        ),
        _allow("ListTheBucket", "s3:ListBucket", bucket),
        _allow("ReadTheBucket", "s3:GetObject", f"{bucket}/*"),
        _allow("WriteRunsOnly", ["s3:PutObject", "s3:DeleteObject"], f"{bucket}/runs/*"),
        _allow(
            "OwnLogs",
            ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/droptrain-*",
        ),
        _allow("Traces", ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "*"),
    ]
    return {"Version": "2012-10-17", "Statement": statements}


def sagemaker_role_policy(env: Mapping[str, str]) -> dict[str, Any]:
    """What training, batch jobs and endpoints may do: read datasets, code, runs and batch inputs, write only under
    ``runs/`` (writing ``datasets/`` would start runs), their logs and metrics, pull their images
    from the accounts the image URIs name, and read the rollback alarms."""
    partition, region, account = arn_parts(env)
    bucket = f"arn:{partition}:s3:::{env['DATA_BUCKET']}"
    images = sorted(
        {
            arn
            for key in ("TRAINING_IMAGE_URI", "AUDIT_IMAGE_URI", "INFERENCE_IMAGE_URI", "DEBUGGER_IMAGE_URI")
            if (arn := image_repository_arn(env.get(key, ""), partition))
        }
    )
    if not images:
        raise PolicyError("TRAINING_IMAGE_URI and INFERENCE_IMAGE_URI must be ECR image URIs")
    logs = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    statements = [
        _allow("ListTheBucket", "s3:ListBucket", bucket),
        _allow(
            "ReadInputs",
            "s3:GetObject",
            [f"{bucket}/datasets/*", f"{bucket}/code/*", f"{bucket}/runs/*", f"{bucket}/batch/*"],
        ),
        _allow("WriteRunsOnly", ["s3:PutObject", "s3:AbortMultipartUpload"], f"{bucket}/runs/*"),
        _allow("Logs", logs, f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/*"),
        _allow(
            "Metrics",
            "cloudwatch:PutMetricData",
            "*",
            {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "droptrain*"]}},
        ),
        _allow("RollbackAlarms", "cloudwatch:DescribeAlarms", alarm_arns(env)),
        _allow("EcrToken", "ecr:GetAuthorizationToken", "*"),
        _allow(
            "PullImages", ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"], images
        ),
    ]
    return {"Version": "2012-10-17", "Statement": statements}
