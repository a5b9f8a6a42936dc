"""What a run will cost before it starts, the budget that bounds it, and what it cost (docs/architecture.md,
"Dataset audit and cost"). Pure: prices and image counts in, numbers out.

Prices are on-demand USD per instance-hour, from the AWS Price List API where the stage can read it
(``chalice_app.adapters.pricing``), else the bundled table below: us-east-1 list prices as of
``BUNDLED_PRICES_AS_OF``, approximate, and said to be so in every forecast that uses them.

Expected time per job comes from the dataset's image count and ``THROUGHPUT``: images per second per
instance type for the two training modes. Rows measured by ``make bench`` say so; the others are
estimates, marked as such, and the forecast says which it used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chalice_app import scaling

BUNDLED_PRICES_AS_OF = "2025-06"
# (training, hosting) USD per hour, us-east-1 on-demand list prices (approximate; see the module doc).
BUNDLED_PRICES = {
    "ml.m5.large": (0.115, 0.115),
    "ml.m5.xlarge": (0.23, 0.23),
    "ml.m5.2xlarge": (0.461, 0.461),
    "ml.m5.4xlarge": (0.922, 0.922),
    "ml.c5.large": (0.102, 0.102),
    "ml.c5.xlarge": (0.204, 0.204),
    "ml.c5.2xlarge": (0.408, 0.408),
    "ml.c5.4xlarge": (0.816, 0.816),
    "ml.g4dn.xlarge": (0.736, 0.736),
    "ml.g4dn.2xlarge": (0.94, 0.94),
    "ml.g5.xlarge": (1.408, 1.408),
    "ml.g5.2xlarge": (1.515, 1.515),
}
# Images per second: (head mode: the frozen backbone's one pass, full mode: training), ResNet-50 at 224 px.
# "measured": make bench on a 2-core CPU (ResNet-18 rows, scaled by ResNet-50's 2.2x cost per image).
THROUGHPUT = {
    "ml.m5.large": ((25.0, 9.0), "measured (2-core CPU, scaled to ResNet-50)"),
    "ml.c5.large": ((25.0, 9.0), "measured (2-core CPU, scaled to ResNet-50)"),
    "ml.m5.xlarge": ((50.0, 18.0), "estimate (twice the measured 2-core rate)"),
    "ml.c5.xlarge": ((50.0, 18.0), "estimate (twice the measured 2-core rate)"),
    "ml.m5.2xlarge": ((100.0, 36.0), "estimate"),
    "ml.c5.2xlarge": ((100.0, 36.0), "estimate"),
    "ml.m5.4xlarge": ((200.0, 70.0), "estimate"),
    "ml.c5.4xlarge": ((200.0, 70.0), "estimate"),
    "ml.g4dn.xlarge": ((350.0, 180.0), "estimate (T4, input-bound on 4 vCPUs)"),
    "ml.g4dn.2xlarge": ((500.0, 200.0), "estimate (T4)"),
    "ml.g5.xlarge": ((450.0, 260.0), "estimate (A10G, input-bound on 4 vCPUs)"),
    "ml.g5.2xlarge": ((700.0, 300.0), "estimate (A10G)"),
}
UNKNOWN_THROUGHPUT = ((25.0, 9.0), "estimate (unknown instance type: the slowest row)")
# Each backbone's speed relative to ResNet-50 (head mode, full mode), at its own input size: measured by
# make bench's backbones suite on a 2-core CPU (docs/performance.md; full-mode ratios moved by up to a
# quarter between two runs there). The rows above are ResNet-50's; another
# backbone's are divided by these (a GPU's ratios may differ: the forecast says where its number came from).
ARCH_SPEED = {
    "resnet18": (1.84, 2.97),
    "resnet34": (1.28, 1.48),
    "resnet50": (1.0, 1.0),
    "convnext_tiny": (0.93, 1.28),
    "efficientnet_v2_s": (0.42, 0.51),
    "regnet_y_1_6gf": (1.97, 2.47),
    "vit_b_16": (0.27, 0.39),
}
# Billed seconds every job spends before and after the script: image pull, data download, upload.
JOB_OVERHEAD_SECONDS = 180
# What each added instance contributes, relative to the first (the target docs/performance.md measures).
SCALING_EFFICIENCY = 0.9
HOURS_PER_DAY = 24


class BudgetError(Exception):
    """The run cannot fit ``MAX_RUN_COST_USD``; the message has the numbers."""


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    source: str  # "price-list-api" | "bundled"
    as_of: str


def bundled_price(instance_type: str, component: str) -> Price | None:
    prices = BUNDLED_PRICES.get(instance_type)
    if prices is None:
        return None
    return Price(prices[0] if component == "Training" else prices[1], "bundled", BUNDLED_PRICES_AS_OF)


def throughput(instance_type: str) -> tuple[tuple[float, float], str]:
    """The table's row; for a type of several GPUs, its family's one-GPU row times the GPUs at
    ``SCALING_EFFICIENCY`` (the job runs one process per GPU); else the slowest row."""
    if instance_type in THROUGHPUT:
        return THROUGHPUT[instance_type]
    family, gpus = instance_type.split(".")[1], scaling.gpus(instance_type) or 0
    single = THROUGHPUT.get(f"ml.{family}.xlarge")
    if gpus > 1 and single is not None:
        (head, full), _ = single
        factor = gpus * SCALING_EFFICIENCY
        return (head * factor, full * factor), f"estimate ({gpus} GPUs, each as ml.{family}.xlarge's, at 90%)"
    return UNKNOWN_THROUGHPUT


def job_seconds(
    instance_type: str, images: int, epochs: int, mode: str, instances: int = 1, archs: tuple[str, ...] = ("resnet50",)
) -> tuple[float, str]:
    """Expected seconds of one training job on ``instances`` instances (each billed for them all), and
    where its throughput came from; of the slowest of ``archs`` (the backbones the job may train)."""
    (head, full), source = throughput(instance_type)
    slowest = min(archs, key=lambda arch: ARCH_SPEED.get(arch, (1.0, 1.0))[mode == "full"])
    speed = ARCH_SPEED.get(slowest, (1.0, 1.0))[mode == "full"]
    if slowest != "resnet50":
        source += f", {slowest} at {speed:.2f}x ResNet-50's speed (measured on a CPU)"
    work = (images / head if mode == "head" else images * max(epochs, 1) / full) / speed
    if instances > 1:
        work /= instances * SCALING_EFFICIENCY
        source += f", {instances} instances at {SCALING_EFFICIENCY:.0%} scaling efficiency"
    return JOB_OVERHEAD_SECONDS + work, source


def _epochs(config: Any) -> int:
    return int(config.static_hyperparameters.get("epochs") or config.tuning_ranges["epochs"][1])


def _archs(config: Any) -> tuple[str, ...]:
    """The backbones the run's jobs may train: the tuned categorical's, else the static one."""
    tuned = config.tuning_ranges.get("arch")
    return tuple(tuned) if tuned else (str(config.static_hyperparameters.get("arch", "resnet50")).strip('"').lower(),)


def _mode(config: Any) -> str:
    # As train.py reads it: in any case, and unquoted where the SDK's JSON encoding quoted it.
    mode = str(config.static_hyperparameters.get("train-mode", "")).strip().strip('"').lower()
    return "full" if mode == "full" else "head"


@dataclass(frozen=True)
class Plan:
    """How the tuning job is bounded: its trial count and every job's runtime limit."""

    trials: int
    parallel: int
    max_runtime_seconds: int
    bounded_by_budget: bool


