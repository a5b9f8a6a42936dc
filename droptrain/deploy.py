"""``droptrain deploy --stage dev``: from this checkout to a running stack in an AWS account.

Steps (each a function, so every one that needs no AWS is tested offline). The offline ones come
first, so that a machine without credentials gets as far as it can and then one clear line:

1. ``resolve_images``: the region's PyTorch training image and Ray Serve inference image, from the
   SageMaker SDK's own tables (``sagemaker.core.image_uris`` in SDK v3, ``sagemaker.image_uris`` in
   v2; ``pip install -e '.[deploy]'`` installs it). The versions are pinned here, once.
2. ``build_sourcedir``: ``training/`` as a reproducible ``sourcedir.tar.gz``, named by its hash.
3. (first call that needs credentials) the account, then ``stage_environment`` and
   ``lambda_policy``, written into ``.chalice/config.json`` and ``.chalice/policy-<stage>.json``.
4. ``layers/build.py``: the dependency layer (powertools, and the pinned boto3/botocore the handlers
   need: ``PutObject(IfNoneMatch)`` arrived in botocore 1.35.2).
5. ``merge_template`` + ``chalice package``: one SAM template holding the bucket (EventBridge on),
   the topic, the SageMaker execution role, the failed-events queue, the layer, the functions,
   rules and the REST API.
6. ``deploy_stack``: upload the artifacts, create or update the CloudFormation stack through a
   change set (none to make is success), wait, and upload the sourcedir into the stack's bucket.

Every failure reaches the user as one line (``DeployError``), never a traceback.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from droptrain import sourcedir

ROOT = Path(__file__).resolve().parent.parent
CHALICE_DIR = ROOT / ".chalice"
TRAINING_DIR = ROOT / "training"
LAMBDA_RUNTIME = "python3.12"
STAGES = ("dev", "prod")
# The images, pinned here and resolved per region through the SageMaker SDK's tables. PyTorch 2.10
# is the newest training image the SDK lists (Python 3.13); version 1.4 of AWS's Ray Serve inference
# image runs Ray 2.57.0, the Ray that pyproject.toml pins for the local runtime (a test keeps them in step).
TRAINING_FRAMEWORK_VERSION, TRAINING_PY_VERSION = "2.10.0", "py313"
RAY_SERVE_IMAGE_VERSION, RAY_SERVE_RAY_VERSION = "1.4", "2.57.0"
_HANDLER_FUNCTIONS = ("OnDatasetUploaded", "OnTuningJobStateChange", "OnTrainingJobStateChange", "OnEndpointStateChange", "APIHandler")
EVENT_FUNCTIONS = _HANDLER_FUNCTIONS[:-1]
# Events the event handlers still fail on after Lambda's retries are kept here (14 days).
FAILED_EVENTS_RETENTION_SECONDS = 14 * 24 * 3600
_ECR_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<repo>[^:@]+)")


class DeployError(Exception):
    pass


# -- 1. the images -----------------------------------------------------------------------------


def _image_uris() -> Any:
    try:
        from sagemaker.core import image_uris  # SageMaker SDK v3 (sagemaker-core)

        return image_uris
    except ImportError:
        pass
    try:
        from sagemaker import image_uris  # SageMaker SDK v2

        return image_uris
    except ImportError:
        raise DeployError("resolving the region's images needs the SageMaker SDK: pip install -e '.[deploy]' "
                          "(make deploy does), or pass --training-image and --inference-image") from None


def resolve_images(region: str, training_instance: str, inference_instance: str,
                   retrieve: Callable[..., str] | None = None) -> dict[str, str]:
    """The region's PyTorch training image and Ray Serve inference image (CPU or CUDA by instance type)."""
    retrieve = retrieve or _image_uris().retrieve
    inference = "ml.m5.large" if inference_instance == "serverless" else inference_instance
    try:
        return {
            "TRAINING_IMAGE_URI": retrieve("pytorch", region=region, version=TRAINING_FRAMEWORK_VERSION,
                                           py_version=TRAINING_PY_VERSION, instance_type=training_instance,
                                           image_scope="training"),
            "INFERENCE_IMAGE_URI": retrieve("ray-serve", region=region, version=RAY_SERVE_IMAGE_VERSION,
                                            instance_type=inference, image_scope="inference"),
        }
    except (ValueError, KeyError) as exc:
        raise DeployError(f"the SageMaker SDK has no image for this setting in {region}: {exc} "
                          "(pip install -U -e '.[deploy]' brings newer image tables)") from None


