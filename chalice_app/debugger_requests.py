"""The final job's debugging and profiling: in the job itself (every account), or SageMaker Debugger's
managed hook, rules and profiler (``MANAGED_DEBUGGER``, for accounts that already use it)."""

from __future__ import annotations

from typing import Any

from chalice_app.config import Config

# Where in-job smdebug tensors go inside the container; SageMaker uploads output/data with the job.
IN_JOB_DEBUG_DIR = "/opt/ml/output/data/debug"
DEBUGGER_RULES = (
    "VanishingGradient",
    "ExplodingTensor",
    "Overfit",
    "Overtraining",
    "PoorWeightInitialization",
    "LossNotDecreasing",
)


def managed(config: Config, debug_uri: str, profiler_uri: str) -> dict[str, Any]:
    """SageMaker Debugger's hook, rules and profiler, run by the service (``MANAGED_DEBUGGER``)."""
    request: dict[str, Any] = {}
    request["DebugHookConfig"] = {
        "S3OutputPath": debug_uri,
        "CollectionConfigurations": [
            {"CollectionName": name, "CollectionParameters": {"save_interval": "10"}}
            for name in ("losses", "weights", "gradients", "biases", "relu_input")
        ],
    }
    request["DebugRuleConfigurations"] = [
        {
            "RuleConfigurationName": rule,
            "RuleEvaluatorImage": config.debugger_image_uri,
            "RuleParameters": {"rule_to_invoke": rule},
        }
        for rule in DEBUGGER_RULES
    ]
    request["ProfilerConfig"] = {
        "S3OutputPath": profiler_uri,
        "ProfilingIntervalInMilliseconds": 500,
    }
    request["ProfilerRuleConfigurations"] = [
        {
            "RuleConfigurationName": "ProfilerReport",
            "RuleEvaluatorImage": config.debugger_image_uri,
            "RuleParameters": {"rule_to_invoke": "ProfilerReport"},
        }
    ]
    return request