def plan(config: Any, images: int, training: Price | None, trials: int) -> Plan:
    """The configured limits (``trials``: what the tuning job would run), tightened so that even every
    job running to its limit stays within ``MAX_RUN_COST_USD``; ``BudgetError`` when not even one trial
    and the final job fit (for Grid, which runs its whole grid: when the grid does not fit). A job is
    billed for each of its instances (``TRAINING_INSTANCE_COUNT``, ``FINAL_INSTANCE_COUNT``)."""
    runtime = config.max_runtime_seconds
    configured = trials
    budget = config.max_run_cost_usd
    if budget is None:
        return Plan(trials, min(config.max_parallel_jobs, trials), runtime, False)
    if training is None:
        raise BudgetError(
            f"MAX_RUN_COST_USD is set but no price is known for {config.training_instance_type}: "
            "unset the budget or use an instance type of the bundled table"
        )
    instances, final_instances = config.training_instance_count, config.final_instance_count
    expected, _ = job_seconds(
        config.training_instance_type, images, _epochs(config), _mode(config), instances, _archs(config)
    )
    # A job may run to twice its expected time before it is stopped; never less than 10 minutes.
    limit = int(min(runtime, max(600, math.ceil(2 * expected))))
    hour = limit / 3600 * training.usd_per_hour  # one instance for the limit: the final job has the trials' limit
    per_trial, final = hour * instances, hour * final_instances
    fitting = math.floor((budget - final) / per_trial)
    on = f"{config.training_instance_type} at ${training.usd_per_hour:.3f}/h per instance"
    if fitting < 1:
        raise BudgetError(
            f"the run needs at least one trial and the final job ({instances} and {final_instances} instance(s)), "
            f"each allowed {limit / 60:.0f} min on {on}: ${per_trial + final:.2f} at most, over MAX_RUN_COST_USD "
            f"${budget:.2f}"
        )
    if config.tuning_strategy == "Grid" and fitting < configured:
        raise BudgetError(
            f"Grid search runs all {configured} combinations plus the final job, each allowed {limit / 60:.0f} min "
            f"on {on}: ${configured * per_trial + final:.2f} at most, over MAX_RUN_COST_USD "
            f"${budget:.2f}; raise the budget or use another strategy"
        )
    trials = min(trials, fitting)
    return Plan(trials, min(config.max_parallel_jobs, trials), limit, trials < configured or limit < runtime)