def image_repository_arn(image_uri: str, partition: str) -> str | None:
    """The ECR repository an image is pulled from, as an IAM resource (the account differs by region)."""
    match = _ECR_IMAGE.match(image_uri)
    if match is None:
        return None
    return f"arn:{partition}:ecr:{match['region']}:{match['account']}:repository/{match['repo']}"


# -- 3. the stage's environment ----------------------------------------------------------------


def partition_of(region: str) -> str:
    """``aws``, ``aws-cn``, ``aws-us-gov``...: ARNs are never written with a hard-coded partition."""
    import botocore.session

    return botocore.session.get_session().get_partition_for_region(region)


def stage_environment(stage: str, account: str, region: str, images: Mapping[str, str], sourcedir_key: str,
                      current: Mapping[str, str]) -> dict[str, str]:
    """The stage's variables: names derived from stage and account, other settings kept as they are."""
    partition = partition_of(region)
    bucket = f"droptrain-data-{stage}-{account}"
    return {
        **current,
        "DATA_BUCKET": bucket,
        "NOTIFY_TOPIC_ARN": f"arn:{partition}:sns:{region}:{account}:droptrain-{stage}",
        "SAGEMAKER_ROLE_ARN": f"arn:{partition}:iam::{account}:role/droptrain-sagemaker-{stage}",
        "TRAINING_IMAGE_URI": images["TRAINING_IMAGE_URI"],
        "INFERENCE_IMAGE_URI": images["INFERENCE_IMAGE_URI"],
        "SOURCE_DIR_S3_URI": f"s3://{bucket}/{sourcedir_key}",
        "ENDPOINT_NAME": current.get("ENDPOINT_NAME") or f"droptrain-{stage}",
        "API_KEY_REQUIRED": current.get("API_KEY_REQUIRED", "true" if stage == "prod" else "false"),
    }


def read_config(chalice_dir: Path = CHALICE_DIR) -> dict[str, Any]:
    return json.loads((chalice_dir / "config.json").read_text())


def stage_env(config: Mapping[str, Any], stage: str) -> dict[str, str]:
    if stage not in config.get("stages", {}):
        raise DeployError(f"stage {stage!r} is not in .chalice/config.json (stages: {', '.join(config.get('stages', {}))})")
    return {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}


