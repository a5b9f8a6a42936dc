"""What a running training job prints that matters: its metrics, by the request's MetricDefinitions
(as CloudWatch reads a job's log on SageMaker), and its last lines (a failure's context)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from droptrain.local.sagemaker.resources import now


@dataclass
class JobOutput:
    """What a running job has printed that matters: its metrics and its last lines."""

    definitions: list[tuple[str, re.Pattern]]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    tail: list[str] = field(default_factory=list)

    def read(self, line: str) -> list[tuple[str, float, int]]:
        self.tail = (self.tail + [line])[-20:]
        found = []
        for metric, pattern in self.definitions:
            match = pattern.search(line)
            if match:
                self.metrics.setdefault(metric, []).append(float(match.group(1)))
                found.append((metric, self.metrics[metric][-1], len(self.metrics[metric])))
        return found

    def final(self) -> list[dict[str, Any]]:
        return [{"MetricName": n, "Value": v[-1], "Timestamp": now()} for n, v in self.metrics.items() if v]
