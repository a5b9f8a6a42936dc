"""CloudWatch: the alarms that watch a project's endpoint and roll a deployment back."""

from __future__ import annotations

from typing import Any, Mapping

from botocore.exceptions import BotoCoreError, ClientError

from chalice_app.adapters.errors import translate


class CloudWatchAdapter:
    def __init__(self, client: Any):
        self._client = client

    def put_alarm(self, request: Mapping[str, Any]) -> None:
        """PutMetricAlarm creates the alarm or replaces it with the same settings: repeating it is harmless."""
        try:
            self._client.put_metric_alarm(**request)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"putting alarm {request['AlarmName']}") from exc
