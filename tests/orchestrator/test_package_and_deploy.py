"""The deployable artifacts, built offline: function zip, layer, SAM template (cfn-lint), policies,
sourcedir; and the deploy steps that talk to AWS, up to the boundary (moto S3, Stubber CloudFormation)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from droptrain import deploy, policies, stack
from droptrain import template as sam
from helpers import ROOT

pytestmark = pytest.mark.packaging


HEAVY = ("torch", "torchvision", "numpy", "PIL", "pandas", "smdebug")


@pytest.fixture(scope="module")
def layer(tmp_path_factory) -> Path:
    return sam.build_layer(tmp_path_factory.mktemp("layer") / "layer.zip")


@pytest.fixture(scope="module", params=["dev", "prod"])
def packaged(request, layer, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"package-{request.param}") / "out"
    return request.param, sam.package(request.param, out, layer)


def test_function_zip_is_the_app_and_chalice_app_only(packaged):
    _, template = packaged
    archive = template.parent / "deployment.zip"
    assert archive.stat().st_size < 5 * 1024 * 1024
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert (
        "app.py" in names
        and "chalice_app/pipeline/deployment.py" in names
        and "chalice_app/adapters/sagemaker.py" in names
    )
    assert {f"chalice_app/assets/{n}" for n in ("index.html", "console.js", "console.css")} <= set(names), (
        "the console ships with the app"
    )
    tops = {n.split("/")[0] for n in names}
    assert tops == {"app.py", "chalice_app", "chalice"}, tops
    assert not any(n.split("/")[0] in HEAVY for n in names)


def test_chalice_app_imports_nothing_heavy():
    code = f"import sys, app; heavy = [m for m in {HEAVY!r} if m in sys.modules]; print(heavy)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_layer_holds_powertools_and_an_sdk_with_conditional_writes(layer):
    """The handlers' notification guard uses PutObject(IfNoneMatch), absent from botocore before 1.35.2:
    the layer ships the SDK instead of trusting the Lambda runtime's copy."""
    import gzip

    with zipfile.ZipFile(layer) as zf:
        names = zf.namelist()
        tops = {n.split("/")[1] for n in names}
        assert {"aws_lambda_powertools", "aws_xray_sdk", "boto3", "botocore"} <= tops
        assert all(n.startswith("python/") for n in names)
        model = next(n for n in names if n.startswith("python/botocore/data/s3/2006-03-01/service-2.json"))
        data = zf.read(model)
    service = json.loads(gzip.decompress(data) if model.endswith(".gz") else data)
    assert "IfNoneMatch" in service["shapes"]["PutObjectRequest"]["members"]


def test_template_passes_cfn_lint(packaged):
    _, template = packaged
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(cfn_lint), str(template)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_responses_are_the_apis_own_through_sams_transform(packaged, monkeypatch):
    """As uploaded, then through AWS's SAM translator (what CloudFormation's transform runs): the error
    shapes land in the API's definition. GatewayResponse resources beside a SAM API were dropped at
    SAM's next redeployment of the API."""
    from samtranslator.translator.transform import transform

    _, path = packaged
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="droptrain-deploy-123456789012-us-east-1")
        key = stack.upload_template(s3, "droptrain-deploy-123456789012-us-east-1", "dev", path.parent)
        uploaded = json.loads(s3.get_object(Bucket="droptrain-deploy-123456789012-us-east-1", Key=key)["Body"].read())
    assert not [r for r in uploaded["Resources"].values() if r["Type"] == "AWS::ApiGateway::GatewayResponse"]

    class NoManagedPolicies:
        def load(self) -> dict:
            return {}

    resources = transform(uploaded, {}, NoManagedPolicies())["Resources"]
    (api,) = [r for r in resources.values() if r["Type"] == "AWS::ApiGateway::RestApi"]
    responses = api["Properties"]["Body"]["x-amazon-apigateway-gateway-responses"]
    assert set(responses) == set(sam.GATEWAY_ERROR_CODES)
    for kind, code in sam.GATEWAY_ERROR_CODES.items():
        shape = responses[kind]["responseTemplates"]["application/json"]
        assert shape == f'{{"error": {{"code": "{code}", "message": $context.error.messageString}}}}', kind


