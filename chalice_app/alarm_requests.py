"""Pure builders for CloudWatch: the alarms that watch a project's endpoint during a rollout
(``PutMetricAlarm`` requests, validated against botocore's model in the tests)."""

from __future__ import annotations

from typing import Any

from chalice_app import names
from chalice_app.config import Config

VARIANT = "AllTraffic"  # the endpoint config's one production variant: what the alarms' metrics name


ERROR_RATE_PERCENT = 5


def alarm_names(config: Config, project: str) -> tuple[str, str]:
    endpoint = config.endpoint(project)
    return f"{endpoint}-5xx-rate", f"{endpoint}-model-latency"


def rollback_alarm_names(config: Config, project: str) -> list[str]:
    """The project's own two alarms, then the stage's ROLLBACK_ALARMS (SageMaker takes ten at most)."""
    return [*alarm_names(config, project), *config.rollback_alarms][:10]


def alarm_requests(config: Config, project: str) -> list[dict[str, Any]]:
    """The alarms that watch a project's endpoint: its 5xx rate (errors per invocation, as metric math)
    and its model latency; a deployment that trips either rolls back."""
    endpoint = config.endpoint(project)
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]
    errors_name, latency_name = alarm_names(config, project)

    def metric(metric_id: str, name: str) -> dict[str, Any]:
        watched = {"Namespace": "AWS/SageMaker", "MetricName": name, "Dimensions": dimensions}
        return {"Id": metric_id, "ReturnData": False, "MetricStat": {"Metric": watched, "Period": 60, "Stat": "Sum"}}

    common = {
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "Tags": [{"Key": names.TAG_PROJECT, "Value": project}],
    }
    return [
        {
            "AlarmName": errors_name,
            **common,
            "Threshold": float(ERROR_RATE_PERCENT),
            "AlarmDescription": (
                f"droptrain: more than {ERROR_RATE_PERCENT}% of {endpoint}'s invocations fail (5xx); "
                "rolls a deployment back"
            ),
            "Metrics": [
                metric("errors", "Invocation5XXErrors"),
                metric("invocations", "Invocations"),
                {
                    "Id": "rate",
                    "Expression": "IF(invocations > 0, 100 * errors / invocations, 0)",
                    "Label": "5xx per 100 invocations",
                    "ReturnData": True,
                },
            ],
        },
        {
            "AlarmName": latency_name,
            **common,
            "Threshold": float(config.rollback_latency_ms * 1000),
            "AlarmDescription": (
                f"droptrain: {endpoint}'s p90 model latency is over {config.rollback_latency_ms} ms; "
                "rolls a deployment back"
            ),
            "Namespace": "AWS/SageMaker",
            "MetricName": "ModelLatency",
            "Dimensions": dimensions,
            "ExtendedStatistic": "p90",
            "Period": 60,
            "Unit": "Microseconds",
        },
    ]
