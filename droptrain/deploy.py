"""``droptrain deploy --stage dev``: from this checkout to a running stack in an AWS account.

Steps (each a function, so every one that needs no AWS is tested offline). The offline ones come
first, so that a machine without credentials gets as far as it can and then one clear line:

1. ``resolve_images``: the region's PyTorch training image and Ray Serve inference image, from the
   SageMaker SDK's own tables (``sagemaker.core.image_uris`` in SDK v3, ``sagemaker.image_uris`` in
   v2; ``pip install -e '.[deploy]'`` installs it). The versions are pinned here, once.
2. ``build_sourcedir``: ``training/`` as a reproducible ``sourcedir.tar.gz``, named by its hash.
3. (first call that needs credentials) the account, then ``stage_environment`` and
   ``policies.lambda_policy``, written into ``.chalice/config.json`` and ``.chalice/policy-<stage>.json``;
   ``quotas.check`` says which SageMaker quotas are below what the stage needs, and what to request.
4. ``template.build_layer`` (``layers/build.py``): the dependency layer (powertools, and the pinned
   boto3/botocore the handlers need: ``PutObject(IfNoneMatch)`` arrived in botocore 1.35.2).
5. ``template.package`` (``chalice package`` + ``merge_template``): one SAM template holding the
   bucket (EventBridge on), the topic, the SageMaker execution role, the failed-events queue, the layer, the functions,
   rules and the REST API.
6. ``stack.deploy_stack``: upload the artifacts, bring the stack to a state a change set can start
   from, create or update it through a change set (none to make is success), wait; the sourcedir goes
   into the stack's bucket before the functions point at it wherever that bucket already exists.

Every failure reaches the user as one line (``DeployError``), never a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError, WaiterError

from droptrain import project, quotas, sourcedir
from droptrain.policies import PolicyError, lambda_policy, partition_of
from droptrain.stack import StackError, deploy_stack
from droptrain.template import TemplateError, build_layer, package, read_config, stage_env

TRAINING_DIR = project.TRAINING_DIR
STAGES = ("dev", "prod")
# The images, pinned here and resolved per region through the SageMaker SDK's tables (sagemaker-core
# 2.27.0, the newest on PyPI on 2026-12-06). Training and the audit: AWS's Amazon Linux 2023 PyTorch
# training image, the newest the SDK lists (2.14, CUDA 13.3: Turing and newer, so g4dn, g5, g6), the
# torch the local runtime runs (pyproject.toml; a test keeps them in step). AWS's Ubuntu-based 2.8-2.10
# images cannot be fully patched and leave patch support on 2027-01-21: only where the SDK lists no
# AL2023 image for the region (the China regions) is 2.10 used, and the deploy says so. Serving: the
# newest Ray Serve image the SDK lists, 1.4 (Ray 2.57.0, which the local runtime pins: a test keeps them
# in step); the deploy says when the SDK lists a newer one.
TRAINING_FRAMEWORK, TRAINING_FRAMEWORK_VERSION = "pytorch-amzn2023", "2.14"
OLD_TRAINING_IMAGE = {"framework": "pytorch", "version": "2.10.0", "py_version": "py313"}
RAY_SERVE_IMAGE_VERSION, RAY_SERVE_RAY_VERSION = "1.4", "2.57.0"
# Resolved per region beside the two above when the stage uses them; a stage's stale one is dropped.
RESOLVED_IMAGES = ("AUDIT_IMAGE_URI", "DEBUGGER_IMAGE_URI")


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
        raise DeployError(
            "resolving the region's images needs the SageMaker SDK: pip install -e '.[deploy]' "
            "(make deploy does), or pass --training-image and --inference-image"
        ) from None


def _training_image(retrieve: Callable[..., str], region: str, instance: str, say: Callable[[str], None]) -> str:
    try:
        return retrieve(
            TRAINING_FRAMEWORK,
            region=region,
            version=TRAINING_FRAMEWORK_VERSION,
            instance_type=instance,
            image_scope="training",
        )
    except (ValueError, KeyError):
        old = retrieve(**OLD_TRAINING_IMAGE, region=region, instance_type=instance, image_scope="training")
        say(
            f"the SageMaker SDK lists no Amazon Linux 2023 PyTorch image in {region}: training on {old}, "
            "whose patches end on 2027-01-21 (pip install -U -e '.[deploy]' may bring one)"
        )
        return old


def resolve_images(
    region: str,
    training_instance: str,
    inference_instance: str,
    retrieve: Callable[..., str] | None = None,
    audit_instance: str = "ml.m5.xlarge",
    say: Callable[[str], None] = print,
    managed_debugger: bool = False,
) -> dict[str, str]:
    """The region's PyTorch training image (and its build for the audit's instance) and Ray Serve
    inference image, CPU or CUDA by instance type; the region's Debugger rules image when the stage
    uses the managed debugger."""
    sdk = None if retrieve else _image_uris()
    retrieve = retrieve or sdk.retrieve
    inference = "ml.m5.large" if inference_instance == "serverless" else inference_instance
    try:
        images = {
            "TRAINING_IMAGE_URI": _training_image(retrieve, region, training_instance, say),
            "AUDIT_IMAGE_URI": _training_image(retrieve, region, audit_instance, lambda line: None),
            "INFERENCE_IMAGE_URI": retrieve(
                "ray-serve",
                region=region,
                version=RAY_SERVE_IMAGE_VERSION,
                instance_type=inference,
                image_scope="inference",
            ),
        }
        if managed_debugger:
            images["DEBUGGER_IMAGE_URI"] = retrieve("debugger", region=region)
    except (ValueError, KeyError) as exc:
        raise DeployError(
            f"the SageMaker SDK has no image for this setting in {region}: {exc} "
            "(pip install -U -e '.[deploy]' brings newer image tables)"
        ) from None
    for framework, scope, pinned, local in (
        ("ray-serve", "inference", RAY_SERVE_IMAGE_VERSION, f"Ray {RAY_SERVE_RAY_VERSION}"),
        (TRAINING_FRAMEWORK, "training", TRAINING_FRAMEWORK_VERSION, f"torch {TRAINING_FRAMEWORK_VERSION}"),
    ):
        newest = newest_listed(sdk, framework, scope) if sdk else None
        if newest and _version(newest) > _version(pinned):
            say(f"the SageMaker SDK lists {framework} {newest}; this release uses {pinned}, whose {local} runs locally")
    return images


def newest_listed(sdk: Any, framework: str, scope: str) -> str | None:
    """The newest version of ``framework`` in the SDK's image tables (``None`` if it cannot say)."""
    try:
        config = sdk.config_for_framework(framework)
        versions = (config.get(scope) or config)["versions"]
    except (AttributeError, KeyError, OSError, ValueError):
        return None
    return max(versions, key=_version, default=None)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