def write_stage(chalice_dir: Path, stage: str, env: Mapping[str, str]) -> None:
    config = read_config(chalice_dir)
    shared = config.get("environment_variables", {})
    config["stages"][stage]["environment_variables"] = {k: v for k, v in env.items() if shared.get(k) != v}
    (chalice_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (chalice_dir / f"policy-{stage}.json").write_text(json.dumps(lambda_policy(env), indent=2) + "\n")


# -- least privilege -----------------------------------------------------------------------------


def _arn_parts(env: Mapping[str, str]) -> tuple[str, str, str]:
    """``(partition, region, account)`` of the stage, read from its topic's ARN."""
    _, partition, _, region, account, _ = env["NOTIFY_TOPIC_ARN"].split(":", 5)
    return partition, region, account


def stage_of(env: Mapping[str, str]) -> str:
    return env["NOTIFY_TOPIC_ARN"].rsplit(":", 1)[1].removeprefix("droptrain-")


def failed_events_queue(env: Mapping[str, str]) -> str:
    return f"droptrain-{stage_of(env)}-failed-events"


def _alarm_arns(env: Mapping[str, str]) -> list[str]:
    """The rollback alarms a deployment may name: the stage's own and any ROLLBACK_ALARMS."""
    partition, region, account = _arn_parts(env)
    prefix = f"arn:{partition}:cloudwatch:{region}:{account}:alarm:"
    named = [a.strip() for a in env.get("ROLLBACK_ALARMS", "").split(",") if a.strip()]
    return [f"{prefix}droptrain-{stage_of(env)}-*", *(prefix + name for name in named)]


def lambda_policy(env: Mapping[str, str]) -> dict[str, Any]:
    """What the functions may do: SageMaker on resources tagged as droptrain's, one endpoint, one
    role to pass, one topic, one queue, the bucket (writing only under ``runs/``), their own logs
    and traces."""
    partition, region, account = _arn_parts(env)
    sm = f"arn:{partition}:sagemaker:{region}:{account}"
    bucket = f"arn:{partition}:s3:::{env['DATA_BUCKET']}"
    # SageMaker lower-cases resource names in ARNs.
    endpoint = f"{sm}:endpoint/{env['ENDPOINT_NAME'].lower()}"
    tagged = {"StringLike": {"aws:RequestTag/droptrain:run-id": "?*"}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "CreateRunResourcesTagged", "Effect": "Allow",
             "Action": ["sagemaker:CreateHyperParameterTuningJob", "sagemaker:CreateTrainingJob",
                        "sagemaker:CreateModel", "sagemaker:CreateEndpointConfig", "sagemaker:AddTags"],
             "Resource": [f"{sm}:hyper-parameter-tuning-job/*", f"{sm}:training-job/*", f"{sm}:model/*",
                          f"{sm}:endpoint-config/*"],
             "Condition": tagged},
            {"Sid": "ReadRuns", "Effect": "Allow",
             "Action": ["sagemaker:DescribeHyperParameterTuningJob", "sagemaker:DescribeTrainingJob", "sagemaker:ListTags"],
             "Resource": [f"{sm}:hyper-parameter-tuning-job/*", f"{sm}:training-job/*"]},
            {"Sid": "TheEndpoint", "Effect": "Allow",
             "Action": ["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:DeleteEndpoint",
                        "sagemaker:DescribeEndpoint", "sagemaker:InvokeEndpoint", "sagemaker:AddTags",
                        "sagemaker:DeleteTags", "sagemaker:ListTags"],
             "Resource": [endpoint, f"{sm}:endpoint-config/*"]},
            {"Sid": "RollbackAlarms", "Effect": "Allow", "Action": "cloudwatch:DescribeAlarms", "Resource": _alarm_arns(env)},
            {"Sid": "PassTheSageMakerRole", "Effect": "Allow", "Action": "iam:PassRole",
             "Resource": env["SAGEMAKER_ROLE_ARN"],
             "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}},
            {"Sid": "Notify", "Effect": "Allow", "Action": "sns:Publish", "Resource": env["NOTIFY_TOPIC_ARN"]},
            {"Sid": "KeepFailedEvents", "Effect": "Allow", "Action": "sqs:SendMessage",
             "Resource": f"arn:{partition}:sqs:{region}:{account}:{failed_events_queue(env)}"},
            {"Sid": "ListTheBucket", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket},
            {"Sid": "ReadTheBucket", "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket}/*"},
            {"Sid": "WriteRunsOnly", "Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
             "Resource": f"{bucket}/runs/*"},
            {"Sid": "OwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/droptrain-*"},
            {"Sid": "Traces", "Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "Resource": "*"},
        ],
    }


def sagemaker_role_policy(env: Mapping[str, str]) -> dict[str, Any]:
    """What training jobs and endpoints may do: read datasets, code and runs, write only under
    ``runs/`` (writing ``datasets/`` would start runs), their logs and metrics, pull their images
    from the accounts the image URIs name, and read the rollback alarms."""
    partition, region, account = _arn_parts(env)
    bucket = f"arn:{partition}:s3:::{env['DATA_BUCKET']}"
    images = sorted({arn for key in ("TRAINING_IMAGE_URI", "INFERENCE_IMAGE_URI", "DEBUGGER_IMAGE_URI")
                     if (arn := image_repository_arn(env.get(key, ""), partition))})
    if not images:
        raise DeployError("TRAINING_IMAGE_URI and INFERENCE_IMAGE_URI must be ECR image URIs")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ListTheBucket", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket},
            {"Sid": "ReadInputs", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": [f"{bucket}/datasets/*", f"{bucket}/code/*", f"{bucket}/runs/*"]},
            {"Sid": "WriteRunsOnly", "Effect": "Allow", "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
             "Resource": f"{bucket}/runs/*"},
            {"Sid": "Logs", "Effect": "Allow",
             "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
             "Resource": f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/*"},
            {"Sid": "Metrics", "Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
             "Condition": {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "droptrain*"]}}},
            {"Sid": "RollbackAlarms", "Effect": "Allow", "Action": "cloudwatch:DescribeAlarms", "Resource": _alarm_arns(env)},
            {"Sid": "EcrToken", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Sid": "PullImages", "Effect": "Allow",
             "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
             "Resource": images},
        ],
    }


# -- 2. the training code --------------------------------------------------------------------


def build_sourcedir(training_dir: Path = TRAINING_DIR) -> tuple[bytes, str]:
    """``training/`` as a tar.gz with fixed metadata, and its key ``code/sourcedir-<hash>.tar.gz``."""
    return sourcedir.build(training_dir)


# -- 5. one template ---------------------------------------------------------------------------


def merge_template(env: Mapping[str, str], stage: str, layer_uri: str = "./layer.zip") -> dict[str, Any]:
    """What ``chalice package --merge-template`` adds: the stage's resources, the layer, the runtime,
    and an on-failure destination for events the handlers could not process after Lambda's retries."""
    bucket = env["DATA_BUCKET"]
    topic = env["NOTIFY_TOPIC_ARN"].rsplit(":", 1)[1]
    role = env["SAGEMAKER_ROLE_ARN"].rsplit("/", 1)[1]
    function = {"Properties": {"Runtime": LAMBDA_RUNTIME, "Layers": [{"Ref": "DependenciesLayer"}]}}
    event_function = {"Properties": {**function["Properties"], "EventInvokeConfig": {
        "MaximumRetryAttempts": 2,
        "DestinationConfig": {"OnFailure": {"Type": "SQS", "Destination": {"Fn::GetAtt": ["FailedEventsQueue", "Arn"]}}},
    }}}
    template = {
        "Resources": {
            "DataBucket": {
                "Type": "AWS::S3::Bucket",
                "DeletionPolicy": "Retain",
                "UpdateReplacePolicy": "Retain",
                "Properties": {
                    "BucketName": bucket,
                    # Uploads reach the app through EventBridge, not bucket notifications (ARCHITECTURE.md).
                    "NotificationConfiguration": {"EventBridgeConfiguration": {"EventBridgeEnabled": True}},
                    "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                                       "IgnorePublicAcls": True, "RestrictPublicBuckets": True},
                    "BucketEncryption": {"ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
                    "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                },
            },
            "NotifyTopic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": topic}},
            "FailedEventsQueue": {"Type": "AWS::SQS::Queue", "Properties": {
                "QueueName": failed_events_queue(env), "MessageRetentionPeriod": FAILED_EVENTS_RETENTION_SECONDS,
                "SqsManagedSseEnabled": True}},
            "SageMakerExecutionRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "RoleName": role,
                    "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                        "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
                    "Policies": [{"PolicyName": "droptrain-sagemaker", "PolicyDocument": sagemaker_role_policy(env)}],
                },
            },
            "DependenciesLayer": {
                "Type": "AWS::Serverless::LayerVersion",
                "Properties": {"LayerName": f"droptrain-{stage}-dependencies", "ContentUri": layer_uri,
                               "CompatibleRuntimes": [LAMBDA_RUNTIME], "CompatibleArchitectures": ["x86_64"]},
            },
            **{name: (event_function if name in EVENT_FUNCTIONS else function) for name in _HANDLER_FUNCTIONS},
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
        template["Resources"].update({
            "ApiKey": {"Type": "AWS::ApiGateway::ApiKey", "DependsOn": ["RestAPI"],
                       "Properties": {"Name": f"droptrain-{stage}", "Enabled": True}},
            "UsagePlan": {"Type": "AWS::ApiGateway::UsagePlan", "Properties": {
                "UsagePlanName": f"droptrain-{stage}",
                "ApiStages": [{"ApiId": {"Ref": "RestAPI"}, "Stage": {"Ref": "RestAPI.Stage"}}],
                "Throttle": {"RateLimit": 50, "BurstLimit": 100}}},
            "UsagePlanKey": {"Type": "AWS::ApiGateway::UsagePlanKey", "Properties": {
                "KeyId": {"Ref": "ApiKey"}, "KeyType": "API_KEY", "UsagePlanId": {"Ref": "UsagePlan"}}},
        })
        template["Outputs"]["ApiKeyId"] = {"Value": {"Ref": "ApiKey"},
                                           "Description": "aws apigateway get-api-key --include-value --api-key <id>"}
    return template


def _last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return next((line.strip() for line in reversed((text or "").splitlines()) if line.strip()), "")


def package(stage: str, out: Path, layer_zip: Path, chalice_dir: Path = CHALICE_DIR,
            run: Callable[..., Any] = subprocess.run) -> Path:
    """``chalice package`` with the merge template; returns the SAM template's path."""
    env = stage_env(read_config(chalice_dir), stage)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    merge = out.parent / f"merge-{stage}.json"
    merge.write_text(json.dumps(merge_template(env, stage), indent=2))
    chalice = Path(sys.executable).with_name("chalice")
    try:
        run([str(chalice if chalice.exists() else "chalice"), "package", "--stage", stage, "--merge-template", str(merge), str(out)],
            cwd=chalice_dir.parent, check=True, capture_output=True, text=True,
            env={**os.environ, "AWS_DEFAULT_REGION": _arn_parts(env)[1]})
    except subprocess.CalledProcessError as exc:
        raise DeployError(f"chalice package failed: {_last_line(exc.stderr) or _last_line(exc.stdout) or exc}") from None
    except OSError as exc:
        raise DeployError(f"chalice package could not run: {exc}") from None
    shutil.copy(layer_zip, out / "layer.zip")
    return out / "sam.json"


def build_layer(out: Path) -> Path:
    """``layers/build.py`` (a script beside the app, not an installed module)."""
    spec = importlib.util.spec_from_file_location("droptrain_layer_build", ROOT / "layers" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.build(out)
    except subprocess.CalledProcessError as exc:
        raise DeployError(f"building the Lambda layer failed: {_last_line(exc.stderr) or exc}") from None


# -- 6. into the account -----------------------------------------------------------------------

# What CloudFormation says when a change set would change nothing: the stack is up to date.
_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")


def _no_changes(exc: Exception) -> bool:
    reason = str(getattr(exc, "last_response", {}).get("StatusReason", "")) + str(exc)
    return any(text in reason for text in _NO_CHANGES)


def deploy_stack(session: Any, stage: str, package_dir: Path, sourcedir_bytes: bytes, sourcedir_key: str,
                 env: Mapping[str, str], say: Callable[[str], None] = print) -> dict[str, str]:
    """Upload the artifacts, create or update the stack, wait, and put the sourcedir in place."""
    from botocore.exceptions import ClientError, WaiterError

    _, region, account = _arn_parts(env)
    s3 = session.client("s3", region_name=region)
    cfn = session.client("cloudformation", region_name=region)
    artifacts = f"droptrain-deploy-{account}-{region}"
    try:
        s3.head_bucket(Bucket=artifacts)
    except ClientError:
        say(f"creating the deployment bucket {artifacts}")
        kwargs = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=artifacts, **kwargs)
    template = json.loads((package_dir / "sam.json").read_text())
    uploaded: dict[str, str] = {}
    for name in ("deployment.zip", "layer.zip"):
        data = (package_dir / name).read_bytes()
        key = f"{stage}/{hashlib.sha256(data).hexdigest()[:16]}-{name}"
        s3.put_object(Bucket=artifacts, Key=key, Body=data)
        uploaded[f"./{name}"] = f"s3://{artifacts}/{key}"
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        for field in ("CodeUri", "ContentUri"):
            if props.get(field) in uploaded:
                props[field] = uploaded[props[field]]
    body = json.dumps(template)
    template_key = f"{stage}/{hashlib.sha256(body.encode()).hexdigest()[:16]}-template.json"
    s3.put_object(Bucket=artifacts, Key=template_key, Body=body.encode())
    stack = f"droptrain-{stage}"
    exists = True
    try:
        cfn.describe_stacks(StackName=stack)
    except ClientError:
        exists = False
    change_set = f"droptrain-{stage}-{template_key.split('/')[1][:16]}"
    cfn.create_change_set(
        StackName=stack, ChangeSetName=change_set, ChangeSetType="UPDATE" if exists else "CREATE",
        TemplateURL=f"https://{artifacts}.s3.{region}.amazonaws.com/{template_key}",
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        Tags=[{"Key": "droptrain:stage", "Value": stage}],
    )
    say(f"waiting for change set {change_set}")
    try:
        cfn.get_waiter("change_set_create_complete").wait(StackName=stack, ChangeSetName=change_set)
    except WaiterError as exc:
        if not (exists and _no_changes(exc)):
            raise
        cfn.delete_change_set(StackName=stack, ChangeSetName=change_set)
        say(f"stack {stack} is already up to date")
    else:
        cfn.execute_change_set(StackName=stack, ChangeSetName=change_set)
        say(f"{'updating' if exists else 'creating'} stack {stack}")
        cfn.get_waiter("stack_update_complete" if exists else "stack_create_complete").wait(StackName=stack)
    s3.put_object(Bucket=env["DATA_BUCKET"], Key=sourcedir_key, Body=sourcedir_bytes)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])}
    return outputs


def _explain(exc: Exception) -> str:
    """One line for an AWS failure: what failed and what AWS said."""
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, WaiterError

    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials found: configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY) and run it again")
    if isinstance(exc, NoRegionError):
        return "no AWS region configured: set AWS_REGION (or aws configure) and run it again"
    if isinstance(exc, WaiterError):
        response = getattr(exc, "last_response", {}) or {}
        reason = response.get("StatusReason") or next(
            (s.get("StackStatusReason") for s in response.get("Stacks", []) if s.get("StackStatusReason")), "")
        return f"{exc.kwargs.get('name')} did not complete: {reason or exc.kwargs.get('reason') or 'see the stack events in the console'}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{exc.operation_name} failed: {error.get('Code', '')}: {error.get('Message', '')}"
    return " ".join(str(exc).split())


def deploy(stage: str, training_image: str | None = None, inference_image: str | None = None,
           say: Callable[[str], None] = print, session: Any = None) -> dict[str, str]:
    """Offline steps first, then the account: every failure becomes one ``DeployError`` line."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        session = session or boto3.session.Session()
        region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
        current = stage_env(read_config(), stage)
        images = ({"TRAINING_IMAGE_URI": training_image, "INFERENCE_IMAGE_URI": inference_image}
                  if training_image and inference_image
                  else resolve_images(region, current.get("TRAINING_INSTANCE_TYPE", "ml.g4dn.xlarge"),
                                      current.get("INFERENCE_INSTANCE_TYPE", "ml.m5.large")))
        say(f"images for {region}: training {images['TRAINING_IMAGE_URI']}, serving {images['INFERENCE_IMAGE_URI']}")
        code, key = build_sourcedir()
        say(f"training code: {key}")
        account = session.client("sts", region_name=region).get_caller_identity()["Account"]
        env = stage_environment(stage, account, region, images, key, current)
        write_stage(CHALICE_DIR, stage, env)
        say(f"stage {stage}: account {account}, region {region}, bucket {env['DATA_BUCKET']}")
        build_dir = ROOT / "build"
        layer = build_layer(build_dir / "layer.zip")
        package_dir = build_dir / f"package-{stage}"
        package(stage, package_dir, layer)
        outputs = deploy_stack(session, stage, package_dir, code, key, env, say)
    except (BotoCoreError, ClientError) as exc:
        raise DeployError(_explain(exc)) from None
    say(f"deployed: API {outputs.get('EndpointURL', '?')}; upload datasets to s3://{env['DATA_BUCKET']}/datasets/")
    return outputs