def test_template_resources(packaged):
    stage, path = packaged
    template = json.loads(path.read_text())
    resources = template["Resources"]
    env = sam.stage_env(sam.read_config(), stage)
    functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(functions) == set(sam.HANDLER_FUNCTIONS)
    for name, function in functions.items():
        props = function["Properties"]
        assert props["Runtime"] == "python3.12", name  # Lambda no longer creates python3.11 functions
        assert {"Ref": "DependenciesLayer"} in props["Layers"]
        assert props["Environment"]["Variables"]["DATA_BUCKET"] == env["DATA_BUCKET"]
        on_failure = props.get("EventInvokeConfig", {}).get("DestinationConfig", {}).get("OnFailure")
        if name in sam.EVENT_FUNCTIONS:
            assert on_failure == {"Type": "SQS", "Destination": {"Fn::GetAtt": ["FailedEventsQueue", "Arn"]}}, name
        else:
            assert on_failure is None
    queue = resources["FailedEventsQueue"]["Properties"]
    assert (
        queue["QueueName"] == f"droptrain-{stage}-failed-events" and queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    )
    # A 2-million-member zip's central directory takes ~20 s and ~2 GB to read; the API answers within 29 s.
    assert functions["OnDatasetUploaded"]["Properties"]["MemorySize"] == 3008
    assert functions["OnDatasetUploaded"]["Properties"]["Timeout"] == 300
    assert functions["APIHandler"]["Properties"]["Timeout"] < 29
    bucket = resources["DataBucket"]["Properties"]
    assert bucket["BucketName"] == env["DATA_BUCKET"]
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True
    assert resources["NotifyTopic"]["Properties"]["TopicName"] == env["NOTIFY_TOPIC_ARN"].rsplit(":", 1)[1]
    role = resources["SageMakerExecutionRole"]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert f"arn:aws:iam::123456789012:role/{role['RoleName']}" == env["SAGEMAKER_ROLE_ARN"]
    rules = {k: v for f in functions.values() for k, v in f["Properties"].get("Events", {}).items()}
    s3_pattern = rules["OnDatasetUploadedEvent"]["Properties"]["Pattern"]
    assert s3_pattern["detail"]["bucket"]["name"] == [env["DATA_BUCKET"]]
    assert {"wildcard": "datasets/*/_READY"} in s3_pattern["detail"]["object"]["key"]
    assert {"wildcard": "datasets/*.Zip"} in s3_pattern["detail"]["object"]["key"]
    assert len(json.dumps(s3_pattern)) < 4096, "PutRule's EventPattern limit"
    endpoint_pattern = rules["OnEndpointStateChangeEvent"]["Properties"]["Pattern"]
    assert endpoint_pattern["detail"]["EndpointName"] == [{"prefix": f"{env['ENDPOINT_PREFIX']}-"}]
    # Edge-optimized APIs do not exist in the China regions (docs.amazonaws.cn, "API Gateway"): regional everywhere.
    assert resources["RestAPI"]["Properties"]["EndpointConfiguration"] == "REGIONAL"
    api = resources["RestAPI"]["Properties"]["DefinitionBody"]
    assert {"image/jpeg", "image/png"} <= set(api["x-amazon-apigateway-binary-media-types"])
    package_pattern = rules["OnModelPackageStateChangeEvent"]["Properties"]["Pattern"]
    assert package_pattern["detail-type"] == ["SageMaker Model Package State Change"]
    assert package_pattern["detail"] == {
        "ModelApprovalStatus": ["Approved"],
        "ModelPackageGroupName": [{"prefix": f"{env['ENDPOINT_PREFIX']}-"}],
    }
    for route in (
        "/predict/{project}",
        "/projects",
        "/projects/{project}",
        "/projects/{project}/versions/{run_id}/deploy",
    ):
        assert route in api["paths"], route
    assert ("security" in api["paths"]["/projects/{project}/versions/{run_id}/deploy"]["post"]) is (stage == "prod")
    needs_key = "security" in api["paths"]["/predict"]["post"]
    assert needs_key is (stage == "prod")
    assert ("UsagePlanKey" in resources) is needs_key


