"""SNS: publishing one notification."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalice_app.adapters.errors import translate


class SnsAdapter:
    def __init__(self, client: Any):
        self._client = client

    def publish(self, topic_arn: str, subject: str, message: str, attributes: Mapping[str, str]) -> str:
        try:
            response = self._client.publish(
                TopicArn=topic_arn,
                Subject=subject,
                Message=message,
                MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"publishing to {topic_arn}") from exc
        return response["MessageId"]
