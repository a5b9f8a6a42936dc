"""The stage's CloudFormation stack: the artifacts uploaded, then a change set made for whatever state
the stack is in, executed and waited for. ``deploy.deploy`` calls ``deploy_stack`` last.

CloudFormation refuses an UPDATE change set on a stack whose first creation failed (ROLLBACK_COMPLETE:
it can only be deleted) or that was never created (REVIEW_IN_PROGRESS: a CREATE change set that was
not executed), and any change while an operation runs; the data bucket outlives a deleted stack
(``DeletionPolicy: Retain``), so a stack created again would fail on a bucket that already exists.
Each of those gets its one line and, where it can be done safely, is done (AWS CloudFormation User
Guide: "Stack status codes", "Import AWS resources into a CloudFormation stack").
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from droptrain.policies import arn_parts

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
# States a stack cannot be changed from, each with what the user does about it.
_DELETE_IN_CONSOLE = "delete it in the CloudFormation console (keeping what it cannot delete), then deploy again"
_STUCK = {
    "ROLLBACK_FAILED": _DELETE_IN_CONSOLE,
    "DELETE_FAILED": _DELETE_IN_CONSOLE,
    "UPDATE_ROLLBACK_FAILED": "run `aws cloudformation continue-update-rollback --stack-name {stack}`, then deploy",
    "IMPORT_ROLLBACK_FAILED": "fix the import in the CloudFormation console, then deploy again",
}


class StackError(Exception):
    """A stack this deploy cannot change, in one line saying what to do."""


def template_url(s3: Any, bucket: str, key: str) -> str:
    """The template's URL for CreateChangeSet, on the S3 endpoint botocore resolved for the region: its
    DNS suffix is the partition's (``amazonaws.com.cn`` in the China regions, where a URL ending in
    ``amazonaws.com`` cannot be read; docs.amazonaws.cn, "Amazon S3 endpoints")."""
    host = urllib.parse.urlsplit(s3.meta.endpoint_url).netloc
    return f"https://{bucket}.{host}/{key}"


def _no_changes(exc: Exception) -> bool:
    reason = str(getattr(exc, "last_response", {}).get("StatusReason", "")) + str(exc)
    return any(text in reason for text in _NO_CHANGES)


def _put(s3: Any, bucket: str, stage: str, name: str, data: bytes) -> str:
    key = f"{stage}/{hashlib.sha256(data).hexdigest()[:16]}-{name}"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return key


def upload_template(s3: Any, artifacts: str, stage: str, package_dir: Path) -> str:
    """The code, the layer and the template (pointing at them) into the deployment bucket, each named
    by its hash; returns the template's key."""
    template = json.loads((package_dir / "sam.json").read_text())
    uploaded = {
        f"./{name}": f"s3://{artifacts}/{_put(s3, artifacts, stage, name, (package_dir / name).read_bytes())}"
        for name in ("deployment.zip", "layer.zip")
    }
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        for field in ("CodeUri", "ContentUri"):
            if props.get(field) in uploaded:
                props[field] = uploaded[props[field]]
    return _put(s3, artifacts, stage, "template.json", json.dumps(template).encode())


def stack_status(cfn: Any, stack: str) -> str | None:
    """The stack's status, ``None`` when there is no such stack (a refusal to say is raised)."""
    try:
        return cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise


def _bucket_is_ours(s3: Any, bucket: str, hint: str = "") -> bool:
    """Whether ``bucket`` exists in this account; a name another account holds is one line."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return False
        if code in ("403", "AccessDenied", "Forbidden"):
            raise StackError(f"the bucket name {bucket} is taken by another account{hint}") from None
        raise
    return True


def _change(cfn: Any, stack: str, name: str, kind: str, url: str, stage: str, **extra: Any) -> bool:
    """Make a change set and wait until it is ready; ``False`` when it holds no change (then deleted)."""
    cfn.create_change_set(
        StackName=stack,
        ChangeSetName=name,
        ChangeSetType=kind,
        TemplateURL=url,
        Capabilities=CAPABILITIES,
        Tags=[{"Key": "droptrain:stage", "Value": stage}],
        **extra,
    )
    try:
        cfn.get_waiter("change_set_create_complete").wait(StackName=stack, ChangeSetName=name)
    except WaiterError as exc:
        if not (kind == "UPDATE" and _no_changes(exc)):
            raise
        cfn.delete_change_set(StackName=stack, ChangeSetName=name)
        return False
    return True


def _import_bucket(cfn: Any, s3: Any, stack: str, artifacts: str, stage: str, package_dir: Path, bucket: str) -> None:
    """A stack of just the data bucket that a deleted stack left, imported as it is (an import
    creates nothing else); the full template then updates that stack."""
    resource = json.loads((package_dir / "sam.json").read_text())["Resources"]["DataBucket"]
    key = _put(s3, artifacts, stage, "import.json", json.dumps({"Resources": {"DataBucket": resource}}).encode())
    identifier = {"BucketName": bucket}
    to_import = [
        {"ResourceType": "AWS::S3::Bucket", "LogicalResourceId": "DataBucket", "ResourceIdentifier": identifier}
    ]
    name = f"droptrain-{stage}-import-{key.split('/')[1][:16]}"
    _change(cfn, stack, name, "IMPORT", template_url(s3, artifacts, key), stage, ResourcesToImport=to_import)
    cfn.execute_change_set(StackName=stack, ChangeSetName=name)
    cfn.get_waiter("stack_import_complete").wait(StackName=stack)


def _ready_to_change(cfn: Any, stack: str, say: Callable[[str], None]) -> bool:
    """Bring the stack to a state a change set can start from; returns whether it exists (UPDATE)."""
    status = stack_status(cfn, stack)
    if status == "ROLLBACK_COMPLETE":
        # Its first creation failed and was rolled back: nothing is left in it but what it retains.
        say(f"stack {stack} is ROLLBACK_COMPLETE (its first creation failed): deleting it, then creating it again")
        cfn.delete_stack(StackName=stack)
        cfn.get_waiter("stack_delete_complete").wait(StackName=stack)
        status = None
    if status in _STUCK:
        raise StackError(f"stack {stack} is {status}: {_STUCK[status].format(stack=stack)}")
    if status is not None and status.endswith("_IN_PROGRESS") and status != "REVIEW_IN_PROGRESS":
        raise StackError(f"stack {stack} is {status}: wait until it finishes, then deploy again")
    return status not in (None, "REVIEW_IN_PROGRESS")


def deploy_stack(
    session: Any,
    stage: str,
    package_dir: Path,
    sourcedir_bytes: bytes,
    sourcedir_key: str,
    env: Mapping[str, str],
    say: Callable[[str], None] = print,
) -> dict[str, str]:
    """Upload the artifacts, create or update the stack, wait. The sourcedir goes into the data bucket
    before the functions point at it wherever the bucket already exists."""
    _, region, account = arn_parts(env)
    s3 = session.client("s3", region_name=region)
    cfn = session.client("cloudformation", region_name=region)
    artifacts, bucket, stack = f"droptrain-deploy-{account}-{region}", env["DATA_BUCKET"], f"droptrain-{stage}"
    if not _bucket_is_ours(s3, artifacts):
        say(f"creating the deployment bucket {artifacts}")
        kwargs = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=artifacts, **kwargs)
    template_key = upload_template(s3, artifacts, stage, package_dir)
    exists = _ready_to_change(cfn, stack, say)
    if not exists and _bucket_is_ours(s3, bucket, ": set DATA_BUCKET to another name in .chalice/config.json"):
        say(f"the data bucket {bucket} outlived a deleted stack (it is retained): importing it into stack {stack}")
        _import_bucket(cfn, s3, stack, artifacts, stage, package_dir, bucket)
        exists = True
    if exists:
        s3.put_object(Bucket=bucket, Key=sourcedir_key, Body=sourcedir_bytes)
    change_set = f"droptrain-{stage}-{template_key.split('/')[1][:16]}"
    say(f"waiting for change set {change_set}")
    url = template_url(s3, artifacts, template_key)
    if _change(cfn, stack, change_set, "UPDATE" if exists else "CREATE", url, stage):
        cfn.execute_change_set(StackName=stack, ChangeSetName=change_set)
        say(f"{'updating' if exists else 'creating'} stack {stack}")
        cfn.get_waiter("stack_update_complete" if exists else "stack_create_complete").wait(StackName=stack)
    else:
        say(f"stack {stack} is already up to date")
    if not exists:
        s3.put_object(Bucket=bucket, Key=sourcedir_key, Body=sourcedir_bytes)
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