def test_function_roles_are_least_privilege(packaged):
    stage, path = packaged
    resources = json.loads(path.read_text())["Resources"]
    env = sam.stage_env(sam.read_config(), stage)
    expected = policies.lambda_policy(env)
    roles = [
        r for r in resources.values() if r["Type"] == "AWS::IAM::Role" and r is not resources["SageMakerExecutionRole"]
    ]
    assert roles
    for role in roles:
        assert [p["PolicyDocument"] for p in role["Properties"]["Policies"]] == [expected]
    statements = {s["Sid"]: s for s in expected["Statement"]}
    assert statements["PassTheSageMakerRole"]["Resource"] == env["SAGEMAKER_ROLE_ARN"]
    assert statements["Notify"]["Resource"] == env["NOTIFY_TOPIC_ARN"]
    assert statements["ReadTheBucket"]["Resource"] == f"arn:aws:s3:::{env['DATA_BUCKET']}/*"
    assert statements["WriteRunsOnly"]["Resource"] == f"arn:aws:s3:::{env['DATA_BUCKET']}/runs/*", (
        "writing datasets/ starts runs: only runs/ is writable"
    )
    projects = f"{env['ENDPOINT_PREFIX'].lower()}-"
    assert statements["ProjectEndpoints"]["Resource"][0].endswith(f":endpoint/{projects}*")
    assert "sagemaker:DeleteEndpoint" in statements["ProjectEndpoints"]["Action"], (
        "a Failed endpoint is deleted and created again"
    )
    registry = statements["ProjectModelRegistry"]
    assert registry["Resource"] == [
        f"arn:aws:sagemaker:us-east-1:123456789012:model-package-group/{projects}*",
        f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{projects}*/*",
    ]
    assert {
        "sagemaker:CreateModelPackageGroup",
        "sagemaker:CreateModelPackage",
        "sagemaker:UpdateModelPackage",
        "sagemaker:DescribeModelPackage",
        "sagemaker:ListModelPackages",
    } <= set(registry["Action"])
    assert statements["ProjectAlarms"]["Action"] == ["cloudwatch:PutMetricAlarm", "cloudwatch:TagResource"]
    assert statements["ProjectAlarms"]["Resource"] == [f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{projects}*"]
    assert statements["KeepFailedEvents"]["Resource"].endswith(f":droptrain-{stage}-failed-events")
    assert statements["RollbackAlarms"]["Action"] == "cloudwatch:DescribeAlarms"
    assert statements["CreateRunResourcesTagged"]["Condition"] == {
        "StringLike": {"aws:RequestTag/droptrain:run-id": "?*"}
    }
    wildcard_actions = [s for s in expected["Statement"] if s["Resource"] == "*"]
    # X-Ray, the Price List and ListModelPackageGroups take no resource ARN (the functions filter the
    # groups to their prefix).
    assert [s["Sid"] for s in wildcard_actions] == ["ListProjects", "Prices", "EndpointInvocations", "Traces"]
    assert statements["Prices"]["Action"] == "pricing:GetProducts"
    batch_jobs = f"arn:aws:sagemaker:us-east-1:123456789012:transform-job/{projects}*"
    assert statements["BatchJobs"]["Resource"] == statements["ReadBatchJobs"]["Resource"] == batch_jobs
    assert statements["BatchJobs"]["Condition"] == statements["CreateRunResourcesTagged"]["Condition"]


CHINA_ENV = {
    "DATA_BUCKET": "droptrain-data-dev-123456789012",
    "NOTIFY_TOPIC_ARN": "arn:aws-cn:sns:cn-north-1:123456789012:droptrain-dev",
    "SAGEMAKER_ROLE_ARN": "arn:aws-cn:iam::123456789012:role/droptrain-sagemaker-dev",
    "TRAINING_IMAGE_URI": "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/pytorch-training:2.10.0-gpu-py313",
    "INFERENCE_IMAGE_URI": "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/ray:serve-ml-sagemaker-cpu-v1.4",
    "ENDPOINT_PREFIX": "DropTrain-Dev",
    "ROLLBACK_ALARMS": "my-5xx-alarm",
}


def _arns(document) -> list[str]:
    found = []
    for statement in document["Statement"]:
        resources = statement["Resource"]
        found += [resources] if isinstance(resources, str) else resources
    return [r for r in found if r != "*"]


def test_policies_follow_the_partition_and_lower_case_endpoint_names():
    for document in (policies.lambda_policy(CHINA_ENV), policies.sagemaker_role_policy(CHINA_ENV)):
        arns = _arns(document)
        assert arns and all(a.startswith("arn:aws-cn:") for a in arns), [
            a for a in arns if not a.startswith("arn:aws-cn:")
        ]
    assert "arn:aws-cn:sagemaker:cn-north-1:123456789012:endpoint/droptrain-dev-*" in _arns(
        policies.lambda_policy(CHINA_ENV)
    )
    assert "arn:aws-cn:sagemaker:cn-north-1:123456789012:model-package-group/droptrain-dev-*" in _arns(
        policies.lambda_policy(CHINA_ENV)
    )
    alarms = {s["Sid"]: s for s in policies.lambda_policy(CHINA_ENV)["Statement"]}["RollbackAlarms"]["Resource"]
    assert "arn:aws-cn:cloudwatch:cn-north-1:123456789012:alarm:my-5xx-alarm" in alarms


def test_the_execution_role_pulls_from_the_accounts_the_images_name_and_writes_only_runs():
    env = {
        **CHINA_ENV,
        "NOTIFY_TOPIC_ARN": "arn:aws:sns:eu-south-1:123456789012:droptrain-dev",
        "SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/droptrain-sagemaker-dev",
        "TRAINING_IMAGE_URI": "692866216735.dkr.ecr.eu-south-1.amazonaws.com/pytorch:2.14-cu133-amzn2023-sagemaker",
        "AUDIT_IMAGE_URI": "692866216735.dkr.ecr.eu-south-1.amazonaws.com/pytorch:2.14-cpu-amzn2023-sagemaker",
        "INFERENCE_IMAGE_URI": "692866216735.dkr.ecr.eu-south-1.amazonaws.com/ray:serve-ml-sagemaker-cpu-v1.4",
        "DEBUGGER_IMAGE_URI": "563282790590.dkr.ecr.eu-south-1.amazonaws.com/sagemaker-debugger-rules:latest",
    }
    statements = {s["Sid"]: s for s in policies.sagemaker_role_policy(env)["Statement"]}
    assert statements["PullImages"]["Resource"] == [
        "arn:aws:ecr:eu-south-1:563282790590:repository/sagemaker-debugger-rules",
        "arn:aws:ecr:eu-south-1:692866216735:repository/pytorch",
        "arn:aws:ecr:eu-south-1:692866216735:repository/ray",
    ]
    bucket = "arn:aws:s3:::droptrain-data-dev-123456789012"
    assert statements["WriteRunsOnly"] == {
        "Sid": "WriteRunsOnly",
        "Effect": "Allow",
        "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
        "Resource": f"{bucket}/runs/*",
    }
    assert f"{bucket}/datasets/*" in statements["ReadInputs"]["Resource"]
    assert f"{bucket}/batch/*" in statements["ReadInputs"]["Resource"], "a batch job reads its images there"
    assert statements["RollbackAlarms"]["Action"] == "cloudwatch:DescribeAlarms"


def test_sourcedir_is_reproducible_and_complete():
    first, key = deploy.build_sourcedir()
    second, key_again = deploy.build_sourcedir()
    assert key == key_again and key.startswith("code/sourcedir-") and key.endswith(".tar.gz")
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        names = tar.getnames()
    assert {"train.py", "serve_app.py", "requirements.txt", "trainlib/transforms.py", "trainlib/predictor.py"} <= set(
        names
    )
    assert not any("__pycache__" in n for n in names)


def test_caches_beside_the_training_code_stay_out_of_the_sourcedir(tmp_path):
    import shutil

    copy = tmp_path / "training"
    shutil.copytree(deploy.TRAINING_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    _, clean = deploy.build_sourcedir(copy)
    for cache in (".mypy_cache/3.10/cache.db", "trainlib/__pycache__/x.pyc", ".pytest_cache/v/x"):
        (copy / cache).parent.mkdir(parents=True, exist_ok=True)
        (copy / cache).write_bytes(b"not code")
    assert deploy.build_sourcedir(copy)[1] == clean


def test_stage_environment_and_writing_it(tmp_path):
    chalice_dir = tmp_path / ".chalice"
    chalice_dir.mkdir()
    (chalice_dir / "config.json").write_text((sam.CHALICE_DIR / "config.json").read_text())
    images = {
        "TRAINING_IMAGE_URI": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch:2.14-cu133-amzn2023-sagemaker",
        "AUDIT_IMAGE_URI": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch:2.14-cpu-amzn2023-sagemaker",
        "INFERENCE_IMAGE_URI": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/ray:serve-ml-sagemaker-cpu-v1.4",
    }
    stale = {"DEBUGGER_IMAGE_URI": "1.dkr.ecr.us-east-1.amazonaws.com/old:1", "AUDIT_IMAGE_URI": "1.dkr.ecr.x/old:1"}
    current = {**sam.stage_env(sam.read_config(chalice_dir), "dev"), **stale}
    env = deploy.stage_environment("dev", "210987654321", "eu-west-1", images, "code/sourcedir-abc.tar.gz", current)
    assert env["AUDIT_IMAGE_URI"] == images["AUDIT_IMAGE_URI"] and "DEBUGGER_IMAGE_URI" not in env, "none stale"
    assert env["DATA_BUCKET"] == "droptrain-data-dev-210987654321"
    assert env["NOTIFY_TOPIC_ARN"] == "arn:aws:sns:eu-west-1:210987654321:droptrain-dev"
    assert env["SOURCE_DIR_S3_URI"] == "s3://droptrain-data-dev-210987654321/code/sourcedir-abc.tar.gz"
    deploy.write_stage(chalice_dir, "dev", env)
    written = sam.stage_env(sam.read_config(chalice_dir), "dev")
    assert written == env
    policy = json.loads((chalice_dir / "policy-dev.json").read_text())
    assert policy == policies.lambda_policy(env)
    from chalice_app import config as config_module

    config_module.load({**written, "AWS_REGION": "eu-west-1"})  # what deploy writes, the app accepts


@pytest.mark.parametrize(
    "region, training, inference, expected",
    [
        (
            "us-east-1",
            "ml.g4dn.xlarge",
            "ml.m5.large",
            (
                "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.14-cu133-amzn2023-sagemaker",
                "763104351884.dkr.ecr.us-east-1.amazonaws.com/ray:serve-ml-sagemaker-cpu-v1.4",
            ),
        ),
        (
            "eu-south-1",
            "ml.m5.xlarge",
            "ml.g5.xlarge",
            (
                "692866216735.dkr.ecr.eu-south-1.amazonaws.com/pytorch:2.14-cpu-amzn2023-sagemaker",
                "692866216735.dkr.ecr.eu-south-1.amazonaws.com/ray:serve-ml-sagemaker-cuda-v1.4",
            ),
        ),
        (
            "us-west-2",
            "ml.g5.xlarge",
            "serverless",
            (
                "763104351884.dkr.ecr.us-west-2.amazonaws.com/pytorch:2.14-cu133-amzn2023-sagemaker",
                "763104351884.dkr.ecr.us-west-2.amazonaws.com/ray:serve-ml-sagemaker-cpu-v1.4",
            ),
        ),
    ],
)
def test_images_resolve_through_the_sagemaker_sdk(region, training, inference, expected):
    """sagemaker-core (what the SageMaker SDK v3 is built on), offline, as `make deploy` installs it: the
    Amazon Linux 2023 PyTorch image, and its CPU build for the audit's CPU instance."""
    said = []
    images = deploy.resolve_images(region, training, inference, say=said.append)
    assert (images["TRAINING_IMAGE_URI"], images["INFERENCE_IMAGE_URI"]) == expected
    account = expected[0].split(".")[0]
    assert images["AUDIT_IMAGE_URI"] == f"{account}.dkr.ecr.{region}.amazonaws.com/pytorch:2.14-cpu-amzn2023-sagemaker"
    assert "DEBUGGER_IMAGE_URI" not in images and said == []


def test_where_the_sdk_lists_no_al2023_image_training_falls_back_and_says_so():
    """The China regions, in sagemaker-core 2.27.0's tables: the Ubuntu-based 2.10 image, named with its end."""
    said = []
    images = deploy.resolve_images("cn-northwest-1", "ml.g4dn.xlarge", "ml.m5.large", say=said.append)
    registry = "727897471807.dkr.ecr.cn-northwest-1.amazonaws.com.cn"
    assert images["TRAINING_IMAGE_URI"] == f"{registry}/pytorch-training:2.10.0-gpu-py313"
    assert images["AUDIT_IMAGE_URI"] == f"{registry}/pytorch-training:2.10.0-cpu-py313"
    assert len(said) == 1 and "no Amazon Linux 2023 PyTorch image in cn-northwest-1" in said[0]
    assert "2027-01-21" in said[0]


def test_the_managed_debugger_gets_its_regions_rules_image():
    images = deploy.resolve_images("eu-south-1", "ml.g5.xlarge", "ml.m5.large", managed_debugger=True)
    assert (
        images["DEBUGGER_IMAGE_URI"] == "563282790590.dkr.ecr.eu-south-1.amazonaws.com/sagemaker-debugger-rules:latest"
    )
    cn = deploy.resolve_images("cn-north-1", "ml.g5.xlarge", "ml.m5.large", managed_debugger=True, say=lambda m: None)
    assert cn["DEBUGGER_IMAGE_URI"].startswith("618459771430.dkr.ecr.cn-north-1.amazonaws.com.cn/")


def test_the_deploy_says_when_the_sdk_lists_newer_images(monkeypatch):
    import types

    tables = {"ray-serve": {"versions": {"1.4": {}, "1.5": {}}}, "pytorch-amzn2023": {"training": {"versions": {}}}}
    sdk = types.SimpleNamespace(retrieve=lambda framework, **kw: f"{framework}-uri", config_for_framework=tables.get)
    monkeypatch.setattr(deploy, "_image_uris", lambda: sdk)
    said = []
    deploy.resolve_images("us-east-1", "ml.g4dn.xlarge", "ml.m5.large", say=said.append)
    assert said == ["the SageMaker SDK lists ray-serve 1.5; this release uses 1.4, whose Ray 2.57.0 runs locally"]
    tables["ray-serve"]["versions"].pop("1.5")
    said.clear()
    deploy.resolve_images("us-east-1", "ml.g4dn.xlarge", "ml.m5.large", say=said.append)
    assert said == [], "the newest listed: nothing to say"


def test_the_v2_sdk_still_resolves_images(monkeypatch):
    import types

    calls = []
    v2 = types.ModuleType("sagemaker")
    v2.image_uris = types.SimpleNamespace(
        retrieve=lambda framework, **kw: calls.append((framework, kw)) or f"{framework}-uri"
    )
    monkeypatch.setitem(sys.modules, "sagemaker.core", None)
    monkeypatch.setitem(sys.modules, "sagemaker", v2)
    images = deploy.resolve_images("us-east-1", "ml.g4dn.xlarge", "ml.m5.large")
    assert images == {
        "TRAINING_IMAGE_URI": "pytorch-amzn2023-uri",
        "AUDIT_IMAGE_URI": "pytorch-amzn2023-uri",
        "INFERENCE_IMAGE_URI": "ray-serve-uri",
    }
    assert calls[0][1]["version"] == "2.14" and calls[-1][1]["version"] == "1.4"


def test_resolving_images_without_the_sdk_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "sagemaker.core", None)
    monkeypatch.setitem(sys.modules, "sagemaker", None)
    with pytest.raises(deploy.DeployError, match=r"pip install -e '\.\[deploy\]'"):
        deploy.resolve_images("us-east-1", "ml.g4dn.xlarge", "ml.m5.large")


def test_an_unknown_region_is_one_clear_error():
    with pytest.raises(deploy.DeployError, match="no image for this setting in mars-east-1"):
        deploy.resolve_images("mars-east-1", "ml.g4dn.xlarge", "ml.m5.large")


def test_the_local_torch_is_the_torch_of_the_training_image():
    """The training image's PyTorch is the one the local runtime trains with (major.minor)."""
    import importlib.metadata

    import tomllib

    local = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    pinned = next(r for r in local if r.startswith("torch=="))
    assert pinned.removeprefix("torch==").startswith(deploy.TRAINING_FRAMEWORK_VERSION + ".")
    assert importlib.metadata.version("torch").startswith(deploy.TRAINING_FRAMEWORK_VERSION + ".")


def test_the_local_ray_is_the_ray_of_the_serving_image():
    """Version 1.4 of AWS's Ray Serve image runs Ray 2.57.0: the local runtime serves with the same Ray."""
    import importlib.metadata

    import tomllib

    # The local runtime's packages are the local extra (the base install has no Ray).
    local = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    assert f"ray[serve]=={deploy.RAY_SERVE_RAY_VERSION}" in local
    assert importlib.metadata.version("ray") == deploy.RAY_SERVE_RAY_VERSION


def test_make_deploy_without_credentials_gets_as_far_as_it_can_then_says_so(tmp_path):
    """A fresh machine with the SDK installed as the README says (make deploy installs the deploy extra):
    the images resolve and the code is packed offline; the first call that needs credentials ends it
    with one line, and nothing has been written."""
    config_before = (sam.CHALICE_DIR / "config.json").read_text()
    keep = ("PATH", "HOME", "LANG", "PIP_CONFIG_FILE", "PIP_CONSTRAINT", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}
    env.update(
        {
            "AWS_REGION": "eu-west-1",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    result = subprocess.run(
        ["make", "--no-print-directory", "deploy", "STAGE=dev"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode != 0
    assert (
        "images for eu-west-1: training "
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch:2.14-cu133-amzn2023-sagemaker" in result.stdout
    )
    assert "training code: code/sourcedir-" in result.stdout
    assert "droptrain deploy: no AWS credentials found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert (sam.CHALICE_DIR / "config.json").read_text() == config_before


def test_chalice_package_failing_is_one_line(tmp_path):
    def failing(*args, **kwargs):
        raise subprocess.CalledProcessError(2, args[0], output="", stderr="Traceback ...\nRuntimeError: bad config\n")

    with pytest.raises(sam.TemplateError, match="^chalice package failed: RuntimeError: bad config$"):
        sam.package("dev", tmp_path / "out", tmp_path / "layer.zip", run=failing)


def test_aws_failures_are_one_line():
    from botocore.exceptions import ClientError, NoCredentialsError, WaiterError

    denied = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "not authorized to perform: cloudformation:CreateChangeSet"}},
        "CreateChangeSet",
    )
    assert (
        deploy._explain(denied)
        == "CreateChangeSet failed: AccessDenied: not authorized to perform: cloudformation:CreateChangeSet"
    )
    stuck = WaiterError(
        "StackCreateComplete",
        "Waiter encountered a terminal failure state",
        {"Stacks": [{"StackStatusReason": "The following resource(s) failed to create: [DataBucket]."}]},
    )
    assert (
        deploy._explain(stuck)
        == "StackCreateComplete did not complete: The following resource(s) failed to create: [DataBucket]."
    )
    assert "no AWS credentials found" in deploy._explain(NoCredentialsError())


@pytest.mark.parametrize(
    "region, url",
    [
        ("us-east-1", "https://b.s3.amazonaws.com/k/t.json"),
        ("eu-west-1", "https://b.s3.eu-west-1.amazonaws.com/k/t.json"),
        ("cn-north-1", "https://b.s3.cn-north-1.amazonaws.com.cn/k/t.json"),
        ("cn-northwest-1", "https://b.s3.cn-northwest-1.amazonaws.com.cn/k/t.json"),
    ],
)
def test_the_template_url_is_on_the_regions_own_s3_endpoint(region, url):
    s3 = boto3.client("s3", region_name=region, aws_access_key_id="x", aws_secret_access_key="y")
    assert stack.template_url(s3, "b", "k/t.json") == url


def test_deploy_turns_an_aws_failure_into_a_deploy_error(tmp_path, monkeypatch):
    sts = boto3.client("sts", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    stub = Stubber(sts)
    stub.add_client_error(
        "get_caller_identity", "ExpiredToken", "The security token included in the request is expired"
    )

    class Session:
        region_name = "us-east-1"

        def client(self, name, region_name=None):
            return sts

    with stub, pytest.raises(deploy.DeployError, match="^GetCallerIdentity failed: ExpiredToken: The security token"):
        deploy.deploy(
            "dev",
            "1.dkr.ecr.us-east-1.amazonaws.com/t:1",
            "1.dkr.ecr.us-east-1.amazonaws.com/i:1",
            say=lambda m: None,
            session=Session(),
        )


def test_deploy_stack_up_to_the_boundary(packaged, monkeypatch):
    """Artifacts to S3 (moto), the stack through a change set (Stubber), then the sourcedir into the
    bucket the stack created."""
    stage, template = packaged
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env = sam.stage_env(sam.read_config(), stage)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        stub = Stubber(cfn)
        name = f"droptrain-{stage}"
        stub.add_client_error("describe_stacks", "ValidationError", f"Stack with id {name} does not exist")
        stub.add_response(
            "create_change_set",
            {"Id": "arn:cs", "StackId": "arn:stack"},
            {
                "StackName": name,
                "ChangeSetName": ANY,
                "ChangeSetType": "CREATE",
                "TemplateURL": ANY,
                "Capabilities": ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
                "Tags": [{"Key": "droptrain:stage", "Value": stage}],
            },
        )
        stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE", "Changes": []})
        stub.add_response("execute_change_set", {})
        stub.add_response(
            "describe_stacks",
            {"Stacks": [{"StackName": name, "CreationTime": "2026-11-24T00:00:00Z", "StackStatus": "CREATE_COMPLETE"}]},
        )
        stub.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": name,
                        "CreationTime": "2026-11-24T00:00:00Z",
                        "StackStatus": "CREATE_COMPLETE",
                        "Outputs": [{"OutputKey": "EndpointURL", "OutputValue": "https://x.execute-api/api/"}],
                    }
                ]
            },
        )

        class Session:
            def client(self, name, region_name=None):
                return {"s3": s3, "cloudformation": cfn}[name]

        sourcedir, key = deploy.build_sourcedir()

        def say(line: str) -> None:
            if line.startswith("creating stack"):
                s3.create_bucket(Bucket=env["DATA_BUCKET"])  # what the stack creates

        with stub:
            outputs = stack.deploy_stack(Session(), stage, template.parent, sourcedir, key, env, say=say)
        stub.assert_no_pending_responses()
        assert outputs == {"EndpointURL": "https://x.execute-api/api/"}
        artifacts = [o["Key"] for o in s3.list_objects_v2(Bucket="droptrain-deploy-123456789012-us-east-1")["Contents"]]
        assert any(k.endswith("deployment.zip") for k in artifacts) and any(k.endswith("layer.zip") for k in artifacts)
        uploaded = next(k for k in artifacts if k.endswith("template.json"))
        body = json.loads(s3.get_object(Bucket="droptrain-deploy-123456789012-us-east-1", Key=uploaded)["Body"].read())
        code_uris = {
            r["Properties"].get("CodeUri") or r["Properties"].get("ContentUri")
            for r in body["Resources"].values()
            if r["Type"].startswith("AWS::Serverless::") and r["Type"] != "AWS::Serverless::Api"
        }
        assert all(uri.startswith("s3://droptrain-deploy-") for uri in code_uris), code_uris
        assert s3.get_object(Bucket=env["DATA_BUCKET"], Key=key)["Body"].read() == sourcedir


def test_a_redeploy_with_no_changes_is_success(packaged, monkeypatch):
    stage, template = packaged
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env = sam.stage_env(sam.read_config(), stage)
    name = f"droptrain-{stage}"
    created = {"StackName": name, "CreationTime": "2026-11-24T00:00:00Z", "StackStatus": "UPDATE_COMPLETE"}
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=env["DATA_BUCKET"])
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        stub = Stubber(cfn)
        stub.add_response("describe_stacks", {"Stacks": [created]})
        stub.add_response("create_change_set", {"Id": "arn:cs", "StackId": "arn:stack"})
        stub.add_response(
            "describe_change_set",
            {
                "Status": "FAILED",
                "StatusReason": (
                    "The submitted information didn't contain changes. "
                    "Submit different information to create a change set."
                ),
            },
        )
        stub.add_response("delete_change_set", {}, {"StackName": name, "ChangeSetName": ANY})
        stub.add_response(
            "describe_stacks",
            {"Stacks": [{**created, "Outputs": [{"OutputKey": "EndpointURL", "OutputValue": "https://x/api/"}]}]},
        )

        class Session:
            def client(self, name, region_name=None):
                return {"s3": s3, "cloudformation": cfn}[name]

        said = []
        sourcedir, key = deploy.build_sourcedir()
        with stub:
            outputs = stack.deploy_stack(Session(), stage, template.parent, sourcedir, key, env, say=said.append)
        stub.assert_no_pending_responses()
        assert outputs == {"EndpointURL": "https://x/api/"}
        assert f"stack {name} is already up to date" in said
        assert s3.get_object(Bucket=env["DATA_BUCKET"], Key=key)["Body"].read() == sourcedir
