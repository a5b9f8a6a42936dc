"""Local CloudWatch alarms: ``PutMetricAlarm`` requests kept in the state database, and judged by the
local endpoints on what they measure while a rollout bakes (``droptrain.local.sagemaker.endpoint``).

SageMaker watches a rollout through the alarms its ``AutoRollbackConfiguration`` names; locally the
same alarms are read, and the two kinds droptrain creates are evaluated over the bake window: the
5xx rate (``Invocation5XXErrors`` per ``Invocations``, the alarm's metric math) and model latency
(``ModelLatency`` at the alarm's percentile). Evaluation periods collapse into the one bake window;
an alarm on a metric the local endpoint does not measure never fires here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from droptrain.local.store import Store

_COMPARE = {
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
    "GreaterThanOrEqualToThreshold": lambda value, threshold: value >= threshold,
    "LessThanThreshold": lambda value, threshold: value < threshold,
    "LessThanOrEqualToThreshold": lambda value, threshold: value <= threshold,
}


@dataclass
class Measurements:
    """What one version answered during a bake window."""

    app: str
    invocations: int = 0
    errors: int = 0  # 5xx: the container failed
    latencies_us: list[float] = field(default_factory=list)

    def record(self, status: int, seconds: float) -> None:
        self.invocations += 1
        self.errors += status >= 500
        self.latencies_us.append(seconds * 1e6)


def _percentile(values: list[float], statistic: str) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    if statistic == "Average":
        return sum(ordered) / len(ordered)
    if statistic == "Maximum":
        return ordered[-1]
    if statistic.startswith("p"):
        rank = max(0, math.ceil(float(statistic[1:]) / 100 * len(ordered)) - 1)
        return ordered[rank]
    return None


def _metric_names(alarm: Mapping[str, Any]) -> set[str]:
    return {m["MetricStat"]["Metric"]["MetricName"] for m in alarm.get("Metrics", []) if "MetricStat" in m}


def breached(alarm: Mapping[str, Any], seen: Measurements) -> str | None:
    """Why ``alarm`` would go into ALARM on ``seen``, or ``None``."""
    compare = _COMPARE.get(alarm.get("ComparisonOperator", ""))
    if compare is None:
        return None
    threshold = float(alarm["Threshold"])
    if {"Invocation5XXErrors", "Invocations"} <= _metric_names(alarm):
        rate = 100 * seen.errors / seen.invocations if seen.invocations else 0.0
        if compare(rate, threshold):
            return (
                f"{seen.errors} of {seen.invocations} invocations failed "
                f"({rate:.0f}% against a threshold of {threshold:g}%)"
            )
        return None
    if alarm.get("MetricName") == "ModelLatency":
        value = _percentile(seen.latencies_us, alarm.get("ExtendedStatistic") or alarm.get("Statistic", "Average"))
        if value is not None and compare(value, threshold):
            return f"model latency {value / 1000:.0f} ms against a threshold of {threshold / 1000:g} ms"
    return None


class LocalAlarms:
    """``chalice_app.ports.Alarms`` over the state database; invocations as the local endpoints count them."""

    def __init__(self, store: Store, invocations: Callable[[str, datetime, datetime], float] | None = None):
        self.store = store
        self.count_invocations = invocations or (lambda endpoint, start, end: 0.0)

    def invocations(self, endpoint: str, start: datetime, end: datetime) -> float:
        return self.count_invocations(endpoint, start, end)

    def put_alarm(self, request: Mapping[str, Any]) -> None:
        record = {k: v for k, v in request.items() if k != "Tags"}
        if not self.store.insert("alarm", request["AlarmName"], record):
            self.store.update("alarm", request["AlarmName"], **record)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.store.get("alarm", name)
