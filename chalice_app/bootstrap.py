"""The one place where adapters are chosen and clients are built (never at import time)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from chalice_app import config as config_module
from chalice_app import predict as predict_module
from chalice_app.adapters.cloudwatch import CloudWatchAdapter
from chalice_app.adapters.pricing import PricingAdapter
from chalice_app.adapters.runtime import RuntimeAdapter
from chalice_app.adapters.s3 import S3Adapter
from chalice_app.adapters.sagemaker import SageMakerAdapter
from chalice_app.adapters.sns import SnsAdapter
from chalice_app.notifications import Notifier
from chalice_app.pipeline import Services


def _clients(region: str):
    # boto3 costs ~0.25 s to import: only a handler that needs AWS pays for it, once per container.
    import boto3
    from botocore.config import Config as BotoConfig

    session = boto3.session.Session(region_name=region)
    standard = BotoConfig(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)
    # API Gateway gives up after 29 s: one attempt per call, predict() retries within its budget.
    invoke = BotoConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=predict_module.INVOKE_CONNECT_TIMEOUT,
        read_timeout=predict_module.INVOKE_READ_TIMEOUT,
    )
    return {
        "s3": session.client("s3", config=standard),
        "sns": session.client("sns", config=standard),
        "sagemaker": session.client("sagemaker", config=standard),
        "cloudwatch": session.client("cloudwatch", config=standard),
        # The Price List API answers from us-east-1 for every region.
        "pricing": session.client("pricing", region_name="us-east-1", config=standard),
        "runtime": session.client("sagemaker-runtime", config=invoke),
    }


def build(env: Mapping[str, str]) -> Services:
    """The AWS adapters for the stage described by ``env``; raises ``ConfigError`` naming a bad variable.

    The local runtime builds its own ``Services`` from the same ports and passes them to its app
    (``chalice_app.application.create_app(env, services)``): this module never hears of it."""
    config = config_module.load(env)
    clients = _clients(config.region)
    s3 = S3Adapter(clients["s3"])
    return Services(
        config=config,
        s3=s3,
        sagemaker=SageMakerAdapter(clients["sagemaker"]),
        runtime=RuntimeAdapter(clients["runtime"]),
        alarms=CloudWatchAdapter(clients["cloudwatch"]),
        prices=PricingAdapter(clients["pricing"], config.region),
        notifier=Notifier(SnsAdapter(clients["sns"]), s3, config.notify_topic_arn, config.data_bucket),
        sleep=time.sleep,
    )


def config_error_notifier(env: Mapping[str, str]) -> Notifier | None:
    """A notifier that needs only the topic, for reporting that the rest of the config is broken."""
    topic = config_module.topic_arn(env)
    if topic is None:
        return None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    clients = _clients(region)
    return Notifier(SnsAdapter(clients["sns"]), S3Adapter(clients["s3"]), topic, bucket=None)
