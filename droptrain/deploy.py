"""``droptrain deploy --stage dev``: from this checkout to a running stack in an AWS account.

Steps (each a function, so every one that needs no AWS is tested offline):

1. ``stage_environment``: the stage's variables from the account, region and PyTorch DLC images
   (resolved with the SageMaker SDK), written into ``.chalice/config.json``.
2. ``lambda_policy``: the functions' least-privilege IAM policy, written to ``.chalice/policy-<stage>.json``.
3. ``build_sourcedir``: ``training/`` as a reproducible ``sourcedir.tar.gz``, named by its hash.
4. ``layers/build.py``: the dependency layer.
5. ``merge_template`` + ``chalice package``: one SAM template holding the bucket (EventBridge on),
   the topic, the SageMaker execution role, the layer, the functions, rules and the REST API.
6. ``deploy_stack``: upload the artifacts, create or update the CloudFormation stack, wait, and
   upload the sourcedir into the bucket the stack made.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
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
# The PyTorch Deep Learning Containers the SageMaker SDK resolves per region.
FRAMEWORK_VERSION, PY_VERSION = "2.5.1", "py311"
DLC_ACCOUNTS_ARN = "arn:aws:ecr:*:763104351884:repository/*"
_HANDLER_FUNCTIONS = ("OnDatasetUploaded", "OnTuningJobStateChange", "OnTrainingJobStateChange", "OnEndpointStateChange", "APIHandler")


class DeployError(Exception):
    pass


# -- 1. the stage's environment --------------------------------------------------------------


def resolve_images(region: str, training_instance: str, inference_instance: str) -> dict[str, str]:
    """The region's PyTorch training and inference images, through the SageMaker SDK."""
    try:
        from sagemaker import image_uris
    except ImportError as exc:
        raise DeployError("resolving the PyTorch images needs the SageMaker SDK: pip install 'sagemaker>=2.200', "
                          "or pass --training-image and --inference-image") from exc
    inference = "ml.m5.large" if inference_instance == "serverless" else inference_instance
    return {
        "TRAINING_IMAGE_URI": image_uris.retrieve("pytorch", region, version=FRAMEWORK_VERSION, py_version=PY_VERSION,
                                                  instance_type=training_instance, image_scope="training"),
        "INFERENCE_IMAGE_URI": image_uris.retrieve("pytorch", region, version=FRAMEWORK_VERSION, py_version=PY_VERSION,
                                                   instance_type=inference, image_scope="inference"),
    }