# -- 3. the stage's environment ----------------------------------------------------------------


def stage_environment(
    stage: str, account: str, region: str, images: Mapping[str, str], sourcedir_key: str, current: Mapping[str, str]
) -> dict[str, str]:
    """The stage's variables: names derived from stage and account, other settings kept as they are."""
    partition = partition_of(region)
    bucket = f"droptrain-data-{stage}-{account}"
    return {
        **{k: v for k, v in current.items() if k not in ("ENDPOINT_NAME", *RESOLVED_IMAGES)},
        **{k: images[k] for k in RESOLVED_IMAGES if images.get(k)},
        "DATA_BUCKET": bucket,
        "NOTIFY_TOPIC_ARN": f"arn:{partition}:sns:{region}:{account}:droptrain-{stage}",
        "SAGEMAKER_ROLE_ARN": f"arn:{partition}:iam::{account}:role/droptrain-sagemaker-{stage}",
        "TRAINING_IMAGE_URI": images["TRAINING_IMAGE_URI"],
        "INFERENCE_IMAGE_URI": images["INFERENCE_IMAGE_URI"],
        "SOURCE_DIR_S3_URI": f"s3://{bucket}/{sourcedir_key}",
        # A stage from before projects named one endpoint; its name becomes the projects' prefix.
        "ENDPOINT_PREFIX": current.get("ENDPOINT_PREFIX") or current.get("ENDPOINT_NAME") or f"droptrain-{stage}",
        "API_KEY_REQUIRED": current.get("API_KEY_REQUIRED", "true" if stage == "prod" else "false"),
        # dev endpoints nobody uses stop after a day; prod's stay up unless the stage says otherwise.
        "IDLE_STOP_HOURS": current.get("IDLE_STOP_HOURS", "0" if stage == "prod" else "24"),
    }