def forecast(config: Any, images: int, run_plan: Plan, training: Price | None, hosting: Price | None) -> dict[str, Any]:
    """``tuning.started``'s forecast: the trials, the final job and the endpoint's cost per day."""
    instances, final_instances = config.training_instance_count, config.final_instance_count
    kind, epochs, mode = config.training_instance_type, _epochs(config), _mode(config)
    seconds, throughput = job_seconds(kind, images, epochs, mode, instances, _archs(config))
    final_seconds, _ = job_seconds(kind, images, epochs, mode, final_instances, _archs(config))
    out: dict[str, Any] = {
        "images": images,
        "trials": run_plan.trials,
        "minutes_per_job": round(seconds / 60, 1),
        "instances_per_trial": instances,
        "final_instances": final_instances,
        "throughput": throughput,
        "max_runtime_seconds": run_plan.max_runtime_seconds,
        "budget_usd": config.max_run_cost_usd,
        "bounded_by_budget": run_plan.bounded_by_budget,
    }
    if training is not None:
        per_trial = seconds / 3600 * training.usd_per_hour * instances
        final = final_seconds / 3600 * training.usd_per_hour * final_instances
        limit_hours = run_plan.max_runtime_seconds / 3600
        out.update(
            {
                "training_usd_per_hour": training.usd_per_hour,
                "tuning_usd": round(run_plan.trials * per_trial, 2),
                "final_usd": round(final, 2),
                "run_usd": round(run_plan.trials * per_trial + final, 2),
                "worst_case_usd": round(
                    (run_plan.trials * instances + final_instances) * limit_hours * training.usd_per_hour, 2
                ),
            }
        )
    if config.serverless:
        out["endpoint_usd_per_day"] = None  # billed per request and memory-second: nothing while idle
    elif hosting is not None:
        out["endpoint_usd_per_day"] = round(hosting.usd_per_hour * HOURS_PER_DAY * config.inference_instance_count, 2)
    out["prices"] = {"training": _source(training), "hosting": _source(hosting)}
    return out


def batch_forecast(instance_type: str, images: int, hosting: Price | None) -> dict[str, Any]:
    """A batch prediction job's: one forward pass per image at the instance's head-mode rate (a frozen
    backbone's pass, which is what predicting is), ResNet-50's, on one instance, billed as hosting."""
    (rate, _), source = throughput(instance_type)
    seconds = JOB_OVERHEAD_SECONDS + images / rate
    out: dict[str, Any] = {"images": images, "instance_type": instance_type, "minutes": round(seconds / 60, 1)}
    out["throughput"] = source
    if hosting is not None:
        out.update({"usd": round(seconds / 3600 * hosting.usd_per_hour, 2), "price": _source(hosting)})
    return out


def _source(price: Price | None) -> dict[str, Any] | None:
    return None if price is None else {"source": price.source, "as_of": price.as_of, "usd_per_hour": price.usd_per_hour}


def actual(billable_seconds: Mapping[str, float], training: Price | None) -> dict[str, Any]:
    """What the run cost: every job's billable instance-seconds (spot savings included) at the training price."""
    total = sum(billable_seconds.values())
    out: dict[str, Any] = {"billable_seconds": round(total, 1), "jobs": len(billable_seconds)}
    if training is not None:
        out.update({"usd": round(total / 3600 * training.usd_per_hour, 4), "price": _source(training)})
    return out