def stage_environment(stage: str, account: str, region: str, images: Mapping[str, str], sourcedir_key: str,
                      current: Mapping[str, str]) -> dict[str, str]:
    """The stage's variables: names derived from stage and account, other settings kept as they are."""
    bucket = f"droptrain-data-{stage}-{account}"
    return {
        **current,
        "DATA_BUCKET": bucket,
        "NOTIFY_TOPIC_ARN": f"arn:aws:sns:{region}:{account}:droptrain-{stage}",
        "SAGEMAKER_ROLE_ARN": f"arn:aws:iam::{account}:role/droptrain-sagemaker-{stage}",
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


# -- 2. least privilege ----------------------------------------------------------------------


def _arn_parts(env: Mapping[str, str]) -> tuple[str, str]:
    _, _, _, region, account, _ = env["NOTIFY_TOPIC_ARN"].split(":", 5)
    return region, account


def lambda_policy(env: Mapping[str, str]) -> dict[str, Any]:
    """What the functions may do: SageMaker on resources tagged as droptrain's, one endpoint, one
    role to pass, one topic, one bucket, their own logs and traces."""
    region, account = _arn_parts(env)
    sm = f"arn:aws:sagemaker:{region}:{account}"
    bucket = env["DATA_BUCKET"]
    endpoint = f"{sm}:endpoint/{env['ENDPOINT_NAME']}"
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
             "Action": ["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:DescribeEndpoint",
                        "sagemaker:InvokeEndpoint", "sagemaker:AddTags", "sagemaker:DeleteTags", "sagemaker:ListTags"],
             "Resource": [endpoint, f"{sm}:endpoint-config/*"]},
            {"Sid": "PassTheSageMakerRole", "Effect": "Allow", "Action": "iam:PassRole",
             "Resource": env["SAGEMAKER_ROLE_ARN"],
             "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}},
            {"Sid": "Notify", "Effect": "Allow", "Action": "sns:Publish", "Resource": env["NOTIFY_TOPIC_ARN"]},
            {"Sid": "ListTheBucket", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"},
            {"Sid": "ObjectsInTheBucket", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": f"arn:aws:s3:::{bucket}/*"},
            {"Sid": "OwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/droptrain-*"},
            {"Sid": "Traces", "Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "Resource": "*"},
        ],
    }


def sagemaker_role_policy(env: Mapping[str, str]) -> dict[str, Any]:
    """What training jobs and endpoints may do: their bucket, their logs and metrics, pull the DLC images."""
    region, account = _arn_parts(env)
    bucket = env["DATA_BUCKET"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"},
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": f"arn:aws:s3:::{bucket}/*"},
            {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
             "Resource": f"arn:aws:logs:{region}:{account}:log-group:/aws/sagemaker/*"},
            {"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
             "Condition": {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "droptrain*"]}}},
            {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Effect": "Allow", "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
             "Resource": DLC_ACCOUNTS_ARN},
        ],
    }


# -- 3. the training code --------------------------------------------------------------------


def build_sourcedir(training_dir: Path = TRAINING_DIR) -> tuple[bytes, str]:
    """``training/`` as a tar.gz with fixed metadata, and its key ``code/sourcedir-<hash>.tar.gz``."""
    return sourcedir.build(training_dir)


# -- 5. one template ---------------------------------------------------------------------------


def merge_template(env: Mapping[str, str], stage: str, layer_uri: str = "./layer.zip") -> dict[str, Any]:
    """What ``chalice package --merge-template`` adds: the stage's resources, the layer, the runtime."""
    bucket = env["DATA_BUCKET"]
    topic = env["NOTIFY_TOPIC_ARN"].rsplit(":", 1)[1]
    role = env["SAGEMAKER_ROLE_ARN"].rsplit("/", 1)[1]
    function = {"Properties": {"Runtime": LAMBDA_RUNTIME, "Layers": [{"Ref": "DependenciesLayer"}]}}
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
            **{name: function for name in _HANDLER_FUNCTIONS},
        },
        "Outputs": {
            "DataBucketName": {"Value": {"Ref": "DataBucket"}},
            "NotifyTopicArn": {"Value": {"Ref": "NotifyTopic"}},
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
    run([str(chalice if chalice.exists() else "chalice"), "package", "--stage", stage, "--merge-template", str(merge), str(out)],
        cwd=chalice_dir.parent, check=True, env={**os.environ, "AWS_DEFAULT_REGION": _arn_parts(env)[0]})
    shutil.copy(layer_zip, out / "layer.zip")
    return out / "sam.json"


def build_layer(out: Path) -> Path:
    """``layers/build.py`` (a script beside the app, not an installed module)."""
    spec = importlib.util.spec_from_file_location("droptrain_layer_build", ROOT / "layers" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(out)


# -- 6. into the account -----------------------------------------------------------------------


def deploy_stack(session: Any, stage: str, package_dir: Path, sourcedir: bytes, sourcedir_key: str,
                 env: Mapping[str, str], say: Callable[[str], None] = print) -> dict[str, str]:
    """Upload the artifacts, create or update the stack, wait, and put the sourcedir in place."""
    region, account = _arn_parts(env)
    s3 = session.client("s3", region_name=region)
    cfn = session.client("cloudformation", region_name=region)
    artifacts = f"droptrain-deploy-{account}-{region}"
    try:
        s3.head_bucket(Bucket=artifacts)
    except s3.exceptions.ClientError:
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
    except cfn.exceptions.ClientError:
        exists = False
    change_set = f"droptrain-{stage}-{template_key.split('/')[1][:16]}"
    cfn.create_change_set(
        StackName=stack, ChangeSetName=change_set, ChangeSetType="UPDATE" if exists else "CREATE",
        TemplateURL=f"https://{artifacts}.s3.{region}.amazonaws.com/{template_key}",
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        Tags=[{"Key": "droptrain:stage", "Value": stage}],
    )
    say(f"waiting for change set {change_set}")
    cfn.get_waiter("change_set_create_complete").wait(StackName=stack, ChangeSetName=change_set)
    cfn.execute_change_set(StackName=stack, ChangeSetName=change_set)
    say(f"{'updating' if exists else 'creating'} stack {stack}")
    cfn.get_waiter("stack_update_complete" if exists else "stack_create_complete").wait(StackName=stack)
    s3.put_object(Bucket=env["DATA_BUCKET"], Key=sourcedir_key, Body=sourcedir)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])}
    return outputs


def deploy(stage: str, training_image: str | None = None, inference_image: str | None = None,
           say: Callable[[str], None] = print) -> dict[str, str]:
    import boto3

    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    account = session.client("sts").get_caller_identity()["Account"]
    current = stage_env(read_config(), stage)
    images = ({"TRAINING_IMAGE_URI": training_image, "INFERENCE_IMAGE_URI": inference_image}
              if training_image and inference_image
              else resolve_images(region, current.get("TRAINING_INSTANCE_TYPE", "ml.g4dn.xlarge"),
                                  current.get("INFERENCE_INSTANCE_TYPE", "ml.m5.large")))
    sourcedir, key = build_sourcedir()
    env = stage_environment(stage, account, region, images, key, current)
    write_stage(CHALICE_DIR, stage, env)
    say(f"stage {stage}: account {account}, region {region}, bucket {env['DATA_BUCKET']}")
    build_dir = ROOT / "build"
    layer = build_layer(build_dir / "layer.zip")
    package_dir = build_dir / f"package-{stage}"
    package(stage, package_dir, layer)
    outputs = deploy_stack(session, stage, package_dir, sourcedir, key, env, say)
    say(f"deployed: API {outputs.get('EndpointURL', '?')}; upload datasets to s3://{env['DATA_BUCKET']}/datasets/")
    return outputs