def write_stage(chalice_dir: Path, stage: str, env: Mapping[str, str]) -> None:
    config = read_config(chalice_dir)
    shared = config.get("environment_variables", {})
    config["stages"][stage]["environment_variables"] = {k: v for k, v in env.items() if shared.get(k) != v}
    (chalice_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (chalice_dir / f"policy-{stage}.json").write_text(json.dumps(lambda_policy(env), indent=2) + "\n")


# -- 2. the training code --------------------------------------------------------------------


def build_sourcedir(training_dir: Path = TRAINING_DIR) -> tuple[bytes, str]:
    """``training/`` as a tar.gz with fixed metadata, and its key ``code/sourcedir-<hash>.tar.gz``."""
    return sourcedir.build(training_dir)


# -- 6. into the account (droptrain/stack.py) ---------------------------------------------------


def _explain(exc: Exception) -> str:
    """One line for an AWS failure: what failed and what AWS said."""
    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials found: configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY) and run it again"
        )
    if isinstance(exc, NoRegionError):
        return "no AWS region configured: set AWS_REGION (or aws configure) and run it again"
    if isinstance(exc, WaiterError):
        response = getattr(exc, "last_response", {}) or {}
        reason = response.get("StatusReason") or next(
            (s.get("StackStatusReason") for s in response.get("Stacks", []) if s.get("StackStatusReason")), ""
        )
        reason = reason or exc.kwargs.get("reason") or "see the stack events in the console"
        return f"{exc.kwargs.get('name')} did not complete: {reason}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{exc.operation_name} failed: {error.get('Code', '')}: {error.get('Message', '')}"
    return " ".join(str(exc).split())


def deploy(
    stage: str,
    training_image: str | None = None,
    inference_image: str | None = None,
    say: Callable[[str], None] = print,
    session: Any = None,
) -> dict[str, str]:
    """Offline steps first, then the account: every failure becomes one ``DeployError`` line."""
    try:
        session = session or boto3.session.Session()
        region = session.region_name or os.environ.get("AWS_REGION") or "us-east-1"
        chalice_dir = project.chalice_dir()
        current = stage_env(read_config(chalice_dir), stage)
        images = (
            # The audit then runs in the training image given; a Debugger image the stage names stays.
            {
                "TRAINING_IMAGE_URI": training_image,
                "INFERENCE_IMAGE_URI": inference_image,
                "DEBUGGER_IMAGE_URI": current.get("DEBUGGER_IMAGE_URI", ""),
            }
            if training_image and inference_image
            else resolve_images(
                region,
                current.get("TRAINING_INSTANCE_TYPE", "ml.g4dn.xlarge"),
                current.get("INFERENCE_INSTANCE_TYPE", "ml.m5.large"),
                audit_instance=current.get("AUDIT_INSTANCE_TYPE", "ml.m5.xlarge"),
                say=say,
                managed_debugger=current.get("MANAGED_DEBUGGER", "").lower() == "true",
            )
        )
        say(f"images for {region}: training {images['TRAINING_IMAGE_URI']}, serving {images['INFERENCE_IMAGE_URI']}")
        code, key = build_sourcedir()
        say(f"training code: {key}")
        account = session.client("sts", region_name=region).get_caller_identity()["Account"]
        env = stage_environment(stage, account, region, images, key, current)
        write_stage(chalice_dir, stage, env)
        say(f"stage {stage}: account {account}, region {region}, bucket {env['DATA_BUCKET']}")
        quotas.check(session.client("service-quotas", region_name=region), env, say)
        build_dir = project.root() / "build"
        layer = build_layer(build_dir / "layer.zip")
        package_dir = build_dir / f"package-{stage}"
        package(stage, package_dir, layer, chalice_dir)
        outputs = deploy_stack(session, stage, package_dir, code, key, env, say)
    except (BotoCoreError, ClientError) as exc:
        raise DeployError(_explain(exc)) from None
    except (PolicyError, TemplateError, StackError) as exc:
        raise DeployError(str(exc)) from None
    say(f"deployed: API {outputs.get('EndpointURL', '?')}; upload datasets to s3://{env['DATA_BUCKET']}/datasets/")
    return outputs
