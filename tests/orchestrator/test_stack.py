"""The stage's stack from whatever state it is in, up to the boundary: S3 in moto, CloudFormation in
botocore's Stubber (each request checked against CloudFormation's model)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from droptrain import stack

ENV = {
    "DATA_BUCKET": "droptrain-data-dev-123456789012",
    "SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/droptrain-dev-sagemaker",
    "NOTIFY_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:droptrain-dev",
}
STACK = "droptrain-dev"
SOURCEDIR = "code/sourcedir-0123456789abcdef.tar.gz"
DATA_BUCKET = {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain", "Properties": {"BucketName": ENV["DATA_BUCKET"]}}


@pytest.fixture
def package_dir(tmp_path) -> Path:
    """What ``template.package`` leaves: the template and the two archives it points at."""
    template = {
        "Transform": "AWS::Serverless-2016-10-31",
        "Resources": {
            "DataBucket": DATA_BUCKET,
            "APIHandler": {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "./deployment.zip"}},
        },
    }
    (tmp_path / "sam.json").write_text(json.dumps(template))
    (tmp_path / "deployment.zip").write_bytes(b"code")
    (tmp_path / "layer.zip").write_bytes(b"layer")
    return tmp_path


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        stub = Stubber(cfn)

        class Session:
            def client(self, name, region_name=None):
                return {"s3": s3, "cloudformation": cfn}[name]

        yield {"s3": s3, "stub": stub, "session": Session()}


def _described(status: str, **more) -> dict:
    return {"Stacks": [{"StackName": STACK, "CreationTime": "2026-12-01T00:00:00Z", "StackStatus": status, **more}]}


def _change_set(stub: Stubber, kind: str, final: str, **more) -> None:
    """One change set of ``kind`` made, ready, executed and waited for until the stack is ``final``."""
    stub.add_response(
        "create_change_set",
        {"Id": "arn:cs", "StackId": "arn:stack"},
        {
            "StackName": STACK,
            "ChangeSetName": ANY,
            "ChangeSetType": kind,
            "TemplateURL": ANY,
            "Capabilities": stack.CAPABILITIES,
            "Tags": [{"Key": "droptrain:stage", "Value": "dev"}],
            **more,
        },
    )
    stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE", "Changes": []})
    stub.add_response("execute_change_set", {}, {"StackName": STACK, "ChangeSetName": ANY})
    stub.add_response("describe_stacks", _described(final))


def _deploy(aws, package_dir, said: list[str] | None = None, on_line=None) -> dict:
    def say(line: str) -> None:
        (said if said is not None else []).append(line)
        if on_line:
            on_line(line)

    with aws["stub"]:
        outputs = stack.deploy_stack(aws["session"], "dev", package_dir, b"sourcedir", SOURCEDIR, ENV, say=say)
    aws["stub"].assert_no_pending_responses()
    return outputs


def _the_stack_creates_the_bucket(s3):
    def on_line(line: str) -> None:
        if line.startswith("creating stack"):
            s3.create_bucket(Bucket=ENV["DATA_BUCKET"])

    return on_line


def _sourcedir_there(s3) -> bool:
    return s3.list_objects_v2(Bucket=ENV["DATA_BUCKET"], Prefix=SOURCEDIR).get("KeyCount", 0) == 1


def test_an_update_puts_the_training_code_in_place_before_the_functions_point_at_it(aws, package_dir):
    aws["s3"].create_bucket(Bucket=ENV["DATA_BUCKET"])
    stub = aws["stub"]
    stub.add_response("describe_stacks", _described("UPDATE_COMPLETE"))
    _change_set(stub, "UPDATE", "UPDATE_COMPLETE")
    stub.add_response("describe_stacks", _described("UPDATE_COMPLETE"))
    before = []

    def on_line(line: str) -> None:
        if line.startswith("waiting for change set"):
            before.append(_sourcedir_there(aws["s3"]))

    _deploy(aws, package_dir, on_line=on_line)
    assert before == [True], "the sourcedir was in the bucket before the change set was even made"


def test_a_stack_whose_first_creation_failed_is_deleted_and_created_again(aws, package_dir):
    stub, said = aws["stub"], []
    stub.add_response("describe_stacks", _described("ROLLBACK_COMPLETE"))
    stub.add_response("delete_stack", {}, {"StackName": STACK})
    stub.add_client_error("describe_stacks", "ValidationError", f"Stack with id {STACK} does not exist")
    _change_set(stub, "CREATE", "CREATE_COMPLETE")
    stub.add_response(
        "describe_stacks", _described("CREATE_COMPLETE", Outputs=[{"OutputKey": "A", "OutputValue": "b"}])
    )
    assert _deploy(aws, package_dir, said, on_line=_the_stack_creates_the_bucket(aws["s3"])) == {"A": "b"}
    assert (
        f"stack {STACK} is ROLLBACK_COMPLETE (its first creation failed): deleting it, then creating it again" in said
    )
    assert _sourcedir_there(aws["s3"])


def test_a_stack_under_review_is_created_by_a_create_change_set(aws, package_dir):
    """REVIEW_IN_PROGRESS: a CREATE change set made and never executed. An UPDATE one is refused."""
    stub = aws["stub"]
    stub.add_response("describe_stacks", _described("REVIEW_IN_PROGRESS"))
    _change_set(stub, "CREATE", "CREATE_COMPLETE")
    stub.add_response("describe_stacks", _described("CREATE_COMPLETE"))
    _deploy(aws, package_dir, on_line=_the_stack_creates_the_bucket(aws["s3"]))


@pytest.mark.parametrize(
    "status, says",
    [
        ("UPDATE_IN_PROGRESS", "stack droptrain-dev is UPDATE_IN_PROGRESS: wait until it finishes, then deploy again"),
        ("DELETE_IN_PROGRESS", "stack droptrain-dev is DELETE_IN_PROGRESS: wait until it finishes, then deploy again"),
        (
            "UPDATE_ROLLBACK_FAILED",
            "stack droptrain-dev is UPDATE_ROLLBACK_FAILED: run `aws cloudformation continue-update-rollback "
            "--stack-name droptrain-dev`, then deploy",
        ),
        ("DELETE_FAILED", "stack droptrain-dev is DELETE_FAILED: delete it in the CloudFormation console"),
    ],
)
def test_a_stack_that_cannot_be_changed_now_is_one_line_and_no_change_set(aws, package_dir, status, says):
    aws["stub"].add_response("describe_stacks", _described(status))
    with pytest.raises(stack.StackError) as raised:
        _deploy(aws, package_dir)
    assert str(raised.value).startswith(says) and "\n" not in str(raised.value)


def test_the_data_bucket_a_deleted_stack_left_is_imported_then_the_stack_updated(aws, package_dir):
    """The bucket is retained when its stack is deleted: a new stack imports it rather than failing
    to create a bucket that already exists. Its datasets stay where they were."""
    s3, stub, said = aws["s3"], aws["stub"], []
    s3.create_bucket(Bucket=ENV["DATA_BUCKET"])
    s3.put_object(Bucket=ENV["DATA_BUCKET"], Key="datasets/pets.zip", Body=b"data")
    stub.add_client_error("describe_stacks", "ValidationError", f"Stack with id {STACK} does not exist")
    bucket = {"BucketName": ENV["DATA_BUCKET"]}
    imported = [{"ResourceType": "AWS::S3::Bucket", "LogicalResourceId": "DataBucket", "ResourceIdentifier": bucket}]
    _change_set(stub, "IMPORT", "IMPORT_COMPLETE", ResourcesToImport=imported)
    _change_set(stub, "UPDATE", "UPDATE_COMPLETE")
    stub.add_response("describe_stacks", _described("UPDATE_COMPLETE"))
    _deploy(aws, package_dir, said)
    assert any(line.startswith(f"the data bucket {ENV['DATA_BUCKET']} outlived a deleted stack") for line in said)
    artifacts = "droptrain-deploy-123456789012-us-east-1"
    key = next(o["Key"] for o in s3.list_objects_v2(Bucket=artifacts)["Contents"] if o["Key"].endswith("import.json"))
    assert json.loads(s3.get_object(Bucket=artifacts, Key=key)["Body"].read()) == {
        "Resources": {"DataBucket": DATA_BUCKET}
    }, "an import creates nothing else: the bucket alone, with its DeletionPolicy"
    assert _sourcedir_there(s3) and s3.get_object(Bucket=ENV["DATA_BUCKET"], Key="datasets/pets.zip")
