"""The deployable artifacts, built offline: function zip, layer, SAM template (cfn-lint), policies,
sourcedir; and the deploy steps that talk to AWS, up to the boundary (moto S3, Stubber CloudFormation)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from droptrain import deploy

HEAVY = ("torch", "torchvision", "numpy", "PIL", "pandas", "smdebug")


@pytest.fixture(scope="module")
def layer(tmp_path_factory) -> Path:
    return deploy.build_layer(tmp_path_factory.mktemp("layer") / "layer.zip")


@pytest.fixture(scope="module", params=["dev", "prod"])
def packaged(request, layer, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"package-{request.param}") / "out"
    return request.param, deploy.package(request.param, out, layer)


def test_function_zip_is_the_app_and_chalice_app_only(packaged):
    _, template = packaged
    archive = template.parent / "deployment.zip"
    assert archive.stat().st_size < 5 * 1024 * 1024
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert "app.py" in names and "chalice_app/pipeline.py" in names and "chalice_app/adapters/sagemaker.py" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"app.py", "chalice_app", "chalice"}, tops
    assert not any(n.split("/")[0] in HEAVY for n in names)


def test_chalice_app_imports_nothing_heavy():
    code = ("import sys, app; heavy = [m for m in %r if m in sys.modules]; print(heavy)" % (HEAVY,))
    result = subprocess.run([sys.executable, "-c", code], cwd=deploy.ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_layer_holds_powertools_but_not_the_runtime_sdk(layer):
    with zipfile.ZipFile(layer) as zf:
        tops = {n.split("/")[1] for n in zf.namelist()}
    assert "aws_lambda_powertools" in tops and "aws_xray_sdk" in tops
    assert not tops & {"botocore", "boto3", "urllib3", "dateutil"}
    assert all(n.startswith("python/") for n in zf.namelist())


def test_template_passes_cfn_lint(packaged):
    _, template = packaged
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(cfn_lint), str(template)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_resources(packaged):
    stage, path = packaged
    template = json.loads(path.read_text())
    resources = template["Resources"]
    env = deploy.stage_env(deploy.read_config(), stage)
    functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(functions) == set(deploy._HANDLER_FUNCTIONS)
    for name, function in functions.items():
        props = function["Properties"]
        assert props["Runtime"] == "python3.12", name  # Lambda no longer creates python3.11 functions
        assert {"Ref": "DependenciesLayer"} in props["Layers"]
        assert props["Environment"]["Variables"]["DATA_BUCKET"] == env["DATA_BUCKET"]
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
    endpoint_pattern = rules["OnEndpointStateChangeEvent"]["Properties"]["Pattern"]
    assert endpoint_pattern["detail"]["EndpointName"] == [env["ENDPOINT_NAME"]]
    api = resources["RestAPI"]["Properties"]["DefinitionBody"]
    assert {"image/jpeg", "image/png"} <= set(api["x-amazon-apigateway-binary-media-types"])
    needs_key = "security" in api["paths"]["/predict"]["post"]
    assert needs_key is (stage == "prod")
    assert ("UsagePlanKey" in resources) is needs_key


def test_function_roles_are_least_privilege(packaged):
    stage, path = packaged
    resources = json.loads(path.read_text())["Resources"]
    env = deploy.stage_env(deploy.read_config(), stage)
    expected = deploy.lambda_policy(env)
    roles = [r for r in resources.values() if r["Type"] == "AWS::IAM::Role" and r is not resources["SageMakerExecutionRole"]]
    assert roles
    for role in roles:
        assert [p["PolicyDocument"] for p in role["Properties"]["Policies"]] == [expected]
    statements = {s["Sid"]: s for s in expected["Statement"]}
    assert statements["PassTheSageMakerRole"]["Resource"] == env["SAGEMAKER_ROLE_ARN"]
    assert statements["Notify"]["Resource"] == env["NOTIFY_TOPIC_ARN"]
    assert statements["ObjectsInTheBucket"]["Resource"] == f"arn:aws:s3:::{env['DATA_BUCKET']}/*"
    assert statements["TheEndpoint"]["Resource"][0].endswith(f":endpoint/{env['ENDPOINT_NAME']}")
    assert statements["CreateRunResourcesTagged"]["Condition"] == {"StringLike": {"aws:RequestTag/droptrain:run-id": "?*"}}
    wildcard_actions = [s for s in expected["Statement"] if s["Resource"] == "*"]
    assert [s["Sid"] for s in wildcard_actions] == ["Traces"], "only X-Ray takes no resource ARN"


def test_committed_policy_files_match_the_config():
    config = deploy.read_config()
    for stage in deploy.STAGES:
        committed = json.loads((deploy.CHALICE_DIR / f"policy-{stage}.json").read_text())
        assert committed == deploy.lambda_policy(deploy.stage_env(config, stage)), f"regenerate .chalice/policy-{stage}.json"


def test_sourcedir_is_reproducible_and_complete():
    first, key = deploy.build_sourcedir()
    second, key_again = deploy.build_sourcedir()
    assert key == key_again and key.startswith("code/sourcedir-") and key.endswith(".tar.gz")
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        names = tar.getnames()
    assert {"train.py", "serve_app.py", "requirements.txt", "trainlib/transforms.py", "trainlib/predictor.py"} <= set(names)
    assert not any("__pycache__" in n for n in names)


def test_stage_environment_and_writing_it(tmp_path):
    chalice_dir = tmp_path / ".chalice"
    chalice_dir.mkdir()
    (chalice_dir / "config.json").write_text((deploy.CHALICE_DIR / "config.json").read_text())
    images = {"TRAINING_IMAGE_URI": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5.1-gpu-py311",
              "INFERENCE_IMAGE_URI": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.5.1-cpu-py311"}
    current = deploy.stage_env(deploy.read_config(chalice_dir), "dev")
    env = deploy.stage_environment("dev", "210987654321", "eu-west-1", images, "code/sourcedir-abc.tar.gz", current)
    assert env["DATA_BUCKET"] == "droptrain-data-dev-210987654321"
    assert env["NOTIFY_TOPIC_ARN"] == "arn:aws:sns:eu-west-1:210987654321:droptrain-dev"
    assert env["SOURCE_DIR_S3_URI"] == "s3://droptrain-data-dev-210987654321/code/sourcedir-abc.tar.gz"
    deploy.write_stage(chalice_dir, "dev", env)
    written = deploy.stage_env(deploy.read_config(chalice_dir), "dev")
    assert written == env
    policy = json.loads((chalice_dir / "policy-dev.json").read_text())
    assert policy == deploy.lambda_policy(env)
    from chalice_app import config as config_module
    config_module.load({**written, "AWS_REGION": "eu-west-1"})  # what deploy writes, the app accepts


def test_resolving_images_without_the_sdk_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "sagemaker", None)
    with pytest.raises(deploy.DeployError, match="pip install 'sagemaker"):
        deploy.resolve_images("us-east-1", "ml.g4dn.xlarge", "ml.m5.large")


def test_deploy_stack_up_to_the_boundary(packaged, monkeypatch):
    """Artifacts to S3 (moto), the stack through a change set (Stubber), then the sourcedir."""
    stage, template = packaged
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env = deploy.stage_env(deploy.read_config(), stage)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=env["DATA_BUCKET"])  # what the stack creates
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        stub = Stubber(cfn)
        stack = f"droptrain-{stage}"
        stub.add_client_error("describe_stacks", "ValidationError", f"Stack with id {stack} does not exist")
        stub.add_response("create_change_set", {"Id": "arn:cs", "StackId": "arn:stack"}, {
            "StackName": stack, "ChangeSetName": ANY, "ChangeSetType": "CREATE", "TemplateURL": ANY,
            "Capabilities": ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            "Tags": [{"Key": "droptrain:stage", "Value": stage}]})
        stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE", "Changes": []})
        stub.add_response("execute_change_set", {})
        stub.add_response("describe_stacks", {"Stacks": [{"StackName": stack, "CreationTime": "2026-11-24T00:00:00Z", "StackStatus": "CREATE_COMPLETE"}]})
        stub.add_response("describe_stacks", {"Stacks": [{"StackName": stack, "CreationTime": "2026-11-24T00:00:00Z", "StackStatus": "CREATE_COMPLETE",
                                                          "Outputs": [{"OutputKey": "EndpointURL", "OutputValue": "https://x.execute-api/api/"}]}]})

        class Session:
            def client(self, name, region_name=None):
                return {"s3": s3, "cloudformation": cfn}[name]

        sourcedir, key = deploy.build_sourcedir()
        with stub:
            outputs = deploy.deploy_stack(Session(), stage, template.parent, sourcedir, key, env, say=lambda m: None)
        stub.assert_no_pending_responses()
        assert outputs == {"EndpointURL": "https://x.execute-api/api/"}
        artifacts = [o["Key"] for o in s3.list_objects_v2(Bucket="droptrain-deploy-123456789012-us-east-1")["Contents"]]
        assert any(k.endswith("deployment.zip") for k in artifacts) and any(k.endswith("layer.zip") for k in artifacts)
        uploaded = next(k for k in artifacts if k.endswith("template.json"))
        body = json.loads(s3.get_object(Bucket="droptrain-deploy-123456789012-us-east-1", Key=uploaded)["Body"].read())
        code_uris = {r["Properties"].get("CodeUri") or r["Properties"].get("ContentUri")
                     for r in body["Resources"].values() if r["Type"].startswith("AWS::Serverless::")
                     and r["Type"] != "AWS::Serverless::Api"}
        assert all(uri.startswith("s3://droptrain-deploy-") for uri in code_uris), code_uris
        assert s3.get_object(Bucket=env["DATA_BUCKET"], Key=key)["Body"].read() == sourcedir
