"""What the stage needs of the account's SageMaker quotas, read from Service Quotas before the deploy.

A new account often has 0 of a GPU instance type for training jobs or endpoints, and spot training
has quotas of its own: the first run would then fail an hour later, at CreateHyperParameterTuningJob
or CreateEndpoint, with ResourceLimitExceeded. The deploy reads the applied quotas once and says, for
each type the stage uses, what to request; it never stops the deploy (a quota can be raised later).
SageMaker's quotas are named ``<instance type> for <use> usage`` (Service Quotas, service code
``sagemaker``; "Amazon SageMaker AI endpoints and quotas" in the AWS General Reference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    """A count from the stage; a malformed one counts as its default here (the app's config names it)."""
    try:
        return max(1, int(env.get(name, default)))
    except ValueError:
        return default


def needs(env: Mapping[str, str]) -> list[tuple[str, int, str]]:
    """(quota name, instances the stage can hold at once, why) for the stage's settings."""
    parallel = _count(env, "MAX_PARALLEL_JOBS", 2)
    per_trial = _count(env, "TRAINING_INSTANCE_COUNT", 1)
    final = _count(env, "FINAL_INSTANCE_COUNT", per_trial)
    training = env.get("TRAINING_INSTANCE_TYPE", "ml.g4dn.xlarge")
    spot = env.get("USE_SPOT", "false").lower() == "true"
    at_once, why = parallel * per_trial, f"{parallel} tuning trials at once of {per_trial} instance(s)"
    if final > at_once:
        at_once, why = final, f"the final job's {final} instances"
    wanted = [(f"{training} for {'spot ' if spot else ''}training job usage", at_once, why)]
    if env.get("AUDIT", "true").lower() == "true":
        wanted.append((f"{env.get('AUDIT_INSTANCE_TYPE', 'ml.m5.xlarge')} for processing job usage", 1, "the audit"))
    inference = env.get("INFERENCE_INSTANCE_TYPE", "ml.m5.large")
    if inference != "serverless":
        count = _count(env, "INFERENCE_INSTANCE_COUNT", 1)
        wanted.append(
            (
                f"{inference} for endpoint usage",
                2 * count,
                f"{count} per project endpoint, twice during a blue/green update",
            )
        )
    return wanted


def _applied(client: Any) -> Iterable[dict[str, Any]]:
    for page in client.get_paginator("list_service_quotas").paginate(ServiceCode="sagemaker"):
        yield from page.get("Quotas", [])


def check(client: Any, env: Mapping[str, str], say: Callable[[str], None]) -> list[str]:
    """Say what to request for each quota below what the stage needs; returns those lines."""
    try:
        applied = {q["QuotaName"].lower(): q for q in _applied(client)}
    except (BotoCoreError, ClientError) as exc:
        line = f"could not read the SageMaker quotas ({exc}); check them in the Service Quotas console"
        say(line)
        return [line]
    lines = []
    for name, wanted, why in needs(env):
        quota = applied.get(name.lower())
        if quota is None or quota.get("Value", 0) >= wanted:
            continue
        lines.append(
            f"quota '{name}' is {quota.get('Value', 0):g} in this account; the stage needs {wanted} ({why}): "
            f"aws service-quotas request-service-quota-increase --service-code sagemaker "
            f"--quota-code {quota['QuotaCode']} --desired-value {wanted}"
        )
    for line in lines:
        say(line)
    return lines
