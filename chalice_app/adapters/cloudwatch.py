"""CloudWatch: the alarms that watch a project's endpoint and roll a deployment back, and the
invocations that say whether an endpoint is used."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

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

    def invocations(self, endpoint: str, start: datetime, end: datetime) -> float:
        """The endpoint's Invocations (its one variant), summed over hourly periods."""
        try:
            answer = self._client.get_metric_statistics(
                Namespace="AWS/SageMaker",
                MetricName="Invocations",
                StartTime=start,
                EndTime=end,
                Period=3600,
                Statistics=["Sum"],
                Dimensions=[
                    {"Name": "EndpointName", "Value": endpoint},
                    {"Name": "VariantName", "Value": "AllTraffic"},
                ],
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"reading the invocations of {endpoint}") from exc
        return float(sum(point.get("Sum", 0.0) for point in answer.get("Datapoints", [])))
